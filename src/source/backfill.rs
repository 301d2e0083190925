//! A backfill: one walk of `[since, until)` per resource type, beside the
//! daemon's ordinary polling. It feeds the same page pipeline as a poll
//! (diff, filter, enqueue, one commit per page) under the source's own name,
//! so what both see is deduplicated by the seen versions and message ids.
//! Its progress is committed with each page: an interrupted backfill resumes
//! from the last committed page. Pages are rate-limited, so an initial load
//! does not crowd out the EHR's other clients.

use super::client::FhirClient;
use super::errors::PollError;
use super::page::{self, PageJob};
use super::strategy::search_url;
use super::walk::next_link;
use super::watermark::{WatermarkTracker, horizon};
use crate::config::Source;
use crate::fhir::bundle::EntryMode;
use crate::fhir::{format_instant, parse_instant};
use crate::route::Route;
use crate::state::{BackfillProgress, Fence, Store};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Backfill {
    pub source: Source,
    pub routes: Vec<Route>,
    pub store: Store,
    /// The backfill lock's (see `state::Fence`).
    pub fence: Fence,
    pub client: FhirClient,
    pub since: DateTime<Utc>,
    /// Pages per second, at most.
    pub rate: f64,
}

/// How far one resource type's backfill got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillStatus {
    pub pages: i64,
    pub resources: i64,
    pub changes: i64,
    /// `Bundle.total` of the first page, when the server gives it.
    pub total: Option<u64>,
    /// Resumed an interrupted run.
    pub resumed: bool,
    pub done: bool,
}

impl Backfill {
    /// Walks one resource type to the end (or until `cancel`), calling
    /// `on_page` after each committed page.
    pub async fn run(
        &self,
        rt: &str,
        cancel: &CancellationToken,
        mut on_page: impl FnMut(&BackfillStatus),
    ) -> Result<BackfillStatus, PollError> {
        let name = &self.source.name;
        let (mut status, from, until) = self.resume_or_start(rt).await?;
        if status.done {
            return Ok(status);
        }
        let until_t = parse_instant(&until).unwrap_or_else(Utc::now);
        let mut url = search_url(&self.source, rt, Some(from), Some(until_t));
        let mut tracker = WatermarkTracker::new();
        let mut visited = HashSet::new();
        let pause = Duration::from_secs_f64(1.0 / self.rate.clamp(0.01, 1000.0));
        let stop = Arc::new(AtomicBool::new(false));
        let detected_at = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut page_no = 0usize;
        loop {
            page_no += 1;
            visited.insert(url.to_string());
            let next_slot = tokio::time::Instant::now() + pause;
            let fetched = tokio::select! {
                _ = cancel.cancelled() => return Ok(status),
                f = self.client.get(&url) => f.map_err(|error| PollError::Fetch {
                    resource_type: rt.to_string(),
                    page: page_no,
                    error,
                })?,
            };
            let job = self.page_job(rt, &detected_at, &stop);
            let outcome =
                page::process_blocking(self.store.clone(), job, fetched.body, page_no).await?;
            // The server's clock, for the horizon of the next pages' cursor
            // (an untrusted one leaves the estimate as it was).
            let _ =
                (self.client).note_response(&fetched.exchange, fetched.date, outcome.server_time);
            status.total = status.total.or(outcome.total);
            // Committed before a bad next link fails the run, as a poll does.
            let next = next_link(&self.source, &url, outcome.next.as_deref(), rt, page_no);
            let cursor = tracker.page(&outcome.instants, next.is_some());
            let mut commit = outcome.commit;
            commit.backfill = Some(BackfillProgress {
                cursor: cursor.map(format_instant),
            });
            status.pages += 1;
            status.resources += commit.resources_read as i64;
            status.changes += commit.changes as i64;
            self.store.commit_page(&self.fence, commit).await?;
            on_page(&status);
            match next.transpose()? {
                None => break,
                Some(n) if visited.contains(n.as_str()) => {
                    return Err(PollError::NextLinkLoop {
                        resource_type: rt.to_string(),
                        page: page_no,
                    });
                }
                Some(n) => url = n,
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(status),
                _ = tokio::time::sleep_until(next_slot) => {}
            }
        }
        self.store.finish_backfill(name, rt).await?;
        status.done = true;
        Ok(status)
    }

    /// Where a backfill of `rt` starts, and its status so far: its saved
    /// job's cursor (its pages were committed), or, with no job or one for
    /// another range, a new job from `since` to now. The last: the job's
    /// upper bound, fixed when it started. A job already done is its status.
    async fn resume_or_start(
        &self,
        rt: &str,
    ) -> Result<(BackfillStatus, DateTime<Utc>, String), PollError> {
        let name = &self.source.name;
        let since = format_instant(self.since);
        match self.store.backfill_job(name, rt).await? {
            Some(job) if job.since == since => {
                let status = BackfillStatus {
                    pages: job.pages,
                    resources: job.resources,
                    changes: job.changes,
                    resumed: job.pages > 0,
                    done: job.done,
                    total: None,
                };
                let from = job.cursor.as_deref().and_then(parse_instant);
                Ok((status, from.unwrap_or(self.since), job.until))
            }
            // No job, or one for another range: start (over).
            _ => {
                let until = format_instant(Utc::now());
                self.store.start_backfill(name, rt, &since, &until).await?;
                Ok((BackfillStatus::default(), self.since, until))
            }
        }
    }

    /// What the page pipeline needs to know of a backfill's next page.
    fn page_job(&self, rt: &str, detected_at: &str, stop: &Arc<AtomicBool>) -> PageJob {
        PageJob {
            source: self.source.name.clone(),
            owner_id: self.source.owner_id.clone(),
            resource_type: rt.to_string(),
            // A backfill reads the search (history may be pruned long ago).
            mode: EntryMode::Search,
            window_start: Some(self.since),
            window_end: None,
            collect_ids: false,
            horizon: horizon(self.client.server_now(), Utc::now(), self.source.overlap),
            routes: self.routes.clone(),
            detected_at: detected_at.to_string(),
            stop: stop.clone(),
        }
    }
}
