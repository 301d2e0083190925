//! The house's one-way rule, checked on every test run: a module imports
//! only modules of a lower layer (never one of its own layer, never one
//! above). Production code only: test modules (`*tests.rs`, what follows a
//! file's `#[cfg(test)]`) may reach anywhere. A new top-level module must
//! take its place in `LAYERS`, which is the README's "Architecture" map.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// From the bottom up: shared vocabulary; config; the state; the pipeline
/// (detect -> route -> deliver); the listeners and the daemon; the CLI.
const LAYERS: &[&[&str]] = &[
    &[
        "fhir",
        "signing",
        "filter",
        "logsafe",
        "progress",
        "retry_action",
    ],
    &["http", "telemetry", "sandbox"],
    &["config"],
    &["state", "auth"],
    &["diff", "payload", "housekeeping"],
    &["route", "delivery"],
    &["source"],
    &["admin"],
    &["daemon"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a file's production code names as `crate::<module>`: items
/// under `#[cfg(test)]` are passed over (to their `;` or closing brace).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut skipping = false;
    let mut depth = 0i64;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        if line.starts_with("#[cfg(test)]") {
            skipping = true;
            continue;
        }
        if skipping {
            if code.trim_start().starts_with("#[") {
                continue;
            }
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if depth <= 0 && (code.contains('}') || code.trim_end().ends_with(';')) {
                skipping = false;
                depth = 0;
            }
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn test_items_are_passed_over() {
    let text = "use crate::a::X;\n#[cfg(test)]\n#[path = \"t.rs\"]\nmod tests;\nuse crate::b::Y;\n\
                #[cfg(test)]\nimpl Z {\n    fn f() {\n        crate::c::f();\n    }\n}\nfn g() { crate::d::g() }\n\
                #[cfg(test)]\nmod t {\n    use crate::e::E;\n}\n";
    let names: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(names, ["a", "b", "d"]);
}

#[test]
fn imports_run_one_way_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.iter().next().unwrap().to_string_lossy();
        let own = first.trim_end_matches(".rs");
        let name = file.file_name().unwrap().to_string_lossy();
        if own == "lib"
            || own == "main"
            || own == "architecture_tests"
            || name.ends_with("tests.rs")
        {
            continue;
        }
        let Some(own_layer) = layer(own) else {
            wrong.push(format!("src/{own} has no place in LAYERS"));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for module in imports(&text) {
            if module == own {
                continue;
            }
            match layer(&module) {
                Some(l) if l < own_layer => {}
                Some(_) => wrong.push(format!(
                    "{} imports crate::{module}, which is not below {own}",
                    rel.display()
                )),
                None => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
