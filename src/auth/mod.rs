//! Authentication to an EHR, or to a receiver: static credentials, or OAuth
//! 2.0 client credentials (and SMART Backend Services) with a token cache.
//!
//! Tokens are cached per source (per hook) and refreshed `REFRESH_MARGIN` before they
//! expire, so a long poll gets a fresh one between pages. Many tasks needing a
//! token at once wait for one fetch (the cache's lock is held while fetching:
//! single flight). Every token request (and SMART discovery) takes a turn in
//! the owner's request budget first (`header_within`).
//!
//! After a 401 the caller reports the token it used (`refused`): a token the
//! server had accepted before (revoked, expired early) is dropped and the
//! request is tried once more with a new one; a token it never accepted was
//! refused fresh, and asking for another would only repeat that, so the
//! refusal is held like a failed token request. A token that had worked is
//! replaced at once only if no other was within `FAILURE_HOLD`: a server
//! that accepts each token once (or a balancer with one server that does
//! not know them) would otherwise get a token request every other request. Failures in a row hold the
//! next token request for longer and longer (`hold_after`), until a token
//! is accepted. Errors carry the token endpoint's HTTP status and OAuth
//! `error` code, never its body; its answers are read within
//! `MAX_RESPONSE_BYTES`.

mod discovery;
#[cfg(test)]
mod tests;
mod token_request;

pub use discovery::DiscoveryError;

use crate::config::{ClientCredentials, SourceAuth};
use crate::telemetry::Event;
use crate::telemetry::auth::{Owner, TokenRefreshFailed, TokenRefreshed};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use token_request::TokenRequest;
use tokio::sync::Mutex;

/// A token is renewed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// After a failure (a token request, or a fresh token refused), no token is
/// asked for during this hold, doubled for every failure in a row up to
/// `MAX_HOLD`.
const FAILURE_HOLD: Duration = Duration::from_secs(5);
const MAX_HOLD: Duration = Duration::from_secs(300);
/// A token endpoint's or smart-configuration answer larger than this is
/// refused unread: a token is a few KB at most.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token endpoint: HTTP {status}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Refused { status: u16, code: Option<String> },
    #[error("token endpoint: {0}")]
    Unreachable(String),
    #[error("token endpoint: the response is not an OAuth token")]
    NotAToken,
    #[error(
        "token endpoint: HTTP {status}, response larger than {} (not read)",
        crate::http::size_text(MAX_RESPONSE_BYTES)
    )]
    TooLarge { status: u16 },
    #[error("[base]/.well-known/smart-configuration: {0}; no token endpoint (set `token_url`)")]
    Discovery(DiscoveryError),
    #[error(
        "HTTP 401 with a token just issued: the server does not accept this client's tokens; no new token for {}s",
        hold.as_secs()
    )]
    Rejected { hold: Duration },
    #[error(
        "HTTP 401 again within {}s of replacing a refused token: the server takes each token only briefly; no new token for {}s",
        FAILURE_HOLD.as_secs(),
        hold.as_secs()
    )]
    RefusedAgain { hold: Duration },
    #[error("client assertion: {0}")]
    Key(#[from] crate::signing::smart::KeyError),
}

/// Waits for one request's turn in the budget of whoever the token is for
/// (a source's `max_requests_per_second`).
pub type Turn<'a> = &'a (dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> + Send + Sync);

struct Token {
    value: SecretString,
    renew_at: Instant,
}

pub struct Authenticator {
    auth: SourceAuth,
    /// The source's FHIR base, for `.well-known/smart-configuration`.
    base_url: url::Url,
    http: reqwest::Client,
    timeout: Duration,
    cached: Mutex<Cache>,
    fetched: AtomicU64,
    /// Failures in a row since a server last accepted a token.
    failures: AtomicU32,
    /// The `Authorization` of the last token a server accepted (a 2xx).
    accepted: std::sync::Mutex<Option<HeaderValue>>,
    /// Whose cache this is, for logs and metrics.
    owner: Owner,
}

