//! Opening the configured state for a purpose: the one place that knows
//! which backend the config names and which locks each kind of process
//! holds. Every caller outside `state/` opens through `open`.
//!
//! The locks are part of the contract: on SQLite they are file locks in the
//! state directory (the writer lock: one daemon, or one exclusive command,
//! per directory; the backfill lock: renames wait for backfills). A backend
//! shared by several processes redefines them (leases), not the callers.
//!
//! On PostgreSQL (`[state] backend = "postgres"`):
//! - `ReadOnly` never creates or upgrades the schema: no schema yet is
//!   `None` (no daemon ever ran), an older or newer one an error (as
//!   SQLite's). Its store could write; the readers do not.
//! - `ReadWrite`: the store, no lease (the operator's commands beside the
//!   daemon, as on SQLite).
//! - `Exclusive` (the daemon, `poll --once`): the state's lease (scope
//!   `state`, unit 0), refused while another replica holds it unexpired,
//!   naming it and the expiry. The returned `StateLock` keeps it renewed,
//!   hands out fences of its epoch, says when it is lost (`lost()`) and
//!   gives it up on `release()` (or drop). Timings (`postgres/lease.rs`):
//!   15 s from each renewal on the database's clock, renewed every 5 s,
//!   trusted by its holder until a renewal's start + 12 s on its own
//!   monotonic clock, so it stops before anyone else can have it.
//! - `Backfill`: no lease and no lock; its fence covers its own pages only
//!   (a backfill moves no watermark and records no delivery, and a seen row
//!   never goes back to an older version), so it runs beside any replica.
//! - `SourceRename`: the state's lease (no daemon runs), then refused while
//!   any backfill job has not reached its end: a backfill holds no lock
//!   here, so an unfinished job stands for one that may be running. One
//!   interrupted for good is resumed to its end (`fhir-bridge backfill`
//!   again) before the rename. A backfill started after that check, during
//!   the rename's one transaction, is not caught: start none meanwhile.

use super::{BackfillLock, LockError, LockProbe, StateError, StateLock, Store};
use crate::config::{Config, StateBackend};
use std::future::Future;

/// Why a process opens the state: decides the mode and the locks taken.
/// Each purpose is a type so that each opening returns what it holds.
pub trait Access {
    /// The store and the locks held with it (dropping a lock releases it).
    type Opened;
    type Error;
    fn open(
        self,
        config: &Config,
    ) -> impl Future<Output = Result<Self::Opened, Self::Error>> + Send;
}

/// Opens the configured state for `access`.
pub async fn open<A: Access>(config: &Config, access: A) -> Result<A::Opened, A::Error> {
    access.open(config).await
}

/// Where the configured state lives, for messages and `status`: the SQLite
/// file, or `postgres://host/dbname` (never the url's user or password).
pub fn location(config: &Config) -> String {
    match &config.state {
        StateBackend::Sqlite => config.db_path().display().to_string(),
        #[cfg(feature = "postgres")]
        StateBackend::Postgres(pg) => pg.location.clone(),
    }
}

/// Whether a writer (a daemon, `poll --once`) holds the configured state,
/// without taking anything: SQLite's lock probe; on PostgreSQL whether the
/// state's lease is held unexpired (by the database's clock), with its
/// holder's pid. `store`: the state opened read-only (`None`: none yet).
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
pub async fn probe_writer(config: &Config, store: Option<&Store>) -> LockProbe {
    match &config.state {
        StateBackend::Sqlite => StateLock::probe(&config.state_dir),
        #[cfg(feature = "postgres")]
        StateBackend::Postgres(_) => match store.and_then(|s| s.as_postgres()) {
            Some(pg) => pg.probe_lease(postgres::SCOPE, 0).await,
            None => LockProbe::Free,
        },
    }
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
    async fn open(self, config: &Config) -> Result<Option<Store>, StateError> {
        match &config.state {
            StateBackend::Sqlite => Store::open_read_only(&config.db_path()),
            #[cfg(feature = "postgres")]
            StateBackend::Postgres(pg) => postgres::read_only(pg).await,
        }
    }
}

