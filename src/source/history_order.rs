//! Which way a server lists history. The FHIR spec has it newest first, and
//! most servers do; some list oldest first. The entries tell, in this order
//! of trust: the first two `lastUpdated` that differ; else, for one
//! resource, two numeric versionIds that differ (most servers count 1, 2, 3;
//! opaque ones say nothing); else, for one resource, its create (POST)
//! listed after an update (PUT) or the other way round. Without any of that
//! (every entry at one instant, ids all different), the spec's order.

use super::bundle::{Entry, Method};
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
}
