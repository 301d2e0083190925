//! A source's request budget (`max_requests_per_second`) and its pause: the
//! one place every request of a source passes through (searches, pages, the
//! CapabilityStatement, roster reads, export requests, token requests). A
//! token bucket shared by all its targets, so ten thousand per-patient
//! targets never exceed what the EHR allows the app (bursts up to one
//! second's worth); and a server's `Retry-After` on a 429/503 pauses every
//! request of the source until then (an EHR limits the app, not one search).

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The longest a server's `Retry-After` can pause a source.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// A source task's limiter: the bucket, built on first use from the source's
/// `max_requests_per_second` (none: no limit), and the pause.
#[derive(Default)]
pub struct SourceLimiter {
    bucket: OnceLock<Option<RateLimiter>>,
    /// Until when the server asked to be left alone.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl SourceLimiter {
    /// Waits until a request may go: after any pause, within the budget.
    pub async fn acquire(&self, per_second: Option<f64>) {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if let Some(l) = self.bucket.get_or_init(|| per_second.map(RateLimiter::new)) {
                l.acquire().await;
            }
            // A pause that began while this request waited for its turn
            // holds it too.
            if self.paused_until().is_none() {
                return;
            }
        }
    }

    /// The server said `Retry-After: d`: no request of the source goes out
    /// before then (at most `MAX_PAUSE`; a longer pause already set stays).
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d.min(MAX_PAUSE);
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        *p = Some(p.map_or(until, |t| t.max(until)));
    }

    /// When the current pause ends; `None` when there is none.
    pub fn paused_until(&self) -> Option<Instant> {
        let p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|t| *t > Instant::now())
    }

    pub fn is_paused(&self) -> bool {
        self.paused_until().is_some()
    }
}

pub struct RateLimiter {
    per_second: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> RateLimiter {
        RateLimiter {
            per_second,
            state: Mutex::new(Bucket {
                tokens: per_second.max(1.0),
                at: Instant::now(),
            }),
        }
    }

    /// Waits until a request may go. Waiters are served one at a time.
    pub async fn acquire(&self) {
        let mut b = self.state.lock().await;
        let capacity = self.per_second.max(1.0);
        loop {
            let now = Instant::now();
            b.tokens = (b.tokens + (now - b.at).as_secs_f64() * self.per_second).min(capacity);
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - b.tokens) / self.per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100/s: a burst of 100 at once, then the next 20 wait their turn (at
    /// least 190 ms between them: a sleep is never shorter than asked).
    #[tokio::test]
    async fn requests_beyond_the_burst_wait_for_the_rate() {
        let limiter = RateLimiter::new(100.0);
        for _ in 0..100 {
            limiter.acquire().await;
        }
        let start = Instant::now();
        for _ in 0..20 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }

    /// A pause holds every request until it ends, whatever the budget; a
    /// shorter pause does not cut a longer one.
    #[tokio::test]
    async fn a_pause_holds_every_request_until_it_ends() {
        let limiter = SourceLimiter::default();
        limiter.acquire(None).await;
        assert!(!limiter.is_paused());
        limiter.pause(Duration::from_millis(300));
        limiter.pause(Duration::from_millis(100));
        let start = Instant::now();
        limiter.acquire(Some(100.0)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
        assert!(!limiter.is_paused());
        // A server asking for a day gets the bound.
        limiter.pause(Duration::from_secs(86_400));
        let until = limiter.paused_until().unwrap();
        assert!(until <= Instant::now() + MAX_PAUSE);
    }
}
