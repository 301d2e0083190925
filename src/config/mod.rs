//! `bridges.toml`: loading, validation and the typed configuration.
//!
//! Every error names the file, the line and the key, e.g.
//! `bridges.toml:14: hook `x`: filter does not compile: ...`.

mod admin;
mod ctx;
mod diff;
mod duration;
mod fanout;
mod fingerprint;
mod hook_security;
mod notification;
mod origins;
pub mod paths;
mod raw;
mod reconcile;
mod schedule;
mod secret;
mod source_auth;
mod state_backend;
mod strategy;
mod tls;
mod toml_error;
mod validate;

pub use admin::{Admin, AdminToken};
pub use diff::{ConfigDiff, Delta, NeedsRestart};
pub use duration::HumanDuration;
pub use fanout::{FanOut, Roster};
pub use fingerprint::Fingerprint;
pub use notification::{Format, MAX_EVENTS_PER_BUNDLE, Notification};
pub use schedule::Schedule;
pub use source_auth::{TokenUrlRefusal, check_token_url};
pub use state_backend::{MAX_POOL_SIZE, StateBackend};
#[cfg(feature = "postgres")]
pub use state_backend::{PgTls, PostgresState};
pub use strategy::{Strategies, Strategy};
pub use tls::Tls;

use crate::filter::Filter;
use crate::filter::topics::Topic;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The io error is part of the message and deliberately not a `source()`:
    /// error chains (anyhow's `{:#}`) would print it a second time.
    /// `hint` says what to do when that is not obvious from the io error
    /// (see `paths::unreadable_hint`); empty otherwise.
    #[error("{path}: cannot read config: {error}{hint}")]
    Read {
        path: String,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Resolved against the config file's directory when relative.
    pub state_dir: PathBuf,
    pub retention: Duration,
    /// SIGTERM: in-flight deliveries get this long to finish; the rest stays
    /// in the outbox.
    pub shutdown_grace: Duration,
    pub sources: Vec<Source>,
    pub hooks: Vec<Hook>,
    /// The metrics and health listener; `None`: off.
    pub admin: Option<Admin>,
    /// `[state]`: SQLite under `state_dir` (the default) or PostgreSQL.
    pub state: StateBackend,
    /// Things that load but are probably mistakes (no source, no hook, ...),
    /// each a full line: `bridges.toml: no [[hook]]: ...`.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Begin at the server's current time; emit nothing that existed before.
    Now,
    /// Emit everything the server holds.
    Beginning,
    /// Emit everything last updated at or after this instant.
    At(DateTime<Utc>),
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub base_url: Url,
    pub resources: Vec<String>,
    pub schedule: Schedule,
    pub page_size: u32,
    pub overlap: Duration,
    /// Each `last-updated` poll ends at the server's now minus this (0 by default).
    pub lag: Duration,
    /// Per-patient polling: each (patient, type) is a target of its own.
    pub fan_out: Option<FanOut>,
    /// The source's request budget (token bucket shared by all its targets).
    pub max_requests_per_second: Option<f64>,
    pub start: Start,
    pub owner_id: String,
    pub timeout: Duration,
    /// Extra search parameters per resource type, already URL-encoded as written.
    pub params: BTreeMap<String, String>,
    /// The most search pages one poll of one resource type may read.
    pub max_pages_per_poll: u32,
    /// How each resource type is polled.
    pub strategies: Strategies,
    /// `reconcile`: when a `last-updated` source walks each type in full
    /// (without moving its watermark) to find what its polls missed.
    pub reconcile: Option<Schedule>,
    pub auth: SourceAuth,
    /// Origins besides `base_url`'s that next links and redirects may lead
    /// to (and credentials with them). Empty by default.
    pub allowed_origins: Vec<url::Origin>,
    /// Extra CA certificates and a client certificate; `None`: the system's
    /// roots, no client certificate, and the shared connection pool.
    pub tls: Option<Tls>,
    /// The table's text and what its secrets and files held: a reload
    /// restarts the source only when this changed.
    pub fingerprint: Fingerprint,
}

impl Source {
    /// The origins this source's requests may go to: `base_url`'s and the
    /// `allowed_origins`.
    pub fn origins(&self) -> Vec<url::Origin> {
        let mut all = vec![self.base_url.origin()];
        all.extend(self.allowed_origins.iter().cloned());
        all
    }

    /// Whether a URL (a next link, a redirect) is on one of `origins()`.
    pub fn allows(&self, url: &Url) -> bool {
        url.origin() == self.base_url.origin() || self.allowed_origins.contains(&url.origin())
    }
}

