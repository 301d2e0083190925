//! `history`: `[base]/{Type}/_history?_since={since}&_count=…`. Every version
//! the server kept, deletes included; `request.method` tells a create (POST)
//! from an update (PUT) and a delete (DELETE). History has no upper bound,
//! and servers list it newest first: the watermark then moves only when the
//! chain is read to its end (`WatermarkTracker`).

pub(in crate::source) mod order;
pub(in crate::source) mod read_ahead;

use crate::config::Source;
use crate::fhir::format_instant;
use chrono::{DateTime, Utc};
use url::Url;

pub(super) fn history_url(
    source: &Source,
    resource_type: &str,
    since: Option<DateTime<Utc>>,
) -> Url {
    let mut url = source
        .base_url
        .join(&format!("{resource_type}/_history"))
        .unwrap_or_else(|_| source.base_url.clone());
    let mut query = String::new();
    if let Some(t) = since {
        query.push_str(&format!("_since={}&", format_instant(t)));
    }
    query.push_str(&format!("_count={}", source.page_size));
    push_params(&mut query, source, resource_type);
    url.set_query(Some(&query));
    url
}

/// The type's `params`, as written (already URL-encoded).
pub(super) fn push_params(query: &mut String, source: &Source, resource_type: &str) {
    if let Some(extra) = source.params.get(resource_type) {
        let extra = extra.trim_start_matches(['&', '?']);
        if !extra.is_empty() {
            query.push('&');
            query.push_str(extra);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn history_asks_since_the_window_with_the_page_size() {
        let c = Config::from_str(
            "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir/\"\n\
             resources = [\"Encounter\"]\npage_size = 50\nstrategy = \"history\"\n\
             [source.params]\nEncounter = \"status=finished\"\n",
            Path::new("b.toml"),
        )
        .unwrap();
        let since = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .to_utc();
        let url = history_url(&c.sources[0], "Encounter", Some(since));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/fhir/Encounter/_history?_since=2026-11-30T10:00:00.000Z&_count=50&status=finished"
        );
        assert_eq!(
            history_url(&c.sources[0], "Encounter", None).query(),
            Some("_count=50&status=finished")
        );
    }
}
