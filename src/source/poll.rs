//! The poll loop of one source: its ticks and each target's turn in them
//! (`run`, `take_turns`), and the execution of a walk (`walk_pages`: fetch,
//! process, commit per page, as the `PageWalk` of `walk.rs` decides). The
//! strategies' own helpers (a history read-ahead, a full walk's end and
//! reconciliation, the bulk export job) are handed the task's request
//! handle (`fetcher`, see `fetch.rs`) and write handle (`committer`, see
//! `commit.rs`), never the task.

use super::client::FhirClient;
use super::commit::{Committer, DryRun};
pub use super::errors::PollError;
use super::fetch::Fetcher;
use super::notes::Notes;
use super::outcomes::OutcomeRecorder;
use super::page::{self, PageJob};
use super::start;
use super::strategy::bulk_export::Exporter;
use super::strategy::history::read_ahead::{ReadAhead, pages_ahead};
use super::strategy::snapshot::WalkedIds;
use super::strategy::snapshot::full_walk::{self, FullWalk};
use super::strategy::{self, Walk};
use super::targets::KnownTargets;
use super::walk::next_link;
use super::walk::{PageRead, PageWalk, Polled, Step, TurnsSoFar, WalkStart};
use super::watermark::horizon;
use crate::config::{Source, Start};
use crate::fhir::{format_instant, parse_instant};
use crate::progress::Beat;
use crate::retry_action::RetryAction;
use crate::route::RoutingRx;
use crate::state::{Fence, PollOutcome, Store, TargetKey, TargetState, now_ms};
use crate::telemetry::Event;
use crate::telemetry::source::{PollCompleted, PollFailure};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// How far below our estimate of the server's "now" a poll's upper bound sits.
const UNTIL_MARGIN_MS: i64 = 25;

/// How late past its next tick a sleeping source may wake and still count as
/// making progress (a busy runtime, a slow outcome write).
const IDLE_SLACK: std::time::Duration = std::time::Duration::from_secs(10);

/// Debug builds only: `FHIR_BRIDGE_TEST_WEDGE=<source>` makes that source's
/// task hang for good after its first round of polls, as a wedged task would,
/// so that a test can see the watchdog pings stop.
#[cfg(debug_assertions)]
async fn wedge_for_tests(source: &str) {
    if std::env::var("FHIR_BRIDGE_TEST_WEDGE").is_ok_and(|s| s == source) {
        tracing::warn!(
            source,
            "FHIR_BRIDGE_TEST_WEDGE: this source's task hangs now"
        );
        std::future::pending::<()>().await;
    }
}

/// Per-patient targets' outcomes are written this many at a time.
const OUTCOME_BATCH: usize = 1_000;

pub struct SourceTask {
    pub source: Source,
    /// The hooks this source feeds, swapped on reload.
    pub routing: RoutingRx,
    pub store: Store,
    /// Shown with every write that moves a watermark (see `state::Fence`).
    pub fence: Fence,
    pub client: FhirClient,
    /// The first poll comes at a random moment within this span (see
    /// `first_poll_spread`).
    pub first_poll_spread: std::time::Duration,
    /// Each target's state as last committed. The poller is the only writer of
    /// its targets' watermarks, so after the first read a poll needs no
    /// database round trip to know where to start (most polls find nothing).
    pub known: KnownTargets,
    /// The source's request budget (`max_requests_per_second`): the
    /// client's (`FhirClient::limiter`), which its token requests spend from too.
    pub limiter: Arc<super::rate::SourceLimiter>,
    /// Where `run` sends poll outcomes; `None` writes them at once.
    pub outcomes: Option<OutcomeRecorder>,
    /// Tells the watchdog by when this task moves on again.
    pub beat: Beat,
    /// `poll --dry-run`: page commits are collected here instead of written.
    pub dry_run: Option<DryRun>,
    /// Resources that left a full walk's search but still exist (read 200):
    /// not read again for a while (see `confirm`).
    pub left_search: super::strategy::snapshot::confirm::LeftSearch,
}

