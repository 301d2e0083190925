//! HTTP GETs of FHIR search pages. Errors carry no bodies, tokens or query
//! strings: they end up in logs and status.

use super::clock::ServerClock;
use super::rate::SourceLimiter;
use crate::http::{BodyError, error_text, parse_retry_after, read_bounded, size_text};
use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, CACHE_CONTROL, DATE, HeaderMap, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::{Origin, Url};

/// Responses larger than this are refused rather than buffered.
const MAX_PAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {status}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response larger than {}", size_text(*limit))]
    TooLarge { limit: usize },
    /// A redirect the client would not follow: to another origin (scheme,
    /// host, port), without a usable `Location`, or past the limit. The
    /// target is not shown: it came from outside and may carry identifiers.
    #[error("HTTP {status} redirect {why} (not followed)")]
    Redirect { status: u16, why: RedirectRefusal },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

pub struct Fetched {
    pub body: Vec<u8>,
    /// The HTTP `Date` header: the server's clock, second precision.
    pub date: Option<DateTime<Utc>>,
    /// When the request went out and its answer came back, on our clock.
    pub exchange: Exchange,
}

/// The moments of one request on our monotonic clock: the server read its
/// clock (for the `Date` header, and for the Bundle) in between.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub sent: Instant,
    pub headers_received: Instant,
    pub body_received: Instant,
}

#[derive(Clone)]
pub struct FhirClient {
    http: reqwest::Client,
    timeout: Duration,
    /// Our estimate of the server's clock, from every response that told the time.
    clock: Arc<ServerClock>,
    /// Credentials for this source's requests (none by default).
    auth: Option<Arc<crate::auth::Authenticator>>,
    /// The source's request budget, shared with its poll task
    /// (`SourceTask::limiter`): the client spends from it for the requests
    /// it adds on its own (a token request, SMART discovery, the retry after
    /// a 401); the caller takes the turn of the request it asked for.
    limiter: Arc<SourceLimiter>,
    per_second: Option<f64>,
    /// Where requests and redirects may go: the base URL's origin and the
    /// source's `allowed_origins`. Empty: a redirect stays on the origin of
    /// the request it answers.
    origins: Arc<Vec<Origin>>,
}

/// A server clock further than this ahead of ours is not believed (a server
/// answering with year 9999 must not set a watermark or a search bound). A
/// clock behind ours is believed: at worst it makes the bridge re-read, never
/// skip.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Same-origin redirects followed per request, at most.
const MAX_REDIRECTS: usize = 5;
/// Why a redirect was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectRefusal {
    OtherOrigin,
    NoLocation,
    PastLimit,
}

impl std::fmt::Display for RedirectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedirectRefusal::OtherOrigin => f.write_str("to another origin"),
            RedirectRefusal::NoLocation => f.write_str("without a usable Location"),
            RedirectRefusal::PastLimit => {
                write!(f, "past the limit of {MAX_REDIRECTS} per request")
            }
        }
    }
}

/// A server time that was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server's clock reads {}, more than {}h ahead of ours: not trusted", crate::fhir::format_instant(*.0), MAX_CLOCK_SKEW.as_secs() / 3600)]
pub struct UntrustedClock(pub DateTime<Utc>);

impl FhirClient {
    /// A client with its own connection pool (tests, single sources).
    pub fn new(timeout: Duration) -> Result<Self, FetchError> {
        Ok(Self::with_pool(Self::shared_pool()?, timeout))
    }

    /// One HTTP connection pool (and TLS configuration) for every source
    /// without TLS settings of its own: a thousand sources must not mean a
    /// thousand pools.
    pub fn shared_pool() -> Result<reqwest::Client, FetchError> {
        Self::pool(None)
    }

