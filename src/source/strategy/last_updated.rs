//! `last-updated`: `[base]/{Type}?_lastUpdated=ge{since}&_lastUpdated=lt{until}&_sort=_lastUpdated`.
//! Creates and updates; deletes are invisible to a search.

use crate::config::Source;
use crate::fhir::format_instant;
use chrono::{DateTime, Utc};
use url::Url;

/// `[base]/{Type}?_lastUpdated=ge{since}&_lastUpdated=lt{until}&_sort=_lastUpdated&_count=...&{params}`.
pub(crate) fn search_url(
    source: &Source,
    resource_type: &str,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Url {
    let mut url = source
        .base_url
        .join(resource_type)
        .unwrap_or_else(|_| source.base_url.clone());
    let mut query = String::new();
    if let Some(t) = since {
        query.push_str(&format!("_lastUpdated=ge{}&", format_instant(t)));
    }
    if let Some(t) = until {
        query.push_str(&format!("_lastUpdated=lt{}&", format_instant(t)));
    }
    query.push_str(&format!("_sort=_lastUpdated&_count={}", source.page_size));
    super::history::push_params(&mut query, source, resource_type);
    url.set_query(Some(&query));
    url
}