/// What a source's loop carries from one tick to the next.
#[derive(Default)]
struct Carried {
    /// A fan-out source's roster.
    roster: super::fanout::RosterState,
    /// The capability statement's warnings, each shown with its type's
    /// first poll outcome.
    capability: HashMap<String, String>,
    /// Where the next tick's turn starts: the first target the last one
    /// did not reach (a server's Retry-After, a shutdown).
    cursor: Option<TargetKey>,
    /// The turns so far of polls that yielded after a slice.
    sliced: HashMap<TargetKey, TurnsSoFar>,
    /// Outcomes not yet written.
    outcomes: Vec<PollOutcome>,
}

impl SourceTask {
    /// Polls every resource type now, then on schedule, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        // Spread the first polls of many sources so that they do not all hit
        // the EHR in the same instant; the ticks stay spread afterwards.
        let delay = self.first_poll_spread.mul_f64(fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        let stop = stop_flag(&cancel);
        // Shown with each type's first poll outcome (and logged once). The
        // statement request goes through `fetch` like every other: within
        // the budget, and a 429/503 with Retry-After pauses the source.
        self.fetcher().expect_page();
        let capability = super::capability::last_updated_warnings(&self.fetcher()).await;
        for w in capability.values() {
            tracing::warn!(source = %self.source.name, "{w}");
        }
        let mut carried = Carried {
            capability,
            outcomes: Vec::with_capacity(self.source.resources.len()),
            ..Default::default()
        };
        loop {
            let tick_started = std::time::Instant::now();
            // A server that answered 429/503 with Retry-After is left alone
            // until then: the whole source, every request (`rate.rs`).
            self.refresh_roster(&mut carried.roster, &mut carried.outcomes)
                .await;
            let targets = carried.roster.targets(&self.source);
            self.drop_unpolled(&targets, &mut carried.sliced, &mut carried.outcomes);
            let next_tick =
                (self.take_turns(targets, &mut carried, tick_started, &cancel, &stop)).await;
            let Carried {
                sliced, outcomes, ..
            } = &mut carried;
            if cancel.is_cancelled() {
                outcomes.extend(sliced.drain().map(|(k, s)| self.abandoned(k, s)));
            }
            // One write for the whole tick's outcomes at most, not one per target.
            self.record_outcomes(std::mem::take(outcomes)).await;
            let wait = match next_tick {
                Some(t) => t.saturating_duration_since(std::time::Instant::now()),
                None => self.wait_after(tick_started),
            };
            self.beat.expect_within(wait + IDLE_SLACK);
            #[cfg(debug_assertions)]
            wedge_for_tests(&self.source.name).await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {
                    let left = sliced.drain().map(|(k, s)| self.abandoned(k, s));
                    self.record_outcomes(left.collect()).await;
                    return;
                }
            }
        }
    }

    /// One tick's turns: every target's poll in turn (from `carried.cursor`),
    /// then the walks that yielded after a slice. Once every target had its
    /// turn, the next tick's time is fixed (returned); the yielded walks go
    /// on until then, and what is left of them waits for its turn in the
    /// next tick, after the targets before it: a backlog delays another
    /// target's poll by about one slice, not by the rest of its chain.
    async fn take_turns(
        &self,
        targets: Vec<TargetKey>,
        carried: &mut Carried,
        tick_started: std::time::Instant,
        cancel: &CancellationToken,
        stop: &Arc<AtomicBool>,
    ) -> Option<std::time::Instant> {
        let mut turn: VecDeque<TargetKey> =
            super::fanout::in_turn(targets, carried.cursor.as_ref()).into();
        carried.cursor = None;
        let mut first_turns = turn.len();
        let mut next_tick: Option<std::time::Instant> = None;
        loop {
            if first_turns == 0 && next_tick.is_none() {
                next_tick = Some(std::time::Instant::now() + self.wait_after(tick_started));
            }
            if next_tick.is_some_and(|t| std::time::Instant::now() >= t) {
                break;
            }
            let Some(key) = turn.pop_front() else { break };
            first_turns = first_turns.saturating_sub(1);
            if cancel.is_cancelled() || self.limiter.is_paused() {
                carried.cursor = Some(key);
                break;
            }
            let rt = &key.resource_type;
            let mut sofar = carried.sliced.remove(&key).unwrap_or_default();
            let notes = &mut sofar.notes;
            if let Some(w) = carried.capability.remove(rt) {
                notes.warn(w);
            }
            if let Some(w) = carried.roster.take_note() {
                notes.warn(w);
            }
            let started = std::time::Instant::now();
            let outcome = self.poll_counted(&key, cancel, stop, notes).await;
            sofar.took += started.elapsed();
            if let Ok(p) = &outcome {
                sofar.changes += p.changes;
                sofar.rereads += p.rereads;
                if p.yielded {
                    // A long chain: its next slice after the other targets'
                    // turns (it stops at `max_pages_per_poll` pages in all).
                    turn.push_back(key.clone());
                    carried.sliced.insert(key, sofar);
                    continue;
                }
            }
            carried.outcomes.push(self.poll_ended(&key, outcome, sofar));
            // Thousands of per-patient targets: their outcomes go in
            // batches rather than all at the end of a long round.
            if carried.outcomes.len() >= OUTCOME_BATCH {
                self.record_outcomes(std::mem::take(&mut carried.outcomes))
                    .await;
            }
        }
        next_tick
    }

    /// Patients forgotten by the roster (gone longer than `roster_grace`):
    /// their targets' state is read afresh should they come back.
    fn forget_patients(&self, patients: &[String]) {
        for p in patients {
            for rt in &self.source.resources {
                self.known.forget(&TargetKey {
                    source: self.source.name.clone(),
                    resource_type: rt.clone(),
                    patient: Some(p.clone()),
                });
            }
        }
    }

    /// A fan-out source's roster, read again when due (unless the server
    /// asked for a pause); patients gone for good are forgotten. Without a
    /// roster yet, its error goes to each type's population-wide outcome:
    /// there are no per-patient targets to carry it (status falls back to it).
    async fn refresh_roster(
        &self,
        roster: &mut super::fanout::RosterState,
        outcomes: &mut Vec<PollOutcome>,
    ) {
        let Some(fan_out) = &self.source.fan_out else {
            return;
        };
        if !self.limiter.is_paused() {
            let record = self.dry_run.is_none();
            let forgotten =
                (roster.refresh_if_due(&self.fetcher(), &self.store, fan_out, record)).await;
            self.forget_patients(&forgotten);
        }
        if !roster.loaded()
            && let Some(error) = roster.take_note()
        {
            for rt in &self.source.resources {
                outcomes.push(PollOutcome {
                    source: self.source.name.clone(),
                    resource_type: rt.clone(),
                    error: Some(error.clone()),
                    at_ms: now_ms(),
                    ..Default::default()
                });
            }
        }
    }

    /// A walk paused for a target no longer polled is not resumed; what its
    /// turns found so far is recorded.
    fn drop_unpolled(
        &self,
        targets: &[TargetKey],
        sliced: &mut HashMap<TargetKey, TurnsSoFar>,
        outcomes: &mut Vec<PollOutcome>,
    ) {
        let polled: HashSet<&TargetKey> = targets.iter().collect();
        self.known.paused().retain(|k| polled.contains(k));
        let gone: Vec<TargetKey> = (sliced.keys())
            .filter(|k| !polled.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(sofar) = sliced.remove(&key) {
                outcomes.push(self.abandoned(key, sofar));
            }
        }
    }

    /// A target's poll ended (not yielded): told to telemetry, and its
    /// outcome for the state. `fetch` paused the source already on a
    /// Retry-After; requests made outside it (a bulk export's) pause it here.
    fn poll_ended(
        &self,
        key: &TargetKey,
        outcome: Result<Polled, PollError>,
        sofar: TurnsSoFar,
    ) -> PollOutcome {
        let notes = sofar.notes;
        if let Err(e) = &outcome
            && let RetryAction::RetryAfter(d) = e.retry_action()
        {
            self.limiter.pause(d);
        }
        let error = outcome.as_ref().err().map(|e| e.to_string());
        PollCompleted {
            source: &self.source.name,
            resource_type: &key.resource_type,
            outcome: match &outcome {
                Ok(_) => Ok(sofar.changes),
                Err(e) => Err(PollFailure {
                    outcome: e.outcome(),
                    error: e,
                }),
            },
            duration: sofar.took,
            pages: notes.pages,
            resources: notes.resources,
        }
        .emit();
        PollOutcome {
            source: self.source.name.clone(),
            resource_type: key.resource_type.clone(),
            patient: key.patient.clone(),
            error,
            at_ms: now_ms(),
            resources_read: outcome.as_ref().map(|_| sofar.rereads).unwrap_or(0),
            skipped: notes.skipped,
            future: notes.future,
            warning: notes.last,
        }
    }

    /// The outcome of a sliced walk that does not go on (the source stops,
    /// its patient left the roster): what its turns found is recorded, as a
    /// walk stopped by a shutdown between two pages always had it recorded.
    /// Its skipped entries and warnings would otherwise never reach status:
    /// the next walk starts from the committed watermark, past those pages.
    fn abandoned(&self, key: TargetKey, sofar: TurnsSoFar) -> PollOutcome {
        PollOutcome {
            source: self.source.name.clone(),
            resource_type: key.resource_type,
            patient: key.patient,
            error: None,
            at_ms: now_ms(),
            resources_read: sofar.rereads,
            skipped: sofar.notes.skipped,
            future: sofar.notes.future,
            warning: sofar.notes.last,
        }
    }

    /// How long after a tick that started at `tick_started` the next one
    /// starts, counted from now.
    fn wait_after(&self, tick_started: std::time::Instant) -> std::time::Duration {
        let wait = (self.source.schedule).wait_after_tick(tick_started.elapsed(), Utc::now());
        // Nudged onto the server's second boundary while its clock is
        // known only to the second (see `clock`).
        self.client.aligned_wait(wait)
    }

    async fn record_outcomes(&self, tick: Vec<PollOutcome>) {
        match &self.outcomes {
            Some(recorder) => recorder.record(tick),
            None => {
                if let Err(e) = self.store.record_polls(tick).await {
                    tracing::error!(source = %self.source.name, error = %e, "cannot record poll outcomes");
                }
            }
        }
    }

    /// The source's request handle: its client, budget and watchdog.
    pub(super) fn fetcher(&self) -> Fetcher<'_> {
        Fetcher {
            source: &self.source,
            client: &self.client,
            limiter: &self.limiter,
            beat: &self.beat,
            routing: &self.routing,
        }
    }

    /// The source's write handle: the state under its fence, or the dry
    /// run's sink, and its targets kept in memory.
    pub(super) fn committer(&self) -> Committer<'_> {
        Committer {
            store: &self.store,
            fence: &self.fence,
            dry_run: self.dry_run.as_ref(),
            known: &self.known,
        }
    }

    /// One poll of one resource type. Returns the number of changes found.
    pub async fn poll_target(
        &self,
        rt: &str,
        cancel: &CancellationToken,
    ) -> Result<u64, PollError> {
        let stop = Arc::new(AtomicBool::new(cancel.is_cancelled()));
        let mut notes = Notes::default();
        let key = TargetKey::population(&self.source.name, rt);
        // One whole poll: a walk that yields after its slice (there are no
        // other targets here to take a turn) goes on at once.
        let mut changes = 0;
        loop {
            let polled = self.poll_counted(&key, cancel, &stop, &mut notes).await?;
            changes += polled.changes;
            if !polled.yielded || cancel.is_cancelled() {
                return Ok(changes);
            }
        }
    }

    /// One poll; also returns the resources it re-read without committing
    /// anything (to be counted with the poll's outcome).
    async fn poll_counted(
        &self,
        key: &TargetKey,
        cancel: &CancellationToken,
        stop: &Arc<AtomicBool>,
        notes: &mut Notes,
    ) -> Result<Polled, PollError> {
        let result = self.poll_pages(key, cancel, stop, notes).await;
        if result.is_err() {
            // Whatever failed (a commit, say), read the state afresh next time.
            self.known.forget(key);
        }
        result
    }

    /// The most pages one poll of one target reads.
    fn max_pages(&self) -> usize {
        self.source.max_pages_per_poll as usize
    }

    /// One poll of a target with its strategy, then its reconciliation when
    /// one is due.
    async fn poll_pages(
        &self,
        key: &TargetKey,
        cancel: &CancellationToken,
        stop: &Arc<AtomicBool>,
        notes: &mut Notes,
    ) -> Result<Polled, PollError> {
        let strategy = self.source.strategies.for_type(&key.resource_type);
        if strategy == strategy::Strategy::BulkExport {
            let export = Exporter {
                fetcher: self.fetcher(),
                committer: self.committer(),
            };
            return export.poll(key, cancel, stop, notes).await;
        }
        let walk = Walk::Poll(strategy);
        let mut polled = self.walk_pages(key, cancel, stop, notes, walk).await?;
        if polled.yielded {
            // Reconciliation comes after the whole poll.
            return Ok(polled);
        }
        polled.changes += self.reconcile_if_due(key, cancel, stop, notes).await?;
        Ok(polled)
    }

    /// A `last-updated` target's reconciliation, when one is due: the
    /// snapshot strategy says when (`full_walk::reconcile_now`) and what its
    /// walk came to (`full_walk::reconciled`); the walk is this loop's.
    /// Returns the changes it found.
    async fn reconcile_if_due(
        &self,
        key: &TargetKey,
        cancel: &CancellationToken,
        stop: &Arc<AtomicBool>,
        notes: &mut Notes,
    ) -> Result<u64, PollError> {
        let schedule = self.source.reconcile.as_ref();
        let committer = self.committer();
        if !full_walk::reconcile_now(&committer, schedule, key, cancel.is_cancelled()).await? {
            return Ok(0);
        }
        let walked = (self.walk_pages(key, cancel, stop, notes, Walk::Reconcile)).await;
        full_walk::reconciled(&committer, key, walked, notes).await
    }

    /// One walk of a target's pages: its strategy's poll, or a reconciliation.
    /// What to do after each page is the `PageWalk`'s to decide (`walk.rs`);
    /// this fetches, processes, commits and wakes.
    pub(super) async fn walk_pages(
        &self,
        key: &TargetKey,
        cancel: &CancellationToken,
        stop: &Arc<AtomicBool>,
        notes: &mut Notes,
        kind: Walk,
    ) -> Result<Polled, PollError> {
        let rt = key.resource_type.as_str();
        // One routing for the whole turn: a reload applies from the next one
        // (a sliced walk's next slice: pages already committed stay routed
        // as they were, the rest go to the hooks of the reloaded config).
        let routing = self.routing.borrow().clone();
        let Some((mut state, mut walk)) = self.begin_walk(key, notes, kind).await? else {
            return Ok(Polled::default());
        };
        let full = kind.is_full();
        let polling = kind.strategy();
        let first_url = |since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>| {
            strategy::first_url(polling, &self.source, key, since, until)
        };
        // A full walk's ids, for its end to infer deletes.
        let mut walked = WalkedIds::default();
        let window_end = walk.window_end();
        let mut polled = Polled::default();
        let fetcher = self.fetcher();
        let mut ahead = pages_ahead(polling, &fetcher, walk.url(), rt, cancel, notes).await;
        loop {
            let fetched = match next_page(&fetcher, &mut walk, &mut ahead).await {
                Ok(f) => f,
                Err(error) => match walk.fetch_failed(error, notes, first_url) {
                    Step::Yield => return Ok(self.keep_for_next_turn(key, walk, polled)),
                    Step::Fail(e) => return Err(e),
                    // A new search (its first page), or as `fetch_failed` never answers.
                    Step::Restart | Step::Fetch | Step::Done { .. } => continue,
                },
            };
            let page_no = walk.page_no();
            let job = self.page_job(&walk, kind, window_end, &routing, stop);
            let super::client::Fetched {
                body,
                date,
                exchange,
            } = fetched;
            let page = page::process_blocking(self.store.clone(), job, body, page_no).await?;
            if page.cancelled {
                // Shutdown: nothing of this page is committed; it is read again.
                return Ok(polled);
            }
            walked.extend(&page.ids);
            walked.note_unreadable(page.skipped.len());
            self.note_page(&page, (&exchange, date), page_no, rt, notes);
            let after = walk.page_read(self.page_read(&page, &walk, &ahead, page_no), notes);
            if after.drift_began {
                tracing::debug!(source = %self.source.name, resource_type = %rt, page = page_no, "result set changed while paging; watermark held for a re-read");
            }
            let mut commit = page.commit;
            commit.patient = key.patient.clone();
            commit.watermark = after.watermark.map(format_instant);
            let counts = (page.created, page.deleted);
            self.settle_page(key, commit, counts, &routing, &mut state, &mut polled)
                .await?;
            match after.then {
                Step::Fetch | Step::Restart => {}
                Step::Yield => return Ok(self.keep_for_next_turn(key, walk, polled)),
                Step::Done { complete } => {
                    polled.complete = complete;
                    break;
                }
                Step::Fail(e) => return Err(e),
            }
            // Stopping between pages is safe: everything read so far is committed.
            if cancel.is_cancelled() {
                break;
            }
        }
        if full && polled.complete {
            let facts = walk.facts(key.patient.is_some());
            let end = self.full_walk();
            polled.complete = (end.end(key, walked, facts, &routing, stop, notes)).await?;
        }
        Ok(polled)
    }

    /// A walk that yields after its slice keeps its place (`walk.rs`): its
    /// next turn goes on from there.
    fn keep_for_next_turn(&self, key: &TargetKey, walk: PageWalk, mut polled: Polled) -> Polled {
        self.known.paused().keep(key, walk);
        polled.yielded = true;
        polled
    }

    /// What the walk is told of a page the pipeline read: its total, its
    /// entries' times, and the page after it (the next one read ahead, or
    /// its `next` link, checked).
    fn page_read<'p>(
        &self,
        page: &'p page::PageOutcome,
        walk: &PageWalk,
        ahead: &ReadAhead,
        page_no: usize,
    ) -> PageRead<'p> {
        let rt = walk.resource_type();
        let next = match ahead.reversed {
            // Read ahead and checked: the next is the page queued after.
            true => ahead.successor().map(Ok),
            false => next_link(&self.source, walk.url(), page.next.as_deref(), rt, page_no),
        };
        PageRead {
            total: page.total,
            bad_total: page.bad_total,
            instants: &page.instants,
            next,
        }
    }

    /// What the end of a full walk goes through (`full_walk::FullWalk`).
    fn full_walk(&self) -> FullWalk<'_> {
        FullWalk {
            fetcher: self.fetcher(),
            committer: self.committer(),
            left_search: &self.left_search,
        }
    }

    /// What the page pipeline needs to know of the walk's next page.
    fn page_job(
        &self,
        walk: &PageWalk,
        kind: Walk,
        window_end: Option<DateTime<Utc>>,
        routing: &crate::route::Routing,
        stop: &Arc<AtomicBool>,
    ) -> PageJob {
        PageJob {
            source: self.source.name.clone(),
            owner_id: self.source.owner_id.clone(),
            resource_type: walk.resource_type().to_string(),
            mode: strategy::entry_mode(kind.strategy()),
            window_start: walk.window_start(),
            window_end,
            collect_ids: kind.is_full(),
            horizon: horizon(self.client.server_now(), Utc::now(), self.source.overlap),
            routes: routing.routes.clone(),
            detected_at: walk.detected_at().to_string(),
            stop: stop.clone(),
        }
    }

    /// Where a walk of `key` starts: a sliced walk's next turn, or a new
    /// walk from the committed state. `None`: the target was just set to
    /// start at the server's "now", with nothing to read yet.
    async fn begin_walk(
        &self,
        key: &TargetKey,
        notes: &mut Notes,
        kind: Walk,
    ) -> Result<Option<(TargetState, PageWalk)>, PollError> {
        let mut state = self.committer().target_state(key).await?;
        if !state.initialized {
            state = start::initialize(&self.fetcher(), &self.committer(), key).await?;
            if self.source.start == Start::Now {
                return Ok(None);
            }
        }
        // A sliced walk goes on exactly where its last turn stopped
        // (`walk.rs`): no new search, the same bounds and drift flag.
        if super::walk::slices(kind)
            && let Some(walk) = self.known.paused().take(key)
        {
            return Ok(Some((state, walk.resume())));
        }
        // The upper bound closes the result set for the length of this poll:
        // writes landing meanwhile wait for the next poll instead of shifting
        // pages, and an update moving a resource out of the set shows as a
        // smaller Bundle.total (see drift in `walk.rs`).
        if self.client.server_now().is_none() {
            match start::probe_server_time(&self.fetcher(), key).await {
                Ok(_) => {}
                // A server that never tells its time (or tells an absurd one)
                // is polled without an upper bound (only the overlap protects
                // it), not refused forever.
                Err(PollError::NoServerTime { .. }) => {}
                Err(PollError::Clock { error, .. }) => notes.warn(error.to_string()),
                Err(e) => return Err(e),
            }
        }
        // A small margin in case our estimate of the server's clock runs
        // ahead, or the source's `lag` (writes that become visible late).
        let behind = chrono::Duration::from_std(self.source.lag)
            .unwrap_or(chrono::Duration::MAX)
            .max(chrono::Duration::milliseconds(UNTIL_MARGIN_MS));
        let start = WalkStart {
            resource_type: &key.resource_type,
            kind,
            max_pages: self.max_pages(),
            overlap: chrono::Duration::from_std(self.source.overlap)
                .unwrap_or(chrono::Duration::MAX),
            floor: state.floor.as_deref().and_then(parse_instant),
            watermark: state.watermark.as_deref().and_then(parse_instant),
            horizon: horizon(self.client.server_now(), Utc::now(), self.source.overlap),
            until: self.client.server_now().map(|t| t - behind),
            detected_at: Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        };
        let walk = PageWalk::start(start, notes, |since, until| {
            strategy::first_url(kind.strategy(), &self.source, key, since, until)
        });
        Ok(Some((state, walk)))
    }

    /// What a page tells the operator: its skipped entries, entries from the
    /// future, and the server's clock as the response told it.
    fn note_page(
        &self,
        page: &page::PageOutcome,
        (exchange, date): (&super::client::Exchange, Option<DateTime<Utc>>),
        page_no: usize,
        rt: &str,
        notes: &mut Notes,
    ) {
        notes.page(page.commit.resources_read);
        if let Err(e) = self.client.note_response(exchange, date, page.server_time) {
            notes.warn(e.to_string());
        }
        for s in &page.skipped {
            notes.skip(format!(
                "page {page_no}, entry {}: {}; skipped, not delivered",
                s.index, s.reason
            ));
        }
        if let Some((id, t)) = &page.last_future {
            notes.future(
                page.future,
                format!(
                    "{rt}/{id}: meta.lastUpdated {} is after the server's clock; delivered, watermark not moved past it",
                    format_instant(*t)
                ),
            );
        }
    }

    /// Commits a page (or records it, on a dry run) unless it changes
    /// nothing, and keeps the target's state. `counts`: the page's creates
    /// and deletes, for its event.
    async fn settle_page(
        &self,
        key: &TargetKey,
        commit: crate::state::PageCommit,
        counts: (u64, u64),
        routing: &crate::route::Routing,
        state: &mut TargetState,
        polled: &mut Polled,
    ) -> Result<(), PollError> {
        polled.changes += commit.changes;
        // A page that changes nothing (empty, or only re-read versions
        // already seen) needs no transaction: the usual poll of a quiet
        // target. It has no messages: no hook to wake.
        let empty =
            commit.changes == 0 && commit.watermark.is_none() && commit.filter_errors.is_empty();
        if empty {
            polled.rereads += commit.resources_read;
        } else {
            let moved = commit.watermark.clone();
            let (created, deleted) = counts;
            (self.committer())
                .commit(commit, &routing.routes, created, deleted)
                .await?;
            if moved.is_some() {
                state.watermark = moved;
            }
        }
        self.known.set(&self.fence, key, state.clone());
        Ok(())
    }
}

/// The walk's next page: the next one read ahead, else fetched (the
/// watchdog told either way).
async fn next_page(
    fetcher: &Fetcher<'_>,
    walk: &mut PageWalk,
    ahead: &mut ReadAhead,
) -> Result<super::client::Fetched, super::client::FetchError> {
    let queued = ahead.pop();
    walk.begin_page(queued.as_ref().map(|(u, _)| u));
    fetcher.expect_page();
    match queued {
        Some((_, f)) => Ok(f),
        None => fetcher.fetch(walk.url()).await,
    }
}

/// Set once `cancel` fires. Filters run on the blocking pool and look at
/// this flag, so that a slow filter never holds up a shutdown.
fn stop_flag(cancel: &CancellationToken) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let stopped = cancel.clone();
    tokio::spawn(async move {
        stopped.cancelled().await;
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

#[cfg(test)]
#[path = "poll_tests.rs"]
mod tests;
