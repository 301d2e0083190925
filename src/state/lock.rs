//! One daemon per state directory: `run` holds an exclusive lock on
//! `<state_dir>/lock` for its whole life. The kernel releases it when the
//! process ends, however it ends (`kill -9` included), so it is never stale.
//! The file holds the daemon's pid, for messages only.
//!
//! On PostgreSQL the same handle holds the state's lease instead (scope
//! `state`, unit 0; see `open.rs`): renewed by a task, released on a clean
//! stop, and `lost()` once it can no longer be trusted.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another fhir-bridge{} is running on {dir}", pid_note(*.pid))]
    Held { pid: Option<u32>, dir: String },
    /// A shared backend's lease, held by another replica (no secrets: its
    /// id, host and pid, and the lease's expiry).
    #[error(
        "another fhir-bridge ({holder}) holds the state on {location}; its lease runs until {until} (UTC) unless renewed"
    )]
    Leased {
        holder: String,
        location: String,
        until: String,
    },
    /// The io error is part of the message and deliberately not a `source()`:
    /// error chains (anyhow's `{:#}`) would print it a second time.
    #[error("cannot lock {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// `<state_dir>/lock`, held until the process ends.
    File { _file: File, path: PathBuf },
    /// A shared backend's lease, kept alive by its keeper task.
    #[cfg(feature = "postgres")]
    Lease {
        keeper: super::postgres::lease::LeaseKeeper,
        location: PathBuf,
    },
}

/// What a reader can tell about the lock without taking it for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockProbe {
    /// A process holds it (its pid, if the file says).
    Held(Option<u32>),
    /// Nobody holds it: no daemon is running on this state directory.
    Free,
    /// Cannot tell (no permission to open the file, a file system without locks).
    Unknown,
}

impl StateLock {
    /// Takes the lock (creating the state directory, 0700, and the file,
    /// 0600), and writes our pid into it. A reader probing the lock holds it
    /// for an instant: a few retries over a quarter second ride that out.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |error| LockError::Io {
            path: path.display().to_string(),
            error,
        };
        super::files::create_state_dir(state_dir).map_err(io)?;
        let mut opts = std::fs::OpenOptions::new();
        // No truncation before the lock is ours: the pid may be another daemon's.
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path).map_err(io)?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        pid: read_pid(&mut file),
                        dir: state_dir.display().to_string(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())?;
            f.flush()
        };
        write(&mut file).map_err(io)?;
        Ok(StateLock {
            held: Held::File { _file: file, path },
        })
    }

    /// The lease `keeper` holds on the state at `location` (a PostgreSQL
    /// state's writer lock).
    #[cfg(feature = "postgres")]
    pub(crate) fn leased(
        keeper: super::postgres::lease::LeaseKeeper,
        location: PathBuf,
    ) -> StateLock {
        StateLock {
            held: Held::Lease { keeper, location },
        }
    }

    /// The lock file, or where the leased state lives (no credentials).
    pub fn path(&self) -> &Path {
        match &self.held {
            Held::File { path, .. } => path,
            #[cfg(feature = "postgres")]
            Held::Lease { location, .. } => location,
        }
    }

    /// The writer's fence: on SQLite valid while the lock is held, which is
    /// until the process ends; on a shared backend, the lease's epoch.
    pub fn fence(&self) -> super::Fence {
        match &self.held {
            Held::File { .. } => super::Fence::writer(),
            #[cfg(feature = "postgres")]
            Held::Lease { keeper, .. } => keeper.fence(),
        }
    }

    /// Returns once the right to write is lost: never for a file lock (the
    /// kernel keeps it until the process ends); for a lease, once it was
    /// taken over or not renewed before its trust deadline. The holder must
    /// stop writing and sending at once: another replica may take over.
    pub async fn lost(&self) {
        match &self.held {
            Held::File { .. } => std::future::pending().await,
            #[cfg(feature = "postgres")]
            Held::Lease { keeper, .. } => keeper.lost().cancelled().await,
        }
    }

    /// Gives the lock up on a clean stop: a lease is released at once (a
    /// standby takes over without waiting for its expiry).
    pub async fn release(self) {
        match self.held {
            Held::File { .. } => {}
            #[cfg(feature = "postgres")]
            Held::Lease { keeper, .. } => keeper.release().await,
        }
    }

    /// Whether a daemon holds the lock, read-only: a shared lock attempt on a
    /// read-only handle, released at once. Never creates the file.
    pub fn probe(state_dir: &Path) -> LockProbe {
        let mut file = match File::open(state_dir.join(LOCK_FILE)) {
            Ok(f) => f,
            // No lock file: no daemon of this version ever ran here.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LockProbe::Free,
            Err(_) => return LockProbe::Unknown,
        };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                LockProbe::Free
            }
            Err(TryLockError::WouldBlock) => LockProbe::Held(read_pid(&mut file)),
            Err(TryLockError::Error(_)) => LockProbe::Unknown,
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.take(64).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory every user may write is refused by the lock too,
    /// said once in the message, not again as a `source()` (anyhow's `{:#}`).
    #[cfg(unix)]
    #[test]
    fn a_state_dir_every_user_may_write_is_refused_once() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        for loose in [0o777, 0o1777, 0o703] {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(loose)).unwrap();
            let lock = StateLock::acquire(tmp.path()).unwrap_err();
            assert_eq!(
                lock.to_string().matches("writable by every user").count(),
                1
            );
            assert!(std::error::Error::source(&lock).is_none());
            assert!(!tmp.path().join("bridge.db").exists());
        }
    }

    #[test]
    fn one_holder_at_a_time_and_probes_see_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        assert_eq!(StateLock::probe(&dir), LockProbe::Free);
        let held = StateLock::acquire(&dir).unwrap();
        let me = std::process::id();
        assert_eq!(StateLock::probe(&dir), LockProbe::Held(Some(me)));
        match StateLock::acquire(&dir) {
            Err(e @ LockError::Held { pid: Some(p), .. }) => {
                assert_eq!(p, me);
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("another fhir-bridge (pid {me}) is running on")),
                    "{msg}"
                );
            }
            other => panic!("second lock: {other:?}"),
        }
        // A failed attempt does not disturb the holder's pid.
        assert_eq!(StateLock::probe(&dir), LockProbe::Held(Some(me)));
        drop(held);
        assert_eq!(StateLock::probe(&dir), LockProbe::Free);
        // Probing did not keep it: it can be taken again.
        let again = StateLock::acquire(&dir).unwrap();
        assert!(again.path().ends_with("lock"));
    }
}
