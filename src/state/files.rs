//! The state directory's files and their permissions: the directory is created
//! 0700, the database and its WAL and shared-memory files are kept 0600 (they
//! hold resource bodies until delivery).

use std::path::{Path, PathBuf};

/// Creates the state directory (and missing parents) with mode 0700. An
/// existing directory is left as it is (its mode may be deliberate), unless
/// every user may write it (`/tmp`, or `$STATE_DIRECTORY` or `state_dir`
/// pointed there): another user could put their own `bridge.db`, WAL or lock
/// there first, or a link in its place, for the bridge (often root) to open.
pub fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir)?.permissions().mode();
            if mode & 0o002 != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the state directory is writable by every user (mode {:04o}): another \
                         user could replace its files; use a directory only the bridge's user \
                         may write (systemd's StateDirectory=, or state_dir)",
                        mode & 0o7777
                    ),
                ));
            }
        }
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Creates `path` if missing, mode 0600 (whatever the umask can only narrow it).
pub fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map(|_| ())
}

/// The database file and its companions (`-wal`, `-shm`).
pub fn database_files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Narrows each existing database file readable or writable by anyone but
/// its owner to 0600, with a warning naming it. Returns the files changed.
#[cfg(unix)]
pub fn tighten(db: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    for f in database_files(db) {
        let meta = match std::fs::metadata(&f) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                file = %f.display(),
                was = %format!("{mode:04o}"),
                "state file was readable or writable by others; its mode is now 0600"
            );
            changed.push(f);
        }
    }
    Ok(changed)
}

#[cfg(not(unix))]
pub fn tighten(_db: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(Vec::new())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::state::Store;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// `$STATE_DIRECTORY=/tmp`, or `state_dir = "/tmp"`: refused, sticky or not.
    #[test]
    fn a_state_dir_every_user_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for loose in [0o777, 0o1777, 0o703] {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(loose)).unwrap();
            let e = create_state_dir(tmp.path()).unwrap_err();
            assert!(e.to_string().contains("writable by every user"), "{e}");
            assert!(Store::open(&tmp.path().join("bridge.db")).is_err());
            assert!(!tmp.path().join("bridge.db").exists());
        }
        for fine in [0o700, 0o750, 0o770, 0o755] {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(fine)).unwrap();
            create_state_dir(tmp.path()).unwrap();
        }
    }

    #[test]
    fn a_new_state_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/state");
        let store = Store::open(&dir.join("bridge.db")).unwrap();
        assert_eq!(mode(&dir), 0o700);
        drop(store);
    }

    /// A database created (or copied in) with loose permissions is narrowed
    /// at open, and so are leftover WAL and shared-memory files; those SQLite
    /// creates follow the database's mode.
    #[test]
    fn loose_database_files_are_tightened_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("bridge.db");
        let files = database_files(&db);
        for f in &files {
            std::fs::write(f, b"").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let changed = tighten(&db).unwrap();
        assert_eq!(changed.len(), 3);
        std::fs::remove_file(&files[1]).unwrap();
        std::fs::remove_file(&files[2]).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&db).unwrap();
        for f in &files {
            assert!(f.exists(), "{} exists while open", f.display());
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        drop(store);
    }
}
