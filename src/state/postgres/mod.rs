//! The PostgreSQL backend of the state (feature `postgres`): several
//! replicas of the daemon on one database. With `sqlite/` the only place that
//! speaks SQL; this one names tokio-postgres.
//!
//! Semantics are SQLite's (the conformance suite runs on both); what differs
//! is what a shared database must redefine (see `state/mod.rs`, "What assumes
//! a single process"): fences are lease epochs checked in the writing
//! transaction, event numbers come from a counter row locked by the enqueuing
//! transaction (`hook_seq`: gap-free, never a sequence), wake-ups cross
//! processes. Times the backend decides (lease expiry) come from the
//! database's clock, never a replica's.
//!
//! Durability: PostgreSQL's own (synchronous commit). Watermark, seen
//! versions and outbox rows of a page are written in one transaction.

mod backfill;
mod change;
mod channel;
mod commit;
mod dlq;
mod errors;
mod export;
mod fence;
mod filter;
mod gauges;
mod heartbeat;
mod inspect;
pub(crate) mod lease;
mod listen;
mod maintenance;
mod message;
mod outbox;
mod poll;
mod rename;
mod replay;
mod report;
mod roster;
mod schema;
mod seen_body;
mod snapshot;
mod summary;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
pub(crate) mod test_util;

use super::StateError;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

/// How to reach the database: what `[state]` says, parsed.
#[derive(Clone)]
pub struct PgSettings {
    /// A libpq-style connection string or `postgres://` URL (a secret: it may
    /// carry a password; never logged or shown).
    pub url: String,
    /// Most connections this process keeps open.
    pub pool_size: usize,
    /// TLS to the database; `None`: plain TCP or a unix socket.
    pub tls: Option<rustls::ClientConfig>,
}

/// The PostgreSQL backend: a pool of connections, cheap to clone. Its public
/// methods implement the role traits (`TargetStore`, `DeliveryStore`,
/// `OperatorStore`), where each is documented.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Migrated once per process, before the first statement.
    ready: Arc<tokio::sync::OnceCell<()>>,
    /// Where the state lives, without credentials (for messages and `path`).
    location: PathBuf,
    /// When this process last wrote its heartbeat (ms; 0: never).
    heartbeat_ok_ms: Arc<AtomicI64>,
    /// Each hook's wake-up within this process.
    wakers: super::wake::Wakers,
    /// This process's row in `replica` (`lease::this_replica`, random per
    /// process): what its heartbeat updates.
    replica: Arc<str>,
    /// Wake-ups from other replicas' commits (`listen.rs`).
    listener: listen::Listener,
}

impl PgStore {
    /// A pool for `settings`; no connection is made until the first call,
    /// which migrates the schema (once per process, under an advisory lock
    /// so that replicas starting together migrate once).
    pub fn connect(settings: &PgSettings) -> Result<PgStore, StateError> {
        let config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| StateError::Open {
                path: "[state] url".into(),
                message: format!("not a PostgreSQL connection string: {e}"),
            })?;
        let location = PathBuf::from(describe(&config));
        let listener = listen::Listener::new(config.clone(), settings.tls.clone());
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &settings.tls {
            Some(tls) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()),
                manager_config,
            ),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StateError::Open {
                path: location.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(PgStore {
            pool,
            ready: Default::default(),
            location,
            heartbeat_ok_ms: Default::default(),
            wakers: Default::default(),
            replica: lease::this_replica().id.as_str().into(),
            listener,
        })
    }

    /// A pooled connection to a migrated database.
    async fn client(&self) -> Result<Object, StateError> {
        let client = self.pool.get().await?;
        self.ready
            .get_or_try_init(|| async { schema::migrate(&client).await })
            .await?;
        Ok(client)
    }
}

/// `host/dbname` of a connection string: never its user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("postgres://{host}/{db}")
}

// Wake-ups: within this process by `wakers`; from other replicas' commits
// by their NOTIFY, heard by this process's listener (`listen.rs`), started
// by the first wait. Also where the state lives, and this process's last
// good heartbeat.
impl PgStore {
    pub fn notify_due(&self, hook: &str) {
        self.wakers.notify(hook);
    }

    pub async fn wait_due(&self, hook: &str, timeout: Duration) -> bool {
        self.listener.ensure(&self.wakers);
        self.wakers.wait(hook, timeout).await
    }

    pub fn path(&self) -> &std::path::Path {
        &self.location
    }

    pub fn last_heartbeat_ok_ms(&self) -> Option<i64> {
        Some(
            self.heartbeat_ok_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .filter(|ms| *ms > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> PgSettings {
        PgSettings {
            url: url.to_string(),
            pool_size: 2,
            tls: None,
        }
    }

    /// Replicas starting together migrate once, and each finds the whole schema.
    #[tokio::test]
    async fn replicas_starting_together_migrate_once() {
        let Some(url) = test_server::fresh_database().await else {
            return;
        };
        let stores: Vec<PgStore> = (0..4)
            .map(|_| PgStore::connect(&settings(&url)).unwrap())
            .collect();
        let clients = futures_util::future::join_all(stores.iter().map(|s| s.client())).await;
        for c in clients {
            let c = c.unwrap();
            let v: i32 = c
                .query_one("SELECT version FROM fhir_bridge_schema", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(v as usize, schema::latest());
        }
    }

    /// The place a store names never carries its user or password.
    #[test]
    fn the_location_has_no_credentials() {
        let s =
            PgStore::connect(&settings("postgres://alice:s3cret@db.example:5433/bridge")).unwrap();
        assert_eq!(
            s.path().display().to_string(),
            "postgres://db.example/bridge"
        );
    }
}
