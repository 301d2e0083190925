//! Where the config file and the state are when nothing says: `./bridges.toml`
//! beside the operator, else a packaged install's `/etc/fhir-bridge`; the
//! state in systemd's `StateDirectory=`, or beside the config. Decisions only:
//! the callers look at the file system and the environment.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The config file in the working directory, used when it exists.
pub const LOCAL_CONFIG: &str = "bridges.toml";
/// A packaged install's config file.
pub const PACKAGED_CONFIG: &str = "/etc/fhir-bridge/bridges.toml";
/// A packaged install's state directory (the unit's `StateDirectory=fhir-bridge`).
pub const PACKAGED_STATE_DIR: &str = "/var/lib/fhir-bridge";

/// `-c` when neither it nor `FHIR_BRIDGE_CONFIG` is given: `bridges.toml`
/// when the working directory has one, else the packaged config.
pub fn default_config(local_exists: bool) -> PathBuf {
    PathBuf::from(if local_exists {
        LOCAL_CONFIG
    } else {
        PACKAGED_CONFIG
    })
}

/// Why the implicit `./bridges.toml` (no `-c`, no `FHIR_BRIDGE_CONFIG`) is not
/// taken, or `None` when it may be. A file in the working directory is the
/// operator's only if they or root own it and no other user may write it: in
/// a shared directory (`/tmp`, a colleague's checkout) another user's file
/// would choose where the bridge sends changes and which state it opens, as
/// whoever runs it (often root). `-c` names a file on purpose and is not checked.
pub fn local_config_refusal(owner: u32, me: u32, mode: u32) -> Option<String> {
    if owner != me && owner != 0 {
        return Some(format!(
            "./{LOCAL_CONFIG} belongs to another user (uid {owner}): not taken without -c; \
             name it with -c ./{LOCAL_CONFIG} if you trust it, or run elsewhere"
        ));
    }
    if mode & 0o002 != 0 {
        return Some(format!(
            "./{LOCAL_CONFIG} is writable by every user (mode {:04o}): not taken without -c; \
             chmod o-w it, or name it with -c ./{LOCAL_CONFIG}",
            mode & 0o7777
        ));
    }
    None
}

/// What to add to "cannot read config": the packaged config is root:fhir-bridge
/// 0640 (it holds secrets), so an operator who is neither root nor in the group
/// meets "Permission denied" on `fhir-bridge status` without `-c`.
pub fn unreadable_hint(config: &Path, error: std::io::ErrorKind) -> &'static str {
    if error != std::io::ErrorKind::PermissionDenied {
        return "";
    }
    if config == Path::new(PACKAGED_CONFIG) {
        " (it is readable by root and the fhir-bridge group only: run as root, e.g. with sudo, \
         or as a member of that group; or name another config with -c)"
    } else {
        " (run as a user who may read it, or name another config with -c)"
    }
}

