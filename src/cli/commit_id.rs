//! The commit id `build.rs` bakes into `--version` and the daemon's first log
//! line, checked: `FHIR_BRIDGE_GIT_COMMIT` comes from outside the repository (a
//! build from a source tarball), and `build.rs` prints it as a `cargo:` line,
//! so a newline in it would add build instructions of its own (`cargo:rustc-link-arg=...`).
//! `build.rs` includes this file; the crate compiles it only for its tests.

/// The longest id taken: a SHA-256 commit is 64 hex digits.
pub const MAX_LEN: usize = 64;

/// `raw` trimmed when it is 1 to 64 of `[0-9A-Za-z._+-]` (a hash, a tag, `1.2.3+dfsg`);
/// else why not, with the value escaped.
pub fn checked(raw: &str) -> Result<String, String> {
    let id = raw.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    if id.is_empty() || id.len() > MAX_LEN || !id.chars().all(allowed) {
        let shown: String = raw.chars().take(80).collect();
        return Err(format!(
            "FHIR_BRIDGE_GIT_COMMIT={shown:?} is not a commit id: 1 to {MAX_LEN} of [0-9A-Za-z._+-]"
        ));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_id_is_taken_trimmed() {
        assert_eq!(checked(" 0123456789ab\n").as_deref(), Ok("0123456789ab"));
        assert_eq!(checked("v0.1.0+dfsg-1").as_deref(), Ok("v0.1.0+dfsg-1"));
        assert_eq!(checked(&"a".repeat(64)).as_deref(), Ok(&*"a".repeat(64)));
    }

    #[test]
    fn a_commit_id_that_would_add_cargo_instructions_is_refused() {
        let e = checked("abc\ncargo:rustc-link-arg=-Wl,-rpath,/tmp").unwrap_err();
        assert!(e.contains("\\n"), "escaped, one line: {e}");
        assert!(!e.contains('\n'));
        assert!(checked("abc def").is_err());
        assert!(checked("abc\u{1b}[31m").is_err());
        assert!(checked(&"a".repeat(65)).is_err());
        assert!(checked("   ").is_err());
    }
}
