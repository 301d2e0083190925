//! Runs a `bulk-export` source's job: kick off (the status URL saved before
//! it is first polled), check its status once per turn of the source's loop
//! (no sooner than `Retry-After` says), so that the source's other types keep
//! their schedule while the job runs; stream each output file line by line
//! into the page pipeline in chunks (at most `page_size` lines and about
//! `MAX_CHUNK_BYTES`, each chunk committed with the job's progress), then
//! move every exported type's watermark to the manifest's `transactionTime`
//! (never past the horizon, see `watermark`) and `DELETE` the job. A restart
//! finds the job in state and resumes it: the same status URL, the committed
//! files and lines skipped. A job whose status gives no usable manifest
//! `export_timeout` after its kick-off (whether or not an earlier one did) is
//! cancelled and started again from the watermarks.
//!
//! What a turn decides (a stale saved job, what a status means, an expired
//! file, where reading resumes, where the watermarks move) is
//! `decisions.rs`, without I/O; `Exporter` executes it through the source's
//! `Fetcher` and `Committer`.

use super::decisions::{
    OnStatus, Stale, export_watermark, files_expired, on_status, resume_at, stale,
};
use super::status::{StatusCheck, check_status};
use super::{self as bulk, ChunkBuilder, Line, LineSplitter, MAX_LINE_BYTES, Manifest};
use crate::config::Start;
use crate::fhir::bundle::EntryMode;
use crate::route::Routing;
use crate::source::commit::Committer;
use crate::source::errors::{ExportError, PollError};
use crate::source::fetch::Fetcher;
use crate::source::notes::Notes;
use crate::source::page::{self, PageJob};
use crate::source::start;
use crate::source::walk::Polled;
use crate::source::watermark::horizon;
use crate::state::{ExportJob, ExportProgress, PageCommit, TargetKey};
use chrono::{DateTime, Utc};
use reqwest::Method;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

/// How a job's run ended.
enum JobEnd {
    /// Read to the end: watermarks moved, the job deleted.
    Done,
    /// Shutdown: everything read so far is committed; the job resumes.
    Stopped,
}

/// What an export asks for (see `export_window`).
struct ExportWindow {
    /// `_since`: `None` reads everything.
    since: Option<DateTime<Utc>>,
    /// The types whose stored watermark was in the future (see `Run::repaired`).
    repaired: Vec<String>,
    /// The horizon: a saved job's `_since` past it is abandoned.
    limit: DateTime<Utc>,
}

/// The export a poll wants (see `Exporter::current_job`).
#[derive(Clone, Copy)]
struct Wanted<'a> {
    types: &'a [String],
    since: Option<DateTime<Utc>>,
    /// The kick-off URL: a saved job asked by another is stale.
    request: &'a str,
    limit: DateTime<Utc>,
}

/// What one poll of the job carries along.
struct Run<'a> {
    cancel: &'a CancellationToken,
    stop: &'a Arc<AtomicBool>,
    notes: &'a mut Notes,
    polled: Polled,
    routing: Arc<Routing>,
    window_start: Option<DateTime<Utc>>,
    detected_at: String,
    page_no: usize,
    /// The types whose stored watermark was in the future: the export reads
    /// them from the start, and its end sets their watermark back.
    repaired: Vec<String>,
    /// When this turn began, and the source's interval: a pending job is
    /// waited for within the turn while that is short (`bulk::waits_in_turn`).
    turn: Instant,
    interval: std::time::Duration,
}

/// A source's bulk export, run through its handles: requests within its
/// budget, and writes under its fence (or a dry run's sink).
pub(in crate::source) struct Exporter<'a> {
    pub fetcher: Fetcher<'a>,
    pub committer: Committer<'a>,
}

