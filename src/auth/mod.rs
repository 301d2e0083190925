//! Authentication to an EHR, or to a receiver: static credentials, or OAuth
//! 2.0 client credentials (and SMART Backend Services) with a token cache.
//!
//! Tokens are cached per source (per hook) and refreshed `REFRESH_MARGIN` before they
//! expire, so a long poll gets a fresh one between pages. Many tasks needing a
//! token at once wait for one fetch (the cache's lock is held while fetching:
//! single flight). After a 401 the caller drops the token it used
//! (`invalidate`) and retries once with a new one. Errors carry the token
//! endpoint's HTTP status and OAuth `error` code, never its body.

pub mod smart;
#[cfg(test)]
mod tests;

use crate::config::{ClientCredentials, SourceAuth};
use crate::telemetry::Event;
use crate::telemetry::auth::{Owner, TokenRefreshFailed, TokenRefreshed};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A token is renewed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// Bounds on a token's lifetime as the server states it (`expires_in`).
const MIN_LIFETIME: Duration = Duration::from_secs(5);
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A failed token request is not repeated for this long.
const FAILURE_HOLD: Duration = Duration::from_secs(5);
/// Used when the token endpoint does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token endpoint: HTTP {status}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Refused { status: u16, code: Option<String> },
    #[error("token endpoint: {0}")]
    Unreachable(String),
    #[error("token endpoint: the response is not an OAuth token")]
    NotAToken,
    #[error(
        "no usable token_endpoint (https) in [base]/.well-known/smart-configuration (set `token_url`)"
    )]
    Discovery,
    #[error("client assertion: {0}")]
    Key(#[from] smart::KeyError),
}

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
    fetched: std::sync::atomic::AtomicU64,
    /// Whose cache this is, for logs and metrics.
    owner: Owner,
}

/// What the token cache holds; guarded by one lock (single flight).
#[derive(Default)]
struct Cache {
    token: Option<Token>,
    /// The last failure, answered again for `FAILURE_HOLD`: a refusing token
    /// endpoint is asked once per hold, not once per waiting request.
    failed: Option<(AuthError, Instant)>,
    /// The token endpoint found by SMART discovery, kept until a token
    /// request fails.
    discovered: Option<url::Url>,
}

impl Authenticator {
    /// `token_endpoint` from `[base]/.well-known/smart-configuration`.
    async fn discover_token_url(&self) -> Result<url::Url, AuthError> {
        let url = self
            .base_url
            .join(".well-known/smart-configuration")
            .map_err(|_| AuthError::Discovery)?;
        let resp = self
            .http
            .get(url)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| AuthError::Unreachable(crate::source::client::describe(&e)))?;
        if !resp.status().is_success() {
            return Err(AuthError::Discovery);
        }
        #[derive(serde::Deserialize)]
        struct SmartConfiguration {
            token_endpoint: Option<String>,
        }
        let bytes = resp.bytes().await.map_err(|_| AuthError::Discovery)?;
        let conf: SmartConfiguration =
            serde_json::from_slice(&bytes).map_err(|_| AuthError::Discovery)?;
        conf.token_endpoint
            .and_then(|u| url::Url::parse(&u).ok())
            // The document comes from the server: its token endpoint gets the
            // client assertion, so it must be https (plain http only when the
            // operator's base_url is plain http, i.e. loopback or allowed).
            .filter(|u| {
                u.scheme() == "https" || (u.scheme() == "http" && self.base_url.scheme() == "http")
            })
            .ok_or(AuthError::Discovery)
    }

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
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The `Authorization` header for a request, if any.
    pub async fn header(&self) -> Result<Option<HeaderValue>, AuthError> {
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
                    if let Some((e, at)) = &cache.failed
                        && at.elapsed() < FAILURE_HOLD
                    {
                        return Err(e.clone());
                    }
                    match self.fetch_token(&mut cache.discovered).await {
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
                            cache.failed = Some((e.clone(), Instant::now()));
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

    /// Forgets the cached token if it is the one in `used` (a 401 said it
    /// no longer works); another task may have renewed it already.
    pub async fn invalidate(&self, used: &HeaderValue) {
        let mut cache = self.cached.lock().await;
        let same = cache.token.as_ref().is_some_and(|t| {
            used.as_bytes() == format!("Bearer {}", t.value.expose_secret()).as_bytes()
        });
        if same {
            cache.token = None;
        }
    }

    async fn fetch_token(&self, discovered: &mut Option<url::Url>) -> Result<Token, AuthError> {
        let (token_url, body, basic) = match &self.auth {
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
                let basic =
                    secret_in_header.then(|| (enc(client_id), enc(client_secret.expose_secret())));
                (token_url.clone(), form.finish(), basic)
            }
            SourceAuth::SmartBackend {
                client_id,
                key,
                scope,
                token_url,
            } => {
                let token_url = match token_url {
                    Some(u) => u.clone(),
                    None => match discovered {
                        Some(u) => u.clone(),
                        None => discovered.insert(self.discover_token_url().await?).clone(),
                    },
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
                (token_url, form.finish(), None)
            }
            _ => return Err(AuthError::NotAToken),
        };
        let mut req = self
            .http
            .post(token_url)
            .timeout(self.timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let sent_at = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| AuthError::Unreachable(crate::source::client::describe(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| AuthError::Unreachable(crate::source::client::describe(&e)))?;
        #[derive(serde::Deserialize)]
        struct Reply {
            access_token: Option<String>,
            error: Option<String>,
            expires_in: Option<serde_json::Value>,
        }
        let reply: Option<Reply> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            // The OAuth error code only, and only if it looks like one.
            let code = reply.and_then(|r| r.error).filter(|c| {
                c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            return Err(AuthError::Refused {
                status: status.as_u16(),
                code,
            });
        }
        let reply = reply.ok_or(AuthError::NotAToken)?;
        let value = reply
            .access_token
            .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
            .ok_or(AuthError::NotAToken)?;
        let lifetime = reply
            .expires_in
            .and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME)
            .clamp(MIN_LIFETIME, MAX_LIFETIME);
        // Renew a margin before expiry, but never sooner than half the lifetime.
        let renew_in = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TokenRefreshed {
            owner: &self.owner,
            lifetime,
        }
        .emit();
        Ok(Token {
            value: SecretString::from(value),
            renew_at: sent_at + renew_in,
        })
    }
}