/// `state_dir` when the config file sets none: systemd's `$STATE_DIRECTORY`
/// (its first entry) when the service runs with `StateDirectory=`; else, for a
/// config in `/etc/fhir-bridge`, the directory the package and the unit make,
/// so `status` run by hand finds the daemon's state; else `state` beside the
/// config file. Never a directory under `/etc` that `ProtectSystem=strict`
/// would make read-only. `cwd` (the working directory) resolves a relative
/// `config_dir`: `fhir-bridge status` run in `/etc/fhir-bridge` reads
/// `./bridges.toml`, the packaged config, so its state is the packaged one.
pub fn default_state_dir(
    config_dir: &Path,
    cwd: Option<&Path>,
    state_directory: Option<&OsStr>,
) -> PathBuf {
    let systemd = state_directory
        .and_then(|v| v.to_str())
        .and_then(|v| v.split(':').next())
        .map(Path::new)
        .filter(|p| p.is_absolute());
    if let Some(dir) = systemd {
        return dir.to_path_buf();
    }
    let packaged_dir = Path::new(PACKAGED_CONFIG)
        .parent()
        .unwrap_or(Path::new("/"));
    let absolute = match cwd {
        Some(cwd) if config_dir.is_relative() => cwd.join(config_dir),
        _ => config_dir.to_path_buf(),
    };
    if absolute == packaged_dir {
        return PathBuf::from(PACKAGED_STATE_DIR);
    }
    config_dir.join("state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_packaged_config_says_who_may_read_it() {
        use std::io::ErrorKind;
        let packaged = Path::new(PACKAGED_CONFIG);
        assert!(
            unreadable_hint(packaged, ErrorKind::PermissionDenied).contains("fhir-bridge group")
        );
        assert!(unreadable_hint(Path::new("x.toml"), ErrorKind::PermissionDenied).contains("-c"));
        assert_eq!(unreadable_hint(packaged, ErrorKind::NotFound), "");
    }

    #[test]
    fn a_local_config_of_another_user_or_writable_by_all_is_refused() {
        assert_eq!(local_config_refusal(1000, 1000, 0o644), None);
        assert_eq!(local_config_refusal(0, 1000, 0o640), None);
        assert_eq!(local_config_refusal(0, 0, 0o600), None);
        let other = local_config_refusal(1001, 0, 0o644).unwrap();
        assert!(other.contains("another user (uid 1001)"), "{other}");
        assert!(other.contains("-c ./bridges.toml"), "{other}");
        let open = local_config_refusal(1000, 1000, 0o100666).unwrap();
        assert!(
            open.contains("writable by every user (mode 0666)"),
            "{open}"
        );
    }

    #[test]
    fn a_local_config_wins_over_the_packaged_one() {
        assert_eq!(default_config(true), Path::new("bridges.toml"));
        assert_eq!(
            default_config(false),
            Path::new("/etc/fhir-bridge/bridges.toml")
        );
    }

    #[test]
    fn systemd_state_directory_is_the_default_state_dir() {
        let dir = default_state_dir(
            Path::new("/etc/fhir-bridge"),
            None,
            Some(OsStr::new("/var/lib/fhir-bridge")),
        );
        assert_eq!(dir, Path::new("/var/lib/fhir-bridge"));
        // Several StateDirectory= entries: the first.
        let dir = default_state_dir(
            Path::new("/opt/x"),
            None,
            Some(OsStr::new("/var/lib/a:/var/lib/b")),
        );
        assert_eq!(dir, Path::new("/var/lib/a"));
    }

    #[test]
    fn without_systemd_a_packaged_config_keeps_its_state_in_var_lib() {
        assert_eq!(
            default_state_dir(Path::new("/etc/fhir-bridge"), None, None),
            Path::new("/var/lib/fhir-bridge")
        );
    }

    #[test]
    fn elsewhere_the_state_is_beside_the_config() {
        assert_eq!(
            default_state_dir(Path::new("/opt/bridge"), None, None),
            Path::new("/opt/bridge/state")
        );
        assert_eq!(
            default_state_dir(Path::new(""), None, None),
            Path::new("state")
        );
        // A relative or empty $STATE_DIRECTORY is not systemd's: ignored.
        assert_eq!(
            default_state_dir(Path::new("/opt/bridge"), None, Some(OsStr::new("rel"))),
            Path::new("/opt/bridge/state")
        );
        assert_eq!(
            default_state_dir(Path::new("/opt/bridge"), None, Some(OsStr::new(""))),
            Path::new("/opt/bridge/state")
        );
    }

    #[test]
    fn the_packaged_config_read_from_its_own_directory_keeps_its_state_in_var_lib() {
        // `cd /etc/fhir-bridge && fhir-bridge status`: the config is `./bridges.toml`.
        // Before, its state was `./state`, under /etc: not the daemon's.
        let etc = Some(Path::new("/etc/fhir-bridge"));
        assert_eq!(
            default_state_dir(Path::new(""), etc, None),
            Path::new("/var/lib/fhir-bridge")
        );
        assert_eq!(
            default_state_dir(Path::new("fhir-bridge"), Some(Path::new("/etc")), None),
            Path::new("/var/lib/fhir-bridge")
        );
        // Elsewhere a relative config directory keeps its relative state.
        assert_eq!(
            default_state_dir(Path::new(""), Some(Path::new("/opt/bridge")), None),
            Path::new("state")
        );
    }
}
