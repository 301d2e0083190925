//! The page pipeline: one search page in, one atomic commit out. Parse, drop
//! what lies outside the poll window, diff against the seen versions, filter
//! and route to hooks, and say what the page allows the watermark to do.
//!
//! It runs on the blocking pool: hook filters may use their whole budget on
//! each resource, and must never stall the async workers (deliveries, signals).

use super::watermark::FUTURE_TOLERANCE;
use crate::diff::{self, Observed};
use crate::fhir::bundle::{BundleError, Entry, EntryMode, Method, Page, Skipped, parse_page_as};
use crate::fhir::format_instant;
use crate::payload::MAX_INCLUDED_BYTES;
use crate::route::{Change, Route, route_change};
use crate::state::{PageCommit, SeenRow, StateError, Store};
use crate::telemetry::source::PageCommitted;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a committed page told telemetry: every route's filter saw every
/// change of the page; its messages are the ones it kept, `filter_errors`
/// the ones it failed on, the rest it dropped. Counted before the commit
/// (which consumes the page), told after it succeeded.
pub(super) fn page_committed(
    commit: &PageCommit,
    routes: &[Route],
    created: u64,
    deleted: u64,
) -> PageCommitted {
    let decisions = routes
        .iter()
        .map(|r| {
            let kept = commit.messages.iter().filter(|m| m.hook == r.hook).count() as u64;
            let errors = commit.filter_errors.get(&r.hook).copied().unwrap_or(0);
            let dropped = commit.changes.saturating_sub(kept + errors);
            (r.hook.clone(), kept, dropped)
        })
        .collect();
    PageCommitted {
        source: commit.source.clone(),
        resource_type: commit.resource_type.clone(),
        created,
        updated: commit.changes.saturating_sub(created + deleted),
        deleted,
        decisions,
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PageError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the poller knows before a page is processed.
#[derive(Clone)]
pub(super) struct PageJob {
    pub source: String,
    pub owner_id: String,
    pub resource_type: String,
    /// Search matches or history entries (the target's strategy).
    pub mode: EntryMode,
    /// Entries last updated before this were read by earlier polls (or lie
    /// before `start`) and are dropped.
    pub window_start: Option<DateTime<Utc>>,
    /// A reconciliation's: entries last updated at or after this are left to
    /// the next poll (the watermark has not passed them yet).
    pub window_end: Option<DateTime<Utc>>,
    /// A full walk's: the page's ids are listed in `PageOutcome::ids`.
    pub collect_ids: bool,
    /// Entries last updated after this are stamped in the future: delivered,
    /// but they cannot move the watermark (see `watermark::horizon`).
    pub horizon: DateTime<Utc>,
    pub routes: Vec<Route>,
    /// When the bridge detected the changes (the payloads' `time`).
    pub detected_at: String,
    /// Set on shutdown: the page is abandoned uncommitted (and re-read later).
    pub stop: Arc<AtomicBool>,
}

/// What one page amounts to.
pub(super) struct PageOutcome {
    pub commit: PageCommit,
    /// The lastUpdated of entries that may move the watermark, in server order.
    pub instants: Vec<DateTime<Utc>>,
    pub next: Option<String>,
    pub total: Option<u64>,
    /// `Bundle.total` was there but not a count (`bundle::Page::bad_total`).
    pub bad_total: bool,
    pub server_time: Option<DateTime<Utc>>,
    pub skipped: Vec<Skipped>,
    /// Entries stamped after the horizon, with the last one for the note.
    pub future: u64,
    pub last_future: Option<(String, DateTime<Utc>)>,
    /// Stopped by shutdown: nothing of this page may be committed.
    pub cancelled: bool,
    /// Of the commit's changes, how many are creates and deletes (the rest are updates).
    pub created: u64,
    pub deleted: u64,
    /// With `PageJob::collect_ids`: the id of every entry of the type, in or
    /// out of the window.
    pub ids: Vec<String>,
}

/// `process`, its errors as the poll's (page `page_no`).
pub(super) async fn process_blocking(
    store: Store,
    job: PageJob,
    body: Vec<u8>,
    page_no: usize,
) -> Result<PageOutcome, super::PollError> {
    let rt = job.resource_type.clone();
    process(&store, job, body).await.map_err(|e| match e {
        PageError::Bundle(error) => super::PollError::Bundle {
            resource_type: rt,
            page: page_no,
            error,
        },
        PageError::State(e) => super::PollError::State(e),
    })
}

/// One page, off the async workers: parsed on the blocking pool, its seen
/// rows read (before the blocking step that needs them, not in its middle),
/// then diffed and routed on the blocking pool, on the filters' evaluation
/// stack (one switch per page, not per resource; see `filter::with_eval_stack`).
async fn process(store: &Store, job: PageJob, body: Vec<u8>) -> Result<PageOutcome, PageError> {
    let (job, page) = on_blocking_pool(move || {
        let page = parse_page_as(&body, job.mode).map(|p| in_window(&job, p));
        (job, page)
    })
    .await?;
    let mut page = page?;
    if page.entries.is_empty() {
        return Ok(page.out);
    }
    // Bodies are kept, read and written only for a type some hook's filter
    // reads `$previous` on; other types' state does not grow.
    let rt = job.resource_type.as_str();
    let keep_bodies = job.routes.iter().any(|r| r.needs_previous(rt));
    page.out.commit.keep_bodies = keep_bodies;
    let ids = page.entries.iter().map(|d| d.entry.id.clone()).collect();
    let seen = (store.load_seen_for_page(&job.source, rt, ids, keep_bodies)).await?;
    let diff = move || crate::filter::with_eval_stack(|| diff_page(&job, page, seen));
    Ok(on_blocking_pool(diff).await?)
}

async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StateError> {
    (tokio::task::spawn_blocking(f).await).map_err(|e| StateError::Task(e.to_string()))
}

/// A page narrowed to what the job diffs: its entries of the type inside
/// the window, in diff order, and the outcome so far (what the page says
/// besides its entries; no change yet).
struct InWindow {
    entries: Vec<Detached>,
    out: PageOutcome,
}

/// An entry with its text copied out of the page's body (a copy costs far
/// less than the parse), so it outlives the body and crosses the seen read.
struct Detached {
    /// Without its text (`raw` is empty).
    entry: Entry<'static>,
    raw: String,
}

impl Detached {
    fn new(e: &Entry<'_>) -> Detached {
        let entry = Entry {
            resource_type: e.resource_type.clone(),
            id: e.id.clone(),
            version_id: e.version_id.clone(),
            last_updated: e.last_updated,
            last_updated_raw: e.last_updated_raw.clone(),
            raw: "",
            method: e.method,
        };
        Detached {
            entry,
            raw: e.raw.to_string(),
        }
    }

    /// The entry again, its text borrowed from `raw`.
    fn attach<'a>(entry: Entry<'static>, raw: &'a str) -> Entry<'a> {
        Entry { raw, ..entry }
    }
}

fn in_window(job: &PageJob, page: Page<'_>) -> InWindow {
    let rt = job.resource_type.as_str();
    let ids = match job.collect_ids {
        true => (page.entries.iter())
            .filter(|e| e.resource_type == rt)
            .map(|e| e.id.clone())
            .collect(),
        false => Vec::new(),
    };
    let mut entries: Vec<_> = (page.entries.iter())
        .filter(|e| e.resource_type == rt)
        // Only what the search asked for: nothing before `start`, and nothing
        // before the window (a server that ignores `_lastUpdated`, or a lagging
        // replica serving an old version). Everything older was read by earlier
        // polls, so the seen-versions table need not remember it for ever.
        .filter(|e| match (job.window_start, e.last_updated) {
            (Some(f), Some(lu)) => lu >= f,
            _ => true,
        })
        .filter(|e| match (job.window_end, e.last_updated) {
            (Some(end), Some(lu)) => lu < end,
            _ => true,
        })
        .collect();
    let mut out = PageOutcome {
        commit: PageCommit {
            source: job.source.clone(),
            resource_type: rt.to_string(),
            resources_read: entries.len() as u64,
            ..Default::default()
        },
        instants: Vec::with_capacity(entries.len()),
        next: page.next,
        total: page.total,
        bad_total: page.bad_total,
        server_time: page.server_time,
        skipped: page.skipped,
        future: 0,
        last_future: None,
        cancelled: false,
        created: 0,
        deleted: 0,
        ids,
    };
    for e in &entries {
        match e.last_updated {
            Some(t) if t > job.horizon => {
                out.future += 1;
                out.last_future = Some((e.id.clone(), t));
            }
            Some(t) => out.instants.push(t),
            None => {}
        }
    }
    if job.mode == EntryMode::History {
        // Versions go through the diff oldest first, whatever order the server
        // lists them in (most list history newest first): a create before its
        // update, a delete after both, even one without a time (HAPI's). The
        // watermark still sees them in the server's order (`instants`,
        // above), so it knows a newest-first chain; an entry without a time
        // is not among them (it neither moves nor holds the watermark).
        super::strategy::history::order::oldest_first(&mut entries);
    }
    let entries = entries.into_iter().map(Detached::new).collect();
    InWindow { entries, out }
}

/// The page's entries against the seen versions (`seen`, as read before):
/// each new version routed to the hooks and remembered as seen.
fn diff_page(job: &PageJob, page: InWindow, mut seen: HashMap<String, SeenRow>) -> PageOutcome {
    let InWindow { entries, mut out } = page;
    let rt = job.resource_type.as_str();
    let keep_bodies = out.commit.keep_bodies;
    for Detached { entry, raw } in entries {
        let e = &Detached::attach(entry, &raw);
        if !is_new_version(seen.get(&e.id), e, job.mode) {
            continue;
        }
        if job.stop.load(Ordering::Relaxed) {
            out.cancelled = true;
            return out;
        }
        let hash = diff::content_hash(e.raw.as_bytes());
        let prev = seen.get(&e.id);
        let Some(event) = change_kind(prev, e, &hash) else {
            continue;
        };
        // A delete has no resource: filters see its type and id (both checked
        // FHIR ids, safe to write into JSON), and `$previous` the last version.
        let stub;
        let raw = if event == diff::ChangeKind::Delete {
            stub = format!(r#"{{"resourceType":"{rt}","id":"{}"}}"#, e.id);
            stub.as_str()
        } else {
            e.raw
        };
        let previous = prev.and_then(previous_resource);
        let change = Change {
            source: &job.source,
            owner_id: &job.owner_id,
            resource_type: rt,
            resource_id: &e.id,
            version_id: e.version_id.as_deref(),
            last_updated: e.last_updated_raw.as_deref(),
            content_hash: &hash,
            // Same versionId as the seen version (its time moved, see
            // `diff::same_version`), or a life after a delete.
            version_reused: e.version_id.is_some()
                && (prev.is_some_and(diff::is_tombstone)
                    || prev.and_then(|r| r.version_id.as_deref()) == e.version_id.as_deref()),
            event,
            raw,
            previous: previous.as_ref(),
            time: &job.detected_at,
        };
        if route_change(
            &change,
            &job.routes,
            &mut out.commit.messages,
            &mut out.commit.filter_errors,
            &job.stop,
        )
        .is_err()
        {
            out.cancelled = true;
            return out;
        }
        let row = seen_row(job, e, event, prev, hash, keep_bodies);
        // The same id twice in one poll (page drift): the second is a duplicate.
        seen.insert(e.id.clone(), row.clone());
        out.commit.seen.push((e.id.clone(), row));
        out.commit.changes += 1;
        out.created += u64::from(event == diff::ChangeKind::Create);
        out.deleted += u64::from(event == diff::ChangeKind::Delete);
    }
    out
}

/// Whether an entry may be a change at all: not the seen version again,
/// nor (in history) a version re-read from before its delete.
fn is_new_version(prev: Option<&SeenRow>, e: &Entry<'_>, mode: EntryMode) -> bool {
    if diff::same_version(prev, e.version_id.as_deref(), e.last_updated) {
        return false;
    }
    !(mode == EntryMode::History && reread_before_delete(prev, e))
}

/// What happened to the resource, if anything. A history entry says itself
/// what happened to a new version; a version after a delete is the
/// resource's creation again, whatever the method (a PUT re-creates).
fn change_kind(prev: Option<&SeenRow>, e: &Entry<'_>, hash: &[u8; 32]) -> Option<diff::ChangeKind> {
    let observed = Observed {
        version_id: e.version_id.as_deref(),
        last_updated: e.last_updated,
        content_hash: hash,
    };
    let event = diff::classify(prev, &observed)?;
    let after_delete = prev.is_some_and(diff::is_tombstone);
    Some(match e.method {
        Some(Method::Delete) => diff::ChangeKind::Delete,
        Some(_) if after_delete => diff::ChangeKind::Create,
        Some(Method::Create) => diff::ChangeKind::Create,
        Some(Method::Update) => diff::ChangeKind::Update,
        // A search match after a delete (a snapshot's) is back: created again.
        None if after_delete => diff::ChangeKind::Create,
        None => event,
    })
}

/// The previous version for `$previous`. A body is it only if it is the
/// seen one: one left from before its type stopped keeping bodies (a
/// reload) is stale.
fn previous_resource(row: &SeenRow) -> Option<crate::filter::Resource> {
    (row.body.as_deref())
        .filter(|b| diff::content_hash(b) == row.content_hash)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|b| crate::filter::parse_resource(b).ok())
}

/// What the state remembers of a change just routed.
fn seen_row(
    job: &PageJob,
    e: &Entry<'_>,
    event: diff::ChangeKind,
    prev: Option<&SeenRow>,
    hash: [u8; 32],
    keep_bodies: bool,
) -> SeenRow {
    // A delete without a time (HAPI's) happened no earlier than the
    // version it deletes: its tombstone keeps that version's time, so
    // that a re-read of an older version is known for one.
    let inherited = match (event, e.last_updated) {
        (diff::ChangeKind::Delete, None) => prev.and_then(|r| r.last_updated.clone()),
        _ => None,
    };
    SeenRow {
        version_id: e.version_id.clone(),
        // A stamp past the horizon is remembered as the server's now (the
        // horizon less the tolerance): the resource's next real version,
        // stamped later than now, must not look older (a re-creation 30 s
        // after a delete stamped 9999 would, against the horizon).
        last_updated: (e.last_updated)
            .map(|t| match t > job.horizon {
                true => format_instant(job.horizon - FUTURE_TOLERANCE),
                false => format_instant(t),
            })
            .or(inherited),
        content_hash: hash,
        // Over the bound, none: `$previous` is then null for the next version.
        body: (keep_bodies
            && event != diff::ChangeKind::Delete
            && e.raw.len() <= MAX_INCLUDED_BYTES)
            .then(|| e.raw.as_bytes().to_vec()),
    }
}

/// A history version at the very time a tombstone remembers, of a resource
/// whose versions cannot be told apart by number (opaque or missing
/// versionIds): the version the delete superseded, re-read by an
/// overlapping poll, not the resource created again (a re-creation comes
/// after the delete). Numeric versions are left to `diff::classify`.
fn reread_before_delete(prev: Option<&SeenRow>, e: &Entry<'_>) -> bool {
    let Some(prev) = prev.filter(|p| diff::is_tombstone(p)) else {
        return false;
    };
    if e.method == Some(Method::Delete) {
        return false;
    }
    let numeric = |v: Option<&str>| v.is_some_and(|v| v.parse::<u64>().is_ok());
    if numeric(prev.version_id.as_deref()) && numeric(e.version_id.as_deref()) {
        return false;
    }
    let remembered = (prev.last_updated.as_deref()).and_then(crate::fhir::parse_instant);
    matches!((remembered, e.last_updated), (Some(p), Some(c)) if c <= p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_util::temp_store;
    use proptest::prelude::*;

    /// One page processed as the poller does (its seen rows read first).
    async fn process(store: &Store, job: &PageJob, body: &[u8]) -> Result<PageOutcome, PageError> {
        super::process(store, job.clone(), body.to_vec()).await
    }

    fn job(horizon: DateTime<Utc>) -> PageJob {
        PageJob {
            source: "s".into(),
            owner_id: "o".into(),
            resource_type: "Observation".into(),
            mode: EntryMode::Search,
            window_start: None,
            window_end: None,
            collect_ids: false,
            horizon,
            routes: vec![],
            detected_at: "2026-11-30T00:00:00Z".into(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn route(name: &str, code: &str) -> Route {
        Route {
            hook: name.into(),
            filter: Arc::new(crate::filter::Filter::compile(code).unwrap()),
            topic: None,
            content: crate::config::Content::FullResource,
        }
    }

    fn encounters(versions: &[(&str, &str)]) -> Vec<u8> {
        let entries: Vec<_> = versions
            .iter()
            .map(|(v, status)| {
                serde_json::json!({
                    "resource": {"resourceType": "Encounter", "id": "e", "status": status,
                        "meta": {"versionId": v, "lastUpdated": format!("2026-11-29T00:00:0{v}Z")}}
                })
            })
            .collect();
        serde_json::json!({"resourceType": "Bundle", "entry": entries})
            .to_string()
            .into_bytes()
    }

    /// A job reading Encounter history (horizon 2026-11-30T12:00:00Z), one
    /// hook taking everything.
    fn encounter_history_job() -> PageJob {
        let horizon = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        let mut job = job(horizon);
        job.resource_type = "Encounter".into();
        job.mode = EntryMode::History;
        job.routes = vec![route("all", "true")];
        job
    }

    /// A history Bundle of `entries`, as the server sent it.
    fn history_page(entries: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::json!({"resourceType": "Bundle", "type": "history", "entry": entries})
            .to_string()
            .into_bytes()
    }

    /// Hooks per message of a processed and committed page.
    async fn run(store: &Store, job: &PageJob, body: &[u8]) -> Vec<String> {
        let out = process(store, job, body).await.unwrap();
        let hooks = out.commit.messages.iter().map(|m| m.hook.clone()).collect();
        store
            .commit_page(&crate::state::Fence::private(), out.commit)
            .await
            .unwrap();
        hooks
    }

    #[tokio::test]
    async fn previous_is_the_last_version_seen_even_on_the_same_page() {
        let (_d, store) = temp_store();
        let horizon = DateTime::parse_from_rfc3339("2026-11-30T00:00:00Z")
            .unwrap()
            .to_utc();
        let mut job = job(horizon);
        job.resource_type = "Encounter".into();
        job.routes = vec![
            route("all", "true"),
            route(
                "discharge",
                r#".status == "finished" and $previous.status != "finished""#,
            ),
        ];
        assert_eq!(
            run(&store, &job, &encounters(&[("1", "planned")])).await,
            ["all"]
        );
        // Page drift: two versions on one page; the second sees the first.
        let both = encounters(&[("2", "in-progress"), ("3", "finished")]);
        assert_eq!(run(&store, &job, &both).await, ["all", "all", "discharge"]);
        // A re-read of the same version is no change at all.
        assert!(
            run(&store, &job, &encounters(&[("3", "finished")]))
                .await
                .is_empty()
        );
        let kept = store
            .load_seen_for_page("s", "Encounter", vec!["e".into()], true)
            .await
            .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(kept["e"].body.as_deref().unwrap()).unwrap();
        assert_eq!(body["status"], "finished");

        // No hook reads `$previous` any more (a reload): version 4 keeps
        // nothing, and the body of version 3 left behind is not taken for
        // version 5's previous once a hook reads it again.
        let discharge = job.routes.pop().unwrap();
        let v4 = encounters(&[("4", "in-progress")]);
        assert_eq!(run(&store, &job, &v4).await, ["all"]);
        job.routes.push(discharge);
        let v5 = encounters(&[("5", "finished")]);
        assert_eq!(run(&store, &job, &v5).await, ["all", "discharge"]);

        // No hook reads `$previous`: nothing is kept.
        let (_d2, store) = temp_store();
        job.routes.truncate(1);
        assert_eq!(
            run(&store, &job, &encounters(&[("1", "planned")])).await,
            ["all"]
        );
        let kept = store
            .load_seen_for_page("s", "Encounter", vec!["e".into()], true)
            .await
            .unwrap();
        assert_eq!(kept["e"].body, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever years a server stamps (0 to 9999), nothing after the
        /// horizon may move the watermark, and every such entry is counted;
        /// a seen row never remembers a time after the horizon.
        #[test]
        fn nothing_after_the_horizon_moves_the_watermark(years in prop::collection::vec(0i32..=9999, 1..20)) {
            let (_d, store) = temp_store();
            let horizon = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z").unwrap().to_utc();
            let entries: Vec<_> = years.iter().enumerate().map(|(i, y)| serde_json::json!({
                "resource": {"resourceType": "Observation", "id": format!("o{i}"),
                    "meta": {"versionId": "1", "lastUpdated": format!("{y:04}-06-01T00:00:00Z")}}
            })).collect();
            let body = serde_json::json!({"resourceType": "Bundle", "entry": entries}).to_string();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let out = rt.block_on(process(&store, &job(horizon), body.as_bytes())).unwrap();
            prop_assert!(out.instants.iter().all(|t| *t <= horizon));
            let future = years.iter().filter(|y| **y > 2026).count() as u64;
            prop_assert_eq!(out.future, future);
            prop_assert_eq!(out.instants.len() as u64 + future, years.len() as u64);
            for (_, row) in &out.commit.seen {
                let lu = row.last_updated.as_deref().unwrap();
                prop_assert!(lu <= "2026-11-30T12:00:00.000Z", "seen row remembers {}", lu);
            }
        }
    }

    /// A server that never moves `meta.versionId`: each new content at a
    /// later time is an update with a message id of its own (the same one
    /// as the create's would be dropped by the outbox and by receivers); a
    /// re-read of it is nothing new. A resource created again after a
    /// delete, counted from 1 again, is not its first life's create.
    #[tokio::test]
    async fn a_reused_version_id_gets_a_message_id_of_its_own() {
        let (_d, store) = temp_store();
        let horizon = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        let mut job = job(horizon);
        job.routes = vec![route("all", "true")];
        let page = |status: &str, lu: &str| {
            serde_json::json!({"resourceType": "Bundle", "entry": [{"resource": {
                "resourceType": "Observation", "id": "x", "status": status,
                "meta": {"versionId": "1", "lastUpdated": lu}}}]})
            .to_string()
            .into_bytes()
        };
        let mut ids = Vec::new();
        for (status, lu) in [
            ("preliminary", "2026-11-30T10:00:00Z"),
            ("final", "2026-11-30T10:05:00Z"),
            ("final", "2026-11-30T10:05:00Z"),
            ("amended", "2026-11-30T10:09:00Z"),
        ] {
            let out = process(&store, &job, &page(status, lu)).await.unwrap();
            ids.extend(out.commit.messages.iter().map(|m| m.message_id.clone()));
            store
                .commit_page(&crate::state::Fence::private(), out.commit)
                .await
                .unwrap();
        }
        assert_eq!(
            ids.len(),
            3,
            "create, update, update; the re-read is nothing"
        );
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 3, "{ids:?}");

        // History: created, deleted, created again counting from 1.
        job.mode = EntryMode::History;
        let (_d2, store) = temp_store();
        let history = |entry: serde_json::Value| history_page(vec![entry]);
        let create = |lu: &str| {
            history(
                serde_json::json!({"resource": {"resourceType": "Observation", "id": "y",
                "meta": {"versionId": "1", "lastUpdated": lu}},
                "request": {"method": "POST", "url": "Observation"}}),
            )
        };
        let delete = history(
            serde_json::json!({"request": {"method": "DELETE", "url": "Observation/y"},
            "response": {"etag": "W/\"2\"", "lastModified": "2026-11-30T10:01:00Z"}}),
        );
        let mut ids = Vec::new();
        for body in [
            create("2026-11-30T10:00:00Z"),
            delete,
            create("2026-11-30T10:02:00Z"),
        ] {
            let out = process(&store, &job, &body).await.unwrap();
            ids.extend(out.commit.messages.iter().map(|m| m.message_id.clone()));
            store
                .commit_page(&crate::state::Fence::private(), out.commit)
                .await
                .unwrap();
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!((ids.len(), distinct.len()), (3, 3), "{ids:?}");
    }

    /// A delete stamped in year 9999 is remembered at the server's now, not
    /// at the horizon (now + tolerance): the resource created again 30 s
    /// later is a create, not an older version dropped.
    #[tokio::test]
    async fn a_version_after_one_stamped_in_the_future_is_not_taken_for_older() {
        let (_d, store) = temp_store();
        let now = DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc();
        let mut job = job(now + FUTURE_TOLERANCE);
        job.mode = EntryMode::History;
        job.routes = vec![route("all", "true")];
        let page = |entry: serde_json::Value| history_page(vec![entry]);
        let version = |v: &str, lu: &str, method: &str| {
            page(
                serde_json::json!({"resource": {"resourceType": "Observation", "id": "x",
                "meta": {"versionId": v, "lastUpdated": lu}},
                "request": {"method": method, "url": "Observation"}}),
            )
        };
        assert_eq!(
            run(&store, &job, &version("1", "2026-11-30T11:00:00Z", "POST"))
                .await
                .len(),
            1
        );
        let delete = page(
            serde_json::json!({"request": {"method": "DELETE", "url": "Observation/x"},
            "response": {"etag": "W/\"2\"", "lastModified": "9999-12-31T23:59:59Z"}}),
        );
        assert_eq!(run(&store, &job, &delete).await.len(), 1);
        // The next poll: the server's clock 10 s on, x created again at +30 s.
        job.horizon += chrono::Duration::seconds(40);
        let again = version("3", "2026-11-30T12:00:30Z", "POST");
        let out = process(&store, &job, &again).await.unwrap();
        assert_eq!(out.created, 1, "the create after the delete is not lost");
    }

    /// A history page: creates, updates and deletes, each once; a delete
    /// carries no resource; re-reads (of the delete, or of an older version
    /// after it) are nothing new: the delete's seen row is its tombstone.
    #[tokio::test]
    async fn history_pages_give_creates_updates_and_deletes_once() {
        let (_d, store) = temp_store();
        let job = encounter_history_job();
        let entry = |v: u32, method: &str| {
            let lu = format!("2026-11-30T10:00:0{v}Z");
            if method == "DELETE" {
                serde_json::json!({"request": {"method": method, "url": "Encounter/e1"},
                    "response": {"status": "204", "etag": format!("W/\"{v}\""), "lastModified": lu}})
            } else {
                serde_json::json!({"resource": {"resourceType": "Encounter", "id": "e1",
                    "meta": {"versionId": v.to_string(), "lastUpdated": lu}},
                    "request": {"method": method, "url": "Encounter"}})
            }
        };
        let page = history_page;
        let body = page(vec![entry(1, "POST"), entry(2, "PUT"), entry(3, "DELETE")]);
        let out = process(&store, &job, &body).await.unwrap();
        let events: Vec<_> = out
            .commit
            .messages
            .iter()
            .map(|m| {
                (
                    m.change.event.clone(),
                    m.change.version_id.clone(),
                    m.change.body.is_some(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                ("create".to_string(), Some("1".to_string()), true),
                ("update".to_string(), Some("2".to_string()), true),
                ("delete".to_string(), Some("3".to_string()), false),
            ]
        );
        assert_eq!((out.created, out.deleted), (1, 1));
        store
            .commit_page(&crate::state::Fence::private(), out.commit)
            .await
            .unwrap();
        let again = process(&store, &job, &page(vec![entry(3, "DELETE")]))
            .await
            .unwrap();
        assert!(again.commit.messages.is_empty(), "the delete again");
        let late = process(&store, &job, &page(vec![entry(2, "PUT")]))
            .await
            .unwrap();
        assert!(
            late.commit.messages.is_empty(),
            "an older version after the delete"
        );
        // Recreated later (a PUT, as a server writes it): a create again.
        let back = process(&store, &job, &page(vec![entry(4, "PUT")]))
            .await
            .unwrap();
        assert_eq!(back.commit.messages[0].change.event, "create");

        // A server that lists history newest first (most do): the same
        // events, oldest first; the watermark sees the server's order.
        let (_d, store) = temp_store();
        let body = page(vec![entry(3, "DELETE"), entry(2, "PUT"), entry(1, "POST")]);
        let out = process(&store, &job, &body).await.unwrap();
        let events: Vec<_> = (out.commit.messages.iter())
            .map(|m| m.change.event.as_str())
            .collect();
        assert_eq!(events, ["create", "update", "delete"]);
        assert!(out.instants.windows(2).all(|w| w[0] > w[1]));
    }

    /// HAPI lists history newest first and writes a DELETE entry without
    /// `response.lastModified`: a resource created, updated and deleted
    /// since the last poll is still its create, update and delete, in that
    /// order; the delete without a time neither moves the watermark nor
    /// holds it (the instants are the two timed versions', server order).
    #[tokio::test]
    async fn a_hapi_delete_without_a_time_comes_after_the_versions_it_deletes() {
        let (_d, store) = temp_store();
        let job = encounter_history_job();
        let version = |v: u32, method: &str| {
            serde_json::json!({"resource": {"resourceType": "Encounter", "id": "e1",
                "meta": {"versionId": v.to_string(), "lastUpdated": format!("2026-11-30T10:00:0{v}Z")}},
                "request": {"method": method, "url": format!("Encounter/e1/_history/{v}")},
                "response": {"status": "200 OK", "etag": format!("W/\"{v}\"")}})
        };
        let delete = |id: &str, v: u32| {
            serde_json::json!({"request": {"method": "DELETE", "url": format!("Encounter/{id}/_history/{v}")},
                "response": {"status": "200 OK", "etag": format!("W/\"{v}\"")}})
        };
        let page = history_page;
        let events = |out: &PageOutcome| -> Vec<(String, Option<String>)> {
            (out.commit.messages.iter())
                .map(|m| (m.change.event.clone(), m.change.version_id.clone()))
                .collect()
        };
        let body = page(vec![delete("e1", 3), version(2, "PUT"), version(1, "POST")]);
        let out = process(&store, &job, &body).await.unwrap();
        let v = |e: &str, n: &str| (e.to_string(), Some(n.to_string()));
        assert_eq!(
            events(&out),
            [v("create", "1"), v("update", "2"), v("delete", "3")]
        );
        let t = |s: u32| {
            DateTime::parse_from_rfc3339(&format!("2026-11-30T10:00:0{s}Z"))
                .unwrap()
                .to_utc()
        };
        assert_eq!(out.instants, [t(2), t(1)]);
        store
            .commit_page(&crate::state::Fence::private(), out.commit)
            .await
            .unwrap();
        // Re-read by the next poll (its window overlaps): nothing new, and
        // the resource does not come back.
        let again = process(&store, &job, &body).await.unwrap();
        assert!(again.commit.messages.is_empty(), "{:?}", events(&again));

        // The same with opaque versions and no etag on the delete: the
        // server's listing decides, and the re-read brings nothing back.
        let (_d, store) = temp_store();
        let opaque = |v: &str, at: u32, method: &str| {
            serde_json::json!({"resource": {"resourceType": "Encounter", "id": "e2",
                "meta": {"versionId": v, "lastUpdated": format!("2026-11-30T10:00:0{at}Z")}},
                "request": {"method": method, "url": "Encounter/e2"}})
        };
        let bare_delete = serde_json::json!({"request": {"method": "DELETE", "url": "Encounter/e2"},
            "response": {"status": "204"}});
        let body = page(vec![
            bare_delete,
            opaque("y", 2, "PUT"),
            opaque("x", 1, "POST"),
        ]);
        let out = process(&store, &job, &body).await.unwrap();
        let got: Vec<String> = events(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(got, ["create", "update", "delete"]);
        store
            .commit_page(&crate::state::Fence::private(), out.commit)
            .await
            .unwrap();
        let again = process(&store, &job, &body).await.unwrap();
        assert!(again.commit.messages.is_empty(), "{:?}", events(&again));
    }
}
