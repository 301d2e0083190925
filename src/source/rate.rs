//! A source's request budget (`max_requests_per_second`): a token bucket
//! shared by all its targets, so ten thousand per-patient targets never
//! exceed what the EHR allows the app. Bursts up to one second's worth.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A source task's limiter, built on first use from the source's
/// `max_requests_per_second` (none: no limit).
#[derive(Default)]
pub struct SourceLimiter(OnceLock<Option<RateLimiter>>);

impl SourceLimiter {
    pub async fn acquire(&self, per_second: Option<f64>) {
        if let Some(l) = self.0.get_or_init(|| per_second.map(RateLimiter::new)) {
            l.acquire().await;
        }
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
}
