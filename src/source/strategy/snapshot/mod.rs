//! `snapshot`: `[base]/{Type}?_count=…&{params}`, the whole set on every
//! poll, for searches with no usable `_lastUpdated`. The diff finds creates
//! and updates (by versionId or content hash); what a *complete* walk no
//! longer meets, of the ids seen before, is deleted. A walk that did not
//! reach the end of its chain (a failed page, the page cap, a shutdown) says
//! nothing about deletes. A `reconcile` pass of a `last-updated` source is
//! the same walk.

pub(in crate::source) mod confirm;
pub(in crate::source) mod full_walk;

use crate::config::{Schedule, Source};
use crate::diff::{self, ChangeKind};
use crate::route::{Change, route_change};
use crate::state::{PageCommit, SeenRow, StateError, Store};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use url::Url;

use super::super::page::PageJob;

/// The most ids one walk remembers. Each is kept as 16 bytes (a hash, see
/// `WalkedIds`), so the set stays under 160 MB (plus the sort's copy-free
/// in-place work); a walk past it infers no deletes. The page cap
/// (`max_pages_per_poll * page_size`) usually stops a walk long before.
pub(in crate::source) const MAX_WALKED_IDS: usize = 10_000_000;

/// `[base]/{Type}?_count=…&{params}`: no `_lastUpdated`, no `_sort` (the
/// server's own order; every entry is read whatever it is).
pub(super) fn snapshot_url(source: &Source, resource_type: &str) -> Url {
    let mut url = source
        .base_url
        .join(resource_type)
        .unwrap_or_else(|_| source.base_url.clone());
    let mut query = format!("_count={}", source.page_size);
    super::history::push_params(&mut query, source, resource_type);
    url.set_query(Some(&query));
    url
}

/// The ids a walk met, as 128-bit hashes: compact, and a collision (about
/// 1 in 10^22 at the limit) can only hide a delete, never invent one.
#[derive(Debug)]
pub(in crate::source) struct WalkedIds {
    keys: Vec<u128>,
    overflowed: bool,
    limit: usize,
    /// Entries listed that could not be read (skipped, no id to remember).
    unreadable: u64,
    /// The last id met that a read URL can carry: read to check that the
    /// server's 404s mean something before any is believed (`confirm`).
    witness: Option<String>,
}

impl Default for WalkedIds {
    fn default() -> Self {
        WalkedIds {
            keys: Vec::new(),
            overflowed: false,
            limit: MAX_WALKED_IDS,
            unreadable: 0,
            witness: None,
        }
    }
}

fn key(id: &str) -> u128 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl WalkedIds {
    pub(in crate::source) fn extend(&mut self, ids: &[String]) {
        if let Some(id) = ids.iter().rev().find(|id| confirm::addressable(id)) {
            self.witness = Some(id.clone());
        }
        if self.overflowed {
            return;
        }
        if self.keys.len() + ids.len() > self.limit {
            self.overflowed = true;
            self.keys = Vec::new();
            return;
        }
        self.keys.extend(ids.iter().map(|id| key(id)));
    }

    /// Entries of a page that could not be read (their ids are unknown).
    pub(in crate::source) fn note_unreadable(&mut self, n: usize) {
        self.unreadable += n as u64;
    }

    /// Whether it went past `MAX_WALKED_IDS` (and remembers nothing).
    pub(in crate::source) fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Sorted, for lookups.
    fn finish(mut self) -> Walked {
        self.keys.sort_unstable();
        self.keys.dedup();
        Walked {
            keys: self.keys,
            witness: self.witness,
        }
    }
}

/// The distinct ids of a walk, sorted.
pub(in crate::source) struct Walked {
    keys: Vec<u128>,
    witness: Option<String>,
}

impl Walked {
    fn contains(&self, id: &str) -> bool {
        self.keys.binary_search(&key(id)).is_ok()
    }

