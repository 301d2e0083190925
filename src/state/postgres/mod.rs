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
mod targets_tests;
// A real server for tests, the end-to-end ones in `tests/` too (so not
// behind `cfg(test)`); nothing else calls it.
#[doc(hidden)]
pub mod test_server;
#[cfg(test)]
pub(crate) mod test_util;

use super::StateError;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

/// How long the server lets a session sit idle inside a transaction.
const IDLE_IN_TRANSACTION: &str = "10s";

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

impl PgSettings {
    /// The settings `[state]` gives (TLS: the system's roots plus `ca_file`'s).
    pub(crate) fn from_config(pg: &crate::config::PostgresState) -> Result<PgSettings, StateError> {
        use secrecy::ExposeSecret;
        let tls = match &pg.tls {
            None => None,
            Some(t) => {
                Some(
                    tls_config(t.ca_pem.as_deref()).map_err(|message| StateError::Open {
                        path: pg.location.clone(),
                        message,
                    })?,
                )
            }
        };
        Ok(PgSettings {
            url: pg.url.expose_secret().to_string(),
            pool_size: pg.pool_size,
            tls,
        })
    }
}

/// TLS that verifies the server's certificate and name against the
/// system's roots and `ca_pem`'s (`sslmode = "verify-full"`).
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // One unreadable system root is no reason to trust none.
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("`ca_file`: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("`ca_file`: not a CA certificate: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err("TLS: no trusted roots (the system has none, and no `ca_file`)".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    /// A pool for `settings`; no connection is made until the first call,
    /// which migrates the schema (once per process, under an advisory lock
    /// so that replicas starting together migrate once).
    pub fn connect(settings: &PgSettings) -> Result<PgStore, StateError> {
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|_| StateError::Open {
                path: "[state] url".into(),
                message: "not a PostgreSQL connection string".into(),
            })?;
        // `[state] sslmode` decides, whatever the url says: TLS required
        // (never "prefer", which falls back to clear text), or none.
        config.ssl_mode(match settings.tls {
            Some(_) => tokio_postgres::config::SslMode::Require,
            None => tokio_postgres::config::SslMode::Disable,
        });
        // A session idle inside a transaction (a replica stopped mid-write,
        // holding its lease row FOR KEY SHARE) is ended by the server, so that a
        // takeover waits for it at most this long. No transaction here waits
        // on anything but the database.
        let session = format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION}");
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {session}"),
            _ => session,
        };
        config.options(&options);
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

    /// For a reader, which never creates or upgrades the schema: whether the
    /// database holds this binary's schema (`false`: none yet, no daemon
    /// ever ran); an error when it is older (the daemon upgrades it when it
    /// starts) or newer. When it is ready, this store skips the migration.
    pub(crate) async fn schema_ready(&self) -> Result<bool, StateError> {
        let client = self.pool.get().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('fhir_bridge_schema') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(false);
        }
        let version: Option<i32> = client
            .query_opt("SELECT version FROM fhir_bridge_schema", &[])
            .await?
            .map(|r| r.get(0));
        let (version, latest) = (version.unwrap_or(0) as usize, schema::latest());
        let err = |message: String| StateError::Open {
            path: self.location.display().to_string(),
            message,
        };
        match version {
            0 => Ok(false),
            v if v > latest => Err(err(format!(
                "schema version {v} is newer than this fhir-bridge understands ({latest})"
            ))),
            v if v < latest => Err(err(format!(
                "schema version {v} is older than this fhir-bridge's ({latest}): the daemon upgrades it when it starts"
            ))),
            _ => {
                let _ = self.ready.set(());
                Ok(true)
            }
        }
    }

    /// A pooled connection to a migrated database.
    pub(crate) async fn client(&self) -> Result<Object, StateError> {
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

    /// A session left idle inside a transaction is ended by the server.
    #[tokio::test]
    async fn sessions_idle_in_a_transaction_are_ended() {
        let Some(url) = test_server::fresh_database().await else {
            return;
        };
        let s = PgStore::connect(&settings(&url)).unwrap();
        let c = s.client().await.unwrap();
        let v: String = c
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, IDLE_IN_TRANSACTION);
    }

    /// `verify-full`: TLS to a server whose certificate our CA signed for
    /// its name; refused under another CA, and to a name not in it.
    #[tokio::test]
    async fn tls_verifies_the_servers_certificate_and_its_name() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("test database CA");
        let (other_pem, _) = ca("another CA");
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let Some(port) = test_server::tls_server(&leaf.pem(), &key.serialize_pem()).await else {
            return;
        };
        let connect = |host: &str, ca: &str| {
            let store = PgStore::connect(&PgSettings {
                url: format!("host={host} port={port} user=bridge dbname=postgres"),
                pool_size: 2,
                tls: Some(tls_config(Some(ca.as_bytes())).unwrap()),
            })
            .unwrap();
            async move { store.pool.get().await.map_err(StateError::from) }
        };
        let c = connect("localhost", &ca_pem).await.unwrap();
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl);
        let e = connect("localhost", &other_pem)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("certificate"), "{e}");
        let e = connect("127.0.0.1", &ca_pem)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("certificate"), "{e}");
        assert!(
            tls_config(Some(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ))
            .is_err()
        );
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
