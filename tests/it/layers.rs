//! The layers of `src/`, bottom to top, and a check that no `crate::` path runs back up them:
//! a module may name its own layer and those below, never one above.

use std::path::Path;

/// Each top-level module of the library and its layer (0 is the bottom).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("settings", 0),
    ("aws", 0),
    ("db", 1),
    ("config", 2),
    ("tenant", 2),
    ("engine", 3),
    ("events", 4),
    ("telemetry", 5),
    ("action", 6),
    ("listen", 6),
    ("lambda", 7),
    ("cli", 7),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` a file names (in code, `use` lines and doc links alike).
fn named_modules(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    re.captures_iter(text).map(|c| c[1].to_string()).collect()
}

#[test]
fn no_import_runs_back_up_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if top == "lib" || top == "bin" {
            continue;
        }
        let own = layer(top).unwrap_or_else(|| panic!("src/{top} has no layer in LAYERS"));
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_modules(&text) {
            let theirs = layer(&named)
                .unwrap_or_else(|| panic!("{relative:?} names crate::{named}, which has no layer"));
            if theirs > own {
                upward.push(format!(
                    "{} (layer {own}) names crate::{named} (layer {theirs})",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports running back up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        named_modules("use crate::events::{model, Sink};"),
        ["events"]
    );
    assert!(layer("events") > layer("engine"));
}
