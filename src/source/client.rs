//! HTTP GETs of FHIR search pages. Errors carry no bodies, tokens or query
//! strings: they end up in logs and status.

use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, CACHE_CONTROL, DATE, HeaderMap, HeaderValue, RETRY_AFTER};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
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
    #[error("response larger than {} MB", MAX_PAGE_BYTES / 1024 / 1024)]
    TooLarge,
    /// A redirect the client would not follow: to another origin (scheme,
    /// host, port), or past the limit. The target is not shown: it came from
    /// outside and may carry identifiers.
    #[error("HTTP {status} redirect to another origin (not followed)")]
    Redirect { status: u16 },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

pub struct Fetched {
    pub body: Vec<u8>,
    /// The HTTP `Date` header: the server's clock, second precision.
    pub date: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct FhirClient {
    http: reqwest::Client,
    timeout: Duration,
    /// Server clock minus ours (ms), from the last response that told the time.
    clock_offset_ms: Arc<AtomicI64>,
    /// Credentials for this source's requests (none by default).
    auth: Option<Arc<crate::auth::Authenticator>>,
    /// Where requests and redirects may go: the base URL's origin and the
    /// source's `allowed_origins`. Empty: a redirect stays on the origin of
    /// the request it answers.
    origins: Arc<Vec<Origin>>,
}

/// Marks "no server time seen yet".
const UNKNOWN_OFFSET: i64 = i64::MIN;

/// A server clock further than this ahead of ours is not believed (a server
/// answering with year 9999 must not set a watermark or a search bound). A
/// clock behind ours is believed: at worst it makes the bridge re-read, never
/// skip.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Same-origin redirects followed per request, at most.
const MAX_REDIRECTS: usize = 5;

/// A server time that was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server's clock reads {}, more than {}h ahead of ours: not trusted", super::bundle::format_instant(*.0), MAX_CLOCK_SKEW.as_secs() / 3600)]
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
                .map_err(|e| FetchError::Other(describe(&e)))?,
            None => builder,
        };
        builder.build().map_err(|e| FetchError::Other(describe(&e)))
    }

    /// A source's client on a shared pool, with the source's own timeout and
    /// its own view of the server's clock.
    pub fn with_pool(http: reqwest::Client, timeout: Duration) -> Self {
        FhirClient {
            http,
            timeout,
            clock_offset_ms: Arc::new(AtomicI64::new(UNKNOWN_OFFSET)),
            auth: None,
            origins: Arc::new(vec![]),
        }
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

    /// Records the server's time as of a response just received, unless it
    /// is too far ahead of ours to be believed (then the last estimate stays).
    pub fn note_server_time(&self, server_time: DateTime<Utc>) -> Result<(), UntrustedClock> {
        let offset = (server_time - Utc::now()).num_milliseconds();
        if offset > MAX_CLOCK_SKEW.as_millis() as i64 {
            return Err(UntrustedClock(server_time));
        }
        self.clock_offset_ms.store(offset, Ordering::Relaxed);
        Ok(())
    }

    /// The server's current time, estimated from the last response; `None`
    /// before any response told us.
    pub fn server_now(&self) -> Option<DateTime<Utc>> {
        match self.clock_offset_ms.load(Ordering::Relaxed) {
            UNKNOWN_OFFSET => None,
            off => Some(Utc::now() + chrono::Duration::milliseconds(off)),
        }
    }

    /// GETs `url`, authenticated; after a 401 with a refreshable token, once
    /// more with a new token.
    pub async fn get(&self, url: &Url) -> Result<Fetched, FetchError> {
        let Some(auth) = &self.auth else {
            return self.get_once(url, None).await;
        };
        let header = auth.header().await?;
        match self.get_once(url, header.clone()).await {
            Err(FetchError::Status { status: 401, .. }) if auth.refreshable() => {
                if let Some(used) = &header {
                    auth.invalidate(used).await;
                }
                let header = auth.header().await?;
                self.get_once(url, header).await
            }
            other => other,
        }
    }

    async fn get_once(
        &self,
        url: &Url,
        authorization: Option<reqwest::header::HeaderValue>,
    ) -> Result<Fetched, FetchError> {
        let mut url = url.clone();
        let mut redirects = 0;
        let mut resp = loop {
            // A server that does not know a search parameter ignores it unless
            // told to be strict, and would then answer a different search.
            let mut req = self
                .http
                .get(url.clone())
                .timeout(self.timeout)
                .header("Prefer", "handling=strict");
            if let Some(a) = &authorization {
                req = req.header(reqwest::header::AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(classify)?;
            let status = resp.status();
            if !status.is_redirection() {
                break resp;
            }
            // Followed only to a location this source may go to, a bounded
            // number of times; the location itself is never shown.
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .filter(|next| self.may_follow(&url, next));
            match next {
                Some(next) if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    url = next;
                }
                _ => {
                    return Err(FetchError::Redirect {
                        status: status.as_u16(),
                    });
                }
            }
        };
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
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_PAGE_BYTES)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, date })
    }
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

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.to_utc();
    Some((at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_connect() {
        FetchError::Connect(describe(&e))
    } else {
        FetchError::Other(describe(&e))
    }
}

/// The error chain without the URL (which may carry identifiers or tokens),
/// with control characters escaped: it is text from outside, bound for logs
/// and status.
pub fn describe(e: &reqwest::Error) -> String {
    crate::logsafe::escape(&describe_raw(e))
}

fn describe_raw(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut parts = vec![];
    let mut cur: Option<&dyn Error> = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    if parts.is_empty() {
        // reqwest's own message; strip the URL it appends.
        return e
            .to_string()
            .split(" for url (")
            .next()
            .unwrap_or("request failed")
            .to_string();
    }
    parts.join(": ")
}