    /// The HTTP client of sources; with `tls` (a source's extra CA
    /// certificates, client certificate), that source's own. Everything
    /// else is the same for all: headers, redirects, timeouts.
    pub fn pool(tls: Option<&crate::config::Tls>) -> Result<reqwest::Client, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/fhir+json"));
        // HAPI caches identical searches for a minute; we need fresh results.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let builder = reqwest::Client::builder()
            .default_headers(headers)
            // Where a search came from is nobody else's business.
            .referer(false)
            // Redirects are followed by `FhirClient::get` itself, which knows
            // the source's origins: a server must not be able to send the
            // bridge (and its credentials) to a host the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fhir-bridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90));
        let builder = match tls {
            Some(tls) => tls
                .apply(builder)
                .map_err(|e| FetchError::Other(error_text(&e)))?,
            None => builder,
        };
        builder
            .build()
            .map_err(|e| FetchError::Other(error_text(&e)))
    }

    /// A source's client on a shared pool, with the source's own timeout and
    /// its own view of the server's clock.
    pub fn with_pool(http: reqwest::Client, timeout: Duration) -> Self {
        FhirClient {
            http,
            timeout,
            clock: Arc::new(ServerClock::default()),
            auth: None,
            origins: Arc::new(vec![]),
            limiter: Default::default(),
            per_second: None,
        }
    }

    /// This client, spending from a request budget of `per_second`
    /// (`max_requests_per_second`; none: no limit).
    pub fn with_request_budget(mut self, per_second: Option<f64>) -> Self {
        self.limiter = Default::default();
        self.per_second = per_second;
        self
    }

    /// The limiter of this client's request budget, for the source task
    /// that polls with it: one budget for all the source's requests.
    pub fn limiter(&self) -> Arc<SourceLimiter> {
        self.limiter.clone()
    }

    /// This client, following redirects only to `origins` (see
    /// `config::Source::origins`).
    pub fn with_origins(mut self, origins: Vec<Origin>) -> Self {
        self.origins = Arc::new(origins);
        self
    }

    /// This client, authenticating every request with `auth`. Requests only
    /// ever go to the source's origin (next links and redirects elsewhere
    /// are refused), so the credentials never leave for another host.
    pub fn with_auth(mut self, auth: Arc<crate::auth::Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Records a millisecond-precision server time we have in hand now,
    /// unless it is too far ahead of ours to be believed (then the estimate
    /// stays as it was).
    pub fn note_server_time(&self, server_time: DateTime<Utc>) -> Result<(), UntrustedClock> {
        believable(server_time)?;
        self.clock.observe_instant(server_time, Instant::now());
        Ok(())
    }

    /// Records what a response told of the server's clock: its
    /// `Bundle.meta.lastUpdated` (`bundle_time`) when it has one, else its
    /// `Date` header. One of the two, not both: they may come from different
    /// clocks (a database's and a web tier's). Returns whether it told the
    /// time; a time too far ahead of ours is not believed.
    pub fn note_response(
        &self,
        exchange: &Exchange,
        date: Option<DateTime<Utc>>,
        bundle_time: Option<DateTime<Utc>>,
    ) -> Result<bool, UntrustedClock> {
        match (bundle_time, date) {
            (Some(t), _) => {
                believable(t)?;
                // A Bundle is written out with the body: only then was it in hand.
                self.clock.observe_instant(t, exchange.body_received);
            }
            (None, Some(d)) => {
                believable(d)?;
                self.clock
                    .observe_date(d, exchange.sent, exchange.headers_received);
            }
            (None, None) => return Ok(false),
        }
        Ok(true)
    }

    /// The server's current time, never ahead of it (see `clock`); `None`
    /// before any response told us.
    pub fn server_now(&self) -> Option<DateTime<Utc>> {
        self.clock.now_safe()
    }

    /// Where `start = "now"` starts: the latest the server's clock can read
    /// now, so that nothing written before is after it; and how long until
    /// `server_now` has surely passed it, so that anything written after
    /// that wait is. With only millisecond instants (no upper end), the
    /// estimate itself and no wait. `None` before any response told us.
    pub fn start_mark(&self) -> Option<(DateTime<Utc>, Duration)> {
        let safe = self.clock.now_safe()?;
        let Some(latest) = self.clock.now_latest() else {
            return Some((safe, Duration::ZERO));
        };
        let wait = (latest - safe).to_std().unwrap_or_default();
        // Bounds loosen as they age (by at most 100 ppm): a little extra.
        Some((latest, wait + wait / 1000 + Duration::from_millis(1)))
    }

    /// How long to wait for a poll planned `nominal` from now: moved by up
    /// to half of `nominal` while a nudge onto the server's second boundary
    /// would sharpen an estimate made from `Date` headers.
    pub fn aligned_wait(&self, nominal: Duration) -> Duration {
        self.clock.aligned_wait(nominal)
    }

    /// GETs `url`, authenticated (see `authenticated`).
    pub async fn get(&self, url: &Url) -> Result<Fetched, FetchError> {
        self.authenticated(
            |authorization| self.get_once(url, authorization),
            |r| match r {
                Ok(_) => Some(200),
                Err(FetchError::Status { status, .. }) => Some(*status),
                Err(_) => None,
            },
        )
        .await
    }

    /// One request (`attempt`) with this source's credentials. A 2xx tells
    /// the token cache the token works. After a 401 with a refreshable
    /// token: once more with a new token if the one used had worked before
    /// (revoked, expired early); if it was just issued, the request fails
    /// with the refusal and no new token is asked for a while (`Authenticator::
    /// refused`). The caller took one turn in the request budget; a second
    /// request, and any token request, take their own.
    async fn authenticated<T, F>(
        &self,
        attempt: impl Fn(Option<HeaderValue>) -> F,
        status: impl Fn(&Result<T, FetchError>) -> Option<u16>,
    ) -> Result<T, FetchError>
    where
        F: std::future::Future<Output = Result<T, FetchError>>,
    {
        let Some(auth) = &self.auth else {
            return attempt(None).await;
        };
        let turn = || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
            Box::pin(self.turn())
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let header = auth.header_within(&turn).await?;
            let result = attempt(header.clone()).await;
            let Some(used) = &header else {
                return result;
            };
            match status(&result) {
                Some(200..=299) => auth.accepted(used),
                Some(401) if auth.refreshable() => {
                    auth.refused(used).await?;
                    if tries == 1 {
                        self.turn().await;
                        continue;
                    }
                }
                _ => {}
            }
            return result;
        }
    }

    /// Waits for a request's turn in the source's budget.
    async fn turn(&self) {
        self.limiter.acquire(self.per_second).await;
    }

    async fn get_once(
        &self,
        url: &Url,
        authorization: Option<reqwest::header::HeaderValue>,
    ) -> Result<Fetched, FetchError> {
        // A server that does not know a search parameter ignores it unless
        // told to be strict, and would then answer a different search.
        let request = Request {
            method: reqwest::Method::GET,
            prefer: "handling=strict",
            whole_timeout: true,
        };
        let (mut resp, sent) = self.send_once(&request, url, authorization).await?;
        let headers_received = Instant::now();
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
                retry_after: parse_retry_after(resp.headers()),
            });
        }
        let date = resp
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
            .map(|d| d.to_utc());
        let body = read_bounded(&mut resp, MAX_PAGE_BYTES, self.timeout).await?;
        Ok(Fetched {
            body,
            date,
            exchange: Exchange {
                sent,
                headers_received,
                body_received: Instant::now(),
            },
        })
    }
}

