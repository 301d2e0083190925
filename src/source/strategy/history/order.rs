//! Which way a server lists history. The FHIR spec has it newest first, and
//! most servers do; some list oldest first. The entries tell, in this order
//! of trust: the first two `lastUpdated` that differ; else, for one
//! resource, two numeric versionIds that differ (most servers count 1, 2, 3;
//! opaque ones say nothing); else, for one resource, its create (POST)
//! listed after an update (PUT) or the other way round. Without any of that
//! (every entry at one instant, ids all different), the spec's order.
//!
//! `oldest_first` puts a page's versions in the order the diff takes them.
//! An entry without a time is never taken for the oldest: HAPI writes its
//! DELETE entries without `response.lastModified`, newest first, and a
//! resource created, updated and deleted between two polls must reach the
//! diff as its create, update and delete, in that order.

use crate::fhir::bundle::{Entry, Method};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// What the entries fed so far say, in the server's order.
#[derive(Debug, Default)]
pub struct HistoryOrder {
    by_time: Option<bool>,
    by_version: Option<bool>,
    by_method: Option<bool>,
    last_time: Option<DateTime<Utc>>,
    /// Per id: its last numeric versionId, and whether a create / an update
    /// of it was listed.
    versions: HashMap<String, u64>,
    methods: HashMap<String, (bool, bool)>,
}

impl HistoryOrder {
    pub fn feed<'e, 'a: 'e>(&mut self, entries: impl IntoIterator<Item = &'e Entry<'a>>) {
        for e in entries {
            if self.by_time.is_some() {
                return;
            }
            if let Some(t) = e.last_updated {
                match self.last_time {
                    Some(prev) if t != prev => self.by_time = Some(t < prev),
                    _ => self.last_time = Some(t),
                }
            }
            if self.by_version.is_none()
                && let Some(v) = e.version_id.as_deref().and_then(|v| v.parse::<u64>().ok())
            {
                match self.versions.insert(e.id.clone(), v) {
                    Some(prev) if prev != v => self.by_version = Some(v < prev),
                    _ => {}
                }
            }
            if self.by_method.is_none() {
                let (created, updated) = self.methods.entry(e.id.clone()).or_default();
                match e.method {
                    Some(Method::Create) if *updated => self.by_method = Some(true),
                    Some(Method::Create) => *created = true,
                    Some(Method::Update) if *created => self.by_method = Some(false),
                    Some(Method::Update) => *updated = true,
                    _ => {}
                }
            }
        }
    }

    /// Whether the entries run newest first.
    pub fn newest_first(&self) -> bool {
        (self.by_time)
            .or(self.by_version)
            .or(self.by_method)
            .unwrap_or(true)
    }
}

/// A page's history entries, oldest first: the server's listing, turned
/// round when it runs newest first (`HistoryOrder`). Then each resource's
/// versions, in the places the listing gave them: by time when every one
/// has a time; else by numeric versionId when every one has a distinct one;
/// else as listed. Other resources' entries stay where they are.
pub fn oldest_first<'e, 'a: 'e>(entries: &mut [&'e Entry<'a>]) {
    let mut order = HistoryOrder::default();
    order.feed(entries.iter().copied());
    if order.newest_first() {
        entries.reverse();
    }
    let mut places: HashMap<&'e str, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().copied().enumerate() {
        places.entry(e.id.as_str()).or_default().push(i);
    }
    for at in places.values().filter(|at| at.len() > 1) {
        let mut versions: Vec<&'e Entry<'a>> = at.iter().map(|&i| entries[i]).collect();
        sort_versions(&mut versions);
        for (&i, e) in at.iter().zip(versions) {
            entries[i] = e;
        }
    }
}

