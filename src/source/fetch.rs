//! What a source's requests go through: its client within its request
//! budget, after any pause a server asked for, with the watchdog told how
//! long each page may take. The roster, the fan-out, the capability probe
//! and the strategies' helpers take a `Fetcher`, not the whole task (and,
//! to write, a `Committer`: `commit.rs`).

use super::client::{FetchError, Fetched, FhirClient};
use super::errors::PollError;
use super::rate::SourceLimiter;
use crate::config::Source;
use crate::progress::Beat;
use crate::retry_action::RetryAction;
use crate::route::RoutingRx;
use url::Url;

/// A source's request handle, borrowed from its task (`SourceTask::fetcher`).
#[derive(Clone, Copy)]
pub(super) struct Fetcher<'a> {
    pub source: &'a Source,
    pub client: &'a FhirClient,
    /// The source's request budget (`max_requests_per_second`).
    pub limiter: &'a SourceLimiter,
    /// Tells the watchdog by when the task moves on again.
    pub beat: &'a Beat,
    /// The hooks the source feeds: each runs its filter on every entry.
    pub routing: &'a RoutingRx,
}

impl Fetcher<'_> {
    /// GETs `url` within the source's request budget, after any pause; a
    /// 429/503 with `Retry-After` pauses every request of the source.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        // A request asked for during a pause (a history read-ahead's page
        // fetched again) waits it out: the watchdog hears of it.
        if let Some(until) = self.limiter.paused_until() {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            self.beat.expect_within(left + self.page_allowance());
        }
        self.acquire().await;
        let fetched = self.client.get(url).await;
        if let Err(FetchError::Status {
            status,
            retry_after,
        }) = &fetched
            && let RetryAction::RetryAfter(d) = RetryAction::for_status(*status, *retry_after)
        {
            self.limiter.pause(d);
        }
        fetched
    }

    /// Waits until a request may go: after any pause, within the source's
    /// budget. `fetch` does; a request sent otherwise (a bulk export's)
    /// waits here first.
    pub async fn acquire(&self) {
        (self.limiter)
            .acquire(self.source.max_requests_per_second)
            .await;
    }

    /// How long one page may take: the request (and a token request before
    /// it) within their timeouts, then parsing and every hook's filter on
    /// each entry within the filter budget, with room to spare.
    pub fn page_allowance(&self) -> std::time::Duration {
        let filters = crate::filter::budget::TIME
            * self.source.page_size
            * (self.routing.borrow().routes.len() as u32).max(1);
        self.source.timeout * 3 + filters + std::time::Duration::from_secs(30)
    }

    /// Tells the watchdog a page is read now.
    pub fn expect_page(&self) {
        self.beat.expect_within(self.page_allowance());
    }

    /// A page's `next` link, resolved, if it may be followed (`walk::next_link`).
    pub fn next_link(
        &self,
        current: &Url,
        link: Option<&str>,
        rt: &str,
        page: usize,
    ) -> Option<Result<Url, PollError>> {
        super::walk::next_link(self.source, current, link, rt, page)
    }
}
