//! What every HTTP exchange with the outside shares (sources, token
//! endpoints, receivers): errors described without URLs, `Retry-After`, and
//! bodies read within a size bound. The callers' error types (`FetchError`,
//! `AuthError`) wrap these.

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// Why a body was not read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("response larger than {}", size_text(*limit))]
    TooLarge { limit: usize },
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Transport(String),
}

/// A body whole, refused past `limit` bytes: a declared `Content-Length`
/// over it before reading anything, else as soon as the bytes read pass it
/// (the rest is never buffered; dropping the response closes the
/// connection). Each read waits at most `read_timeout`: a server that stops
/// sending fails the read.
pub async fn read_bounded(
    resp: &mut reqwest::Response,
    limit: usize,
    read_timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let declared = resp.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    // Not trusting the declared length beyond the limit for the allocation.
    let mut body = Vec::with_capacity((declared as usize).min(limit).max(1024));
    loop {
        let chunk = match tokio::time::timeout(read_timeout, resp.chunk()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(BodyError::Timeout),
            Ok(Err(e)) => return Err(BodyError::Transport(error_text(&e))),
            Ok(Ok(None)) => return Ok(body),
            Ok(Ok(Some(chunk))) => chunk,
        };
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
}

/// `256 KB`, `256 MB`: a bound as an operator reads it.
pub fn size_text(bytes: usize) -> String {
    const MB: usize = 1024 * 1024;
    if bytes >= MB && bytes.is_multiple_of(MB) {
        format!("{} MB", bytes / MB)
    } else {
        format!("{} KB", bytes.div_ceil(1024))
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

/// The error chain without the URL (which may carry identifiers or tokens),
/// with control characters escaped: it is text from outside, bound for logs
/// and status.
pub fn error_text(e: &reqwest::Error) -> String {
    crate::logsafe::escape(&error_text_raw(e))
}

fn error_text_raw(e: &reqwest::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_an_operator_writes_them() {
        assert_eq!(size_text(256 * 1024), "256 KB");
        assert_eq!(size_text(256 * 1024 * 1024), "256 MB");
        assert_eq!(size_text(1000), "1 KB");
    }

    /// Hostile `Retry-After` values: only whole seconds or an HTTP date
    /// count; a huge number is a long duration (capped where it pauses, at
    /// `source::rate::MAX_PAUSE`), a past date none at all.
    #[test]
    fn retry_after_takes_seconds_or_a_date_and_nothing_else() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().unwrap());
            parse_retry_after(&h)
        };
        assert_eq!(parse("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse(" 1000000000 "),
            Some(Duration::from_secs(1_000_000_000))
        );
        for junk in ["1e9", "-1", "1.5", "99999999999999999999", "soon", ""] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = parse("Fri, 31 Dec 9999 23:59:59 GMT").unwrap();
        assert!(later > Duration::from_secs(86_400 * 365 * 7000));
    }
}
