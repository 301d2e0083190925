//! In-memory resources of the sandbox, indexed by (lastUpdated, id) so that
//! `_lastUpdated` range searches with cursor paging are cheap at any size.
//! Every write is also a version in the type's history (`VersionLog`, read
//! by history.rs); a delete leaves a tombstone, so a read of it answers Gone.
//! This is the sandbox's floor: search.rs and history.rs read what it holds,
//! the HTTP face above them serves it.

use super::export_jobs::Exports;
use super::quirks::Quirks;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Where a version sits in the log: (lastUpdated ms, write sequence number).
pub(super) type LogKey = (i64, u64);

pub(super) struct Version {
    pub(super) id: Arc<str>,
    pub(super) number: u64,
    /// `None`: this version is a delete.
    pub(super) body: Option<Arc<str>>,
}

#[derive(Default)]
pub(super) struct VersionLog {
    pub(super) versions: BTreeMap<LogKey, Version>,
    /// Keys of versions a later write replaced, in the order they were replaced.
    superseded: VecDeque<LogKey>,
}

impl VersionLog {
    /// Adds a version; `replaces` is the key of the one it supersedes.
    pub(super) fn record(
        &mut self,
        key: LogKey,
        version: Version,
        replaces: Option<LogKey>,
        superseded_limit: usize,
    ) {
        self.versions.insert(key, version);
        if let Some(old) = replaces {
            self.superseded.push_back(old);
        }
        while self.superseded.len() > superseded_limit {
            if let Some(old) = self.superseded.pop_front() {
                self.versions.remove(&old);
            }
        }
    }
}

/// The current version of a resource.
pub(super) struct Stored {
    pub(super) version: u64,
    /// Its key in the type's version log.
    pub(super) logged_at: LogKey,
    /// `None`: deleted.
    pub(super) body: Option<Arc<str>>,
}

#[derive(Default)]
pub(super) struct TypeStore {
    pub(super) by_id: HashMap<Arc<str>, Stored>,
    /// Live resources only, by (lastUpdated ms, id).
    pub(super) index: BTreeSet<(i64, Arc<str>)>,
    pub(super) history: VersionLog,
}

