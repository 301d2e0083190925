//! What the poll loop does around a full walk (a `snapshot` poll, or a
//! `reconcile` pass of a `last-updated` target): the deletes at its end
//! (judged in `snapshot::judge_walk`, each confirmed by a read, see
//! `confirm`), and when a reconciliation is due and what it came to. The
//! walk itself is the loop's (`SourceTask::walk_pages`): the loop asks
//! `reconcile_now`, walks, and hands the walk to `reconciled`.

use super::confirm::{self, Confirmed, LeftSearch};
use super::{Gone, Verdict, WalkFacts, WalkedIds};
use crate::config::Schedule;
use crate::fhir::bundle::EntryMode;
use crate::retry_action::RetryAction;
use crate::route::Routing;
use crate::source::client::FetchError;
use crate::source::commit::Committer;
use crate::source::errors::PollError;
use crate::source::fetch::Fetcher;
use crate::source::notes::Notes;
use crate::source::page::PageJob;
use crate::source::strategy::snapshot;
use crate::source::walk::Polled;
use crate::state::{SeenRow, TargetKey, now_ms};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the end of a full walk goes through: the source's requests (the
/// confirming reads) and writes (the deletes), and its memory of resources
/// that left a search but still exist (`confirm`).
pub(in crate::source) struct FullWalk<'a> {
    pub fetcher: Fetcher<'a>,
    pub committer: Committer<'a>,
    pub left_search: &'a LeftSearch,
}

impl FullWalk<'_> {
    /// The end of a full walk that reached the end of its chain: if the
    /// walk is complete (`snapshot::judge_walk`), the ids seen before and not
    /// met are delete candidates; those a read confirms gone (`confirm`) are
    /// deleted, in one transaction. Returns whether the walk is complete
    /// (false: shutdown while confirming or filtering). A read that confirms
    /// nothing fails the poll after the confirmed deletes are committed.
    pub(in crate::source) async fn end(
        &self,
        key: &TargetKey,
        walked: WalkedIds,
        facts: WalkFacts,
        routing: &Routing,
        stop: &Arc<AtomicBool>,
        notes: &mut Notes,
    ) -> Result<bool, PollError> {
        let rt = key.resource_type.as_str();
        let source = self.fetcher.source;
        let store = self.committer.store;
        let walked = match snapshot::judge_walk(rt, walked, &facts) {
            Verdict::Complete(walked) => walked,
            Verdict::Silent => return Ok(true),
            Verdict::Incomplete(why) => {
                notes.warn(why);
                return Ok(true);
            }
        };
        let witness = walked.witness().map(str::to_string);
        let candidates = snapshot::delete_candidates(store, &source.name, rt, walked).await?;
        if candidates.is_empty() {
            return Ok(true);
        }
        let confirmed = confirm_gone(
            &self.fetcher,
            self.left_search,
            rt,
            candidates,
            witness.as_deref(),
            stop,
        )
        .await;
        if confirmed.cancelled {
            return Ok(false);
        }
        if let Some(note) = confirmed.note(rt) {
            notes.warn(note);
        }
        let failure = confirmed.error.map(|error| PollError::ConfirmRead {
            resource_type: rt.to_string(),
            failed: confirmed.failed,
            error,
        });
        if confirmed.gone.is_empty() {
            return failure.map_or(Ok(true), Err);
        }
        let job = PageJob {
            source: source.name.clone(),
            owner_id: source.owner_id.clone(),
            resource_type: rt.to_string(),
            mode: EntryMode::Search,
            window_start: None,
            window_end: None,
            collect_ids: false,
            horizon: Utc::now(),
            routes: routing.routes.clone(),
            detected_at: Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            stop: stop.clone(),
        };
        let commit = match snapshot::route_confirmed(store, job, confirmed.gone).await? {
            Gone::Cancelled => return Ok(false),
            Gone::Deletes(commit) => *commit,
        };
        let deleted = commit.changes;
        (self.committer)
            .commit(commit, &routing.routes, 0, deleted)
            .await?;
        failure.map_or(Ok(true), Err)
    }
}

