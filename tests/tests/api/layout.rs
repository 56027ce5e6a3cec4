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

/// `entity`'s rooms, lowest first (see `entity/README.md`): a room may use the rooms before it,
/// never one after it. The names `entity/src/lib.rs` re-exports count as their rooms'.
const ENTITY_ROOMS: &[&[&str]] = &[
    &["types", "Money", "ProductId", "Quantity"],
    &[
        "tables",
        "hold",
        "order",
        "product",
        "idempotency_key",
        "webhook_event",
        "queue",
        "ticket",
        "HoldStatus",
        "OrderStatus",
        "TicketState",
        "Admission",
    ],
    &["error", "DomainError"],
    &["sql"],
    &["db", "Db", "DbConfig", "Backend"],
    &["rules"],
    &["views"],
    &["operations"],
    &["batching"],
];

/// The rooms a room reaches that are not below it: `(from, to)` pairs.
fn upward_uses(src: &Path, rooms: &[&[&str]]) -> Vec<(String, String)> {
    let rank = |name: &str| rooms.iter().position(|names| names.contains(&name));
    let mut found = Vec::new();
    for (module, path) in modules(src) {
        let Some(from) = module.first() else { continue };
        let Some(from_rank) = rank(from) else {
            found.push((from.clone(), "(a room not in the list)".to_owned()));
            continue;
        };
        for target in crate_paths(&code(&path)) {
            let Some(to) = target.first() else { continue };
            match rank(to) {
                Some(r) if r <= from_rank => {}
                _ => found.push((from.clone(), to.clone())),
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn entity_rooms_only_use_the_rooms_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../entity/src");
    let found = upward_uses(&src, ENTITY_ROOMS);
    assert!(
        found.is_empty(),
        "entity rooms using rooms above them: {found:?}"
    );
}

/// The rooms check itself sees a use of a higher room, through a re-exported name too.
#[test]
fn an_upward_use_is_found() {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
    };
    write(
        "lib.rs",
        "pub mod low;
pub mod high;
pub use high::Top;
",
    );
    write(
        "low.rs",
        "use crate::{Top, low};
",
    );
    write(
        "high.rs",
        "use crate::low::X;
",
    );
    let rooms: &[&[&str]] = &[&["low"], &["high", "Top"]];
    // `lib.rs` is the root, not a room: its re-export is not a use.
    assert_eq!(
        upward_uses(dir.path(), rooms),
        vec![("low".to_owned(), "Top".to_owned())]
    );
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
