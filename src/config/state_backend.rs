//! `[state]`: where the state lives. `backend = "sqlite"` (the default: one
//! file under `state_dir`, one daemon) or `"postgres"` (several replicas on
//! one database; a build with the feature `postgres`), with its `url` (a
//! secret), `sslmode`, `ca_file` and `pool_size`.
//!
//! `sslmode` offers `verify-full` (the default off this machine) and
//! `disable` (the default, and only allowed, on a unix socket or a loopback
//! host). Not `require`: it encrypts but verifies nothing, so anyone on the
//! path can stand in for the database and read every resource and the
//! password; a private CA goes in `ca_file` instead.

use super::ConfigError;
use super::ctx::Ctx;
use super::raw::RawState;
use toml::Spanned;

/// Most connections one replica may keep: far above what its pollers and
/// hook workers use at once, far below a server's `max_connections`.
pub const MAX_POOL_SIZE: usize = 64;
#[cfg(feature = "postgres")]
const DEFAULT_POOL_SIZE: usize = 8;
/// The writer keeps one connection for its lease's renewals (a pool busy
/// with long statements must not delay them): at least one more works.
#[cfg(feature = "postgres")]
const MIN_POOL_SIZE: usize = 2;

/// Which backend holds the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateBackend {
    /// `<state_dir>/bridge.db`.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by the replicas.
    #[cfg(feature = "postgres")]
    Postgres(PostgresState),
}

/// `[state]` for `backend = "postgres"`, checked.
#[cfg(feature = "postgres")]
#[derive(Clone)]
pub struct PostgresState {
    /// The connection string (a secret: it may carry a password). Never
    /// logged; messages name [`PostgresState::location`].
    pub url: std::sync::Arc<secrecy::SecretString>,
    /// `postgres://host/dbname`: where, without user or password.
    pub location: String,
    /// TLS with the system's roots plus these (PEM, from `ca_file`), the
    /// server's name verified; `None`: no TLS (a unix socket or loopback).
    pub tls: Option<PgTls>,
    pub pool_size: usize,
}

/// `sslmode = "verify-full"`: the extra roots of `ca_file`, if any.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub ca_pem: Option<Vec<u8>>,
}

#[cfg(feature = "postgres")]
impl std::fmt::Debug for PostgresState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresState")
            .field("url", &"[redacted]")
            .field("location", &self.location)
            .field("tls", &self.tls.is_some())
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

#[cfg(feature = "postgres")]
impl PartialEq for PostgresState {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.url.expose_secret() == other.url.expose_secret()
            && self.tls == other.tls
            && self.pool_size == other.pool_size
    }
}

#[cfg(feature = "postgres")]
impl Eq for PostgresState {}

/// `[state]` checked; absent: SQLite.
pub(super) fn validate(
    ctx: &Ctx,
    raw: Option<&Spanned<RawState>>,
) -> Result<StateBackend, ConfigError> {
    let Some(raw) = raw else {
        return Ok(StateBackend::Sqlite);
    };
    let span = raw.span();
    let raw = raw.get_ref();
    let backend = raw
        .backend
        .as_ref()
        .map(|b| (b.get_ref().as_str(), b.span()));
    match backend {
        None | Some(("sqlite", _)) => {
            let given = [
                ("url", raw.url.as_ref().map(|u| u.span())),
                ("sslmode", raw.sslmode.as_ref().map(|u| u.span())),
                ("ca_file", raw.ca_file.as_ref().map(|u| u.span())),
                ("pool_size", raw.pool_size.as_ref().map(|u| u.span())),
            ];
            if let Some((key, Some(at))) = given.into_iter().find(|(_, s)| s.is_some()) {
                return Err(ctx.err(
                    at,
                    format!(
                        "[state]: `{key}` is for `backend = \"postgres\"`; the SQLite state lives in `state_dir`"
                    ),
                ));
            }
            Ok(StateBackend::Sqlite)
        }
        Some(("postgres", at)) => postgres(ctx, raw, span, at),
        Some((other, at)) => Err(ctx.err(
            at,
            format!("[state]: `backend` = \"{other}\": expected \"sqlite\" or \"postgres\""),
        )),
    }
}

