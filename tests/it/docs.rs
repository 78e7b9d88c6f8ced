//! The documents name the tests that prove their promises: every `module::test` they name in
//! backticks exists in `tests/it/`, so that no promise points at a test renamed or removed.

use std::path::Path;

/// The `module::name` spans of `text` (in backticks) whose module is a file of `tests/it/`.
fn test_references(text: &str, tests: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, span) in text.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let parts: Vec<&str> = span.split("::").collect();
        let [module, name] = parts.as_slice() else {
            continue;
        };
        let is_ident = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if is_ident(module) && is_ident(name) && tests.join(format!("{module}.rs")).exists() {
            found.push((module.to_string(), name.to_string()));
        }
    }
    found
}

#[test]
fn every_test_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests = root.join("tests/it");
    let mut documents = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        documents.push(entry.unwrap().path());
    }
    let (mut named, mut missing) = (0, Vec::new());
    for document in documents
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(document).unwrap();
        for (module, name) in test_references(&text, &tests) {
            named += 1;
            let source = std::fs::read_to_string(tests.join(format!("{module}.rs"))).unwrap();
            if !source.contains(&format!("fn {name}(")) {
                missing.push(format!("{}: {module}::{name}", document.display()));
            }
        }
    }
    assert!(
        named > 50,
        "only {named} tests named: the scan found nothing"
    );
    assert!(
        missing.is_empty(),
        "named but not found:\n{}",
        missing.join("\n")
    );
}
