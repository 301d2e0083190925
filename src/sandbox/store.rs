//! In-memory resources of the sandbox, indexed by (lastUpdated, id) so that
//! `_lastUpdated` range searches with cursor paging are cheap at any size.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct Stored {
    version: u64,
    lu_ms: i64,
    body: Arc<str>,
}

#[derive(Default)]
struct TypeStore {
    by_id: HashMap<String, Stored>,
    index: BTreeSet<(i64, String)>,
}

#[derive(Default)]
struct Inner {
    types: HashMap<String, TypeStore>,
    next_id: u64,
    /// When set, every write gets this lastUpdated (to manufacture ties).
    frozen_ms: Option<i64>,
    clock: SandboxClock,
}

/// How the sandbox keeps and tells time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxClock {
    /// Its clock runs this far ahead of ours (negative: behind): writes are
    /// stamped, and searches answered, on it.
    pub offset_ms: i64,
    /// Searches tell the time only by a second-precision `Date` header, with
    /// no `Bundle.meta.lastUpdated` (as some third-party servers do).
    pub date_only: bool,
}

#[derive(Default)]
pub struct SandboxStore {
    inner: Mutex<Inner>,
}

/// Bounds and paging of one search.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub ge_ms: Option<i64>,
    pub gt_ms: Option<i64>,
    pub le_ms: Option<i64>,
    pub lt_ms: Option<i64>,
    /// Continue strictly after this (lastUpdated, id).
    pub after: Option<(i64, String)>,
    pub count: usize,
}

pub struct SearchPage {
    pub bodies: Vec<Arc<str>>,
    /// Where the next page starts, when there is one.
    pub next_after: Option<(i64, String)>,
}

pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl SandboxStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Freezes (or with `None` unfreezes) the clock writes are stamped with.
    pub fn freeze_clock(&self, at_ms: Option<i64>) {
        self.lock().frozen_ms = at_ms;
    }

    /// Sets how the sandbox keeps and tells time.
    pub fn set_clock(&self, clock: SandboxClock) {
        self.lock().clock = clock;
    }

    pub fn clock(&self) -> SandboxClock {
        self.lock().clock
    }

    /// The sandbox's own time (ms since the epoch): ours plus its offset.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.clock().offset_ms
    }

    /// Creates (no id) or updates a resource; stamps `id`, `meta.versionId` and
    /// `meta.lastUpdated`. Returns the stored JSON.
    pub fn upsert(&self, resource_type: &str, id: Option<&str>, mut resource: Value) -> Arc<str> {
        let mut inner = self.lock();
        let lu_ms = inner
            .frozen_ms
            .unwrap_or_else(|| Utc::now().timestamp_millis() + inner.clock.offset_ms);
        let id = match id {
            Some(id) => id.to_string(),
            None => {
                inner.next_id += 1;
                format!("{}", inner.next_id)
            }
        };
        let ts = inner.types.entry(resource_type.to_string()).or_default();
        let version = match ts.by_id.get(&id) {
            Some(prev) => {
                ts.index.remove(&(prev.lu_ms, id.clone()));
                prev.version + 1
            }
            None => 1,
        };
        if let Some(obj) = resource.as_object_mut() {
            obj.insert("resourceType".into(), json!(resource_type));
            obj.insert("id".into(), json!(id));
            obj.insert(
                "meta".into(),
                json!({"versionId": version.to_string(), "lastUpdated": format_ms(lu_ms)}),
            );
        }
        let body: Arc<str> = Arc::from(resource.to_string());
        ts.index.insert((lu_ms, id.clone()));
        ts.by_id.insert(
            id,
            Stored {
                version,
                lu_ms,
                body: body.clone(),
            },
        );
        body
    }

    pub fn read(&self, resource_type: &str, id: &str) -> Option<Arc<str>> {
        self.lock()
            .types
            .get(resource_type)?
            .by_id
            .get(id)
            .map(|s| s.body.clone())
    }

    pub fn count(&self, resource_type: &str) -> usize {
        self.lock()
            .types
            .get(resource_type)
            .map_or(0, |t| t.by_id.len())
    }

    /// Ascending by (lastUpdated, id).
    pub fn search(&self, resource_type: &str, q: &Query) -> SearchPage {
        let inner = self.lock();
        let Some(ts) = inner.types.get(resource_type) else {
            return SearchPage {
                bodies: vec![],
                next_after: None,
            };
        };
        let mut lower = i64::MIN;
        if let Some(v) = q.ge_ms {
            lower = lower.max(v);
        }
        if let Some(v) = q.gt_ms {
            lower = lower.max(v.saturating_add(1));
        }
        let mut upper = i64::MAX;
        if let Some(v) = q.le_ms {
            upper = upper.min(v);
        }
        if let Some(v) = q.lt_ms {
            upper = upper.min(v.saturating_sub(1));
        }
        let start = match &q.after {
            Some((ms, id)) if *ms >= lower => Bound::Excluded((*ms, id.clone())),
            _ => Bound::Included((lower, String::new())),
        };
        let mut bodies = Vec::with_capacity(q.count.min(1000));
        let mut last = None;
        let mut more = false;
        for (ms, id) in ts.index.range((start, Bound::Unbounded)) {
            if *ms > upper {
                break;
            }
            if bodies.len() == q.count {
                more = true;
                break;
            }
            if let Some(s) = ts.by_id.get(id) {
                bodies.push(s.body.clone());
                last = Some((*ms, id.clone()));
            }
        }
        SearchPage {
            bodies,
            next_after: if more { last } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_paging_walks_ties_exactly_once() {
        let s = SandboxStore::default();
        s.freeze_clock(Some(1_000));
        for _ in 0..5 {
            s.upsert("Observation", None, json!({}));
        }
        s.freeze_clock(Some(2_000));
        for _ in 0..3 {
            s.upsert("Observation", None, json!({}));
        }
        let mut q = Query {
            ge_ms: Some(1_000),
            count: 3,
            ..Default::default()
        };
        let mut all = vec![];
        loop {
            let page = s.search("Observation", &q);
            all.extend(page.bodies);
            match page.next_after {
                Some(a) => q.after = Some(a),
                None => break,
            }
        }
        assert_eq!(all.len(), 8);
        let again = s.upsert("Observation", Some("1"), json!({"status": "final"}));
        assert!(again.contains("\"versionId\":\"2\""));
        assert_eq!(s.count("Observation"), 8);
    }
}
