//! Every write of the sandbox is a version: what `[base]/{Type}/_history`
//! and `[base]/{Type}/{id}/_history` serve, oldest first.
//!
//! Memory: a version shares its body (`Arc<str>`) and id with the current
//! resource, so a resource written once costs one small log entry on top of
//! itself (a backfill of a million creates does not double the store). Bodies
//! of superseded versions (an update's or delete's predecessor) are kept up to
//! `superseded_limit` per type (default 100,000, see
//! `SandboxStore::keep_superseded_versions`), oldest dropped first; current
//! versions and delete tombstones are never dropped. The log itself
//! (`VersionLog`) is the store's (store.rs); this file reads it.

use super::store::{LogKey, SandboxStore};
use std::ops::Bound;
use std::sync::Arc;

/// One history request.
#[derive(Debug, Clone, Default)]
pub(super) struct HistoryQuery {
    /// `_since`: versions with lastUpdated >= this.
    pub(super) since_ms: Option<i64>,
    /// Instance history: only this resource's versions.
    pub(super) id: Option<String>,
    /// Continue strictly after this key (a page link's cursor): past it in
    /// the listing's order (before it, newest first).
    pub(super) after: Option<LogKey>,
    pub(super) count: usize,
    /// Newest first, as the FHIR spec lists history and most servers do
    /// (the `descending` quirk); oldest first otherwise.
    pub(super) newest_first: bool,
}

pub(super) struct HistoryEntry {
    pub(super) id: Arc<str>,
    pub(super) number: u64,
    pub(super) lu_ms: i64,
    pub(super) body: Option<Arc<str>>,
}

impl HistoryEntry {
    /// The `request.method` a history Bundle gives this version.
    pub(super) fn method(&self) -> &'static str {
        match (&self.body, self.number) {
            (None, _) => "DELETE",
            (Some(_), 1) => "POST",
            (Some(_), _) => "PUT",
        }
    }
}

pub(super) struct HistoryPage {
    pub(super) entries: Vec<HistoryEntry>,
    /// Where the next page starts, when there is one.
    pub(super) next_after: Option<LogKey>,
}

impl SandboxStore {
    /// Versions of `resource_type` (or of one resource), oldest first.
    pub(super) fn history(&self, resource_type: &str, q: &HistoryQuery) -> HistoryPage {
        let inner = self.lock();
        let mut page = HistoryPage {
            entries: Vec::with_capacity(q.count.min(1000)),
            next_after: None,
        };
        let Some(log) = inner.types.get(resource_type).map(|t| &t.history) else {
            return page;
        };
        let lower = q.since_ms.unwrap_or(i64::MIN);
        let versions: Box<dyn Iterator<Item = _>> = match q.newest_first {
            true => {
                let end = q.after.map_or(Bound::Unbounded, Bound::Excluded);
                Box::new(log.versions.range((Bound::Included((lower, 0)), end)).rev())
            }
            false => {
                let start = match q.after {
                    Some(key) if key.0 >= lower => Bound::Excluded(key),
                    _ => Bound::Included((lower, 0)),
                };
                Box::new(log.versions.range((start, Bound::Unbounded)))
            }
        };
        let mut last = None;
        for (key, v) in versions {
            if q.id.as_deref().is_some_and(|id| id != &*v.id) {
                continue;
            }
            if page.entries.len() == q.count {
                page.next_after = last;
                break;
            }
            page.entries.push(HistoryEntry {
                id: v.id.clone(),
                number: v.number,
                lu_ms: key.0,
                body: v.body.clone(),
            });
            last = Some(*key);
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn walk(s: &SandboxStore, q: HistoryQuery) -> Vec<(String, u64, &'static str)> {
        let mut q = q;
        let mut all = vec![];
        loop {
            let page = s.history("Observation", &q);
            all.extend(
                page.entries
                    .iter()
                    .map(|e| (e.id.to_string(), e.number, e.method())),
            );
            match page.next_after {
                Some(k) => q.after = Some(k),
                None => return all,
            }
        }
    }

    #[test]
    fn history_pages_every_version_oldest_first_with_its_method() {
        let s = SandboxStore::default();
        s.freeze_clock(Some(1_000));
        s.upsert("Observation", Some("a"), json!({}));
        s.upsert("Observation", Some("b"), json!({}));
        s.freeze_clock(Some(2_000));
        s.upsert("Observation", Some("a"), json!({"status": "final"}));
        assert!(s.delete("Observation", "b"));
        let all = walk(
            &s,
            HistoryQuery {
                count: 2,
                ..Default::default()
            },
        );
        assert_eq!(
            all,
            [
                ("a".into(), 1, "POST"),
                ("b".into(), 1, "POST"),
                ("a".into(), 2, "PUT"),
                ("b".into(), 2, "DELETE"),
            ]
        );
        // `_since` is inclusive.
        let since = walk(
            &s,
            HistoryQuery {
                since_ms: Some(2_000),
                count: 10,
                ..Default::default()
            },
        );
        assert_eq!(since.len(), 2);
        let one = walk(
            &s,
            HistoryQuery {
                id: Some("b".into()),
                count: 1,
                ..Default::default()
            },
        );
        assert_eq!(one, [("b".into(), 1, "POST"), ("b".into(), 2, "DELETE")]);
    }

    #[test]
    fn newest_first_pages_list_every_version_in_reverse() {
        let s = SandboxStore::default();
        s.freeze_clock(Some(1_000));
        s.upsert("Observation", Some("a"), json!({}));
        s.upsert("Observation", Some("b"), json!({}));
        s.freeze_clock(Some(2_000));
        s.upsert("Observation", Some("a"), json!({"status": "final"}));
        assert!(s.delete("Observation", "b"));
        let all = walk(
            &s,
            HistoryQuery {
                count: 1,
                newest_first: true,
                ..Default::default()
            },
        );
        assert_eq!(
            all,
            [
                ("b".into(), 2, "DELETE"),
                ("a".into(), 2, "PUT"),
                ("b".into(), 1, "POST"),
                ("a".into(), 1, "POST"),
            ]
        );
        let since = walk(
            &s,
            HistoryQuery {
                since_ms: Some(2_000),
                count: 1,
                newest_first: true,
                ..Default::default()
            },
        );
        assert_eq!(since.len(), 2);
    }

    #[test]
    fn superseded_versions_past_the_limit_are_dropped_current_ones_kept() {
        let s = SandboxStore::default();
        s.keep_superseded_versions(1);
        s.freeze_clock(Some(1_000));
        s.upsert("Observation", Some("a"), json!({}));
        s.upsert("Observation", Some("b"), json!({}));
        s.upsert("Observation", Some("a"), json!({}));
        s.upsert("Observation", Some("a"), json!({}));
        let all = walk(
            &s,
            HistoryQuery {
                count: 10,
                ..Default::default()
            },
        );
        assert_eq!(
            all,
            [
                ("b".into(), 1, "POST"),
                ("a".into(), 2, "PUT"),
                ("a".into(), 3, "PUT")
            ]
        );
    }
}
