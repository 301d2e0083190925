//! `fhir-bridge status`: every source and hook at a glance. Read-only.
//! No resource bodies, tokens or passwords are ever shown: errors recorded in
//! state are PHI-free by construction.

use super::{ago, fmt_ms};
use crate::config::Config;
use crate::state::{HookReport, StateError, Store, TargetReport, now_ms};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// False when any source's last poll failed, or any hook has dead letters or is disabled.
    pub healthy: bool,
    pub config: String,
    pub database: String,
    /// False until the daemon has created its database.
    pub has_state: bool,
    pub sources: Vec<SourceStatus>,
    pub hooks: Vec<HookStatus>,
}

#[derive(Debug, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub base_url: String,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub resource_type: String,
    pub watermark: Option<String>,
    pub last_poll_at: Option<String>,
    pub last_success_at: Option<String>,
    /// "ok", "error", or null before the first poll.
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
    pub changes_seen: i64,
    pub resources_read: i64,
    /// Entries skipped and not delivered (an id that is not a FHIR id, say).
    pub entries_skipped: i64,
    /// Entries stamped after the server's clock: delivered, watermark not moved.
    pub entries_future: i64,
    /// The last per-entry note (skipped or future entry), PHI-free.
    pub last_warning: Option<String>,
    pub last_warning_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HookStatus {
    pub name: String,
    pub url: String,
    pub pending: i64,
    pub delivered: i64,
    pub failed_attempts: i64,
    pub dead_lettered: i64,
    pub filter_errors: i64,
    pub oldest_pending_age_seconds: Option<i64>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Set when the receiver answered 410 Gone; cleared by `fhir-bridge hook enable`.
    pub disabled: bool,
    pub disabled_reason: Option<String>,
}

/// An entry skipped (not delivered) keeps status unhealthy this long (24 h).
const SKIP_ATTENTION_MS: i64 = 24 * 3600 * 1000;

/// Base URL without credentials or query: safe to print.
fn safe_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

pub async fn collect(config: &Config) -> Result<StatusReport, StateError> {
    let db = config.db_path();
    let store = Store::open_read_only(&db)?;
    let mut sources = Vec::new();
    let mut recent_skip = false;
    for s in &config.sources {
        let mut targets = Vec::new();
        for rt in &s.resources {
            let r = match &store {
                Some(st) => st.target_report(&s.name, rt).await?,
                None => None,
            }
            .unwrap_or_else(|| TargetReport {
                resource_type: rt.clone(),
                ..Default::default()
            });
            targets.push(TargetStatus {
                resource_type: rt.clone(),
                watermark: r.watermark,
                last_poll_at: r.last_poll_at_ms.map(fmt_ms),
                last_success_at: r.last_ok_at_ms.map(fmt_ms),
                last_outcome: r.last_outcome,
                last_error: r.last_error,
                consecutive_failures: r.consecutive_failures,
                changes_seen: r.changes_seen,
                resources_read: r.resources_read,
                entries_skipped: r.entries_skipped,
                entries_future: r.entries_future,
                last_warning: r.last_warning,
                last_warning_at: r.last_warning_at_ms.map(fmt_ms),
            });
            recent_skip |= r
                .last_skip_at_ms
                .is_some_and(|t| now_ms() - t < SKIP_ATTENTION_MS);
        }
        sources.push(SourceStatus {
            name: s.name.clone(),
            base_url: safe_url(&s.base_url),
            targets,
        });
    }
    let mut hooks = Vec::new();
    for h in &config.hooks {
        let r = match &store {
            Some(st) => st.hook_report(&h.name).await?,
            None => HookReport::default(),
        };
        hooks.push(HookStatus {
            name: h.name.clone(),
            url: safe_url(&h.url),
            pending: r.pending,
            delivered: r.delivered,
            failed_attempts: r.failed_attempts,
            dead_lettered: r.dead,
            filter_errors: r.filter_errors,
            oldest_pending_age_seconds: r
                .oldest_pending_at_ms
                .map(|t| ((now_ms() - t) / 1000).max(0)),
            last_success_at: r.last_success_at_ms.map(fmt_ms),
            last_error: r.last_error,
            last_error_at: r.last_error_at_ms.map(fmt_ms),
            disabled: r.disabled_at_ms.is_some(),
            disabled_reason: r.disabled_reason,
        });
    }
    let healthy = sources
        .iter()
        .flat_map(|s| &s.targets)
        .all(|t| t.last_outcome.as_deref() != Some("error"))
        && !recent_skip
        && hooks.iter().all(|h| h.dead_lettered == 0 && !h.disabled);
    Ok(StatusReport {
        healthy,
        config: config.path.display().to_string(),
        database: db.display().to_string(),
        has_state: store.is_some(),
        sources,
        hooks,
    })
}

