//! The crates' layout shows their architecture: no module of `api/` or `entity/` reaches, by
//! `crate::` paths, a module that reaches it back (tables' relations to each other aside, which
//! SeaORM writes as `super::`). Test code (after `#[cfg(test)]`) and comments are not counted.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Module path (`["routes", "holds"]`) → source file, for every `.rs` file under `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The code of a file without its tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("a source file");
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` path in `code`, `use crate::{a, b::c}` groups spread.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .collect()
    };
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            paths.push(ident(rest));
            continue;
        };
        // The group's items at depth 1, up to its closing brace.
        let (mut depth, mut item) = (1, String::new());
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => {
                    paths.push(ident(&item));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 1 => {
                    paths.push(ident(&item));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            if depth == 1 {
                item.push(c);
            }
        }
    }
    paths
}

/// The modules that reach each other both ways (strongly connected, more than one).
fn circles(src: &Path) -> Vec<BTreeSet<String>> {
    let mods = modules(src);
    let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for (module, path) in &mods {
        let to = edges.entry(module).or_default();
        for target in crate_paths(&code(path)) {
            let longest = (1..=target.len())
                .rev()
                .find_map(|n| mods.get_key_value(&target[..n]).map(|(k, _)| k));
            if let Some(t) = longest
                && t != module
            {
                to.insert(t);
            }
        }
    }
    // A module is in a circle with the modules it reaches that reach it back.
    let reach = |from: &Vec<String>| -> BTreeSet<&Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Vec<String>> = edges.get(from).into_iter().flatten().copied().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m) {
                todo.extend(edges.get(m).into_iter().flatten().copied());
            }
        }
        seen
    };
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for module in mods.keys() {
        let circle: BTreeSet<String> = reach(module)
            .into_iter()
            .filter(|m| reach(m).contains(module))
            .map(|m| m.join("::"))
            .collect();
        if !circle.is_empty() && !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

#[test]
fn no_module_of_api_or_entity_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["api/src", "entity/src"] {
        let found = circles(&root.join(krate));
        assert!(
            found.is_empty(),
            "{krate}: modules in import circles: {found:?}"
        );
    }
}

/// The check itself finds a circle, through a `use` group as well as a plain path.
#[test]
fn a_circle_is_found() {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a.rs", "use crate::{b::{X, Y}, c};\n");
    write("b.rs", "fn f() { crate::a::g() }\n");
    write("c.rs", "// crate::a::g in a comment is not a use\n");
    let found = circles(dir.path());
    let expected: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
    assert_eq!(found, vec![expected]);
}
