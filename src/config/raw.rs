//! The file format of `bridges.toml`, exactly as written by the operator.
//! Validation into the typed [`super::Config`] happens in `validate.rs`.

use super::duration::HumanDuration;
use super::secret::RawSecret;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<Spanned<String>>,
    /// How long delivered messages are kept for status (default 14 days).
    pub retention: Option<HumanDuration>,
    /// How long in-flight deliveries may finish on shutdown (default 10 s).
    pub shutdown_grace: Option<HumanDuration>,
    #[serde(default)]
    pub source: Vec<Spanned<RawSource>>,
    #[serde(default)]
    pub hook: Vec<Spanned<RawHook>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub state: Option<Spanned<RawState>>,
}

/// `[state]`: which backend holds the state, and how to reach PostgreSQL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// `sqlite` (default) or `postgres`.
    pub backend: Option<Spanned<String>>,
    pub url: Option<Spanned<RawSecret>>,
    pub sslmode: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub pool_size: Option<Spanned<i64>>,
}

/// `[admin]`: the metrics and health listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:port`; unset: no listener.
    pub listen: Option<Spanned<String>>,
    /// A non-loopback `listen` is refused without it.
    pub allow_remote: Option<bool>,
    /// The bearer token `$events` asks for before it serves resource bodies.
    pub token: Option<Spanned<RawSecret>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub name: Spanned<String>,
    pub base_url: Spanned<String>,
    pub resources: Spanned<Vec<Spanned<String>>>,
    pub schedule: Option<Spanned<String>>,
    pub every: Option<Spanned<HumanDuration>>,
    pub page_size: Option<Spanned<u32>>,
    pub overlap: Option<HumanDuration>,
    /// Bound each poll at `lt{server now - lag}` (writes that become visible late).
    pub lag: Option<Spanned<HumanDuration>>,
    pub start: Option<Spanned<String>>,
    pub owner_id: Option<String>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub max_pages_per_poll: Option<Spanned<u32>>,
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<String>>,
    /// `last-updated` (default), `history` or `snapshot`, and overrides per type.
    pub strategy: Option<Spanned<String>>,
    #[serde(default)]
    pub strategy_by_type: BTreeMap<String, Spanned<String>>,
    /// `bulk-export`: `Group/{id}` to export that group's data instead of the whole system's.
    pub export_group: Option<Spanned<String>>,
    /// `bulk-export`: how long a job may go without a usable manifest before
    /// it is cancelled and started again.
    pub export_timeout: Option<Spanned<HumanDuration>>,
    /// Per-patient fan-out: where the roster comes from, and how often it is re-read.
    pub patients: Option<Spanned<RawPatients>>,
    pub roster_refresh: Option<Spanned<HumanDuration>>,
    /// How long a patient who left the roster keeps its targets (watermarks).
    pub roster_grace: Option<Spanned<HumanDuration>>,
    pub max_requests_per_second: Option<Spanned<f64>>,
    /// A cron schedule for full reconciliation passes (`last-updated` only).
    pub reconcile: Option<Spanned<String>>,
    pub auth: Option<Spanned<RawSourceAuth>>,
    pub allow_insecure_http: Option<bool>,
    /// Origins besides `base_url`'s that next links and redirects may lead to.
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<RawSecret>>,
}

/// `patients = { ... }`: exactly one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatients {
    pub group: Option<String>,
    pub search: Option<String>,
    pub file: Option<String>,
}

/// `[source.auth]`: how the bridge authenticates to the EHR.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceAuth {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub token: Option<RawSecret>,
    pub token_url: Option<Spanned<String>>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecret>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub method: Option<Spanned<String>>,
    pub private_key: Option<RawSecret>,
    pub kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub sources: Option<Spanned<Vec<String>>>,
    pub filter: Option<Spanned<String>>,
    /// A named topic (`crate::filter::topics`); with `filter`, both must match.
    pub topic: Option<Spanned<String>>,
    pub content: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub max_events_per_bundle: Option<Spanned<u32>>,
    pub heartbeat_period: Option<Spanned<HumanDuration>>,
    pub max_attempts: Option<Spanned<u32>>,
    pub retry_schedule: Option<Spanned<Vec<Spanned<HumanDuration>>>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub concurrency: Option<Spanned<u32>>,
    pub max_pending_age: Option<Spanned<HumanDuration>>,
    /// Standard Webhooks secrets (`whsec_...`, `whsk_...`), each a secret source.
    pub signing_secrets: Option<Spanned<Vec<RawSecret>>>,
    /// Static headers sent with every webhook.
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub auth: Option<Spanned<RawHookAuth>>,
    pub allow_insecure_http: Option<bool>,
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<RawSecret>>,
}

/// `[hook.auth]`: how the bridge authenticates to the receiver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHookAuth {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub token_url: Option<Spanned<String>>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecret>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub method: Option<Spanned<String>>,
}

/// The TLS keys of a source or a hook (`ca_file`, `client_cert`, `client_key`).
pub struct RawTls<'a> {
    pub ca_file: Option<&'a Spanned<String>>,
    pub client_cert: Option<&'a Spanned<String>>,
    pub client_key: Option<&'a Spanned<RawSecret>>,
}

impl RawSource {
    pub fn tls(&self) -> RawTls<'_> {
        RawTls {
            ca_file: self.ca_file.as_ref(),
            client_cert: self.client_cert.as_ref(),
            client_key: self.client_key.as_ref(),
        }
    }
}

impl RawHook {
    pub fn tls(&self) -> RawTls<'_> {
        RawTls {
            ca_file: self.ca_file.as_ref(),
            client_cert: self.client_cert.as_ref(),
            client_key: self.client_key.as_ref(),
        }
    }
}