#[cfg(not(feature = "postgres"))]
fn postgres(
    ctx: &Ctx,
    _raw: &RawState,
    _span: std::ops::Range<usize>,
    at: std::ops::Range<usize>,
) -> Result<StateBackend, ConfigError> {
    Err(ctx.err(
        at,
        "[state]: `backend = \"postgres\"` needs a fhir-bridge built with the feature `postgres` (cargo build --release --features postgres); this one has SQLite only",
    ))
}

#[cfg(feature = "postgres")]
fn postgres(
    ctx: &Ctx,
    raw: &RawState,
    span: std::ops::Range<usize>,
    _at: std::ops::Range<usize>,
) -> Result<StateBackend, ConfigError> {
    use secrecy::ExposeSecret;
    use tokio_postgres::config::Host;
    let Some(url_key) = &raw.url else {
        return Err(ctx.err(
            span,
            "[state]: `backend = \"postgres\"` needs `url` (e.g. { env = \"FHIR_BRIDGE_STATE_URL\" })",
        ));
    };
    let url = url_key
        .get_ref()
        .resolve(ctx.config_dir())
        .map_err(|e| ctx.err(url_key.span(), format!("[state]: `url`: {e}")))?;
    // Never the parser's message: it may quote a piece of the string.
    let parsed: tokio_postgres::Config = url.expose_secret().parse().map_err(|_| {
        ctx.err(
            url_key.span(),
            "[state]: `url` is not a PostgreSQL connection string (postgres://user@host:5432/dbname, or host=... dbname=...)",
        )
    })?;
    let hosts = parsed.get_hosts();
    let unix = hosts.iter().any(|h| matches!(h, Host::Unix(_)));
    let local = hosts.iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => is_loopback(name),
    }) && parsed.get_hostaddrs().iter().all(|a| a.is_loopback());
    let verify = match raw
        .sslmode
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None => !local,
        Some(("verify-full", at)) if unix => {
            return Err(ctx.err(
                at,
                "[state]: `sslmode = \"verify-full\"` with a unix socket: a socket carries no TLS (it never leaves this machine); use `sslmode = \"disable\"`",
            ));
        }
        Some(("verify-full", _)) => true,
        Some(("disable", _)) if local => false,
        Some(("disable", at)) => {
            return Err(ctx.err(
                at,
                "[state]: `sslmode = \"disable\"` sends the password and every resource in clear text to another machine; only a unix socket or a loopback host may go without TLS",
            ));
        }
        Some(("require", at)) => {
            return Err(ctx.err(
                at,
                "[state]: `sslmode = \"require\"` is not offered: it encrypts but accepts any certificate, so anyone on the path can pose as the database; use \"verify-full\" (the default), with `ca_file` for a private CA",
            ));
        }
        Some((other, at)) => {
            return Err(ctx.err(
                at,
                format!(
                    "[state]: `sslmode` = \"{other}\": expected \"verify-full\" or \"disable\""
                ),
            ));
        }
    };
    let ca_pem = match &raw.ca_file {
        None => None,
        Some(_) if !verify => {
            let at = raw.ca_file.as_ref().map(|f| f.span()).unwrap_or(span);
            return Err(ctx.err(at, "[state]: `ca_file` needs `sslmode = \"verify-full\"`"));
        }
        Some(file) => {
            let path = ctx.config_dir().join(file.get_ref());
            let err = |m: String| ctx.err(file.span(), format!("[state]: `ca_file`: {m}"));
            let bytes = std::fs::read(&path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            super::fingerprint::record(&bytes);
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("{} is not PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(err(format!("{} holds no PEM certificate", path.display())));
            }
            Some(bytes)
        }
    };
    let pool_size = match &raw.pool_size {
        None => DEFAULT_POOL_SIZE,
        Some(n) if (MIN_POOL_SIZE as i64..=MAX_POOL_SIZE as i64).contains(n.get_ref()) => {
            *n.get_ref() as usize
        }
        Some(n) => {
            return Err(ctx.err(
                n.span(),
                format!(
                    "[state]: `pool_size` must be between {MIN_POOL_SIZE} and {MAX_POOL_SIZE} (one connection is kept for the lease's renewals)"
                ),
            ));
        }
    };
    Ok(StateBackend::Postgres(PostgresState {
        location: location(&parsed),
        url: std::sync::Arc::new(url),
        tls: verify.then_some(PgTls { ca_pem }),
        pool_size,
    }))
}

