//! The layers only point down. The order is the `layers` block of
//! docs/architecture.md (top first; modules on one line are siblings); this test
//! reads every `crate::` and `super::` path in `src/` and fails when a module uses
//! one on its own line or above it, when two folders use each other, or when a
//! module of `src/` is missing from the map.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The layer order from docs/architecture.md: module -> depth (0 = top).
fn layer_map(doc: &str) -> BTreeMap<String, usize> {
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a ```layers block");
    let mut map = BTreeMap::new();
    for (depth, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let names = line.split('#').next().unwrap_or("");
        for name in names.split_whitespace() {
            assert!(map.insert(name.to_string(), depth).is_none(), "{name} is in the layers block twice");
        }
    }
    map
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

/// The module path of a file under `src/` (`src/exports/web.rs` -> `[exports, web]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments, string and char literals (so a doc link or a
/// message naming a module is not an import).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) && !ident_byte(prev(b, i)) {
            // A raw string: r"..." or r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let end: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&end) {
                i += 1;
            }
            i += end.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') || b[i..].starts_with(b"'\\") {
            // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn prev(b: &[u8], i: usize) -> u8 {
    if i == 0 { b' ' } else { b[i - 1] }
}

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn ident_at(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let end = s.bytes().position(|c| !ident_byte(c)).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The first segment of each path in a `{...}` use group that starts at `s`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && item_start && !c.is_whitespace() {
            item_start = false;
            if let Some(id) = ident_at(&s[i..]) {
                heads.push(id.to_string());
            }
        }
    }
    heads
}

/// The top-level modules that `code` (of a file at module path `here`) refers to.
fn uses(code: &str, here: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let b = code.as_bytes();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && (ident_byte(b[i - 1]) || b[i - 1] == b'$') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if rest.starts_with('{') {
            found.extend(group_heads(rest));
        } else if let Some(id) = ident_at(rest) {
            found.insert(id.to_string());
        }
    }
    // `super::` chains that climb to the crate root (depth 0).
    for (i, _) in code.match_indices("super::") {
        if i > 0 && (ident_byte(b[i - 1]) || b[i - 1] == b':') {
            continue;
        }
        let mut rest = &code[i..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            climbs += 1;
            rest = r;
        }
        // A file's own module is `here`; `super` is its parent.
        if climbs == here.len() {
            if rest.starts_with('{') {
                found.extend(group_heads(rest));
            } else if let Some(id) = ident_at(rest) {
                found.insert(id.to_string());
            }
        }
    }
    found
}

/// Every (user, used) pair between different top-level modules of `src/`.
fn edges(src: &Path, modules: &BTreeSet<String>) -> BTreeMap<(String, String), Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for file in files {
        let here = module_path(src, &file);
        let Some(top) = here.first() else { continue };
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for used in uses(&code, &here) {
            if modules.contains(&used) && used != *top {
                let rel = file.strip_prefix(src.parent().unwrap()).unwrap().display().to_string();
                edges.entry((top.clone(), used)).or_default().push(rel);
            }
        }
    }
    edges
}

fn top_modules(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main") {
            out.insert(name);
        }
    }
    out
}

/// What is wrong with the code's imports against the map, one line each.
fn violations(root: &Path) -> Vec<String> {
    let src = root.join("src");
    let map = layer_map(&std::fs::read_to_string(root.join("docs/architecture.md")).unwrap());
    let modules = top_modules(&src);
    let mut problems = Vec::new();
    for m in &modules {
        if !map.contains_key(m) {
            problems.push(format!("src/{m} is not in the layers block of docs/architecture.md"));
        }
    }
    for m in map.keys() {
        if !modules.contains(m) {
            problems.push(format!("docs/architecture.md names {m}, which is not a module of src/"));
        }
    }
    let edges = edges(&src, &modules);
    for ((from, to), files) in &edges {
        let (Some(f), Some(t)) = (map.get(from), map.get(to)) else { continue };
        if t <= f {
            let how = if t == f { "a sibling on its own layer" } else { "a layer above it" };
            problems.push(format!("{from} uses {to}, {how} (in {})", files.join(", ")));
        }
        if from < to && edges.contains_key(&(to.clone(), from.clone())) {
            problems.push(format!("{from} and {to} use each other"));
        }
    }
    problems
}

#[test]
fn modules_only_use_the_layers_below_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let problems = violations(root);
    assert!(problems.is_empty(), "the layers of docs/architecture.md do not hold:\n  {}", problems.join("\n  "));
}

#[test]
fn the_check_sees_each_way_a_path_can_be_written() {
    let here = vec!["exports".to_string(), "web".to_string()];
    let code = code_only(
        r#"
        use crate::{auth::{OrgCtx, csrf}, error::AppError, storage};
        use super::super::cli;
        let x = crate::workers::queues();
        // crate::startup in a comment is no import
        let s = "crate::board in a string is none either";
        fn f<'a>(c: char) -> &'a str { if c == '{' { "" } else { "" } }
        "#,
    );
    let found: Vec<String> = uses(&code, &here).into_iter().collect();
    assert_eq!(found, ["auth", "cli", "error", "storage", "workers"]);
}

#[test]
fn only_storage_talks_to_s3() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("storage")))
        .filter(|f| code_only(&std::fs::read_to_string(f).unwrap()).contains("aws_sdk_s3"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "the S3 client is used outside src/storage: {offenders:?}");
}
