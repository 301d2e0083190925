//! Tells the binary which commit it was built from (`--version`, the daemon's
//! first log line): `FHIR_BRIDGE_GIT_COMMIT` when set (a build from a source
//! tarball), else `git rev-parse`, else "unknown".

#[path = "src/cli/commit_id.rs"]
mod commit_id;

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// Rebuild when HEAD moves: HEAD itself, the branch it points at, packed refs.
fn watch_head() {
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]) else {
        return;
    };
    let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or_else(|| git_dir.clone());
    let mut paths = vec![
        Path::new(&git_dir).join("HEAD"),
        Path::new(&common).join("packed-refs"),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(Path::new(&common).join(branch));
    }
    // A path that does not exist would make cargo run this script every time.
    for p in paths.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cli/commit_id.rs");
    println!("cargo:rerun-if-env-changed=FHIR_BRIDGE_GIT_COMMIT");
    let commit = match std::env::var("FHIR_BRIDGE_GIT_COMMIT") {
        // Set but not a commit id: the build stops, saying why (see commit_id.rs).
        Ok(c) if !c.trim().is_empty() => commit_id::checked(&c).unwrap_or_else(|e| panic!("{e}")),
        _ => {
            watch_head();
            git(&["rev-parse", "--short=12", "HEAD"])
                .and_then(|c| commit_id::checked(&c).ok())
                .unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=FHIR_BRIDGE_GIT_COMMIT={commit}");
}
