//! How far a poll may move the `_lastUpdated` watermark.
//!
//! Never into a tie: while more pages follow, the watermark may only reach the
//! largest lastUpdated strictly below the page's last one (resources sharing the
//! last instant may continue on the next page). When the `next` chain is
//! exhausted, it moves to the largest lastUpdated the poll saw. A server that
//! does not return ascending order only advances at the end of the chain.
//!
//! And never past the horizon: every time the bridge takes from outside and
//! turns into a watermark (an entry's lastUpdated, a history entry's time, a
//! bulk export's `transactionTime`, a backfill's cursor) passes through
//! `horizon` and `judge` here, the one rule for all of them.

use chrono::{DateTime, TimeDelta, Utc};

/// How far past our estimate of the server's clock an outside time may lie
/// and still become a watermark. Beyond it (a server stamping year 9999),
/// the time is not believed: a watermark in the future would make every later
/// poll ask for an empty range. A minute covers the clock estimate's own
/// error (a Date header has whole seconds, a Bundle's meta.lastUpdated may be
/// a little old) and stays below the default overlap (2 min), which re-reads
/// what such a time could have jumped over.
pub const FUTURE_TOLERANCE: TimeDelta = TimeDelta::seconds(60);

/// The latest instant a watermark may take: the server's clock as the bridge
/// estimates it (never ahead of it; `local_now`, our own clock, until a
/// response told it) plus the tolerance: `FUTURE_TOLERANCE`, or the source's
/// `overlap` when that is shorter. A watermark up to the tolerance ahead of
/// the server's clock is re-read from `watermark - overlap` by the next poll;
/// with a tolerance past the overlap, the writes made between the server's
/// now and that watermark, less the overlap, would never be read.
pub fn horizon(
    server_now: Option<DateTime<Utc>>,
    local_now: DateTime<Utc>,
    overlap: std::time::Duration,
) -> DateTime<Utc> {
    let tolerance =
        TimeDelta::from_std(overlap).map_or(FUTURE_TOLERANCE, |o| o.min(FUTURE_TOLERANCE));
    server_now
        .unwrap_or(local_now)
        .checked_add_signed(tolerance)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What an outside time is worth as a watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideTime {
    /// At or before the horizon: the watermark may move to it.
    Believed(DateTime<Utc>),
    /// After it: a warning on the target's status, and the watermark moves
    /// only to the horizon.
    Beyond {
        told: DateTime<Utc>,
        horizon: DateTime<Utc>,
    },
}

/// Judges `told` against `horizon` (see `horizon`).
pub fn judge(told: DateTime<Utc>, horizon: DateTime<Utc>) -> OutsideTime {
    if told > horizon {
        OutsideTime::Beyond { told, horizon }
    } else {
        OutsideTime::Believed(told)
    }
}

impl OutsideTime {
    /// Where the watermark may move: never past the horizon.
    pub fn watermark(self) -> DateTime<Utc> {
        match self {
            OutsideTime::Believed(t) => t,
            OutsideTime::Beyond { horizon, .. } => horizon,
        }
    }

    /// The warning for status when the time was beyond the horizon; `what`
    /// names it (`"the bulk export's transactionTime"`).
    pub fn warning(self, what: &str) -> Option<String> {
        match self {
            OutsideTime::Believed(_) => None,
            OutsideTime::Beyond { told, horizon } => Some(format!(
                "{what} {} is after the server's clock; the watermark moved only to {} (the server's clock plus {} s at most)",
                crate::fhir::format_instant(told),
                crate::fhir::format_instant(horizon),
                FUTURE_TOLERANCE.num_seconds()
            )),
        }
    }
}

#[derive(Debug, Default)]
pub struct WatermarkTracker {
    max_seen: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    ascending: bool,
}

impl WatermarkTracker {
    pub fn new() -> Self {
        WatermarkTracker {
            ascending: true,
            ..Default::default()
        }
    }

    /// Whether every time so far came in ascending order (the watermark can
    /// move before the chain's end).
    pub fn in_order(&self) -> bool {
        self.ascending
    }

    /// Feeds one page's lastUpdated values (in server order); returns the
    /// watermark this page allows, if any.
    pub fn page(&mut self, instants: &[DateTime<Utc>], has_next: bool) -> Option<DateTime<Utc>> {
        for &t in instants {
            if self.last_seen.is_some_and(|prev| t < prev) {
                self.ascending = false;
            }
            self.last_seen = Some(t);
            self.max_seen = self.max_seen.max(Some(t));
        }
        if !has_next {
            return self.max_seen;
        }
        if !self.ascending {
            return None;
        }
        let last = *instants.last()?;
        instants.iter().rev().copied().find(|t| *t < last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s as i64, 0).unwrap()
    }

    #[test]
    fn stops_below_a_tie_that_crosses_the_page_boundary() {
        let mut w = WatermarkTracker::new();
        // Page 1 ends with two resources at t(5); page 2 starts with more at t(5).
        assert_eq!(w.page(&[t(1), t(3), t(5), t(5)], true), Some(t(3)));
        assert_eq!(w.page(&[t(5), t(5), t(7)], true), Some(t(5)));
        assert_eq!(w.page(&[t(8)], false), Some(t(8)));
    }

    #[test]
    fn a_page_all_at_one_instant_does_not_advance() {
        let mut w = WatermarkTracker::new();
        assert_eq!(w.page(&[t(5), t(5), t(5)], true), None);
        assert_eq!(w.page(&[], true), None);
        assert_eq!(w.page(&[t(5)], false), Some(t(5)));
    }

    #[test]
    fn descending_servers_advance_only_at_the_end() {
        let mut w = WatermarkTracker::new();
        assert_eq!(w.page(&[t(9), t(8)], true), None);
        assert_eq!(w.page(&[t(4), t(2)], true), None);
        assert_eq!(w.page(&[t(1)], false), Some(t(9)));
    }

    const TWO_MINUTES: std::time::Duration = std::time::Duration::from_secs(120);

    #[test]
    fn the_horizon_is_the_server_clock_plus_the_tolerance_else_ours() {
        assert_eq!(horizon(Some(t(0)), t(500), TWO_MINUTES), t(60));
        assert_eq!(horizon(None, t(500), TWO_MINUTES), t(560));
        assert_eq!(
            horizon(Some(DateTime::<Utc>::MAX_UTC), t(0), TWO_MINUTES),
            DateTime::<Utc>::MAX_UTC
        );
    }

    /// A tolerance past the overlap would lose writes: a watermark 50 s ahead
    /// of the server's clock, re-read from 5 s behind it, skips the 45 s
    /// between. The tolerance is never more than the overlap.
    #[test]
    fn the_tolerance_is_never_more_than_the_overlap() {
        let five = std::time::Duration::from_secs(5);
        let h = horizon(Some(t(0)), t(0), five);
        assert_eq!(h, t(5));
        assert_eq!(judge(t(50), h).watermark(), t(5));
        assert_eq!(horizon(Some(t(0)), t(0), std::time::Duration::ZERO), t(0));
    }

    #[test]
    fn an_outside_time_past_the_horizon_moves_the_watermark_only_to_it() {
        let h = horizon(Some(t(0)), t(0), TWO_MINUTES);
        assert_eq!(judge(t(10), h), OutsideTime::Believed(t(10)));
        assert_eq!(judge(t(60), h).watermark(), t(60));
        assert_eq!(judge(t(10), h).warning("x"), None);
        let year_9999 = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .to_utc();
        let beyond = judge(year_9999, h);
        assert_eq!(
            beyond,
            OutsideTime::Beyond {
                told: year_9999,
                horizon: h
            }
        );
        assert_eq!(beyond.watermark(), h);
        let w = beyond.warning("the bulk export's transactionTime").unwrap();
        assert!(
            w.starts_with("the bulk export's transactionTime 9999-12-31T23:59:59.000Z is after the server's clock; the watermark moved only to 2023-11-14T22:14:20.000Z"),
            "{w}"
        );
    }

    #[test]
    fn an_empty_poll_allows_nothing() {
        assert_eq!(WatermarkTracker::new().page(&[], false), None);
    }
}
