//! Operator commands beside `run`: status, dlq, demo; and what every
//! command shares: logging setup and output that never panics.

pub mod args;
pub mod backfill;
// Compiled into build.rs; here for its tests.
#[cfg(test)]
mod commit_id;
pub mod confirm;
pub mod demo;
pub mod dlq;
mod dlq_show;
pub mod health;
pub mod liveness;
pub mod logging;
pub mod manpages;
pub mod out;
pub mod poll_once;
pub mod replay;
pub mod source_rename;
pub mod status;
pub mod status_report;
mod status_text;
pub mod test_filter;
pub mod topics;
pub mod version;
pub mod watch;
pub mod when;

/// Formats our clock (ms since epoch) for people and JSON: RFC 3339, UTC, seconds.
pub fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// "4s ago", "3m ago", "2h ago", "5d ago", seen from `now_ms`.
pub fn ago_at(ms: i64, now_ms: i64) -> String {
    format!("{} ago", span(now_ms - ms))
}

/// A length of time for people: "40s", "12m", "3h", "2d".
pub fn span(ms: i64) -> String {
    match (ms / 1000).max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