/// What the token cache holds; guarded by one lock (single flight).
#[derive(Default)]
struct Cache {
    token: Option<Token>,
    /// The last failure and until when it is answered again: a refusing
    /// token endpoint is asked once per hold, not once per waiting request.
    failed: Option<(AuthError, Instant)>,
    /// The token endpoint found by SMART discovery, kept until a token
    /// request fails.
    discovered: Option<url::Url>,
    /// When a token that had worked was last dropped after a 401 to be
    /// replaced at once.
    replaced_at: Option<Instant>,
}

/// How long no token is asked for after `failures` failures in a row.
fn hold_after(failures: u32) -> Duration {
    FAILURE_HOLD
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_HOLD)
}

impl Authenticator {
    /// OAuth client credentials for a receiver (`[hook.auth] type = "oauth"`):
    /// one token cache per hook, fetched through the hook's HTTP client.
    pub fn client_credentials(
        credentials: ClientCredentials,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Authenticator {
        // The base URL is only for SMART discovery, which this never does.
        let base_url = credentials.token_url.clone();
        Self::new(
            SourceAuth::ClientCredentials(credentials),
            base_url,
            http,
            timeout,
        )
    }

    pub fn new(
        auth: SourceAuth,
        base_url: url::Url,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Authenticator {
        Authenticator {
            auth,
            base_url,
            http,
            timeout,
            cached: Mutex::new(Cache::default()),
            fetched: Default::default(),
            failures: Default::default(),
            accepted: Default::default(),
            owner: Owner::default(),
        }
    }

    /// Names the source or hook this cache belongs to (logs and metrics).
    pub fn owned_by(mut self, owner: Owner) -> Authenticator {
        self.owner = owner;
        self
    }

    /// Whether a 401 may be cured by a fresh token.
    pub fn refreshable(&self) -> bool {
        matches!(
            self.auth,
            SourceAuth::ClientCredentials(_) | SourceAuth::SmartBackend { .. }
        )
    }

    /// Tokens fetched so far (for tests and the closing figures).
    pub fn tokens_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The `Authorization` header for a request, if any (no request budget).
    pub async fn header(&self) -> Result<Option<HeaderValue>, AuthError> {
        self.header_within(&|| Box::pin(async {})).await
    }

    /// The `Authorization` header for a request, if any; a token request it
    /// needs first waits for `turn`.
    pub async fn header_within(&self, turn: Turn<'_>) -> Result<Option<HeaderValue>, AuthError> {
        let value = match &self.auth {
            SourceAuth::None => return Ok(None),
            SourceAuth::Basic { username, password } => {
                use base64::Engine;
                let raw = format!("{username}:{}", password.expose_secret());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            SourceAuth::Bearer { token } => format!("Bearer {}", token.expose_secret()),
            SourceAuth::ClientCredentials(_) | SourceAuth::SmartBackend { .. } => {
                let mut cache = self.cached.lock().await;
                let fresh = cache
                    .token
                    .as_ref()
                    .is_some_and(|t| Instant::now() < t.renew_at);
                if !fresh {
                    if let Some((e, until)) = &cache.failed
                        && Instant::now() < *until
                    {
                        return Err(e.clone());
                    }
                    match self.fetch_token(&mut cache.discovered, turn).await {
                        Ok(t) => {
                            cache.token = Some(t);
                            cache.failed = None;
                        }
                        Err(e) => {
                            TokenRefreshFailed {
                                owner: &self.owner,
                                error: &e,
                            }
                            .emit();
                            self.hold(&mut cache, e.clone());
                            cache.discovered = None;
                            return Err(e);
                        }
                    }
                }
                match cache.token.as_ref() {
                    Some(t) => format!("Bearer {}", t.value.expose_secret()),
                    None => return Err(AuthError::NotAToken),
                }
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| AuthError::NotAToken)?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// Answers `error` again until a hold has passed, longer for every
    /// failure in a row.
    fn hold(&self, cache: &mut Cache, error: AuthError) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        cache.failed = Some((error, Instant::now() + hold_after(failures)));
    }

    /// A server answered a request made with `used` (2xx): the token works,
    /// and the failures in a row are over.
    pub fn accepted(&self, used: &HeaderValue) {
        if !self.refreshable() {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        if accepted.as_ref() != Some(used) {
            *accepted = Some(used.clone());
        }
    }

    /// A server answered 401 to a request made with `used`. `Ok`: worth
    /// one more try with `header` (the token had worked before and is now
    /// dropped, or another task has replaced it already). `Err`: the token
    /// was refused fresh, or had worked but the last one was replaced less
    /// than `FAILURE_HOLD` ago; no new token is asked for during the hold,
    /// and every request meanwhile gets this error.
    pub async fn refused(&self, used: &HeaderValue) -> Result<(), AuthError> {
        let mut cache = self.cached.lock().await;
        let current = cache.token.as_ref().is_some_and(|t| {
            used.as_bytes() == format!("Bearer {}", t.value.expose_secret()).as_bytes()
        });
        if !current {
            return Ok(());
        }
        cache.token = None;
        let worked_before = self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(used);
        let replaced_lately = cache
            .replaced_at
            .is_some_and(|at| at.elapsed() < FAILURE_HOLD);
        if worked_before && !replaced_lately {
            cache.replaced_at = Some(Instant::now());
            return Ok(());
        }
        let hold = hold_after(self.failures.load(Ordering::Relaxed) + 1);
        let e = if worked_before {
            AuthError::RefusedAgain { hold }
        } else {
            AuthError::Rejected { hold }
        };
        self.hold(&mut cache, e.clone());
        Err(e)
    }

    async fn fetch_token(
        &self,
        discovered: &mut Option<url::Url>,
        turn: Turn<'_>,
    ) -> Result<Token, AuthError> {
        let request = match &self.auth {
            SourceAuth::ClientCredentials(ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
                secret_in_header,
            }) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "client_credentials");
                if let Some(s) = scope {
                    form.append_pair("scope", s);
                }
                if let Some(a) = audience {
                    form.append_pair("audience", a);
                }
                if !secret_in_header {
                    form.append_pair("client_id", client_id);
                    form.append_pair("client_secret", client_secret.expose_secret());
                }
                // RFC 6749 2.3.1: form-urlencoded id and secret, then Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                TokenRequest {
                    url: token_url.clone(),
                    form: form.finish(),
                    basic: secret_in_header
                        .then(|| (enc(client_id), enc(client_secret.expose_secret()))),
                }
            }
            SourceAuth::SmartBackend {
                client_id,
                key,
                scope,
                token_url,
                allow_insecure_http,
            } => {
                let token_url = match (token_url, &discovered) {
                    (Some(u), _) | (None, Some(u)) => u.clone(),
                    (None, None) => {
                        turn().await;
                        let found = discovery::discover(
                            &self.http,
                            &self.base_url,
                            *allow_insecure_http,
                            self.timeout,
                        )
                        .await
                        .map_err(AuthError::Discovery)?;
                        discovered.insert(found).clone()
                    }
                };
                let assertion = key
                    .client_assertion(client_id, token_url.as_str())
                    .map_err(AuthError::Key)?;
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "client_credentials");
                if let Some(s) = scope {
                    form.append_pair("scope", s);
                }
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
                TokenRequest {
                    url: token_url,
                    form: form.finish(),
                    basic: None,
                }
            }
            _ => return Err(AuthError::NotAToken),
        };
        turn().await;
        let sent_at = Instant::now();
        let issued = request.send(&self.http, self.timeout).await?;
        // Renew a margin before expiry, but never sooner than half the lifetime.
        let renew_in = issued
            .lifetime
            .saturating_sub(REFRESH_MARGIN)
            .max(issued.lifetime / 2);
        self.fetched.fetch_add(1, Ordering::Relaxed);
        TokenRefreshed {
            owner: &self.owner,
            lifetime: issued.lifetime,
        }
        .emit();
        Ok(Token {
            value: issued.value,
            renew_at: sent_at + renew_in,
        })
    }
}