/// How the bridge authenticates to an EHR (`[source.auth]`). Secrets are
/// redacted in Debug output.
#[derive(Clone, Default)]
pub enum SourceAuth {
    #[default]
    None,
    Basic {
        username: String,
        password: Arc<secrecy::SecretString>,
    },
    Bearer {
        token: Arc<secrecy::SecretString>,
    },
    /// OAuth 2.0 client credentials.
    ClientCredentials(ClientCredentials),
    /// SMART Backend Services: a signed JWT client assertion (ES384/RS384).
    SmartBackend {
        client_id: String,
        key: Arc<crate::signing::smart::SmartKey>,
        scope: Option<String>,
        /// Else `token_endpoint` of `[base]/.well-known/smart-configuration`.
        token_url: Option<Url>,
        /// The source's `allow_insecure_http`: a discovered token endpoint
        /// passes the same check as a configured `token_url`.
        allow_insecure_http: bool,
    },
}

impl std::fmt::Debug for SourceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceAuth::None => f.write_str("None"),
            SourceAuth::Basic { username, .. } => write!(f, "Basic({username}, [redacted])"),
            SourceAuth::Bearer { .. } => f.write_str("Bearer([redacted])"),
            SourceAuth::ClientCredentials(cc) => write!(f, "{cc:?}"),
            SourceAuth::SmartBackend { client_id, key, .. } => {
                write!(f, "SmartBackend({client_id}, {key:?})")
            }
        }
    }
}

/// OAuth 2.0 client credentials (RFC 6749 4.4), to an EHR
/// (`[source.auth]`) or a receiver (`[hook.auth]`).
#[derive(Clone)]
pub struct ClientCredentials {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: Arc<secrecy::SecretString>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    /// `client_secret_basic` (true) or `client_secret_post`.
    pub secret_in_header: bool,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientCredentials({}, {}, [redacted])",
            self.token_url, self.client_id
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    FullResource,
    IdOnly,
    /// No resource and no focus: only that something happened (FHIR formats).
    Empty,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub url: Url,
    pub sources: Vec<String>,
    /// The effective filter: the topic's and the `filter`'s, both must match.
    pub filter: Arc<Filter>,
    /// The named topic, if the hook has one.
    pub topic: Option<&'static Topic>,
    pub content: Content,
    /// Format, batching and heartbeats.
    pub notification: Notification,
    pub max_attempts: u32,
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub concurrency: usize,
    /// `status` reports the hook unhealthy when its oldest pending message is older.
    pub max_pending_age: Duration,
    /// Keys every webhook is signed with (Standard Webhooks), in order.
    pub signing_keys: Arc<Vec<crate::signing::webhook::SigningKey>>,
    /// Static headers, validated.
    pub headers: Vec<(String, String)>,
    pub auth: Option<HookAuth>,
    /// As a source's `tls`; `None`: the client hooks share.
    pub tls: Option<Tls>,
    /// As a source's: a reload restarts the hook only when this changed.
    pub fingerprint: Fingerprint,
    /// The part of it that says where and how POSTs go (`url`, headers,
    /// auth, signing secrets, TLS, with what their secrets and files held):
    /// when a reload changes it, pending messages are due at once.
    pub endpoint: Fingerprint,
}

/// How the bridge authenticates to a receiver.
#[derive(Clone)]
pub enum HookAuth {
    Basic {
        username: String,
        password: Arc<secrecy::SecretString>,
    },
    /// A bearer token from the receiver's token endpoint, cached per hook.
    OAuth(ClientCredentials),
}

impl std::fmt::Debug for HookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"[redacted]")
                .finish(),
            HookAuth::OAuth(cc) => write!(f, "OAuth({cc:?})"),
        }
    }
}

impl Hook {
    /// Whether the hook's filter reads `$previous` on resources of this type,
    /// so their last bodies must be kept (see `filter::topics::needs_previous`).
    pub fn needs_previous(&self, resource_type: &str) -> bool {
        crate::filter::topics::needs_previous(&self.filter, self.topic, resource_type)
    }
}

impl Config {
    /// Reads and validates a config file; every filter is compiled here.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            hint: paths::unreadable_hint(path, error.kind()),
            error,
        })?;
        Self::from_str(&text, path)
    }

    /// Validates config text as if it had been read from `path`.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::validate(text, path)
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("bridge.db")
    }

    pub fn hooks_for_source<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a Hook> + 'a {
        self.hooks
            .iter()
            .filter(move |h| h.sources.iter().any(|s| s == source))
    }
}