    /// An id the walk met, for the read that vouches for the others (`confirm`).
    pub(in crate::source) fn witness(&self) -> Option<&str> {
        self.witness.as_deref()
    }
}

/// Whether a `reconcile` schedule has ticked since `last`.
pub(in crate::source) fn reconcile_due(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    schedule.next_after(last) <= now
}

/// What a walk that reached the end of its chain says about deletes: the
/// one place that judges a full walk (a `snapshot` poll or a `reconcile`
/// pass) complete enough to infer them.
pub(in crate::source) struct WalkFacts {
    /// A per-patient target's walk: the seen rows are the type's, not the
    /// patient's, so one patient's walk cannot say what is gone.
    pub per_patient: bool,
    /// `Bundle.total` changed between pages (offset paging may have hidden
    /// a resource between two pages).
    pub drifted: bool,
    /// The last page's `Bundle.total`, if the server gave one.
    pub total: Option<u64>,
    /// A page gave a `Bundle.total` that is not a count: the walk cannot
    /// be checked against it.
    pub bad_total: bool,
}

/// Whether deletes may be inferred from a walk.
pub(in crate::source) enum Verdict {
    /// Yes: the ids it met.
    Complete(Walked),
    /// No, and nothing to say (a per-patient walk; an empty set, which a
    /// lost permission or a broken search gives as well as a real one).
    Silent,
    /// No, and why (for the target's status).
    Incomplete(String),
}

pub(in crate::source) fn judge_walk(rt: &str, walked: WalkedIds, facts: &WalkFacts) -> Verdict {
    if facts.per_patient {
        return Verdict::Silent;
    }
    if facts.drifted {
        return Verdict::Incomplete(format!(
            "{rt}: the result set changed during the walk; deletes are inferred after a walk where it does not"
        ));
    }
    if facts.bad_total {
        return Verdict::Incomplete(format!(
            "{rt}: a page's Bundle.total is not a count; no deletes inferred from the walk"
        ));
    }
    if walked.overflowed() {
        return Verdict::Incomplete(format!(
            "{rt}: the walk met more than {MAX_WALKED_IDS} ids; no deletes inferred"
        ));
    }
    if walked.is_empty() {
        return Verdict::Silent;
    }
    let unreadable = walked.unreadable;
    let walked = walked.finish();
    // Every entry the server listed: the ids met (once each) and those it
    // could not read (skipped, counted on status).
    let listed = walked.keys.len() as u64 + unreadable;
    if let Some(total) = facts.total
        && total != listed
    {
        return Verdict::Incomplete(format!(
            "{rt}: the walk listed {listed} resource(s) but its Bundle.total says {total}; no deletes inferred from an incomplete walk"
        ));
    }
    Verdict::Complete(walked)
}

/// The ids seen before, not deleted, that a complete walk did not meet:
/// the deletes it implies, each to be confirmed (see `confirm`). Without
/// their bodies: only the few confirmed need one (`route_confirmed`).
pub(in crate::source) async fn delete_candidates(
    store: &Store,
    source: &str,
    rt: &str,
    walked: Walked,
) -> Result<Vec<(String, SeenRow)>, StateError> {
    let walked = Arc::new(walked);
    let met = Arc::new(move |id: &str| walked.contains(id));
    store.seen_not_walked(source, rt, met, false).await
}

/// What routing the confirmed deletes gave.
pub(in crate::source) enum Gone {
    /// The deletes, as one commit: delete events routed like any change,
    /// and a tombstone seen row for each.
    Deletes(Box<PageCommit>),
    /// Shutdown while filtering: nothing committed; the next walk finds them again.
    Cancelled,
}