#[cfg(feature = "postgres")]
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `postgres://host/dbname` of a connection string: never its user or password.
#[cfg(feature = "postgres")]
pub fn location(config: &tokio_postgres::Config) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(state: &str) -> Result<Config, ConfigError> {
        Config::from_str(&format!("state_dir = \"s\"\n{state}"), Path::new("b.toml"))
    }

    fn error(state: &str) -> String {
        load(state).unwrap_err().to_string()
    }

    #[test]
    fn without_a_state_table_or_with_sqlite_nothing_changes() {
        assert_eq!(load("").unwrap().state, StateBackend::Sqlite);
        let c = load("[state]\nbackend = \"sqlite\"\n").unwrap();
        assert_eq!(c.state, StateBackend::Sqlite);
        assert_eq!(
            error("[state]\nbackend = \"sqlite\"\nurl = \"postgres://h/db\"\n"),
            "b.toml:4: [state]: `url` is for `backend = \"postgres\"`; the SQLite state lives in `state_dir`"
        );
        assert_eq!(
            error("[state]\npool_size = 3\n"),
            "b.toml:3: [state]: `pool_size` is for `backend = \"postgres\"`; the SQLite state lives in `state_dir`"
        );
        assert!(
            error("[state]\nbackend = \"mysql\"\n").contains("expected \"sqlite\" or \"postgres\"")
        );
        assert!(error("[state]\nnope = 1\n").contains("unknown field `nope`"));
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn a_build_without_the_feature_names_it() {
        let e = error("[state]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\n");
        assert!(e.starts_with("b.toml:3: "), "{e}");
        assert!(e.contains("the feature `postgres`"), "{e}");
    }

    #[cfg(feature = "postgres")]
    mod postgres {
        use super::*;

        fn pg(state: &str) -> PostgresState {
            match load(&format!("[state]\nbackend = \"postgres\"\n{state}"))
                .unwrap()
                .state
            {
                StateBackend::Postgres(p) => p,
                other => panic!("{other:?}"),
            }
        }

        fn pg_error(state: &str) -> String {
            error(&format!("[state]\nbackend = \"postgres\"\n{state}"))
        }

        #[test]
        fn tls_is_on_off_this_machine_and_off_on_a_socket_or_loopback() {
            let remote = pg("url = \"postgres://bridge:s3cret@db.example/bridge\"\n");
            assert_eq!(remote.tls, Some(PgTls { ca_pem: None }));
            assert_eq!(remote.location, "postgres://db.example/bridge");
            assert_eq!(remote.pool_size, DEFAULT_POOL_SIZE);
            assert!(!format!("{remote:?}").contains("s3cret"));
            assert_eq!(pg("url = \"host=/run/postgresql dbname=b\"\n").tls, None);
            assert_eq!(pg("url = \"postgres://127.0.0.1/b\"\n").tls, None);
            assert_eq!(pg("url = \"postgres://[::1]/b\"\n").tls, None);
            let local_tls = pg("url = \"postgres://localhost/b\"\nsslmode = \"verify-full\"\n");
            assert!(local_tls.tls.is_some());
            assert_eq!(
                pg("url = \"postgres://db.example/b\"\npool_size = 20\n").pool_size,
                20
            );
        }

        #[test]
        fn what_is_refused_names_the_key_and_never_the_url() {
            assert_eq!(
                pg_error(""),
                "b.toml:2: [state]: `backend = \"postgres\"` needs `url` (e.g. { env = \"FHIR_BRIDGE_STATE_URL\" })"
            );
            let e = pg_error("url = \"postgres://u:s3cret@db.example/b\"\nsslmode = \"disable\"\n");
            assert!(e.starts_with("b.toml:5: "), "{e}");
            assert!(e.contains("clear text") && !e.contains("s3cret"), "{e}");
            let e = pg_error("url = \"postgres://u:s3cret@db.example/b\"\nsslmode = \"require\"\n");
            assert!(e.contains("not offered") && !e.contains("s3cret"), "{e}");
            let e = pg_error("url = \"host=/run/postgresql\"\nsslmode = \"verify-full\"\n");
            assert!(e.contains("unix socket"), "{e}");
            let e = pg_error("url = \"postgres://u:s3cret@db.example:notaport/b\"\n");
            assert!(e.starts_with("b.toml:4: [state]: `url` is not"), "{e}");
            assert!(!e.contains("s3cret") && !e.contains("notaport"), "{e}");
            let e = pg_error("url = \"postgres://db.example/b\"\npool_size = 0\n");
            assert!(e.contains("between 2 and 64"), "{e}");
            let e = pg_error("url = \"postgres://db.example/b\"\npool_size = 1\n");
            assert!(e.contains("between 2 and 64"), "{e}");
            let e = pg_error("url = \"postgres://db.example/b\"\npool_size = 1000\n");
            assert!(e.contains("between 2 and 64"), "{e}");
            let e = pg_error("url = \"postgres://127.0.0.1/b\"\nca_file = \"ca.pem\"\n");
            assert!(e.contains("needs `sslmode = \"verify-full\"`"), "{e}");
            let e = pg_error("url = { env = \"FHIR_BRIDGE_TEST_NO_SUCH_STATE_URL\" }\n");
            assert!(
                e.contains("`FHIR_BRIDGE_TEST_NO_SUCH_STATE_URL` is not set"),
                "{e}"
            );
        }

        /// A reload cannot move the state: another url (or TLS, or pool)
        /// needs a restart.
        #[test]
        fn a_changed_state_table_needs_a_restart() {
            let at = |url: &str| {
                load(&format!(
                    "[state]\nbackend = \"postgres\"\nurl = \"{url}\"\n"
                ))
                .unwrap()
            };
            let (a, b) = (at("postgres://db.example/a"), at("postgres://db.example/b"));
            let diff = crate::config::ConfigDiff::between(&a, &b);
            assert_eq!(diff.err(), Some(crate::config::NeedsRestart::State));
            assert!(crate::config::ConfigDiff::between(&a, &a.clone()).is_ok());
        }

        /// A url written in a file others can read is a warning (it may
        /// carry a password), as every literal secret.
        #[test]
        fn a_literal_url_in_a_readable_file_is_warned_of() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.toml");
            let text = "[state]\nbackend = \"postgres\"\nurl = \"postgres://u:pw@db.example/b\"\n";
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let c = Config::from_str(text, &path).unwrap();
            let w = c.warnings.iter().find(|w| w.contains("[state]")).unwrap();
            assert!(
                w.contains("`url` is written in this file") && !w.contains("pw@"),
                "{w}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let c = Config::from_str(text, &path).unwrap();
            assert!(!c.warnings.iter().any(|w| w.contains("[state]")));
        }

        #[test]
        fn a_ca_file_and_a_url_from_a_file() {
            let dir = tempfile::tempdir().unwrap();
            let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
            std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
            std::fs::write(dir.path().join("url"), "postgres://u:pw@db.example/b\n").unwrap();
            std::fs::write(dir.path().join("bad.pem"), "nothing").unwrap();
            let path = dir.path().join("b.toml");
            let text = |ca: &str| {
                format!(
                    "[state]\nbackend = \"postgres\"\nurl = {{ file = \"url\" }}\nca_file = \"{ca}\"\n"
                )
            };
            let c = Config::from_str(&text("ca.pem"), &path).unwrap();
            let StateBackend::Postgres(p) = c.state else {
                panic!()
            };
            assert_eq!(p.tls.unwrap().ca_pem.as_deref(), Some(ca.as_bytes()));
            let e = Config::from_str(&text("bad.pem"), &path)
                .unwrap_err()
                .to_string();
            assert!(e.contains("holds no PEM certificate"), "{e}");
        }
    }
}
