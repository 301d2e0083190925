//! `fhir-bridge status` as text, for people.

use super::liveness;
use super::status::StatusReport;
use super::{ago, span};
use crate::state::now_ms;
use std::fmt::Write;

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
    let _ = writeln!(o, "daemon: {}", liveness::describe(&r.daemon, now_ms()));
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
        if h.stale {
            let _ = writeln!(
                o,
                "  {:<20} STALE: the oldest pending message has waited {} (limit {}); see LAST ERROR",
                "",
                span(h.oldest_pending_age_seconds.unwrap_or_default() * 1000),
                span(h.max_pending_age.as_millis() as i64)
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
    if !r.orphaned_hooks.is_empty() {
        let _ = writeln!(
            o,
            "\nORPHANED HOOKS (in the state, not in the config: nothing sends these)"
        );
        for h in &r.orphaned_hooks {
            let _ = writeln!(
                o,
                "  {}: {} pending, {} dead-lettered; move them with `fhir-bridge dlq redrive --hook {} --to-hook NEW --all`, or delete them with `fhir-bridge dlq purge --hook {} --all`",
                h.name, h.pending, h.dead_lettered, h.name, h.name
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