pub(super) struct Inner {
    pub(super) types: HashMap<String, TypeStore>,
    next_id: u64,
    /// Orders writes that share a lastUpdated in the history.
    next_seq: u64,
    /// When set, every write gets this lastUpdated (to manufacture ties).
    frozen_ms: Option<i64>,
    superseded_limit: usize,
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

impl Default for Inner {
    fn default() -> Self {
        Inner {
            types: HashMap::new(),
            next_id: 0,
            next_seq: 0,
            frozen_ms: None,
            superseded_limit: 100_000,
            clock: SandboxClock::default(),
        }
    }
}

impl Inner {
    /// The stamp of the next write: (lastUpdated ms, sequence).
    fn next_stamp(&mut self) -> LogKey {
        self.next_seq += 1;
        let offset = self.clock.offset_ms;
        let ms = self
            .frozen_ms
            .unwrap_or_else(|| Utc::now().timestamp_millis() + offset);
        (ms, self.next_seq)
    }
}

#[derive(Default)]
pub struct SandboxStore {
    inner: Mutex<Inner>,
    /// Misbehaviours of real servers, off by default (quirks.rs).
    pub quirks: Quirks,
    /// Reads served (searches, histories, reads), for benches and tests.
    served: std::sync::atomic::AtomicU64,
    /// `$export` jobs and their test switches (export.rs).
    pub exports: Exports,
}

/// What a read finds.
pub(super) enum Lookup {
    Found(Arc<str>),
    /// Deleted: a versioned server answers 410.
    Gone,
    Missing,
}

pub fn format_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `123` or `Patient/123` -> `Patient/123` (for `kind` "Patient").
pub(super) fn reference_to(kind: &str, id_or_ref: &str) -> String {
    if id_or_ref.contains('/') {
        id_or_ref.to_string()
    } else {
        format!("{kind}/{id_or_ref}")
    }
}

impl SandboxStore {
    /// How many reads (searches, histories, reads) the server answered.
    pub fn requests(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn count_request(&self) {
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Freezes (or with `None` unfreezes) the clock writes are stamped with.
    pub fn freeze_clock(&self, at_ms: Option<i64>) {
        self.lock().frozen_ms = at_ms;
    }

    /// How many superseded versions each type's history keeps with their
    /// bodies (default 100,000); the oldest go first. Current versions stay.
    pub fn keep_superseded_versions(&self, limit: usize) {
        self.lock().superseded_limit = limit;
    }

    /// Sets how the sandbox keeps and tells time (`date_only` is the
    /// `quirks.date_only` switch).
    pub fn set_clock(&self, clock: SandboxClock) {
        self.lock().clock = clock;
        self.quirks.date_only(clock.date_only);
    }

    pub fn clock(&self) -> SandboxClock {
        let mut c = self.lock().clock;
        c.date_only = self.quirks.is_date_only();
        c
    }

    /// The sandbox's own time (ms since the epoch): ours plus its offset.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.lock().clock.offset_ms
    }

    /// Creates (no id) or updates a resource; stamps `id`, `meta.versionId` and
    /// `meta.lastUpdated`. Returns the stored JSON. Updating a deleted resource
    /// brings it back with the next version.
    pub fn upsert(&self, resource_type: &str, id: Option<&str>, mut resource: Value) -> Arc<str> {
        let mut inner = self.lock();
        let stamp = inner.next_stamp();
        let id: Arc<str> = match id {
            Some(id) => Arc::from(id),
            None => {
                inner.next_id += 1;
                Arc::from(inner.next_id.to_string())
            }
        };
        let limit = inner.superseded_limit;
        let ts = inner.types.entry(resource_type.to_string()).or_default();
        let prev = ts.retire(&id);
        let version = prev.map_or(1, |(v, _)| v + 1);
        if let Some(obj) = resource.as_object_mut() {
            obj.insert("resourceType".into(), json!(resource_type));
            obj.insert("id".into(), json!(&*id));
            obj.insert(
                "meta".into(),
                json!({"versionId": version.to_string(), "lastUpdated": format_ms(stamp.0)}),
            );
        }
        let body: Arc<str> = Arc::from(resource.to_string());
        ts.index.insert((stamp.0, id.clone()));
        ts.put(id, version, stamp, Some(body.clone()), prev, limit);
        body
    }

    /// Deletes a live resource: gone from search and read (410), a DELETE
    /// version in the history. False when there was nothing live to delete.
    pub fn delete(&self, resource_type: &str, id: &str) -> bool {
        let mut inner = self.lock();
        let stamp = inner.next_stamp();
        let limit = inner.superseded_limit;
        let Some(ts) = inner.types.get_mut(resource_type) else {
            return false;
        };
        let id = match ts.by_id.get_key_value(id) {
            Some((id, Stored { body: Some(_), .. })) => id.clone(),
            _ => return false,
        };
        let prev = ts.retire(&id);
        let Some((version, _)) = prev else {
            return false;
        };
        ts.put(id, version + 1, stamp, None, prev, limit);
        true
    }

    /// Stores `Group/{id}` with these members (`123` or `Patient/123`).
    pub fn set_group<I, S>(&self, id: &str, patient_ids: I) -> Arc<str>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let member: Vec<Value> = patient_ids
            .into_iter()
            .map(|p| json!({"entity": {"reference": reference_to("Patient", p.as_ref())}}))
            .collect();
        self.upsert(
            "Group",
            Some(id),
            json!({"type": "person", "actual": true, "member": member}),
        )
    }

