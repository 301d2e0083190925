//! FHIR's own vocabulary, shared by every layer: ids, resource types and
//! instants as the bridge checks, stores and queries them, and the Bundle
//! reader (`bundle.rs`). Nothing here knows the bridge's config or sources.

pub mod bundle;

use chrono::{DateTime, Utc};

/// FHIR's `id` type: `[A-Za-z0-9\-\.]{1,64}`. Ids end up in message ids,
/// payloads, logs and status, so nothing else is let through.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A resource type as FHIR spells them: `[A-Z][A-Za-z]{0,63}`.
pub fn is_resource_type(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && s.bytes().all(|b| b.is_ascii_alphabetic())
}

pub fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.to_utc())
}

/// Formats an instant the way the bridge stores and queries it (UTC, ms).
/// Sub-millisecond digits are truncated, which only widens a `ge` window.
pub fn format_instant(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
