//! The poll loop of one source: search, follow `next`, diff, route, commit per page.

use super::bundle::{BundleError, format_instant, parse_instant, parse_page};
use super::client::{FetchError, FhirClient};
use super::outcomes::OutcomeRecorder;
use super::targets::KnownTargets;
use super::watermark::WatermarkTracker;
use crate::config::{Source, Start};
use crate::diff::{self, Observed};
use crate::outbox::{Change, Route, route_change};
use crate::state::{PageCommit, PollOutcome, SeenRow, StateError, Store, now_ms};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{resource_type} search page {page}: {error}")]
    Fetch {
        resource_type: String,
        page: usize,
        error: FetchError,
    },
    #[error("{resource_type} search page {page}: {error}")]
    Bundle {
        resource_type: String,
        page: usize,
        error: BundleError,
    },
    #[error("{resource_type} search page {page}: next link is not a URL")]
    BadNextLink { resource_type: String, page: usize },
    #[error("{resource_type} search page {page}: next link loops back to an earlier page")]
    NextLinkLoop { resource_type: String, page: usize },
    #[error(
        "{resource_type}: the server's response gave no time (no Bundle.meta.lastUpdated, no Date header)"
    )]
    NoServerTime { resource_type: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// How far below our estimate of the server's "now" a poll's upper bound sits.
const UNTIL_MARGIN_MS: i64 = 25;

/// The longest a source's `Retry-After` can pause its polls.
const MAX_SOURCE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(3600);

/// Wakes a hook's delivery worker when new messages are committed.
pub type Wakers = Arc<HashMap<String, Arc<Notify>>>;

pub struct SourceTask {
    pub source: Source,
    pub routes: Vec<Route>,
    pub store: Store,
    pub client: FhirClient,
    pub wakers: Wakers,
    /// The first poll comes at a random moment within this span (see
    /// `first_poll_spread`).
    pub first_poll_spread: std::time::Duration,
    /// Each target's state as last committed. The poller is the only writer of
    /// its targets' watermarks, so after the first read a poll needs no
    /// database round trip to know where to start (most polls find nothing).
    pub known: KnownTargets,
    /// Where `run` sends poll outcomes; `None` writes them at once.
    pub outcomes: Option<OutcomeRecorder>,
}

/// What one poll found: changes committed, and resources re-read without a
/// commit (already-seen versions inside the overlap).
#[derive(Debug, Default, Clone, Copy)]
pub struct Polled {
    pub changes: u64,
    pub rereads: u64,
}

impl SourceTask {
    /// Polls every resource type now, then on schedule, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        // A server that answered 429/503 with Retry-After is left alone until then.
        let mut not_before: HashMap<String, std::time::Instant> = HashMap::new();
        // Spread the first polls of many sources so that they do not all hit
        // the EHR in the same instant; the ticks stay spread afterwards.
        let delay = self.first_poll_spread.mul_f64(fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        let mut outcomes = Vec::with_capacity(self.source.resources.len());
        loop {
            for rt in &self.source.resources {
                if cancel.is_cancelled() {
                    break;
                }
                if not_before
                    .get(rt)
                    .is_some_and(|t| std::time::Instant::now() < *t)
                {
                    continue;
                }
                let outcome = self.poll_counted(rt, &cancel).await;
                if let Err(PollError::Fetch {
                    error:
                        FetchError::Status {
                            retry_after: Some(d),
                            ..
                        },
                    ..
                }) = &outcome
                {
                    not_before.insert(
                        rt.clone(),
                        std::time::Instant::now() + (*d).min(MAX_SOURCE_BACKOFF),
                    );
                }
                let error = outcome.as_ref().err().map(|e| e.to_string());
                match &outcome {
                    Ok(p) => {
                        tracing::debug!(source = %self.source.name, resource_type = %rt, changes = p.changes, "poll ok")
                    }
                    Err(e) => {
                        tracing::warn!(source = %self.source.name, resource_type = %rt, error = %e, "poll failed")
                    }
                }
                outcomes.push(PollOutcome {
                    source: self.source.name.clone(),
                    resource_type: rt.clone(),
                    error,
                    at_ms: now_ms(),
                    resources_read: outcome.as_ref().map(|p| p.rereads).unwrap_or(0),
                });
            }
            // One write for the whole tick's outcomes at most, not one per target.
            let tick = std::mem::take(&mut outcomes);
            match &self.outcomes {
                Some(recorder) => recorder.record(tick),
                None => {
                    if let Err(e) = self.store.record_polls(tick).await {
                        tracing::error!(source = %self.source.name, error = %e, "cannot record poll outcomes");
                    }
                }
            }
            let next = self.source.schedule.next_after(Utc::now());
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn search_url(
        &self,
        resource_type: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Url {
        let mut url = self
            .source
            .base_url
            .join(resource_type)
            .unwrap_or_else(|_| self.source.base_url.clone());
        let mut query = String::new();
        if let Some(t) = since {
            query.push_str(&format!("_lastUpdated=ge{}&", format_instant(t)));
        }
        if let Some(t) = until {
            query.push_str(&format!("_lastUpdated=lt{}&", format_instant(t)));
        }
        query.push_str(&format!(
            "_sort=_lastUpdated&_count={}",
            self.source.page_size
        ));
        if let Some(extra) = self.source.params.get(resource_type) {
            let extra = extra.trim_start_matches(['&', '?']);
            if !extra.is_empty() {
                query.push('&');
                query.push_str(extra);
            }
        }
        url.set_query(Some(&query));
        url
    }

    /// Asks the server for its current time (a one-result search): for
    /// `start = "now"`, and to learn the clock before the first bounded poll.
    async fn probe_server_time(&self, rt: &str) -> Result<DateTime<Utc>, PollError> {
        let mut url = self.search_url(rt, None, None);
        url.set_query(Some("_count=1"));
        let fetch_err = |error| PollError::Fetch {
            resource_type: rt.to_string(),
            page: 1,
            error,
        };
        let fetched = self.client.get(&url).await.map_err(fetch_err)?;
        let page = parse_page(&fetched.body).map_err(|error| PollError::Bundle {
            resource_type: rt.to_string(),
            page: 1,
            error,
        })?;
        let now = page
            .server_time
            .or(fetched.date)
            .ok_or_else(|| PollError::NoServerTime {
                resource_type: rt.to_string(),
            })?;
        self.client.note_server_time(now);
        Ok(now)
    }

    /// First poll of a target: fix where it starts.
    async fn initialize(&self, rt: &str) -> Result<(), PollError> {
        let (watermark, floor) = match &self.source.start {
            Start::Beginning => (None, None),
            Start::At(t) => (Some(format_instant(*t)), Some(format_instant(*t))),
            Start::Now => {
                let now = format_instant(self.probe_server_time(rt).await?);
                (Some(now.clone()), Some(now))
            }
        };
        self.store
            .init_target(&self.source.name, rt, watermark, floor)
            .await?;
        Ok(())
    }

    /// One poll of one resource type. Returns the number of changes found.
    pub async fn poll_target(
        &self,
        rt: &str,
        cancel: &CancellationToken,
    ) -> Result<u64, PollError> {
        self.poll_counted(rt, cancel).await.map(|p| p.changes)
    }

    /// One poll; also returns the resources it re-read without committing
    /// anything (to be counted with the poll's outcome).
    async fn poll_counted(
        &self,
        rt: &str,
        cancel: &CancellationToken,
    ) -> Result<Polled, PollError> {
        let result = self.poll_pages(rt, cancel).await;
        if result.is_err() {
            // Whatever failed (a commit, say), read the state afresh next time.
            self.known.forget(rt);
        }
        result
    }

    async fn poll_pages(&self, rt: &str, cancel: &CancellationToken) -> Result<Polled, PollError> {
        let name = &self.source.name;
        let mut state = match self.known.get(rt) {
            Some(known) => known,
            None => self.store.target_state(name, rt).await?,
        };
        if !state.initialized {
            self.initialize(rt).await?;
            state = self.store.target_state(name, rt).await?;
            if self.source.start == Start::Now {
                return Ok(Polled::default());
            }
        }
        let floor = state.floor.as_deref().and_then(parse_instant);
        let mut watermark = state.watermark.as_deref().and_then(parse_instant);
        let overlap =
            chrono::Duration::from_std(self.source.overlap).unwrap_or(chrono::Duration::MAX);
        let since = watermark.map(|w| {
            let back = w
                .checked_sub_signed(overlap)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            floor.map_or(back, |f| back.max(f))
        });

        // The upper bound closes the result set for the length of this poll:
        // writes landing meanwhile wait for the next poll instead of shifting
        // pages, and an update moving a resource out of the set shows as a
        // smaller Bundle.total (see drift below).
        if self.client.server_now().is_none() {
            match self.probe_server_time(rt).await {
                // A server that never tells its time is polled without an upper
                // bound (only the overlap protects it), not refused forever.
                Ok(_) | Err(PollError::NoServerTime { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // A small margin in case our estimate of the server's clock runs ahead.
        let until = self
            .client
            .server_now()
            .map(|t| t - chrono::Duration::milliseconds(UNTIL_MARGIN_MS));
        let mut url = self.search_url(rt, since, until);
        // Offset-paged servers skip resources when the set changes under them.
        // Once the total changes between pages, the watermark stays where it
        // was before that page, so the next poll re-reads what may have been
        // skipped (the diff drops what was not).
        let mut last_total: Option<u64> = None;
        let mut drifted = false;
        let mut visited = HashSet::new();
        let mut tracker = WatermarkTracker::new();
        let mut polled = Polled::default();
        let detected_at = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut page_no = 0usize;
        loop {
            page_no += 1;
            visited.insert(url.to_string());
            let fetched = self
                .client
                .get(&url)
                .await
                .map_err(|error| PollError::Fetch {
                    resource_type: rt.to_string(),
                    page: page_no,
                    error,
                })?;
            let page = parse_page(&fetched.body).map_err(|error| PollError::Bundle {
                resource_type: rt.to_string(),
                page: page_no,
                error,
            })?;
            if let Some(t) = page.server_time.or(fetched.date) {
                self.client.note_server_time(t);
            }
            if let (Some(before), Some(now)) = (last_total, page.total) {
                if before != now && !drifted {
                    drifted = true;
                    tracing::debug!(source = %name, resource_type = %rt, page = page_no, "result set changed while paging; watermark held for a re-read");
                }
            }
            last_total = page.total.or(last_total);

            let entries: Vec<_> = page
                .entries
                .iter()
                .filter(|e| e.resource_type == rt)
                // Only what the search asked for: nothing before `start`, and
                // nothing before the window (a server that ignores `_lastUpdated`,
                // or a lagging replica serving an old version). Everything older
                // was read by earlier polls, so the seen-versions table need not
                // remember it for ever (see `prune_seen`).
                .filter(|e| match (since.or(floor), e.last_updated) {
                    (Some(f), Some(lu)) => lu >= f,
                    _ => true,
                })
                .collect();
            let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
            let mut seen = if ids.is_empty() {
                HashMap::new()
            } else {
                self.store.load_seen(name, rt, ids).await?
            };

            let mut commit = PageCommit {
                source: name.clone(),
                resource_type: rt.to_string(),
                resources_read: entries.len() as u64,
                ..Default::default()
            };
            for e in &entries {
                if diff::same_version(seen.get(&e.id), e.version_id.as_deref()) {
                    continue;
                }
                let hash = diff::content_hash(e.raw.as_bytes());
                let observed = Observed {
                    version_id: e.version_id.as_deref(),
                    last_updated: e.last_updated,
                    content_hash: &hash,
                };
                let Some(event) = diff::classify(seen.get(&e.id), &observed) else {
                    continue;
                };
                let change = Change {
                    source: name,
                    owner_id: &self.source.owner_id,
                    resource_type: rt,
                    resource_id: &e.id,
                    version_id: e.version_id.as_deref(),
                    last_updated: e.last_updated_raw.as_deref(),
                    content_hash: &hash,
                    event,
                    raw: e.raw,
                    time: &detected_at,
                };
                // Never set: filters are not cancelled yet (see `route_change`).
                let never = std::sync::atomic::AtomicBool::new(false);
                if route_change(
                    &change,
                    &self.routes,
                    &mut commit.messages,
                    &mut commit.filter_errors,
                    &never,
                )
                .is_err()
                {
                    // Cancelled: drop the page uncommitted; it is read again.
                    return Ok(polled);
                }
                let row = SeenRow {
                    version_id: e.version_id.clone(),
                    last_updated: e.last_updated.map(format_instant),
                    content_hash: hash,
                };
                // The same id twice in one poll (page drift): the second is a duplicate.
                seen.insert(e.id.clone(), row.clone());
                commit.seen.push((e.id.clone(), row));
                commit.changes += 1;
            }

            let instants: Vec<_> = entries.iter().filter_map(|e| e.last_updated).collect();
            let next = match &page.next {
                Some(link) => Some(url.join(link).map_err(|_| PollError::BadNextLink {
                    resource_type: rt.to_string(),
                    page: page_no,
                })?),
                None => None,
            };
            let allowed = tracker.page(&instants, next.is_some());
            if let Some(new) = allowed.filter(|_| !drifted) {
                if watermark.is_none_or(|w| new > w) {
                    watermark = Some(new);
                    commit.watermark = Some(format_instant(new));
                }
            }
            let woken: HashSet<String> = commit.messages.iter().map(|m| m.hook.clone()).collect();
            polled.changes += commit.changes;
            // A page that changes nothing (empty, or only re-read versions
            // already seen) needs no transaction: the usual poll of a quiet target.
            let empty = commit.changes == 0
                && commit.watermark.is_none()
                && commit.filter_errors.is_empty();
            if empty {
                polled.rereads += commit.resources_read;
            } else {
                let moved = commit.watermark.clone();
                self.store.commit_page(commit).await?;
                if moved.is_some() {
                    state.watermark = moved;
                }
            }
            self.known.set(rt, state.clone());
            for hook in woken {
                if let Some(w) = self.wakers.get(&hook) {
                    w.notify_one();
                }
            }

            match next {
                None => break,
                Some(n) if visited.contains(n.as_str()) => {
                    return Err(PollError::NextLinkLoop {
                        resource_type: rt.to_string(),
                        page: page_no,
                    });
                }
                Some(n) => url = n,
            }
            // Stopping between pages is safe: everything read so far is committed.
            if cancel.is_cancelled() {
                break;
            }
        }
        Ok(polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Content, Schedule};
    use crate::filter::Filter;
    use crate::sandbox::FhirSandbox;
    use crate::state::test_util::temp_store;
    use std::time::Duration;

    fn task(base: &str, store: Store, page_size: u32, start: Start) -> SourceTask {
        let source = Source {
            name: "s".into(),
            base_url: Url::parse(&format!("{base}/")).unwrap(),
            resources: vec!["Observation".into()],
            schedule: Schedule::Every(Duration::from_secs(1)),
            page_size,
            overlap: Duration::ZERO,
            start,
            owner_id: "o".into(),
            timeout: Duration::from_secs(5),
            params: Default::default(),
        };
        let routes = vec![Route {
            hook: "h".into(),
            filter: Arc::new(Filter::compile("true").unwrap()),
            content: Content::IdOnly,
        }];
        SourceTask {
            source,
            routes,
            store,
            client: FhirClient::new(Duration::from_secs(5)).unwrap(),
            wakers: Arc::new(HashMap::new()),
            first_poll_spread: Duration::ZERO,
            known: Default::default(),
            outcomes: None,
        }
    }

    async fn pending(store: &Store) -> usize {
        store.claim_due("h", vec![], 10_000).await.unwrap().len()
            + store.hook_report("h").await.unwrap().delivered as usize
    }

    /// With no overlap at all, ties that straddle page boundaries must still be
    /// read exactly once: the watermark never moves into a tie.
    #[tokio::test]
    async fn ties_across_pages_are_read_once_without_overlap() {
        let fhir = FhirSandbox::start(0).await.unwrap();
        let (_d, store) = temp_store();
        let t = task(&fhir.base_url(), store.clone(), 7, Start::Beginning);
        let cancel = CancellationToken::new();
        fhir.store.freeze_clock(Some(1_700_000_000_000));
        for _ in 0..25 {
            fhir.store
                .upsert("Observation", None, serde_json::json!({}));
        }
        assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 25);
        // More at the same instant, then later ones, then a re-poll: nothing twice.
        for _ in 0..10 {
            fhir.store
                .upsert("Observation", None, serde_json::json!({}));
        }
        fhir.store.freeze_clock(Some(1_700_000_000_005));
        for _ in 0..4 {
            fhir.store
                .upsert("Observation", None, serde_json::json!({}));
        }
        assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 14);
        assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 0);
        assert_eq!(pending(&store).await, 39);
        let st = store.target_state("s", "Observation").await.unwrap();
        assert_eq!(st.watermark.as_deref(), Some("2023-11-14T22:13:20.005Z"));
    }

    #[tokio::test]
    async fn start_now_and_bad_bundles() {
        let fhir = FhirSandbox::start(0).await.unwrap();
        let (_d, store) = temp_store();
        for _ in 0..3 {
            fhir.store
                .upsert("Observation", None, serde_json::json!({}));
        }
        let t = task(&fhir.base_url(), store.clone(), 100, Start::Now);
        let cancel = CancellationToken::new();
        assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        fhir.store
            .upsert("Observation", None, serde_json::json!({}));
        // Each poll reads up to the server's "now" less a 25 ms margin.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 1);

        // A base URL that answers 404 is a clear error, not a panic.
        let bad = task(
            &format!("{}/nowhere", fhir.base_url()),
            store.clone(),
            100,
            Start::Beginning,
        );
        let err = bad
            .poll_target("Observation", &cancel)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("Observation search page 1: HTTP 404"), "{err}");
    }
}