impl Exporter<'_> {
    /// A poll of a `bulk-export` target. The source's first bulk-export type
    /// runs the job for all of them; the others have nothing of their own to do.
    pub(in crate::source) async fn poll(
        &self,
        key: &TargetKey,
        cancel: &CancellationToken,
        stop: &Arc<AtomicBool>,
        notes: &mut Notes,
    ) -> Result<Polled, PollError> {
        let types =
            (self.fetcher.source.strategies).bulk_export_types(&self.fetcher.source.resources);
        if types.first() != Some(&key.resource_type) || key.patient.is_some() {
            return Ok(Polled::default());
        }
        let Some(ExportWindow {
            since,
            repaired,
            limit,
        }) = self.export_window(key, &types, notes).await?
        else {
            // Exports begin from the next tick, from now on.
            return Ok(Polled::default());
        };
        let mut run = Run {
            cancel,
            stop,
            notes,
            polled: Polled::default(),
            routing: self.fetcher.routing.borrow().clone(),
            window_start: since,
            detected_at: Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            page_no: 0,
            repaired,
            turn: Instant::now(),
            interval: self.fetcher.source.schedule.nominal_interval(Utc::now()),
        };
        let mut kicked_off = false;
        // A dry run writes nothing: a saved job it gave up on stays saved.
        let mut saved_job_abandoned = false;
        let request = bulk::kickoff_url(self.fetcher.source, &types, None).to_string();
        let timeout = self.fetcher.source.strategies.export_timeout;
        loop {
            let wanted = Wanted {
                types: &types,
                since,
                request: &request,
                limit,
            };
            let turn = self.job_status(wanted, &mut saved_job_abandoned, &mut run);
            let Some((job, check, new)) = turn.await? else {
                return Ok(run.polled);
            };
            kicked_off |= new;
            let expired = bulk::job_expired(job.kicked_off_at, crate::state::now_ms(), timeout);
            let manifest = match on_status(check, kicked_off, expired, timeout) {
                OnStatus::Read(manifest) => manifest,
                OnStatus::Later { wait, error } => {
                    (self.committer.known)
                        .set_export_status_due(&job.job_url, Instant::now() + wait);
                    return error.map_or(Ok(run.polled), Err);
                }
                OnStatus::Restart { cancel, why } => {
                    if cancel {
                        self.cancel_job(&job.job_url).await;
                    }
                    saved_job_abandoned = self.abandon_job(run.notes, why).await?;
                    continue;
                }
                OnStatus::Fail(error) => return Err(error),
            };
            return match self.run_job(&types, &job, manifest, &mut run).await {
                Ok(JobEnd::Done) => {
                    run.polled.complete = true;
                    Ok(run.polled)
                }
                Ok(JobEnd::Stopped) => Ok(run.polled),
                Err(e) => match files_expired(&e, kicked_off) {
                    Some(why) => {
                        self.cancel_job(&job.job_url).await;
                        saved_job_abandoned = self.abandon_job(run.notes, why).await?;
                        continue;
                    }
                    None => Err(e),
                },
            };
        }
    }

    /// This turn's job and its status, and whether it was just kicked off;
    /// `None` when its status is not due yet (one status request per turn,
    /// no sooner than `Retry-After`: the source's other types are polled
    /// meanwhile) or on shutdown. A job past `export_timeout` is asked once
    /// more, whatever the wait.
    async fn job_status(
        &self,
        wanted: Wanted<'_>,
        abandoned: &mut bool,
        run: &mut Run<'_>,
    ) -> Result<Option<(ExportJob, StatusCheck, bool)>, PollError> {
        let (job, new) = (self.current_job(wanted, abandoned, run.notes)).await?;
        // A resumed job's window is its own.
        run.window_start = job.since.as_deref().and_then(crate::fhir::parse_instant);
        // Asked only when the status gives no usable manifest (see
        // `job_expired`): a manifest read earlier does not save a job
        // whose status URL then fails for ever.
        let timeout = self.fetcher.source.strategies.export_timeout;
        let expired =
            |job: &ExportJob| bulk::job_expired(job.kicked_off_at, crate::state::now_ms(), timeout);
        let due = self.committer.known.export_status_due(&job.job_url);
        if !expired(&job) && due.is_some_and(|at| Instant::now() < at) {
            return Ok(None);
        }
        let check = self.await_status(&job, expired, run).await?;
        Ok(check.map(|check| (job, check, new)))
    }

    /// The job to poll, and whether it was just kicked off: the saved one,
    /// unless it is stale (cancelled and forgotten, see `stale`), else a new
    /// one. `abandoned`: a dry run's saved job passed over (it writes nothing).
    async fn current_job(
        &self,
        wanted: Wanted<'_>,
        abandoned: &mut bool,
        notes: &mut Notes,
    ) -> Result<(ExportJob, bool), PollError> {
        let name = &self.fetcher.source.name;
        loop {
            let saved = match *abandoned {
                true => None,
                false => self.committer.store.export_job(name).await?,
            };
            let Some(job) = saved else {
                let job = (self.kick_off(wanted.types, wanted.since, wanted.request)).await?;
                return Ok((job, true));
            };
            match stale(&job, wanted.request, wanted.limit) {
                None => return Ok((job, false)),
                Some(Stale::OtherRequest) => {
                    self.cancel_job(&job.job_url).await;
                    self.committer.store.drop_export_job(name).await?;
                    notes.warn(
                        "the saved bulk export job asked for other types, group or server than the config now does; it was cancelled and a new export started from the watermarks"
                            .to_string(),
                    );
                }
                Some(Stale::SinceAfterClock) => {
                    self.cancel_job(&job.job_url).await;
                    *abandoned = self.abandon_job(notes,
                        "the saved bulk export job asked for changes since a time after the server's clock; it was cancelled and a new export started from the watermarks"
                            .to_string(),
                    ).await?;
                }
            }
        }
    }

    /// Where the export reads from: the oldest of the types' watermarks less
    /// the overlap (never before the floor), or the floor when a type has
    /// none or one in the future (those are `repaired`). `None` for a source
    /// just started with `start = now`: it exports from the next tick.
    async fn export_window(
        &self,
        key: &TargetKey,
        types: &[String],
        notes: &mut Notes,
    ) -> Result<Option<ExportWindow>, PollError> {
        let name = &self.fetcher.source.name;
        // The window starts at the oldest of the types' watermarks.
        let mut since: Option<DateTime<Utc>> = None;
        let mut from_beginning = false;
        let mut floor: Option<DateTime<Utc>> = None;
        let mut fresh = false;
        let mut repaired = Vec::new();
        self.learn_clock_if_ahead(key, types, notes).await?;
        let limit = horizon(
            self.fetcher.client.server_now(),
            Utc::now(),
            self.fetcher.source.overlap,
        );
        for rt in types {
            let k = TargetKey::population(name, rt);
            let mut state = self.committer.store.target_state(&k).await?;
            if !state.initialized {
                state = start::initialize(&self.fetcher, &self.committer, &k).await?;
                fresh = true;
            }
            let parse = |s: &Option<String>| s.as_deref().and_then(crate::fhir::parse_instant);
            let type_floor = parse(&state.floor);
            match parse(&state.watermark) {
                // Written before the bridge bounded `transactionTime`: as a
                // `last-updated` poll does, export from the start again (the
                // diff drops what was delivered) rather than ask for nothing.
                Some(w) if w > limit && Some(w) != type_floor => {
                    notes.warn(format!(
                        "{rt}: the stored watermark {} is in the future; exporting from the start again",
                        crate::fhir::format_instant(w)
                    ));
                    from_beginning = true;
                    repaired.push(rt.clone());
                }
                Some(w) => since = Some(since.map_or(w, |s| s.min(w))),
                None => from_beginning = true,
            }
            floor = type_floor.or(floor);
        }
        if fresh && self.fetcher.source.start == Start::Now {
            return Ok(None);
        }
        let overlap = chrono::Duration::from_std(self.fetcher.source.overlap)
            .unwrap_or(chrono::Duration::MAX);
        let since = match from_beginning {
            true => floor,
            false => since.map(|w| {
                let back = w
                    .checked_sub_signed(overlap)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                floor.map_or(back, |f| back.max(f))
            }),
        };
        Ok(Some(ExportWindow {
            since,
            repaired,
            limit,
        }))
    }

    /// The job's status, waited for within the turn while it is pending and
    /// the wait is short (see `bulk::waits_in_turn`); `None` on shutdown. A
    /// failed job is forgotten (the next poll kicks off a new one).
    async fn await_status(
        &self,
        job: &ExportJob,
        expired: impl Fn(&ExportJob) -> bool,
        run: &mut Run<'_>,
    ) -> Result<Option<StatusCheck>, PollError> {
        loop {
            let checked = match check_status(&self.fetcher, job, run.notes).await {
                Ok(checked) => checked,
                Err(error) => {
                    if self.committer.writes() {
                        self.committer
                            .store
                            .drop_export_job(&self.fetcher.source.name)
                            .await?;
                    }
                    return Err(error.into());
                }
            };
            match checked {
                // Within half the source's interval the job is waited for
                // here (the tick's other targets still keep their period,
                // see `Schedule::wait_after_tick`); past it, the next turn
                // goes on. A dry run keeps no job to come back to: it
                // waits here, within `export_timeout`.
                StatusCheck::Pending(wait)
                    if !expired(job)
                        && (!self.committer.writes()
                            || bulk::waits_in_turn(run.turn.elapsed(), wait, run.interval)) =>
                {
                    self.fetcher
                        .beat
                        .expect_within(wait + self.fetcher.page_allowance());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = run.cancel.cancelled() => return Ok(None),
                    }
                }
                check => return Ok(Some(check)),
            }
        }
    }

    /// Forgets the saved job (a dry run writes nothing, and only stops
    /// looking at it) and says why. Returns whether the saved job is to be
    /// passed over from now on (a dry run's).
    async fn abandon_job(&self, notes: &mut Notes, why: String) -> Result<bool, PollError> {
        if self.committer.writes() {
            self.committer
                .store
                .drop_export_job(&self.fetcher.source.name)
                .await?;
        }
        notes.warn(why);
        Ok(!self.committer.writes())
    }

    /// Before judging the stored watermarks against the horizon with the
    /// server's clock unknown (after a restart), and one of them is after
    /// ours plus the tolerance: asks the server its time (a one-result
    /// search), so that a server clock ahead of ours does not make its own
    /// `transactionTime` look like the future and start a full export. A
    /// failed probe leaves our clock as the estimate (noted).
    async fn learn_clock_if_ahead(
        &self,
        key: &TargetKey,
        types: &[String],
        notes: &mut Notes,
    ) -> Result<(), PollError> {
        if self.fetcher.client.server_now().is_some() {
            return Ok(());
        }
        let local = horizon(None, Utc::now(), self.fetcher.source.overlap);
        let mut ahead = false;
        for rt in types {
            let state = (self.committer.store)
                .target_state(&TargetKey::population(&self.fetcher.source.name, rt))
                .await?;
            let w = state
                .watermark
                .as_deref()
                .and_then(crate::fhir::parse_instant);
            ahead |= w.is_some_and(|w| w > local);
        }
        if ahead && let Err(e) = start::probe_server_time(&self.fetcher, key).await {
            notes.warn(format!(
                "the server's clock could not be learnt ({e}); the stored watermarks are judged against ours"
            ));
        }
        Ok(())
    }

    /// `$export` with `Prefer: respond-async`: 202 and the job's status URL
    /// in `Content-Location`, saved before anything else happens.
    async fn kick_off(
        &self,
        types: &[String],
        since: Option<DateTime<Utc>>,
        request: &str,
    ) -> Result<ExportJob, PollError> {
        let url = bulk::kickoff_url(self.fetcher.source, types, since);
        self.fetcher.acquire().await;
        let resp = (self.fetcher.client)
            .send(Method::GET, &url, "respond-async")
            .await
            .map_err(ExportError::KickOff)?;
        let status = resp.status().as_u16();
        if status != 202 {
            let retry_after = crate::http::parse_retry_after(resp.headers());
            if status >= 400 {
                let error = crate::source::client::FetchError::Status {
                    status,
                    retry_after,
                };
                return Err(ExportError::KickOff(error).into());
            }
            return Err(ExportError::KickOffStatus(status).into());
        }
        let job_url = resp
            .headers()
            .get(reqwest::header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ExportError::NoJobUrl)?;
        // The status URL gets the source's credentials: on its origins only.
        let job_url =
            bulk::file_url(self.fetcher.source, &url, job_url).ok_or(ExportError::ForeignJobUrl)?;
        let since = since.map(crate::fhir::format_instant);
        if !self.committer.writes() {
            return Ok(ExportJob {
                job_url: job_url.to_string(),
                since,
                kicked_off_at: crate::state::now_ms(),
                transaction_time: None,
                files_done: 0,
                lines_done: 0,
                request: Some(request.to_string()),
                manifest: None,
            });
        }
        Ok((self.committer.store)
            .save_export_job(&self.fetcher.source.name, job_url.as_str(), since, request)
            .await?)
    }

    /// The files not yet read, then the end: every exported type's
    /// watermark moves to the manifest's `transactionTime`, never past the
    /// horizon.
    async fn run_job(
        &self,
        types: &[String],
        job: &ExportJob,
        manifest: Manifest,
        run: &mut Run<'_>,
    ) -> Result<JobEnd, PollError> {
        let name = &self.fetcher.source.name;
        let job_url = Url::parse(&job.job_url).map_err(|_| ExportError::ForeignJobUrl)?;
        let fingerprint = bulk::fingerprint(&manifest);
        let (files_done, lines_done, holds) = resume_at(job, &fingerprint, run.notes);
        if self.committer.writes() {
            let tt = crate::fhir::format_instant(manifest.transaction_time);
            (self.committer.store)
                .note_export_manifest(name, &tt, &fingerprint, !holds)
                .await?;
        }
        if !manifest.errors.is_empty() {
            run.notes.warn(format!(
                "the bulk export reported {} error file(s) (OperationOutcome); the exported resources are delivered",
                manifest.errors.len()
            ));
        }
        for (index, file) in manifest.output.iter().enumerate() {
            let done = index as i64;
            if done < files_done || !types.contains(&file.resource_type) {
                continue;
            }
            let url = bulk::file_url(self.fetcher.source, &job_url, &file.url)
                .ok_or(ExportError::ForeignFile { file: index })?;
            let skip = if done == files_done {
                lines_done.max(0) as u64
            } else {
                0
            };
            let rt = &file.resource_type;
            if !self.download(index, rt, &url, skip, run).await? {
                return Ok(JobEnd::Stopped);
            }
            if self.committer.writes() {
                self.committer
                    .store
                    .export_file_done(name, done + 1)
                    .await?;
            }
        }
        let (server_now, overlap) = (
            self.fetcher.client.server_now(),
            self.fetcher.source.overlap,
        );
        let judged = export_watermark(manifest.transaction_time, job, server_now, overlap);
        if let Some(w) = judged.warning("the bulk export's transactionTime") {
            run.notes.warn(w);
        }
        self.finish(types, &job_url, judged.watermark(), run)
            .await?;
        Ok(JobEnd::Done)
    }

    /// The end of a job read to the end: every exported type's watermark
    /// moves to `watermark` (the `repaired` ones too, back from the future),
    /// their states are read afresh, and the job is deleted.
    async fn finish(
        &self,
        types: &[String],
        job_url: &Url,
        watermark: DateTime<Utc>,
        run: &Run<'_>,
    ) -> Result<(), PollError> {
        let name = &self.fetcher.source.name;
        let tt = crate::fhir::format_instant(watermark);
        if self.committer.writes() {
            let repaired = run.repaired.clone();
            (self.committer.store)
                .finish_export(self.committer.fence, name, types.to_vec(), &tt, repaired)
                .await?;
            for rt in types {
                self.committer
                    .known
                    .forget(&TargetKey::population(name, rt));
            }
        }
        self.cancel_job(job_url.as_str()).await;
        Ok(())
    }

    /// `DELETE` of a job, finished or abandoned: the server may drop its
    /// files now. A failure leaves them to the server's own expiry: nothing
    /// of ours depends on it. Never off the source's origins.
    async fn cancel_job(&self, job_url: &str) {
        let name = &self.fetcher.source.name;
        let Some(url) = Url::parse(job_url)
            .ok()
            .filter(|u| self.fetcher.source.allows(u))
        else {
            return;
        };
        self.fetcher.acquire().await;
        match self.fetcher.client.send(Method::DELETE, &url, "").await {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => {}
            Ok(r) => {
                tracing::warn!(source = %name, status = r.status().as_u16(), "bulk export: DELETE of the job failed")
            }
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "bulk export: DELETE of the job failed")
            }
        }
    }

    /// Streams output file `index` (of type `rt`), its first `skip` lines
    /// already committed. Returns false on shutdown.
    async fn download(
        &self,
        index: usize,
        rt: &str,
        url: &Url,
        skip: u64,
        run: &mut Run<'_>,
    ) -> Result<bool, PollError> {
        let file_err = |error| ExportError::File { file: index, error };
        self.fetcher.acquire().await;
        self.fetcher.expect_page();
        let mut resp = (self.fetcher.client)
            .send(Method::GET, url, "")
            .await
            .map_err(file_err)?;
        if !resp.status().is_success() {
            let error = crate::source::client::FetchError::Status {
                status: resp.status().as_u16(),
                retry_after: crate::http::parse_retry_after(resp.headers()),
            };
            return Err(file_err(error).into());
        }
        // Bytes in an encoding the bridge did not ask for (it asks for none)
        // are not NDJSON: read as lines, every one would be skipped and the
        // watermark would move past them. The file is an error instead.
        if let Some(encoding) = bulk::unasked_encoding(resp.headers()) {
            let error = crate::source::client::FetchError::Other(format!(
                "Content-Encoding {encoding}, not asked for; not read"
            ));
            return Err(file_err(error).into());
        }
        let mut chunks = ChunkBuilder::new(self.fetcher.source.page_size.max(1) as usize);
        let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
        let mut pending: Vec<Line> = Vec::new();
        let mut line_no: u64 = 0;
        loop {
            self.fetcher.expect_page();
            let piece = self
                .fetcher
                .client
                .next_chunk(&mut resp)
                .await
                .map_err(file_err)?;
            let ended = piece.is_none();
            match piece {
                Some(bytes) => splitter.push(&bytes, &mut pending),
                None => {
                    let last = std::mem::replace(&mut splitter, LineSplitter::new(0)).finish();
                    pending.extend(last);
                }
            }
            for line in pending.drain(..) {
                line_no += 1;
                if line_no <= skip {
                    continue;
                }
                if let Some(lines) = chunks.push(line)
                    && !self.commit_lines(index, rt, lines, line_no, run).await?
                {
                    return Ok(false);
                }
            }
            if ended {
                break;
            }
            // Between committed chunks a shutdown loses nothing.
            if run.cancel.is_cancelled() && chunks.is_empty() {
                return Ok(false);
            }
        }
        if let Some(lines) = chunks.finish()
            && !self.commit_lines(index, rt, lines, line_no, run).await?
        {
            return Ok(false);
        }
        Ok(true)
    }

    /// One chunk of lines through the page pipeline, committed with the
    /// job's progress (`upto`: the file's lines read so far). Returns false
    /// when a shutdown abandoned it (nothing committed).
    async fn commit_lines(
        &self,
        index: usize,
        rt: &str,
        lines: Vec<Line>,
        upto: u64,
        run: &mut Run<'_>,
    ) -> Result<bool, PollError> {
        let first_line = upto + 1 - lines.len() as u64;
        let (body, bad) = bulk::lines_to_bundle(&lines, rt);
        drop(lines);
        for (i, reason) in bad {
            run.notes.skip(format!(
                "{rt} file {index}, line {}: {reason}; skipped, not delivered",
                first_line + i as u64
            ));
        }
        run.page_no += 1;
        let job = PageJob {
            source: self.fetcher.source.name.clone(),
            owner_id: self.fetcher.source.owner_id.clone(),
            resource_type: rt.to_string(),
            mode: EntryMode::Search,
            window_start: run.window_start,
            window_end: None,
            collect_ids: false,
            horizon: horizon(
                self.fetcher.client.server_now(),
                Utc::now(),
                self.fetcher.source.overlap,
            ),
            routes: run.routing.routes.clone(),
            detected_at: run.detected_at.clone(),
            stop: run.stop.clone(),
        };
        let page =
            page::process_blocking(self.committer.store.clone(), job, body, run.page_no).await?;
        if page.cancelled {
            return Ok(false);
        }
        run.notes.page(page.commit.resources_read);
        for s in &page.skipped {
            run.notes.skip(format!(
                "{rt} file {index}, from line {first_line}, entry {}: {}; skipped, not delivered",
                s.index, s.reason
            ));
        }
        let mut commit: PageCommit = page.commit;
        commit.export = Some(ExportProgress {
            file: index as i64,
            lines: upto as i64,
        });
        run.polled.changes += commit.changes;
        if commit.changes == 0 {
            run.polled.rereads += commit.resources_read;
        }
        let counts = (page.created, page.deleted);
        (self.committer)
            .commit(commit, &run.routing.routes, counts.0, counts.1)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::client::FhirClient;
    use axum::body::{Body, Bytes};
    use futures_util::StreamExt;
    use std::time::Duration;

    const LINE: &str = r#"{"resourceType":"Observation","id":"x","status":"final"}"#;

    const LINES: usize = 900_000; // about 50 MB

    /// Serves an NDJSON body generated as it is sent: `LINES` short lines,
    /// with one line of 20 MB (over the bound) in the middle.
    async fn big_ndjson_server() -> Url {
        let app = axum::Router::new().route(
            "/big.ndjson",
            axum::routing::get(|| async {
                let lines = futures_util::stream::iter(0..LINES).map(|i| {
                    let line = if i == LINES / 2 {
                        format!("{}\n", "y".repeat(20 * 1024 * 1024))
                    } else {
                        format!("{LINE}\n")
                    };
                    Ok::<_, std::io::Error>(Bytes::from(line))
                });
                Body::from_stream(lines)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}/big.ndjson")).unwrap()
    }

    #[tokio::test]
    async fn a_large_file_streams_in_small_pieces_and_one_line_at_a_time() {
        let url = big_ndjson_server().await;
        let client = FhirClient::new(Duration::from_secs(30)).unwrap();
        let mut resp = client.send(Method::GET, &url, "").await.unwrap();
        let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
        let (mut bytes, mut biggest_piece, mut held) = (0usize, 0usize, 0usize);
        let (mut lines, mut too_long) = (0usize, 0usize);
        let mut out = Vec::new();
        while let Some(piece) = client.next_chunk(&mut resp).await.unwrap() {
            bytes += piece.len();
            biggest_piece = biggest_piece.max(piece.len());
            splitter.push(&piece, &mut out);
            held = held.max(splitter.held());
            for line in out.drain(..) {
                match line {
                    Line::Complete(l) => {
                        assert_eq!(l, LINE.as_bytes());
                        lines += 1;
                    }
                    Line::TooLong => too_long += 1,
                }
            }
        }
        assert!(splitter.finish().is_none());
        assert!(bytes > 70_000_000, "{bytes}");
        assert_eq!((lines, too_long), (LINES - 1, 1));
        // Never the body whole: pieces as they came off the wire, and at
        // most one line (bounded) held between them.
        assert!(biggest_piece <= 1024 * 1024, "{biggest_piece}");
        assert!(held <= MAX_LINE_BYTES, "{held}");
    }
}
