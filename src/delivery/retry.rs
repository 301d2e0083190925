//! When to try a failed delivery again. Durable: the time is stored in the
//! outbox row, so retries survive restarts.

use std::time::Duration;

/// Retry-After is honoured up to this long; beyond it we use our own schedule's cap.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// No retry comes sooner than this, whatever the schedule says (config
/// validation refuses shorter delays too): a `["0s"]` schedule against a
/// failing receiver once sent thousands of POSTs a second.
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The delay after failed attempt number `attempts` (1-based), or `None` when
/// `max_attempts` is reached and the message goes to the dead-letter queue.
///
/// The schedule's last entry repeats when attempts outnumber it. Each delay is
/// jittered by ±20% (`jitter` in [0, 1) picks the point) so that a recovering
/// receiver is not hit by every message at once. A server's `Retry-After`
/// raises the delay, never lowers it.
pub fn next_delay(
    schedule: &[Duration],
    attempts: u32,
    max_attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    if attempts >= max_attempts {
        return None;
    }
    let idx = (attempts.saturating_sub(1) as usize).min(schedule.len().saturating_sub(1));
    let base = schedule
        .get(idx)
        .copied()
        .unwrap_or(Duration::from_secs(60));
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    let delay = base
        .min(MAX_RETRY_AFTER)
        .mul_f64(factor)
        .max(MIN_RETRY_DELAY);
    Some(match retry_after {
        Some(ra) => delay.max(ra.min(MAX_RETRY_AFTER)),
        None => delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn follows_the_schedule_then_repeats_its_last_step() {
        let sched = [s(5), s(60), s(300)];
        assert_eq!(next_delay(&sched, 1, 10, None, 0.5), Some(s(5)));
        assert_eq!(next_delay(&sched, 2, 10, None, 0.5), Some(s(60)));
        assert_eq!(next_delay(&sched, 3, 10, None, 0.5), Some(s(300)));
        assert_eq!(next_delay(&sched, 7, 10, None, 0.5), Some(s(300)));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let sched = [s(100)];
        assert_eq!(next_delay(&sched, 1, 5, None, 0.0), Some(s(80)));
        assert_eq!(next_delay(&sched, 1, 5, None, 1.0), Some(s(120)));
    }

    #[test]
    fn max_attempts_ends_in_the_dead_letter_queue() {
        assert_eq!(next_delay(&[s(5)], 6, 6, None, 0.5), None);
        assert_eq!(next_delay(&[s(5)], 1, 1, None, 0.5), None);
    }

    #[test]
    fn no_retry_comes_sooner_than_the_floor() {
        assert_eq!(
            next_delay(&[Duration::ZERO], 1, 5, None, 0.0),
            Some(MIN_RETRY_DELAY)
        );
        assert_eq!(
            next_delay(&[Duration::from_millis(100)], 3, 5, None, 1.0),
            Some(MIN_RETRY_DELAY)
        );
    }

    #[test]
    fn retry_after_raises_but_never_lowers() {
        let sched = [s(10)];
        assert_eq!(next_delay(&sched, 1, 5, Some(s(30)), 0.5), Some(s(30)));
        assert_eq!(next_delay(&sched, 1, 5, Some(s(1)), 0.5), Some(s(10)));
        assert_eq!(
            next_delay(&sched, 1, 5, Some(s(10 * 86400)), 0.5),
            Some(s(86400))
        );
    }
}
