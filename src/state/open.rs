//! Opening the configured state for a purpose: the one place that knows
//! which backend the config names and which locks each kind of process
//! holds. Every caller outside `state/` opens through `open`.
//!
//! The locks are part of the contract: on SQLite they are file locks in the
//! state directory (the writer lock: one daemon, or one exclusive command,
//! per directory; the backfill lock: renames wait for backfills). A backend
//! shared by several processes redefines them (leases), not the callers.

use super::{BackfillLock, LockError, StateError, StateLock, Store};
use crate::config::Config;

/// Why a process opens the state: decides the mode and the locks taken.
/// Each purpose is a type so that each opening returns what it holds.
pub trait Access {
    /// The store and the locks held with it (dropping a lock releases it).
    type Opened;
    type Error;
    fn open(self, config: &Config) -> Result<Self::Opened, Self::Error>;
}

/// Opens the configured state for `access`.
pub fn open<A: Access>(config: &Config, access: A) -> Result<A::Opened, A::Error> {
    access.open(config)
}

/// Reading only, safe beside a running daemon (status, `dlq list`/`show`,
/// replay's plan, the metrics' gauges, a dry run). `None` before the daemon
/// has created the state.
pub struct ReadOnly;

/// Writing beside a possible daemon, no lock (dlq redrive/purge/move,
/// replay's requeue, `hook enable`).
pub struct ReadWrite;

/// The only writer that polls: the writer lock, then the state read-write
/// (the daemon, `poll --once`). Refused while another holds the lock.
pub struct Exclusive;

/// `source rename`: the writer lock, then the backfill lock exclusively (no
/// backfill goes on writing under the old name), then the state read-write.
pub struct SourceRename;

/// `backfill`: the backfill lock shared (a rename waits for every backfill),
/// then the state read-write, beside a possible daemon.
pub struct Backfill;

/// Why a locking purpose could not open the state, by the lock that refused.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The writer lock (another daemon or exclusive command holds it).
    #[error(transparent)]
    Writer(LockError),
    /// The backfill lock (a backfill runs, or a rename does).
    #[error(transparent)]
    Backfills(LockError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Access for ReadOnly {
    type Opened = Option<Store>;
    type Error = StateError;
    fn open(self, config: &Config) -> Result<Option<Store>, StateError> {
        Store::open_read_only(&config.db_path())
    }
}

impl Access for ReadWrite {
    type Opened = Store;
    type Error = StateError;
    fn open(self, config: &Config) -> Result<Store, StateError> {
        Store::open(&config.db_path())
    }
}

impl Access for Exclusive {
    type Opened = (Store, StateLock);
    type Error = OpenError;
    fn open(self, config: &Config) -> Result<(Store, StateLock), OpenError> {
        let lock = StateLock::acquire(&config.state_dir).map_err(OpenError::Writer)?;
        Ok((Store::open(&config.db_path())?, lock))
    }
}

impl Access for SourceRename {
    type Opened = (Store, StateLock, BackfillLock);
    type Error = OpenError;
    fn open(self, config: &Config) -> Result<Self::Opened, OpenError> {
        let lock = StateLock::acquire(&config.state_dir).map_err(OpenError::Writer)?;
        let backfills = BackfillLock::exclusive(&config.state_dir).map_err(OpenError::Backfills)?;
        Ok((Store::open(&config.db_path())?, lock, backfills))
    }
}

impl Access for Backfill {
    type Opened = (Store, BackfillLock);
    type Error = OpenError;
    fn open(self, config: &Config) -> Result<(Store, BackfillLock), OpenError> {
        let backfills = BackfillLock::share(&config.state_dir).map_err(OpenError::Backfills)?;
        Ok((Store::open(&config.db_path())?, backfills))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
state_dir = "state"

[[source]]
name = "ehr"
base_url = "http://127.0.0.1:9/fhir"
resources = ["Observation"]

[[hook]]
name = "h"
url = "http://127.0.0.1:9/h"
"#;

    fn config(dir: &tempfile::TempDir) -> Config {
        Config::from_str(CONFIG, &dir.path().join("bridges.toml")).unwrap()
    }

    /// Each purpose holds the locks it names: readers none (and no state
    /// before the daemon made one), the exclusive writer the writer lock, a
    /// rename the backfill lock too, a backfill the backfill lock shared.
    #[test]
    fn each_purpose_takes_its_locks() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir);
        assert!(open(&config, ReadOnly).unwrap().is_none());

        let (_store, writer) = open(&config, Exclusive).unwrap();
        assert!(open(&config, ReadOnly).unwrap().is_some());
        let _beside = open(&config, ReadWrite).unwrap();
        assert!(matches!(
            open(&config, Exclusive),
            Err(OpenError::Writer(LockError::Held { .. }))
        ));
        let backfill = open(&config, Backfill).unwrap();
        let second = open(&config, Backfill).unwrap();
        assert!(matches!(
            open(&config, SourceRename),
            Err(OpenError::Writer(LockError::Held { .. }))
        ));
        drop(writer);
        assert!(matches!(
            open(&config, SourceRename),
            Err(OpenError::Backfills(LockError::Held { .. }))
        ));
        drop((backfill, second));
        let _rename = open(&config, SourceRename).unwrap();
        assert!(matches!(
            open(&config, Backfill),
            Err(OpenError::Backfills(LockError::Held { .. }))
        ));
    }
}
