//! One token request (RFC 6749 4.4, with a SMART client assertion or a
//! client secret) and what its answer means. The answer is read within
//! `MAX_RESPONSE_BYTES`; only its HTTP status and OAuth `error` code are
//! ever shown, never its body.

use super::{AuthError, MAX_RESPONSE_BYTES};
use crate::http::{BodyError, error_text, read_bounded};
use reqwest::header::HeaderValue;
use secrecy::SecretString;
use std::time::Duration;

/// Bounds on a token's lifetime as the server states it (`expires_in`).
const MIN_LIFETIME: Duration = Duration::from_secs(5);
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Used when the token endpoint does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// What to post, and where.
pub(super) struct TokenRequest {
    pub url: url::Url,
    /// The form, `application/x-www-form-urlencoded`.
    pub form: String,
    /// `client_secret_basic`: id and secret, already form-urlencoded.
    pub basic: Option<(String, String)>,
}

/// An access token and how long it lives.
pub(super) struct Issued {
    pub value: SecretString,
    pub lifetime: Duration,
}

impl TokenRequest {
    pub async fn send(
        self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<Issued, AuthError> {
        let mut req = http
            .post(self.url)
            .timeout(timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(self.form);
        if let Some((id, secret)) = self.basic {
            req = req.basic_auth(id, Some(secret));
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| AuthError::Unreachable(error_text(&e)))?;
        let status = resp.status().as_u16();
        let body = read_bounded(&mut resp, MAX_RESPONSE_BYTES, timeout)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { .. } => AuthError::TooLarge { status },
                e => AuthError::Unreachable(e.to_string()),
            })?;
        reply(status, &body)
    }
}

/// The token in a token endpoint's answer, or why there is none.
pub(super) fn reply(status: u16, body: &[u8]) -> Result<Issued, AuthError> {
    #[derive(serde::Deserialize)]
    struct Reply {
        access_token: Option<String>,
        error: Option<String>,
        expires_in: Option<serde_json::Value>,
    }
    let reply: Option<Reply> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        // The OAuth error code only, and only if it looks like one.
        let code = reply
            .and_then(|r| r.error)
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        return Err(AuthError::Refused { status, code });
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
    Ok(Issued {
        value: SecretString::from(value),
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetime(expires_in: &str) -> Duration {
        let body = format!(r#"{{"access_token":"t","expires_in":{expires_in}}}"#);
        reply(200, body.as_bytes()).map(|i| i.lifetime).unwrap()
    }

    /// Whatever a token endpoint says a token lives, it is used between
    /// 5 s and 24 h; what is no number of seconds means the default.
    #[test]
    fn a_hostile_expires_in_is_bounded() {
        assert_eq!(lifetime("0"), MIN_LIFETIME);
        assert_eq!(lifetime("18446744073709551615"), MAX_LIFETIME);
        assert_eq!(lifetime("\"600\""), Duration::from_secs(600));
        for odd in ["-1", "1e308", "3600.5", "\"soon\"", "null", "[]"] {
            assert_eq!(lifetime(odd), DEFAULT_LIFETIME, "{odd}");
        }
        let missing = reply(200, br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(missing.lifetime, DEFAULT_LIFETIME);
    }

    /// A token that could not be one header value (CR, LF, NUL: header
    /// injection), or is empty, is no token; nor is the code of a refusal
    /// shown unless it looks like an OAuth code.
    #[test]
    fn a_token_that_is_no_header_value_is_refused() {
        for bad in [
            r#"{"access_token":"a\r\nX-Injected: 1"}"#,
            r#"{"access_token":"a\nb"}"#,
            r#"{"access_token":"a\u0000b"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":7}"#,
            r#"{"token":"t"}"#,
        ] {
            assert!(
                matches!(reply(200, bad.as_bytes()), Err(AuthError::NotAToken)),
                "{bad}"
            );
        }
        let injected = reply(400, br#"{"error":"invalid_client\r\nsecret: x"}"#);
        assert!(matches!(
            injected,
            Err(AuthError::Refused {
                status: 400,
                code: None
            })
        ));
    }
}