/// One resource's versions, in listing order (oldest first): see `oldest_first`.
fn sort_versions(versions: &mut [&Entry]) {
    if versions.iter().all(|e| e.last_updated.is_some()) {
        // Stable: versions at one instant keep the listing's order.
        versions.sort_by_key(|e| e.last_updated);
        return;
    }
    let numbers: Option<Vec<u64>> = (versions.iter())
        .map(|e| e.version_id.as_deref()?.parse().ok())
        .collect();
    if let Some(mut numbers) = numbers {
        numbers.sort_unstable();
        // A server that counts again from 1 after a delete: the listing tells.
        if numbers.windows(2).all(|w| w[0] < w[1]) {
            versions.sort_by_key(|e| e.version_id.as_deref().and_then(|v| v.parse::<u64>().ok()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, version: &str, at: i64, method: Method) -> Entry<'static> {
        Entry {
            resource_type: "Observation".into(),
            id: id.into(),
            version_id: Some(version.into()),
            last_updated: DateTime::from_timestamp(at, 0),
            last_updated_raw: None,
            raw: "",
            method: Some(method),
        }
    }

    fn order(entries: &[Entry<'static>]) -> bool {
        let mut o = HistoryOrder::default();
        o.feed(entries);
        o.newest_first()
    }

    #[test]
    fn time_first_then_versions_then_methods_then_the_spec() {
        use Method::*;
        let (a1, a2) = (entry("a", "1", 5, Create), entry("a", "2", 9, Update));
        assert!(order(&[a2.clone(), a1.clone()]));
        assert!(!order(&[a1.clone(), a2.clone()]));
        // One instant: the numeric versions tell.
        let (s1, s2) = (entry("a", "1", 5, Create), entry("a", "2", 5, Update));
        assert!(order(&[s2.clone(), s1.clone()]));
        assert!(!order(&[s1.clone(), s2.clone()]));
        // Opaque versions: the methods tell.
        let (u1, u2) = (entry("a", "x", 5, Create), entry("a", "y", 5, Update));
        assert!(order(&[u2.clone(), u1.clone()]));
        assert!(!order(&[u1, u2]));
        // Nothing to tell: the spec's order.
        assert!(order(&[
            entry("a", "x", 5, Create),
            entry("b", "y", 5, Create)
        ]));
        assert!(order(&[]));
    }

    fn untimed(id: &str, version: Option<&str>, method: Method) -> Entry<'static> {
        Entry {
            version_id: version.map(String::from),
            last_updated: None,
            ..entry(id, "0", 0, method)
        }
    }

    fn listed(entries: &[Entry<'static>]) -> Vec<(String, Option<String>)> {
        let mut refs: Vec<&Entry> = entries.iter().collect();
        oldest_first(&mut refs);
        (refs.iter())
            .map(|e| (e.id.to_string(), e.version_id.clone()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        (list.iter())
            .map(|(i, v)| (i.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn a_delete_without_a_time_is_never_taken_for_the_oldest() {
        use Method::*;
        // HAPI: newest first, the delete without a time.
        let hapi = [
            untimed("a", Some("3"), Delete),
            entry("b", "1", 8, Create),
            entry("a", "2", 7, Update),
            entry("a", "1", 5, Create),
        ];
        assert_eq!(
            listed(&hapi),
            pairs(&[("a", "1"), ("a", "2"), ("b", "1"), ("a", "3")])
        );
        // Oldest first, the delete last without a time or a number.
        let ascending = [
            entry("a", "x", 5, Create),
            entry("a", "y", 7, Update),
            untimed("a", None, Delete),
        ];
        let got = listed(&ascending);
        assert_eq!(got[2], ("a".to_string(), None));
        // The listing disagrees with the numbers at one instant... the
        // times are all there: time, then listing order.
        let tie = [entry("a", "2", 5, Update), entry("a", "1", 5, Create)];
        assert_eq!(listed(&tie), pairs(&[("a", "1"), ("a", "2")]));
        // No time on one of them: the numbers put them in order.
        let shuffled = [
            entry("a", "1", 5, Create),
            untimed("a", Some("3"), Delete),
            entry("a", "2", 7, Update),
        ];
        let got = listed(&shuffled);
        let versions: Vec<_> = got.iter().map(|p| p.1.as_deref().unwrap()).collect();
        assert_eq!(versions, ["1", "2", "3"]);
        // Counted again from 1 after a delete, one without a time: as listed.
        let recount = [
            entry("a", "1", 9, Create),
            untimed("a", Some("2"), Delete),
            entry("a", "1", 5, Create),
        ];
        let versions: Vec<_> = (listed(&recount).into_iter())
            .map(|p| p.1.unwrap())
            .collect();
        assert_eq!(versions, ["1", "2", "1"]);
    }
}
