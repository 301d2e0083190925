//! When a source polls: a cron expression (5 or 6 fields) or a fixed interval.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<Cron>),
    Every(Duration),
}

impl Schedule {
    pub fn cron(expr: &str) -> Result<Self, String> {
        CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| e.to_string())
    }

    /// The next tick strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(d) => {
                now + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX)
            }
            // A cron that never fires again (e.g. a past year) polls daily rather than never.
            Schedule::Cron(c) => c.find_next_occurrence(&now, false).unwrap_or_else(|_| {
                now.checked_add_signed(chrono::Duration::days(1))
                    .unwrap_or(now)
            }),
        }
    }

    /// How long to wait after a tick that took `took` and ended at `now`.
    /// An interval runs at a fixed rate, from tick start to tick start
    /// (sleeping a whole interval after each tick would stretch the period by
    /// the tick's own duration, and every change's wait with it), measured
    /// on the monotonic clock (a step of the wall clock changes nothing); a
    /// tick that took more than half the interval still gets half an
    /// interval's rest, so a slow server is never polled back to back.
    pub fn wait_after_tick(&self, took: Duration, now: DateTime<Utc>) -> Duration {
        match self {
            Schedule::Every(d) => d.saturating_sub(took).max(*d / 2),
            Schedule::Cron(_) => (self.next_after(now) - now).to_std().unwrap_or_default(),
        }
    }

    /// Whether the schedule ticks within `horizon` after `now`. A cron such as
    /// `0 0 31 2 *` (February 31st) parses but never fires.
    pub fn fires_within(&self, now: DateTime<Utc>, horizon: Duration) -> bool {
        match self {
            Schedule::Every(_) => true,
            Schedule::Cron(c) => {
                let limit = chrono::Duration::from_std(horizon)
                    .ok()
                    .and_then(|h| now.checked_add_signed(h));
                match (c.find_next_occurrence(&now, false), limit) {
                    (Ok(next), Some(limit)) => next <= limit,
                    (Ok(_), None) => true,
                    (Err(_), _) => false,
                }
            }
        }
    }

    /// The nominal interval, used to spread the first ticks of many sources.
    pub fn nominal_interval(&self, now: DateTime<Utc>) -> Duration {
        let next = self.next_after(now);
        let after = self.next_after(next);
        (after - next).to_std().unwrap_or(Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_runs_from_tick_start_to_tick_start() {
        let every = Schedule::Every(Duration::from_secs(1));
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let now = at("2026-11-21T10:07:00Z");
        let ms = Duration::from_millis;
        assert_eq!(every.wait_after_tick(ms(30), now), ms(970));
        // A tick longer than half the interval: half an interval's rest.
        assert_eq!(every.wait_after_tick(ms(3_000), now), ms(500));
        let cron = Schedule::cron("*/5 * * * *").unwrap();
        assert_eq!(cron.wait_after_tick(ms(30), now), Duration::from_secs(180));
    }

    #[test]
    fn five_and_six_field_cron() {
        let now: DateTime<Utc> = "2026-11-21T10:00:03Z".parse().unwrap();
        let six = Schedule::cron("*/10 * * * * *").unwrap();
        assert_eq!(
            six.next_after(now).to_rfc3339(),
            "2026-11-21T10:00:10+00:00"
        );
        let five = Schedule::cron("*/5 * * * *").unwrap();
        assert_eq!(
            five.next_after(now).to_rfc3339(),
            "2026-11-21T10:05:00+00:00"
        );
        assert!(Schedule::cron("not a cron").is_err());
        assert_eq!(six.nominal_interval(now), Duration::from_secs(10));
    }

    #[test]
    fn a_cron_for_february_31st_never_fires() {
        let now: DateTime<Utc> = "2026-11-21T10:00:03Z".parse().unwrap();
        let years = |n: u64| Duration::from_secs(n * 366 * 24 * 3600);
        assert!(
            !Schedule::cron("0 0 31 2 *")
                .unwrap()
                .fires_within(now, years(5))
        );
        assert!(
            !Schedule::cron("0 0 30 2 *")
                .unwrap()
                .fires_within(now, years(5))
        );
        assert!(
            Schedule::cron("0 0 29 2 *")
                .unwrap()
                .fires_within(now, years(5))
        );
        assert!(
            !Schedule::cron("0 0 29 2 *")
                .unwrap()
                .fires_within(now, years(1))
        );
        assert!(
            Schedule::cron("*/10 * * * * *")
                .unwrap()
                .fires_within(now, years(5))
        );
        assert!(Schedule::Every(Duration::from_secs(1)).fires_within(now, years(5)));
    }
}
