//! docs/configuration.md names every variable the configuration reads, and no other.

use std::collections::BTreeSet;

/// The `"NAME"` literals of a source file that look like environment variables.
fn names_in(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for piece in source.split('"').skip(1).step_by(2) {
        let plain = piece.len() >= 3
            && piece.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && piece.as_bytes()[0].is_ascii_uppercase();
        if plain {
            out.insert(piece.to_string());
        }
    }
    out
}

#[test]
fn the_reference_lists_every_variable_the_code_reads() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    let mut code = names_in(&read("src/config.rs"));
    // Read outside src/config.rs: the log format.
    code.insert("LOG_FORMAT".to_string());
    let doc = read("docs/configuration.md");
    // The first cell of each row of the table: one or more `NAME`s.
    let mut documented = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or("");
        for name in first.split('`').skip(1).step_by(2) {
            if names_in(&format!("\"{name}\"")).contains(name) {
                documented.insert(name.to_string());
            }
        }
    }
    let missing: Vec<_> = code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(missing.is_empty(), "read by the code but not in docs/configuration.md: {missing:?}");
    assert!(stale.is_empty(), "in docs/configuration.md but no longer read: {stale:?}");
    assert!(code.len() >= 40, "the scan found too few variables to be right: {code:?}");
}