/// The confirmed deletes of a walk. Each goes through the hooks' filters
/// as a delete does (the stub `{"resourceType","id"}`, `$previous` its last
/// version, its body read now when a hook reads `$previous`) and leaves a
/// tombstone.
pub(in crate::source) async fn route_confirmed(
    store: &Store,
    job: PageJob,
    mut gone: Vec<(String, SeenRow)>,
) -> Result<Gone, StateError> {
    let keep_bodies = job
        .routes
        .iter()
        .any(|r| r.needs_previous(&job.resource_type));
    if keep_bodies {
        let ids = gone.iter().map(|(id, _)| id.clone()).collect();
        let mut rows =
            (store.load_seen_for_page(&job.source, &job.resource_type, ids, true)).await?;
        for (id, row) in &mut gone {
            if let Some(fresh) = rows.remove(id.as_str()) {
                *row = fresh;
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        crate::filter::with_eval_stack(|| route_deletes(&job, gone, keep_bodies))
    })
    .await
    .map_err(|e| StateError::Task(e.to_string()))
}

fn route_deletes(job: &PageJob, gone: Vec<(String, SeenRow)>, keep_bodies: bool) -> Gone {
    let rt = job.resource_type.as_str();
    let tombstone = diff::content_hash(b"");
    let mut commit = PageCommit {
        source: job.source.clone(),
        resource_type: rt.to_string(),
        keep_bodies,
        ..Default::default()
    };
    for (id, row) in gone {
        if job.stop.load(Ordering::Relaxed) {
            return Gone::Cancelled;
        }
        // Ids came from the server's pages, checked FHIR ids: safe in JSON.
        let stub = format!(r#"{{"resourceType":"{rt}","id":"{id}"}}"#);
        let previous = (row.body.as_deref())
            .filter(|b| diff::content_hash(b) == row.content_hash)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|b| crate::filter::parse_resource(b).ok());
        let change = Change {
            source: &job.source,
            owner_id: &job.owner_id,
            resource_type: rt,
            resource_id: &id,
            version_id: None,
            // The last version's: it tells this delete from a later one of
            // the same id in the message id (a delete has no version of its own).
            last_updated: row.last_updated.as_deref(),
            content_hash: &tombstone,
            version_reused: false,
            event: ChangeKind::Delete,
            raw: &stub,
            previous: previous.as_ref(),
            time: &job.detected_at,
        };
        let routed = route_change(
            &change,
            &job.routes,
            &mut commit.messages,
            &mut commit.filter_errors,
            &job.stop,
        );
        if routed.is_err() {
            return Gone::Cancelled;
        }
        // No version and the last version's time: a version of this id met
        // again (even the same one, back in the set) is a create.
        let dead = SeenRow {
            version_id: None,
            last_updated: row.last_updated,
            content_hash: tombstone,
            body: None,
        };
        commit.seen.push((id, dead));
        commit.changes += 1;
    }
    Gone::Deletes(Box::new(commit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn a_snapshot_asks_for_the_whole_set_with_the_page_size_and_params() {
        let c = Config::from_str(
            "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir/\"\n\
             resources = [\"Coverage\"]\npage_size = 50\nstrategy = \"snapshot\"\n\
             [source.params]\nCoverage = \"status=active\"\n",
            Path::new("b.toml"),
        )
        .unwrap();
        let url = snapshot_url(&c.sources[0], "Coverage");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/fhir/Coverage?_count=50&status=active"
        );
    }

    #[test]
    fn walked_ids_are_found_and_a_walk_past_the_bound_remembers_nothing() {
        let mut w = WalkedIds::default();
        w.extend(&["b".into(), "a".into(), "b".into()]);
        assert!(!w.overflowed());
        let walked = w.finish();
        assert!(walked.contains("a") && walked.contains("b"));
        assert!(!walked.contains("c"));
        assert_eq!(walked.keys.len(), 2);
        assert_eq!(walked.witness(), Some("b"), "the last id met");
        let mut w = WalkedIds::default();
        w.extend(&["a".into(), "..".into(), ".".into()]);
        assert_eq!(w.finish().witness(), Some("a"), "one a read URL can carry");

        let mut w = WalkedIds {
            limit: 3,
            ..WalkedIds::default()
        };
        w.extend(&["a".into(), "b".into()]);
        w.extend(&["c".into()]);
        assert!(!w.overflowed());
        w.extend(&["d".into()]);
        assert!(w.overflowed());
        assert!(w.keys.is_empty(), "the memory goes back at once");
    }

    /// Issue 17, item 3: walks return a, b, c with total 3, then a and b
    /// still saying total 3: that walk is incomplete, no deletes from it.
    #[test]
    fn a_walk_that_disagrees_with_its_own_total_infers_no_deletes() {
        let walk = |ids: &[&str], unreadable: usize| {
            let mut w = WalkedIds::default();
            w.extend(&ids.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            w.note_unreadable(unreadable);
            w
        };
        let facts = |total: Option<u64>| WalkFacts {
            per_patient: false,
            drifted: false,
            total,
            bad_total: false,
        };
        let complete = |v: Verdict| matches!(v, Verdict::Complete(_));
        let why = |v: Verdict| match v {
            Verdict::Incomplete(why) => why,
            _ => String::new(),
        };
        assert!(complete(judge_walk(
            "Observation",
            walk(&["a", "b", "c"], 0),
            &facts(Some(3))
        )));
        let short = why(judge_walk(
            "Observation",
            walk(&["a", "b"], 0),
            &facts(Some(3)),
        ));
        assert!(
            short.contains("listed 2 resource(s) but its Bundle.total says 3"),
            "{short}"
        );
        // The same id twice (a drifting page) is one resource.
        let twice = judge_walk("Observation", walk(&["a", "b", "a"], 0), &facts(Some(3)));
        assert!(!complete(twice));
        // More than the total says is as wrong as fewer.
        assert!(!complete(judge_walk(
            "Observation",
            walk(&["a", "b"], 0),
            &facts(Some(1))
        )));
        // An entry that could not be read was listed all the same.
        assert!(complete(judge_walk(
            "Observation",
            walk(&["a", "b"], 1),
            &facts(Some(3))
        )));
        // No total: nothing to disagree with.
        assert!(complete(judge_walk(
            "Observation",
            walk(&["a", "b"], 0),
            &facts(None)
        )));
        // An empty set, a per-patient walk: nothing inferred, nothing said.
        assert!(matches!(
            judge_walk("Observation", walk(&[], 0), &facts(Some(0))),
            Verdict::Silent
        ));
        let patient = WalkFacts {
            per_patient: true,
            ..facts(Some(2))
        };
        assert!(matches!(
            judge_walk("Observation", walk(&["a"], 0), &patient),
            Verdict::Silent
        ));
        let drifted = WalkFacts {
            drifted: true,
            ..facts(Some(2))
        };
        assert!(
            why(judge_walk("Observation", walk(&["a", "b"], 0), &drifted))
                .contains("changed during the walk")
        );
        let bad = WalkFacts {
            bad_total: true,
            ..facts(None)
        };
        assert!(
            why(judge_walk("Observation", walk(&["a", "b"], 0), &bad))
                .contains("Bundle.total is not a count")
        );
        let mut over = WalkedIds {
            limit: 1,
            ..WalkedIds::default()
        };
        over.extend(&["a".into(), "b".into()]);
        assert!(why(judge_walk("Observation", over, &facts(None))).contains("more than"));
    }

    #[test]
    fn a_reconciliation_is_due_once_its_schedule_ticked_since_the_last() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let nightly = Schedule::cron("0 3 * * *").unwrap();
        let last = at("2026-11-20T03:00:05Z");
        assert!(!reconcile_due(&nightly, last, at("2026-11-21T02:59:59Z")));
        assert!(reconcile_due(&nightly, last, at("2026-11-21T03:00:00Z")));
        assert!(reconcile_due(&nightly, last, at("2026-11-25T12:00:00Z")));
    }
}
