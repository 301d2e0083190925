//! `<state_dir>/backfill.lock`: every running `fhir-bridge backfill` holds
//! it shared for its whole run (it writes seen versions, messages and its
//! cursor under the source's name, beside the daemon or without it), and
//! `source rename` takes it exclusively, so that a rename never moves a
//! source's state from under a backfill that would go on writing under the
//! old name. The kernel releases it when a process exits, `kill -9` too.

use super::LockError;
use std::fs::{File, TryLockError};
use std::path::Path;

pub const BACKFILL_LOCK_FILE: &str = "backfill.lock";

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct BackfillLock {
    /// `None`: a shared backend's backfill, which holds no lock (see
    /// `open.rs`: a rename there waits for unfinished backfill jobs).
    _file: Option<File>,
}

impl BackfillLock {
    /// For a backfill: shared with other backfills; `Held` while a rename
    /// runs (a moment: run the backfill again).
    pub fn share(state_dir: &Path) -> Result<BackfillLock, LockError> {
        Self::take(state_dir, true)
    }

    /// For a rename: `Held` while any backfill runs.
    pub fn exclusive(state_dir: &Path) -> Result<BackfillLock, LockError> {
        Self::take(state_dir, false)
    }

    /// A backfill's grant on a shared backend: no lock held.
    #[cfg(feature = "postgres")]
    pub(crate) fn unlocked() -> BackfillLock {
        BackfillLock { _file: None }
    }

    fn take(state_dir: &Path, shared: bool) -> Result<BackfillLock, LockError> {
        let path = state_dir.join(BACKFILL_LOCK_FILE);
        let io = |error| LockError::Io {
            path: path.display().to_string(),
            error,
        };
        super::files::create_state_dir(state_dir).map_err(io)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(&path).map_err(io)?;
        let taken = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match taken {
            Ok(()) => Ok(BackfillLock { _file: Some(file) }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held {
                pid: None,
                dir: state_dir.display().to_string(),
            }),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfills_share_and_a_rename_waits_for_them_all() {
        let tmp = tempfile::tempdir().unwrap();
        let one = BackfillLock::share(tmp.path()).unwrap();
        let two = BackfillLock::share(tmp.path()).unwrap();
        assert!(BackfillLock::exclusive(tmp.path()).is_err());
        drop(one);
        assert!(BackfillLock::exclusive(tmp.path()).is_err());
        drop(two);
        let rename = BackfillLock::exclusive(tmp.path()).unwrap();
        assert!(BackfillLock::share(tmp.path()).is_err());
        drop(rename);
        assert!(BackfillLock::share(tmp.path()).is_ok());
    }
}
