//! SMART discovery: the token endpoint from `[base]/.well-known/smart-configuration`.
//!
//! The document comes from the EHR, and its `token_endpoint` gets the client
//! assertion and sends back an access token: it passes the same check as a
//! configured `token_url` (`config::check_token_url`: https, or plain http
//! to this machine, or `allow_insecure_http`), and is never plain http when
//! the base is https. Another origin than the base's is accepted (Cerner's
//! token server is `authorization.cerner.com`, its FHIR server another
//! host): the operator pointed at the EHR, whose own document names its
//! token server; the assertion's `aud` is that token URL, so nothing that
//! server receives is good anywhere else, and the token it hands back is
//! only ever sent to the source's origins.

use super::MAX_RESPONSE_BYTES;
use crate::config::TokenUrlRefusal;
use crate::http::{BodyError, read_bounded};
use std::time::Duration;
use url::Url;

/// Why discovery found no token endpoint to use. Never the document's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Body(BodyError),
    #[error("not a JSON object with a `token_endpoint` URL")]
    NoTokenEndpoint,
    #[error("`token_endpoint`: {0}")]
    Refused(TokenUrlRefusal),
    #[error("`token_endpoint` is plain http while `base_url` is https")]
    Downgrade,
}

/// Reads the document (within a size bound) and checks its endpoint.
pub(super) async fn discover(
    http: &reqwest::Client,
    base_url: &Url,
    allow_insecure_http: bool,
    timeout: Duration,
) -> Result<Url, DiscoveryError> {
    let url = base_url
        .join(".well-known/smart-configuration")
        .map_err(|_| DiscoveryError::NoTokenEndpoint)?;
    let mut resp = http
        .get(url)
        .timeout(timeout)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| DiscoveryError::Body(BodyError::Transport(crate::http::error_text(&e))))?;
    if !resp.status().is_success() {
        return Err(DiscoveryError::Status(resp.status().as_u16()));
    }
    let body = read_bounded(&mut resp, MAX_RESPONSE_BYTES, timeout)
        .await
        .map_err(DiscoveryError::Body)?;
    token_endpoint(&body, base_url, allow_insecure_http)
}

/// The usable `token_endpoint` of a smart-configuration document.
pub(super) fn token_endpoint(
    document: &[u8],
    base_url: &Url,
    allow_insecure_http: bool,
) -> Result<Url, DiscoveryError> {
    #[derive(serde::Deserialize)]
    struct SmartConfiguration {
        token_endpoint: Option<String>,
    }
    let url = serde_json::from_slice::<SmartConfiguration>(document)
        .ok()
        .and_then(|c| c.token_endpoint)
        .and_then(|u| Url::parse(&u).ok())
        .ok_or(DiscoveryError::NoTokenEndpoint)?;
    crate::config::check_token_url(&url, allow_insecure_http).map_err(DiscoveryError::Refused)?;
    if url.scheme() == "http" && base_url.scheme() == "https" {
        return Err(DiscoveryError::Downgrade);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(doc: &str, base: &str, insecure: bool) -> Result<Url, DiscoveryError> {
        token_endpoint(doc.as_bytes(), &base.parse().unwrap(), insecure)
    }

    #[test]
    fn a_discovered_endpoint_passes_the_configured_token_urls_check() {
        let doc = |u: &str| format!(r#"{{"token_endpoint":"{u}"}}"#);
        let local = "http://127.0.0.1:9/fhir/";
        // Another host is fine over https, and loopback over plain http.
        assert!(endpoint(&doc("https://auth.example/token"), local, false).is_ok());
        assert!(endpoint(&doc("http://127.0.0.1:7/token"), local, false).is_ok());
        // 0.0.0.0 (or any other host) over plain http: the assertion and
        // the token would travel in clear text.
        assert_eq!(
            endpoint(&doc("http://0.0.0.0:7/token"), local, false),
            Err(DiscoveryError::Refused(TokenUrlRefusal::Cleartext))
        );
        assert!(endpoint(&doc("http://0.0.0.0:7/token"), local, true).is_ok());
        assert_eq!(
            endpoint(&doc("https://u:p@auth.example/token"), local, false),
            Err(DiscoveryError::Refused(TokenUrlRefusal::NotHttp))
        );
        // Never from an https base down to plain http, even on loopback.
        assert_eq!(
            endpoint(
                &doc("http://127.0.0.1:7/token"),
                "https://ehr.example/",
                true
            ),
            Err(DiscoveryError::Downgrade)
        );
        // Neither a script, a relative path nor a credential-bearing URL.
        for refused in ["javascript:alert(1)", "data:,x", "file:///etc/passwd"] {
            assert_eq!(
                endpoint(&doc(refused), local, true),
                Err(DiscoveryError::Refused(TokenUrlRefusal::NotHttp)),
                "{refused}"
            );
        }
        assert_eq!(
            endpoint(&doc("https://127.0.0.1@evil.example/token"), local, false),
            Err(DiscoveryError::Refused(TokenUrlRefusal::NotHttp))
        );
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"token_endpoint":7}"#,
            &doc("not a url"),
            &doc("/token"),
        ] {
            assert_eq!(
                endpoint(bad, local, false),
                Err(DiscoveryError::NoTokenEndpoint),
                "{bad}"
            );
        }
    }
}
