//! One HTTP POST of one message, classified.

use super::attempt::{Attempt, FailureKind};
use crate::auth::{AuthError, Authenticator};
use crate::config::{Hook, HookAuth, Tls};
use crate::http::{error_text, parse_retry_after};
use crate::signing::webhook::sign;
use crate::telemetry::auth::Owner;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

/// Sends one hook's webhooks: its HTTP client (its own when the hook has TLS
/// settings, else the one hooks share) and, for OAuth, its token cache.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    auth: Option<Arc<Authenticator>>,
}

impl Sender {
    /// The HTTP client of hooks; with `tls` (a hook's extra CA certificates,
    /// client certificate), that hook's own.
    pub fn client(tls: Option<&Tls>) -> Result<reqwest::Client, String> {
        let builder = reqwest::Client::builder()
            // A redirect is never followed: a 301/302 would turn the POST into a
            // bodiless GET whose 200 looked like a delivery, and a 307/308 would
            // re-send the payload (PHI) to wherever the receiver pointed.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .user_agent(concat!("fhir-bridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90));
        let builder = match tls {
            Some(tls) => tls.apply(builder).map_err(|e| error_text(&e))?,
            None => builder,
        };
        builder.build().map_err(|e| error_text(&e))
    }

    /// The sender of `hook`: `shared` unless the hook has TLS settings. Its
    /// token requests go through the same client.
    pub fn for_hook(hook: &Hook, shared: &reqwest::Client) -> Result<Sender, String> {
        let http = match &hook.tls {
            Some(tls) => Self::client(Some(tls))?,
            None => shared.clone(),
        };
        let auth = match &hook.auth {
            Some(HookAuth::OAuth(credentials)) => Some(Arc::new(
                Authenticator::client_credentials(credentials.clone(), http.clone(), hook.timeout)
                    .owned_by(Owner::hook(&hook.name)),
            )),
            _ => None,
        };
        Ok(Sender { http, auth })
    }

    /// POSTs `payload` to the hook; the receiver acknowledges with any 2xx.
    /// With OAuth, a 401 to a token that worked before drops it, and the
    /// POST is sent once more with a new one, within this attempt; a 401 to
    /// a token just issued fails the attempt, and no new token is asked for
    /// a while (`Authenticator::refused`). A token endpoint that fails is a
    /// failed attempt (retried on the hook's schedule).
    /// `content_type`: the payload format's (see `payload`); the sender sends
    /// what it is given.
    pub async fn post(
        &self,
        hook: &Hook,
        message_id: &str,
        payload: Vec<u8>,
        content_type: &'static str,
    ) -> Attempt {
        let Some(auth) = &self.auth else {
            return self
                .post_once(hook, message_id, content_type, payload.into(), None)
                .await;
        };
        let payload = bytes::Bytes::from(payload);
        let mut tries = 0;
        loop {
            tries += 1;
            let header = match auth.header().await {
                Ok(h) => h,
                Err(e) => return token_failed(e),
            };
            let attempt = self
                .post_once(
                    hook,
                    message_id,
                    content_type,
                    payload.clone(),
                    header.clone(),
                )
                .await;
            let Some(used) = &header else {
                return attempt;
            };
            match &attempt {
                Attempt::Delivered { .. } => auth.accepted(used),
                Attempt::Failed {
                    kind: FailureKind::Http(401),
                    ..
                } => {
                    if let Err(e) = auth.refused(used).await {
                        return token_failed(e);
                    }
                    if tries == 1 {
                        continue;
                    }
                }
                Attempt::Failed { .. } => {}
            }
            return attempt;
        }
    }

    /// One POST. The signature (when the hook has signing keys) is computed
    /// here, over the exact bytes sent and this POST's timestamp, so a retry
    /// carries a fresh timestamp and a valid signature.
    async fn post_once(
        &self,
        hook: &Hook,
        message_id: &str,
        content_type: &'static str,
        payload: bytes::Bytes,
        authorization: Option<HeaderValue>,
    ) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
            .header("webhook-timestamp", timestamp.to_string());
        for (name, value) in &hook.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(HookAuth::Basic { username, password }) = &hook.auth {
            req = req.basic_auth(username, Some(password.expose_secret()));
        }
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        if !hook.signing_keys.is_empty() {
            let signature = sign(&hook.signing_keys, message_id, timestamp, &payload);
            req = req.header("webhook-signature", signature);
        }
        let timeout = hook.timeout;
        req = req.body(payload);
        if let Ok(v) = HeaderValue::from_str(message_id) {
            req = req.header("webhook-id", v);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Delivered {
                        status: status.as_u16(),
                    }
                } else if status.is_redirection() {
                    Attempt::Failed {
                        kind: FailureKind::Http(status.as_u16()),
                        error: format!(
                            "HTTP {} redirect to another URL (not followed)",
                            status.as_u16()
                        ),
                        retry_after: None,
                    }
                } else {
                    Attempt::Failed {
                        kind: FailureKind::Http(status.as_u16()),
                        error: format!("HTTP {}", status.as_u16()),
                        retry_after: parse_retry_after(resp.headers()),
                    }
                }
            }
            Err(e) if e.is_timeout() => Attempt::Failed {
                kind: FailureKind::Timeout,
                error: format!("timed out after {}s", timeout.as_secs_f64()),
                retry_after: None,
            },
            Err(e) => Attempt::Failed {
                kind: FailureKind::Network,
                error: if e.is_connect() {
                    format!("connection failed: {}", error_text(&e))
                } else {
                    error_text(&e)
                },
                retry_after: None,
            },
        }
    }
}

/// No token, no POST: the attempt failed with the token endpoint's HTTP
/// status and OAuth error code (never its body).
fn token_failed(e: AuthError) -> Attempt {
    Attempt::Failed {
        kind: FailureKind::Auth,
        error: e.to_string(),
        retry_after: None,
    }
}