    /// The live resource (`None` when missing or deleted).
    pub fn read(&self, resource_type: &str, id: &str) -> Option<Arc<str>> {
        match self.lookup(resource_type, id) {
            Lookup::Found(body) => Some(body),
            Lookup::Gone | Lookup::Missing => None,
        }
    }

    pub(super) fn lookup(&self, resource_type: &str, id: &str) -> Lookup {
        let inner = self.lock();
        match inner.types.get(resource_type).and_then(|t| t.by_id.get(id)) {
            Some(Stored {
                body: Some(body), ..
            }) => Lookup::Found(body.clone()),
            Some(_) => Lookup::Gone,
            None => Lookup::Missing,
        }
    }

    /// The types that have ever had a resource.
    pub(super) fn types(&self) -> Vec<String> {
        let mut all: Vec<String> = self.lock().types.keys().cloned().collect();
        all.sort();
        all
    }

    /// Live resources of a type last updated at or after `since_ms`, oldest first.
    pub(super) fn live_since(&self, resource_type: &str, since_ms: Option<i64>) -> Vec<Arc<str>> {
        let inner = self.lock();
        let Some(ts) = inner.types.get(resource_type) else {
            return vec![];
        };
        let from = (since_ms.unwrap_or(i64::MIN), Arc::<str>::from(""));
        (ts.index.range(from..))
            .filter_map(|(_, id)| ts.by_id.get(id).and_then(|s| s.body.clone()))
            .collect()
    }

    /// Live resources of a type.
    pub fn count(&self, resource_type: &str) -> usize {
        self.lock()
            .types
            .get(resource_type)
            .map_or(0, |t| t.index.len())
    }
}

impl TypeStore {
    /// Takes a live resource out of the search index; its (version, log key), if any.
    fn retire(&mut self, id: &str) -> Option<(u64, LogKey)> {
        let prev = self.by_id.get(id)?;
        if prev.body.is_some() {
            self.index.remove(&(prev.logged_at.0, Arc::from(id)));
        }
        Some((prev.version, prev.logged_at))
    }

    fn put(
        &mut self,
        id: Arc<str>,
        version: u64,
        stamp: LogKey,
        body: Option<Arc<str>>,
        prev: Option<(u64, LogKey)>,
        superseded_limit: usize,
    ) {
        let logged = Version {
            id: id.clone(),
            number: version,
            body: body.clone(),
        };
        self.history
            .record(stamp, logged, prev.map(|(_, k)| k), superseded_limit);
        self.by_id.insert(
            id,
            Stored {
                version,
                logged_at: stamp,
                body,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::search::Query;
    use super::*;

    #[test]
    fn a_delete_hides_the_resource_and_bumps_its_version() {
        let s = SandboxStore::default();
        s.upsert("Observation", Some("a"), json!({}));
        assert!(!s.delete("Observation", "nope"));
        assert!(!s.delete("Encounter", "a"));
        assert!(s.delete("Observation", "a"));
        assert!(!s.delete("Observation", "a"), "already deleted");
        assert!(matches!(s.lookup("Observation", "a"), Lookup::Gone));
        assert!(s.read("Observation", "a").is_none());
        assert_eq!(s.count("Observation"), 0);
        let page = s.search(
            "Observation",
            &Query {
                count: 10,
                ..Default::default()
            },
        );
        assert!(page.bodies.is_empty());
        let back = s.upsert("Observation", Some("a"), json!({}));
        assert!(back.contains("\"versionId\":\"3\""), "{back}");
        assert_eq!(s.count("Observation"), 1);
    }

    #[test]
    fn a_group_lists_its_patients() {
        let s = SandboxStore::default();
        let g = s.set_group("g1", ["1", "Patient/2"]);
        let v: Value = serde_json::from_str(&g).unwrap();
        assert_eq!(v["member"][0]["entity"]["reference"], "Patient/1");
        assert_eq!(v["member"][1]["entity"]["reference"], "Patient/2");
        assert!(s.read("Group", "g1").is_some());
    }
}