impl Access for ReadWrite {
    type Opened = Store;
    type Error = StateError;
    async fn open(self, config: &Config) -> Result<Store, StateError> {
        match &config.state {
            StateBackend::Sqlite => Store::open(&config.db_path()),
            #[cfg(feature = "postgres")]
            StateBackend::Postgres(pg) => postgres::store(pg),
        }
    }
}

impl Access for Exclusive {
    type Opened = (Store, StateLock);
    type Error = OpenError;
    async fn open(self, config: &Config) -> Result<(Store, StateLock), OpenError> {
        match &config.state {
            StateBackend::Sqlite => {
                let lock = StateLock::acquire(&config.state_dir).map_err(OpenError::Writer)?;
                Ok((Store::open(&config.db_path())?, lock))
            }
            #[cfg(feature = "postgres")]
            StateBackend::Postgres(pg) => {
                let store = postgres::store(pg)?;
                let lock = postgres::lease(&store).await?;
                Ok((store, lock))
            }
        }
    }
}

impl Access for SourceRename {
    type Opened = (Store, StateLock, BackfillLock);
    type Error = OpenError;
    async fn open(self, config: &Config) -> Result<Self::Opened, OpenError> {
        match &config.state {
            StateBackend::Sqlite => {
                let lock = StateLock::acquire(&config.state_dir).map_err(OpenError::Writer)?;
                let backfills =
                    BackfillLock::exclusive(&config.state_dir).map_err(OpenError::Backfills)?;
                Ok((Store::open(&config.db_path())?, lock, backfills))
            }
            #[cfg(feature = "postgres")]
            StateBackend::Postgres(pg) => {
                let store = postgres::store(pg)?;
                let lock = postgres::lease(&store).await?;
                let unfinished = match store.as_postgres() {
                    Some(pg) => pg.backfills_unfinished().await?,
                    None => false,
                };
                if unfinished {
                    lock.release().await;
                    return Err(OpenError::Backfills(LockError::Held {
                        pid: None,
                        dir: store.path().display().to_string(),
                    }));
                }
                Ok((store, lock, BackfillLock::unlocked()))
            }
        }
    }
}

impl Access for Backfill {
    type Opened = (Store, BackfillLock);
    type Error = OpenError;
    async fn open(self, config: &Config) -> Result<(Store, BackfillLock), OpenError> {
        match &config.state {
            StateBackend::Sqlite => {
                let backfills =
                    BackfillLock::share(&config.state_dir).map_err(OpenError::Backfills)?;
                Ok((Store::open(&config.db_path())?, backfills))
            }
            #[cfg(feature = "postgres")]
            StateBackend::Postgres(pg) => Ok((postgres::store(pg)?, BackfillLock::unlocked())),
        }
    }
}

/// The PostgreSQL side of each purpose (see the module doc).
#[cfg(feature = "postgres")]
mod postgres {
    use super::super::postgres::lease::{LeaseKeeper, TIMINGS};
    use super::super::postgres::{PgSettings, PgStore};
    use super::*;
    use crate::config::PostgresState;

    /// The state's lease: one writer that polls, whichever replica.
    pub(super) const SCOPE: &str = "state";

    pub(super) fn store(pg: &PostgresState) -> Result<Store, StateError> {
        Store::postgres(&PgSettings::from_config(pg)?)
    }

    pub(super) async fn read_only(pg: &PostgresState) -> Result<Option<Store>, StateError> {
        let settings = PgSettings::from_config(pg)?;
        let pg = PgStore::connect(&settings)?;
        // Ready: the store skips the migration (a reader never makes one).
        match pg.schema_ready().await? {
            true => Ok(Some(Store::from_postgres(pg))),
            false => Ok(None),
        }
    }

