//! The README is a map: every link between the repository's Markdown files leads somewhere — to
//! a file that exists and, with a `#fragment`, to a heading of that file.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

/// Every `.md` file of the repository, outside build output and installed packages.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a folder") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !matches!(name.as_ref(), "target" | "node_modules" | ".git") {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The lines of `text` outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .filter_map(|line| {
            let heading = line.trim_start_matches('#');
            (heading.len() < line.len() && heading.starts_with(' ')).then(|| anchor(heading))
        })
        .collect()
}

/// The targets of the inline links `[text](target)` of `text`, external ones left out.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose(text) {
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if !target.contains("://") && !target.starts_with("mailto:") && !target.is_empty() {
                found.push(target.to_owned());
            }
        }
    }
    found
}

/// `path` with its `.` and `..` resolved, without touching the file system.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Each broken link as `file: target (why)`.
fn broken_links(root: &Path) -> Vec<String> {
    let files = markdown_files(root);
    let texts: BTreeMap<PathBuf, String> = files
        .iter()
        .map(|f| {
            (
                normal(f),
                std::fs::read_to_string(f).expect("a Markdown file"),
            )
        })
        .collect();
    let mut broken = Vec::new();
    for (file, text) in &texts {
        for target in links(text) {
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                normal(&file.parent().expect("a folder").join(path))
            };
            let why = if !dest.exists() {
                Some("no such file")
            } else if let Some(fragment) = fragment {
                match texts.get(&dest) {
                    Some(dest_text) if anchors(dest_text).contains(fragment) => None,
                    Some(_) => Some("no such heading"),
                    None => None, // an anchor into a file that is not Markdown: not checked
                }
            } else {
                None
            };
            if let Some(why) = why {
                let shown = file.strip_prefix(root).unwrap_or(file).display();
                broken.push(format!("{shown}: {target} ({why})"));
            }
        }
    }
    broken
}

#[test]
fn every_link_between_the_markdown_files_leads_somewhere() {
    let root = normal(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let broken = broken_links(&root);
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The check itself finds a missing file and a missing heading, and passes good links.
#[test]
fn a_broken_link_is_found() {
    let dir = tempfile::tempdir().expect("dir");
    let root = normal(dir.path());
    std::fs::create_dir(root.join("docs")).expect("mkdir");
    std::fs::write(
        root.join("README.md"),
        "# Top\n\n## The API, in brief\n\n[ok](#the-api-in-brief) [ok](docs/a.md#a-b) \
         [gone](docs/b.md) [no heading](docs/a.md#c)\n\n```\n[in code](nowhere.md)\n```\n",
    )
    .expect("write");
    std::fs::write(root.join("docs/a.md"), "# A b\n\n[up](../README.md#top)\n").expect("write");
    assert_eq!(
        broken_links(&root),
        vec![
            "README.md: docs/b.md (no such file)".to_owned(),
            "README.md: docs/a.md#c (no such heading)".to_owned(),
        ]
    );
}
