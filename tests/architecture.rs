//! The crate's layering, enforced: every top-level module of `src/` may use only modules in
//! layers below its own, and nothing below the handle names `TieredCache` or `Namespace`.
//!
//! Data goes down, behaviour goes up: a lower box never calls into a higher one (where it must
//! report upwards, it is handed a callback at build time). `src/lib.rs` draws the same diagram.
//! Adding a module means placing it in `LAYERS`; this test fails until it is placed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module may use modules of strictly lower layers only.
const LAYERS: &[(&str, &[&str])] = &[
    ("tooling", &["admin", "testing"]),
    ("memoized functions", &["memo"]),
    ("typed namespace", &["namespace"]),
    ("handle", &["cache", "options"]),
    ("read, write and bus paths", &["read", "write", "bus"]),
    ("engine", &["engine"]),
    ("outbox queue", &["outbox"]),
    ("namespace state", &["space"]),
    ("tiers", &["l1", "l2", "flight", "guard"]),
    ("tier support", &["breaker", "config", "wire", "exact"]),
    ("base", &["codec", "key", "metrics"]),
    ("errors", &["error"]),
];

/// Modules from this layer down must not name the handle's types.
const BELOW_HANDLE: &str = "read, write and bus paths";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for `lib.rs` and binaries.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" | "bin" => None,
        _ => Some(first.trim_end_matches(".rs").to_owned()),
    }
}

/// The code without comments (line comments and doc comments), so prose may name anything.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // Not inside a string literal holding "//" (URLs): good enough for this crate,
            // whose string literals with "//" are URLs with no `crate::` in them.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::x` a file's code names, including inside `use crate::{x, y::z}` groups.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group
                .find("};")
                .or_else(|| group.find('}'))
                .unwrap_or(group.len());
            // Top-level names of the group: at depth 0, split on commas.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && !c.is_whitespace() => {
                        found.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
        rest = &rest[i + "crate::".len()..];
    }
    found.retain(|m| !m.is_empty() && m.chars().next().unwrap().is_ascii_lowercase());
    found
}

struct Crate {
    /// Module → (file, code) of each of its files.
    files: BTreeMap<String, Vec<(PathBuf, String)>>,
}

fn read_crate() -> Crate {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let mut files: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for path in paths {
        if let Some(m) = module_of(&path) {
            let text = std::fs::read_to_string(&path).unwrap();
            files.entry(m).or_default().push((path, code(&text)));
        }
    }
    Crate { files }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let krate = read_crate();
    let unplaced: Vec<&String> = krate
        .files
        .keys()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules not placed in tests/architecture.rs LAYERS: {unplaced:?}"
    );
    let gone: Vec<&str> = LAYERS
        .iter()
        .flat_map(|(_, ms)| ms.iter().copied())
        .filter(|m| !krate.files.contains_key(*m))
        .collect();
    assert!(
        gone.is_empty(),
        "LAYERS lists modules src/ no longer has: {gone:?}"
    );
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let krate = read_crate();
    let mut wrong = Vec::new();
    for (module, files) in &krate.files {
        let Some(mine) = layer_of(module) else {
            continue;
        };
        for (path, code) in files {
            for used in crate_paths(code) {
                if used == *module {
                    continue;
                }
                // Re-exported names used through the crate root (`crate::Error`) are types,
                // not modules: only module names are checked.
                let Some(theirs) = layer_of(&used) else {
                    continue;
                };
                if theirs <= mine {
                    wrong.push(format!(
                        "{} ({}, layer {:?}) uses {used} (layer {:?})",
                        path.strip_prefix(src()).unwrap().display(),
                        module,
                        LAYERS[mine].0,
                        LAYERS[theirs].0
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn nothing_below_the_handle_names_the_handle() {
    let krate = read_crate();
    let below = LAYERS.iter().position(|(n, _)| *n == BELOW_HANDLE).unwrap();
    // `TieredCache` anywhere; `Namespace` as the handle type (`Namespace<..>`, `Namespace::..`,
    // `crate::Namespace`), not the variants `Error::Namespace` and `Scope::Namespace`.
    let names = |code: &str, name: &str| {
        code.match_indices(name).any(|(i, _)| {
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let (before, after) = (&code[..i], &code[i + name.len()..]);
            if word(before.chars().next_back()) || word(after.chars().next()) {
                return false;
            }
            name == "TieredCache"
                || after.starts_with('<')
                || after.starts_with("::")
                || before.ends_with("crate::")
                || before.ends_with("namespace::")
        })
    };
    let mut wrong = Vec::new();
    for (module, files) in &krate.files {
        if layer_of(module).is_none_or(|l| l < below) {
            continue;
        }
        for (path, code) in files {
            for name in ["TieredCache", "Namespace"] {
                if names(code, name) {
                    wrong.push(format!(
                        "{} names {name}",
                        path.strip_prefix(src()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_parser_finds_grouped_and_plain_paths() {
    let code = "use crate::{a::B, c, d::{e, f}};\nuse crate::g::H;\nlet x = crate::i::j();";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "g", "i"]);
}

#[test]
fn only_the_tiers_speak_to_their_engines() {
    let krate = read_crate();
    let mut wrong = Vec::new();
    for (module, files) in &krate.files {
        for (path, code) in files {
            for (engine, owner) in [("redis", "l2"), ("moka", "l1")] {
                let named = code.match_indices(engine).any(|(i, _)| {
                    let before = code[..i].chars().next_back();
                    let after = &code[i + engine.len()..];
                    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                        && after.starts_with("::")
                });
                if named && module != owner {
                    wrong.push(format!(
                        "{} uses {engine} (only {owner} may)",
                        path.strip_prefix(src()).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