fn or_dash(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

fn since(t: &Option<String>) -> String {
    t.as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| ago(d.timestamp_millis()))
        .unwrap_or_else(|| "-".into())
}

pub fn render_text(r: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "fhir-bridge status: {}",
        if r.healthy { "OK" } else { "ATTENTION NEEDED" }
    );
    let _ = writeln!(o, "config {}  state {}", r.config, r.database);
    if !r.has_state {
        let _ = writeln!(o, "(no state yet: the daemon has not run with this config)");
    }
    let _ = writeln!(o, "\nSOURCES");
    for s in &r.sources {
        let _ = writeln!(o, "  {}  {}", s.name, s.base_url);
        let _ = writeln!(
            o,
            "    {:<20} {:<26} {:<10} {:<8} {:>9}  ERROR",
            "TARGET", "WATERMARK", "LAST POLL", "OUTCOME", "CHANGES"
        );
        for t in &s.targets {
            let err = match (&t.last_outcome, &t.last_error) {
                (Some(o), Some(e)) if o == "error" => {
                    format!("{e} ({} in a row)", t.consecutive_failures)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "    {:<20} {:<26} {:<10} {:<8} {:>9}  {}",
                t.resource_type,
                or_dash(&t.watermark),
                since(&t.last_poll_at),
                or_dash(&t.last_outcome),
                t.changes_seen,
                err
            );
            if t.entries_skipped > 0 || t.entries_future > 0 {
                let _ = writeln!(
                    o,
                    "    {:<20} WARNING: {} entr(ies) skipped, {} stamped in the future; last: {} ({})",
                    "",
                    t.entries_skipped,
                    t.entries_future,
                    or_dash(&t.last_warning),
                    since(&t.last_warning_at)
                );
            }
        }
    }
    let _ = writeln!(o, "\nHOOKS");
    let _ = writeln!(
        o,
        "  {:<20} {:>8} {:>10} {:>7} {:>6} {:>8} {:>13}  LAST ERROR",
        "NAME", "PENDING", "DELIVERED", "FAILED", "DEAD", "OLDEST", "LAST SUCCESS"
    );
    for h in &r.hooks {
        let oldest = h
            .oldest_pending_age_seconds
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "-".into());
        let last_err = match (&h.last_error, &h.last_error_at) {
            (Some(e), at) => format!("{e} ({})", since(at)),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  {:<20} {:>8} {:>10} {:>7} {:>6} {:>8} {:>13}  {}",
            h.name,
            h.pending,
            h.delivered,
            h.failed_attempts,
            h.dead_lettered,
            oldest,
            since(&h.last_success_at),
            last_err
        );
        if h.disabled {
            let _ = writeln!(
                o,
                "  {:<20} DISABLED: {}; re-enable with `fhir-bridge hook enable {}`",
                "",
                h.disabled_reason.as_deref().unwrap_or("disabled"),
                h.name
            );
        }
        if h.filter_errors > 0 {
            let _ = writeln!(
                o,
                "  {:<20} {} resource(s) made the filter fail (counted as non-matches)",
                "", h.filter_errors
            );
        }
    }
    if r.hooks.iter().any(|h| h.dead_lettered > 0) {
        let _ = writeln!(
            o,
            "\nDead letters: see `fhir-bridge dlq list`, requeue with `fhir-bridge dlq redrive`."
        );
    }
    o
}