/// How `send_once` sends.
struct Request {
    method: reqwest::Method,
    prefer: &'static str,
    /// The timeout covers the whole body (a page); otherwise only the
    /// answer's headers, and each read of the body (`next_chunk`).
    whole_timeout: bool,
}

impl FhirClient {
    /// One request, following redirects within the source's origins; the
    /// response, whatever its status, and when it went out.
    async fn send_once(
        &self,
        request: &Request,
        url: &Url,
        authorization: Option<HeaderValue>,
    ) -> Result<(reqwest::Response, Instant), FetchError> {
        let mut url = url.clone();
        let mut redirects = 0;
        loop {
            let mut req = self
                .http
                .request(request.method.clone(), url.clone())
                .header("Prefer", request.prefer);
            if request.whole_timeout {
                req = req.timeout(self.timeout);
            }
            if let Some(a) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a.clone());
            }
            let sent = Instant::now();
            let resp = match tokio::time::timeout(self.timeout, req.send()).await {
                Ok(r) => r.map_err(classify)?,
                Err(_) => return Err(FetchError::Timeout),
            };
            let status = resp.status();
            if !status.is_redirection() {
                return Ok((resp, sent));
            }
            // Followed only to a location this source may go to, a bounded
            // number of times; the location itself is never shown.
            let refused = |why| FetchError::Redirect {
                status: status.as_u16(),
                why,
            };
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| refused(RedirectRefusal::NoLocation))?;
            if !self.may_follow(&url, &next) {
                return Err(refused(RedirectRefusal::OtherOrigin));
            }
            if redirects == MAX_REDIRECTS {
                return Err(refused(RedirectRefusal::PastLimit));
            }
            redirects += 1;
            url = next;
        }
    }

    /// A request whose status and body the caller reads (a bulk export's
    /// kick-off, status, files and delete): authenticated (see
    /// `authenticated`), redirects within the source's origins. The timeout bounds the wait for the headers; the body is read
    /// with `next_chunk` or `read_body`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &Url,
        prefer: &'static str,
    ) -> Result<reqwest::Response, FetchError> {
        let request = &Request {
            method,
            prefer,
            whole_timeout: false,
        };
        self.authenticated(
            |authorization| async move { Ok(self.send_once(request, url, authorization).await?.0) },
            |r| r.as_ref().ok().map(|resp| resp.status().as_u16()),
        )
        .await
    }

    /// The next piece of a streamed body (`None` at its end), within the
    /// source's timeout: a server that stops sending fails the read.
    pub async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, FetchError> {
        match tokio::time::timeout(self.timeout, resp.chunk()).await {
            Ok(r) => r.map_err(classify),
            Err(_) => Err(FetchError::Timeout),
        }
    }

    /// A small body whole (a manifest), refused past `limit` bytes.
    pub async fn read_body(
        &self,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, FetchError> {
        Ok(read_bounded(&mut resp, limit, self.timeout).await?)
    }
}

/// A server time too far ahead of ours is not believed.
fn believable(server_time: DateTime<Utc>) -> Result<(), UntrustedClock> {
    let ahead = (server_time - Utc::now()).num_milliseconds();
    if ahead > MAX_CLOCK_SKEW.as_millis() as i64 {
        return Err(UntrustedClock(server_time));
    }
    Ok(())
}

impl FhirClient {
    /// Whether a redirect from `from` to `to` may be followed.
    fn may_follow(&self, from: &Url, to: &Url) -> bool {
        if !matches!(to.scheme(), "http" | "https") {
            return false;
        }
        if self.origins.is_empty() {
            return to.origin() == from.origin();
        }
        self.origins.contains(&to.origin())
    }
}

impl From<BodyError> for FetchError {
    fn from(e: BodyError) -> FetchError {
        match e {
            BodyError::TooLarge { limit } => FetchError::TooLarge { limit },
            BodyError::Timeout => FetchError::Timeout,
            BodyError::Transport(e) => FetchError::Other(e),
        }
    }
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_connect() {
        FetchError::Connect(error_text(&e))
    } else {
        FetchError::Other(error_text(&e))
    }
}
