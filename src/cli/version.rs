//! What this binary is: its version and the commit it was built from
//! (`build.rs`), for `--version`, the man pages and the daemon's first log line.

/// The commit the binary was built from, or "unknown" (a build outside git).
pub const COMMIT: &str = env!("FHIR_BRIDGE_GIT_COMMIT");

/// `0.1.0 (commit 0123456789ab)`: what `fhir-bridge --version` prints after the name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FHIR_BRIDGE_GIT_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    #[test]
    fn the_long_version_names_the_version_and_the_commit() {
        assert!(super::LONG.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(super::LONG.ends_with(&format!("(commit {})", super::COMMIT)));
        assert!(!super::COMMIT.is_empty());
    }
}
