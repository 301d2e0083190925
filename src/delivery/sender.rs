//! One HTTP POST of one message, classified.

use super::signature::sign;
use crate::config::{Hook, HookAuth, Tls};
use crate::source::client::{describe, parse_retry_after};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use secrecy::ExposeSecret;
use std::time::Duration;

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
}

/// Sends one hook's webhooks: its HTTP client (its own when the hook has TLS
/// settings, else the one hooks share).
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
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
            Some(tls) => tls.apply(builder).map_err(|e| describe(&e))?,
            None => builder,
        };
        builder.build().map_err(|e| describe(&e))
    }

    /// The sender of `hook`: `shared` unless the hook has TLS settings.
    pub fn for_hook(hook: &Hook, shared: &reqwest::Client) -> Result<Sender, String> {
        let http = match &hook.tls {
            Some(tls) => Self::client(Some(tls))?,
            None => shared.clone(),
        };
        Ok(Sender { http })
    }

    /// POSTs `payload` to the hook; the receiver acknowledges with any 2xx.
    /// The signature (when the hook has signing keys) is computed here, over
    /// the exact bytes sent and this attempt's timestamp, so a retry carries a
    /// fresh timestamp and a valid signature.
    pub async fn post(&self, hook: &Hook, message_id: &str, payload: Vec<u8>) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-timestamp", timestamp.to_string());
        for (name, value) in &hook.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(HookAuth::Basic { username, password }) = &hook.auth {
            req = req.basic_auth(username, Some(password.expose_secret()));
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
                        status: Some(status.as_u16()),
                        error: format!(
                            "HTTP {} redirect to another URL (not followed)",
                            status.as_u16()
                        ),
                        retry_after: None,
                    }
                } else {
                    Attempt::Failed {
                        status: Some(status.as_u16()),
                        error: format!("HTTP {}", status.as_u16()),
                        retry_after: parse_retry_after(resp.headers()),
                    }
                }
            }
            Err(e) if e.is_timeout() => Attempt::Failed {
                status: None,
                error: format!("timed out after {}s", timeout.as_secs_f64()),
                retry_after: None,
            },
            Err(e) => Attempt::Failed {
                status: None,
                error: if e.is_connect() {
                    format!("connection failed: {}", describe(&e))
                } else {
                    describe(&e)
                },
                retry_after: None,
            },
        }
    }
}