    pub(super) async fn lease(store: &Store) -> Result<StateLock, OpenError> {
        let pg = store.as_postgres().ok_or_else(|| StateError::Open {
            path: store.path().display().to_string(),
            message: "not a PostgreSQL state".into(),
        })?;
        match LeaseKeeper::acquire(pg, SCOPE, 0, TIMINGS).await? {
            Ok(keeper) => Ok(StateLock::leased(keeper, pg.path().to_path_buf())),
            Err(holder) => Err(OpenError::Writer(LockError::Leased {
                holder: holder.to_string(),
                location: pg.path().display().to_string(),
                until: holder.until,
            })),
        }
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
    #[tokio::test]
    async fn each_purpose_takes_its_locks() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir);
        assert!(open(&config, ReadOnly).await.unwrap().is_none());

        let (_store, writer) = open(&config, Exclusive).await.unwrap();
        assert!(open(&config, ReadOnly).await.unwrap().is_some());
        let _beside = open(&config, ReadWrite).await.unwrap();
        assert!(matches!(
            open(&config, Exclusive).await,
            Err(OpenError::Writer(LockError::Held { .. }))
        ));
        let backfill = open(&config, Backfill).await.unwrap();
        let second = open(&config, Backfill).await.unwrap();
        assert!(matches!(
            open(&config, SourceRename).await,
            Err(OpenError::Writer(LockError::Held { .. }))
        ));
        drop(writer);
        assert!(matches!(
            open(&config, SourceRename).await,
            Err(OpenError::Backfills(LockError::Held { .. }))
        ));
        drop((backfill, second));
        let _rename = open(&config, SourceRename).await.unwrap();
        assert!(matches!(
            open(&config, Backfill).await,
            Err(OpenError::Backfills(LockError::Held { .. }))
        ));
    }

    /// On PostgreSQL: a reader finds no state before a writer made one and
    /// never makes it; the exclusive writer holds the state's lease (another
    /// is refused, naming the holder, never the url); a rename waits for the
    /// lease and for unfinished backfills; a backfill holds nothing.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn on_postgres_the_writer_holds_the_states_lease() {
        let Some(url) = crate::state::postgres::test_server::fresh_database().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{CONFIG}\n[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
        let config = Config::from_str(&text, &dir.path().join("bridges.toml")).unwrap();
        assert!(open(&config, ReadOnly).await.unwrap().is_none());
        assert!(
            open(&config, ReadOnly).await.unwrap().is_none(),
            "it made none"
        );

        let (store, writer) = open(&config, Exclusive).await.unwrap();
        assert!(writer.fence().epoch() >= 1);
        assert!(open(&config, ReadOnly).await.unwrap().is_some());
        let _beside = open(&config, ReadWrite).await.unwrap();
        match open(&config, Exclusive).await {
            Err(e @ OpenError::Writer(LockError::Leased { .. })) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
                assert!(!msg.contains("user=bridge"), "{msg}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a second writer"),
        }
        let (_backfill, _) = open(&config, Backfill).await.unwrap();
        assert!(matches!(
            open(&config, SourceRename).await,
            Err(OpenError::Writer(LockError::Leased { .. }))
        ));
        // A clean stop gives the lease up at once.
        writer.release().await;
        let (_s, rename, _) = open(&config, SourceRename).await.unwrap();
        rename.release().await;
        store
            .start_backfill("ehr", "Observation", "2026-01-01", "2026-02-01")
            .await
            .unwrap();
        assert!(matches!(
            open(&config, SourceRename).await,
            Err(OpenError::Backfills(LockError::Held { .. }))
        ));
        store.finish_backfill("ehr", "Observation").await.unwrap();
        let (_s, rename, _) = open(&config, SourceRename).await.unwrap();
        rename.release().await;

        // A schema newer than this binary is refused to a reader.
        let pg = store.as_postgres().unwrap();
        let c = pg.client().await.unwrap();
        c.execute("UPDATE fhir_bridge_schema SET version = 99", &[])
            .await
            .unwrap();
        let e = open(&config, ReadOnly).await.err().unwrap().to_string();
        assert!(e.contains("schema version 99 is newer"), "{e}");
    }
}
