//! Operator commands beside `run`: status, dlq, demo.

pub mod demo;
pub mod dlq;
pub mod status;

/// Formats our clock (ms since epoch) for people and JSON: RFC 3339, UTC, seconds.
pub fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// "4s ago", "3m ago", "2h ago", "5d ago".
pub fn ago(ms: i64) -> String {
    let secs = ((crate::state::now_ms() - ms) / 1000).max(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}
