//! What an HTTP outcome means, decided in one place for deliveries and polls
//! alike (as vector's `RetryAction`).
//!
//! The rule: a refusal of *this message* is final, a refusal of *the
//! endpoint* is not. A receiver that answers 400/413/415/422 has read the
//! body and will answer the same to the same bytes: retrying only delays the
//! dead letter the operator needs to see. A 401/403/404/405 or 5xx says
//! something about the endpoint (credentials being rotated, a deploy in
//! progress, a wrong URL the operator will fix): once it is fixed, every
//! waiting message should flow without a redrive, so those are retried.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    /// 2xx.
    Success,
    /// Try again on the schedule.
    Retry,
    /// Try again, not before this long (`Retry-After` on a 429/503).
    RetryAfter(Duration),
    /// 410 Gone: the endpoint says it is no more; stop until an operator
    /// re-enables it (nothing is dropped).
    Disable,
    /// The receiver refused this message for good: dead-letter it now.
    GiveUp,
}

impl RetryAction {
    /// The action for an HTTP response status (and its `Retry-After`).
    pub fn for_status(status: u16, retry_after: Option<Duration>) -> RetryAction {
        match status {
            200..=299 => RetryAction::Success,
            410 => RetryAction::Disable,
            400 | 413 | 415 | 422 => RetryAction::GiveUp,
            _ => match retry_after {
                Some(d) => RetryAction::RetryAfter(d),
                None => RetryAction::Retry,
            },
        }
    }

    /// The action when no response came (connection refused, reset,
    /// timeout, TLS failure): always worth another try.
    pub fn for_transport_error() -> RetryAction {
        RetryAction::Retry
    }

    /// Whether another attempt may follow.
    pub fn retries(self) -> bool {
        matches!(self, RetryAction::Retry | RetryAction::RetryAfter(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table() {
        let ra = Some(Duration::from_secs(30));
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(RetryAction::for_status(s, None), RetryAction::Success);
        }
        for s in [400, 413, 415, 422] {
            assert_eq!(RetryAction::for_status(s, ra), RetryAction::GiveUp, "{s}");
        }
        assert_eq!(RetryAction::for_status(410, ra), RetryAction::Disable);
        for s in [
            301, 302, 307, 308, 401, 403, 404, 405, 408, 409, 425, 500, 501, 502, 503, 504,
        ] {
            assert_eq!(RetryAction::for_status(s, None), RetryAction::Retry, "{s}");
        }
        assert_eq!(
            RetryAction::for_status(429, ra),
            RetryAction::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            RetryAction::for_status(503, ra),
            RetryAction::RetryAfter(Duration::from_secs(30))
        );
        assert!(RetryAction::for_transport_error().retries());
        assert!(!RetryAction::GiveUp.retries() && !RetryAction::Disable.retries());
    }
}