/// Whether a `last-updated` target's reconciliation is due: its
/// `reconcile` schedule ticked since the last one (or since the poller
/// started, for a target never reconciled). When it is, the next one waits
/// for the schedule's next tick whatever this one's outcome.
pub(in crate::source) async fn reconcile_now(
    committer: &Committer<'_>,
    schedule: Option<&Schedule>,
    key: &TargetKey,
    cancelled: bool,
) -> Result<bool, PollError> {
    let Some(schedule) = schedule else {
        return Ok(false);
    };
    // Per-patient targets share the type's seen rows (see `FullWalk::end`),
    // and a dry run writes nothing, a reconciliation's time included.
    if key.patient.is_some() || !committer.writes() || cancelled {
        return Ok(false);
    }
    let mut state = committer.target_state(key).await?;
    let now = Utc::now();
    let last = state
        .reconciled_at_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    let due = last.is_some_and(|last| snapshot::reconcile_due(schedule, last, now));
    if !due {
        // Never reconciled: the schedule counts from now (in memory).
        if last.is_none() {
            state.reconciled_at_ms = Some(now.timestamp_millis());
            committer.known.set(committer.fence, key, state);
        }
        return Ok(false);
    }
    // Whatever the outcome, the next one waits for the next tick.
    state.reconciled_at_ms = Some(now.timestamp_millis());
    committer.known.set(committer.fence, key, state);
    Ok(true)
}

/// What a reconciliation's walk came to: the changes it found. It fails
/// only on the state, or on a server that asked to be left alone: a failed
/// walk is a note on the target's status, and the next is at the
/// schedule's next tick.
pub(in crate::source) async fn reconciled(
    committer: &Committer<'_>,
    key: &TargetKey,
    walked: Result<Polled, PollError>,
    notes: &mut Notes,
) -> Result<u64, PollError> {
    let rt = key.resource_type.as_str();
    match walked {
        Ok(p) if p.complete => {
            (committer.store)
                .record_reconcile(key, now_ms(), p.changes)
                .await?;
            if p.changes > 0 {
                notes.warn(format!(
                    "{rt}: the reconciliation found {} change(s) the polls had missed",
                    p.changes
                ));
            }
            Ok(p.changes)
        }
        // Shutdown: tried again at the next tick (or at once after a restart).
        Ok(p) => Ok(p.changes),
        Err(e @ PollError::State(_)) => Err(e),
        // The server asked to be left alone (a page's or a confirming
        // read's Retry-After): the poll fails with it, so the whole
        // source pauses as for any other request.
        Err(e) if matches!(e.retry_action(), RetryAction::RetryAfter(_)) => Err(e),
        Err(e) => {
            notes.warn(format!("{rt}: the reconciliation failed: {e}"));
            Ok(0)
        }
    }
}

/// Reads each candidate (within the per-walk cap, through the source's
/// fetch path) to confirm its delete, between two reads of the walk's
/// witness that must vouch for them: see `confirm`.
async fn confirm_gone(
    fetcher: &Fetcher<'_>,
    left_search: &LeftSearch,
    rt: &str,
    candidates: Vec<(String, SeenRow)>,
    witness: Option<&str>,
    stop: &Arc<AtomicBool>,
) -> Confirmed {
    let now = std::time::Instant::now();
    let plan = confirm::plan(
        rt,
        candidates,
        left_search,
        now,
        confirm::MAX_CONFIRMS_PER_WALK,
    );
    let mut confirmed = Confirmed::new(&plan);
    if plan.read.is_empty() {
        return confirmed;
    }
    if let Err(error) = vouch(fetcher, rt, witness).await {
        confirmed.void(error, plan.read.len());
        return confirmed;
    }
    for (id, row) in plan.read {
        if stop.load(Ordering::Relaxed) {
            confirmed.cancelled = true;
            return confirmed;
        }
        // Ids came from the server's pages: checked FHIR ids, and the
        // plan left out those a path cannot carry.
        let Some(url) = confirm::read_url(&fetcher.source.base_url, rt, &id) else {
            continue;
        };
        fetcher.expect_page();
        let reading = confirm::reading(rt, &id, fetcher.fetch(&url).await);
        let now = std::time::Instant::now();
        if !confirmed.take(rt, (id, row), reading, left_search, now) {
            break;
        }
    }
    // The server may have gone into maintenance during the reads.
    if !confirmed.gone.is_empty()
        && let Err(error) = vouch(fetcher, rt, witness).await
    {
        confirmed.void(error, 0);
    }
    confirmed
}

/// Reads the walk's witness: `Ok` when it is there (`confirm::vouches`).
async fn vouch(fetcher: &Fetcher<'_>, rt: &str, witness: Option<&str>) -> Result<(), FetchError> {
    let read =
        witness.and_then(|id| Some((id, confirm::read_url(&fetcher.source.base_url, rt, id)?)));
    let Some((id, url)) = read else {
        return Err(FetchError::Other(
            "no resource the walk met can be read to check the server's 404s".into(),
        ));
    };
    fetcher.expect_page();
    confirm::vouches(confirm::reading(rt, id, fetcher.fetch(&url).await))
}
