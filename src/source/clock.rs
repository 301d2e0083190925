//! Our estimate of a FHIR server's clock, to the millisecond, from what its
//! responses tell: an HTTP `Date` header (whole seconds) or a
//! `Bundle.meta.lastUpdated` (milliseconds).
//!
//! As NTP does, each response bounds the offset (server time minus ours): a
//! `Date` of D read by a request sent at `s` and answered at `r` means the
//! server's clock read between D and D + 1 s at some moment in [s, r], so the
//! offset lies in [D - r, D + 1 s - s]. Intersecting these intervals over many
//! responses at different sub-second phases narrows it to about a round trip.
//! A `Bundle.meta.lastUpdated` only bounds it from below (it may be a little
//! old). Every use reads the *lower* end: an estimate never ahead of the server.
//!
//! Offsets are kept against our monotonic clock, so a step of our own wall
//! clock changes nothing. Bounds loosen with age by `MAX_DRIFT_PPM`, in case
//! the two clocks run at slightly different rates; a server clock that is
//! stepped (the intersection comes out empty) restarts the estimate from the
//! newest response.

use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SECOND_US: i64 = 1_000_000;

/// How fast the server's clock and ours may drift apart: each bound loosens by
/// this much per unit of time since it was learned. NTP-disciplined clocks
/// differ by far less; the rest (a stepped clock) shows as an empty intersection.
const MAX_DRIFT_PPM: i64 = 100;

/// Polls are moved onto the server's second boundary (see `aligned_wait`)
/// until the estimate is this much wider than two round trips.
const ALIGN_SLACK_US: i64 = 2_000;

/// One end of the offset interval, and when (our monotonic µs) it was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound {
    offset_us: i64,
    learned_at_us: i64,
}

impl Bound {
    /// How far the bound may have drifted by `at_us`.
    fn drift(&self, at_us: i64) -> i64 {
        (at_us - self.learned_at_us).max(0) * MAX_DRIFT_PPM / 1_000_000
    }

    fn as_lower(&self, at_us: i64) -> i64 {
        self.offset_us - self.drift(at_us)
    }

    fn as_upper(&self, at_us: i64) -> i64 {
        self.offset_us + self.drift(at_us)
    }
}

/// The offset interval (server µs since the epoch minus our monotonic µs),
/// on plain numbers: `ServerClock` adds the clocks and the lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetEstimate {
    lower: Option<Bound>,
    /// `None` until a `Date` header told us (an instant only bounds from below).
    upper: Option<Bound>,
    /// The round trip of the last response with a `Date` (µs).
    round_trip_us: i64,
}

impl OffsetEstimate {
    /// A `Date` header (whole seconds since the epoch) read by a request sent
    /// at `sent_us` whose response headers came back at `received_us`.
    pub fn observe_date(&mut self, date_secs: i64, sent_us: i64, received_us: i64) {
        let date_us = date_secs.saturating_mul(SECOND_US);
        let lower = Bound {
            offset_us: date_us - received_us,
            learned_at_us: received_us,
        };
        let upper = Bound {
            offset_us: date_us + SECOND_US - sent_us,
            learned_at_us: sent_us,
        };
        self.round_trip_us = (received_us - sent_us).max(0);
        self.merge(lower, Some(upper), received_us);
    }

    /// A millisecond-precision reading of the server's clock (`instant_us`,
    /// µs since the epoch) taken at the latest when we had it, `received_us`.
    pub fn observe_instant(&mut self, instant_us: i64, received_us: i64) {
        let lower = Bound {
            offset_us: instant_us - received_us,
            learned_at_us: received_us,
        };
        self.merge(lower, None, received_us);
    }

    fn merge(&mut self, lower: Bound, upper: Option<Bound>, at_us: i64) {
        let keep_lower = self
            .lower
            .filter(|b| b.as_lower(at_us) >= lower.as_lower(at_us));
        let keep_upper = match (self.upper, upper) {
            (Some(old), Some(new)) if old.as_upper(at_us) <= new.as_upper(at_us) => Some(old),
            (old, None) => old,
            (_, new) => new,
        };
        let merged_lower = keep_lower.unwrap_or(lower);
        let empty = keep_upper.is_some_and(|u| merged_lower.as_lower(at_us) > u.as_upper(at_us));
        if empty {
            // The server's clock was stepped (or an old bound was wrong):
            // start again from what this response alone says.
            self.lower = Some(lower);
            self.upper = upper;
        } else {
            self.lower = Some(merged_lower);
            self.upper = keep_upper;
        }
    }

    /// The server's time at our monotonic `at_us`, never ahead of it.
    pub fn now_safe_us(&self, at_us: i64) -> Option<i64> {
        self.lower.map(|b| at_us + b.as_lower(at_us))
    }

    /// The latest the server's time at `at_us` can be; `None` until a `Date` told us.
    pub fn now_latest_us(&self, at_us: i64) -> Option<i64> {
        self.upper.map(|b| at_us + b.as_upper(at_us))
    }

    /// How wide the interval is at `at_us`; `None` while it is open at one end.
    pub fn width_us(&self, at_us: i64) -> Option<i64> {
        Some(self.upper?.as_upper(at_us) - self.lower?.as_lower(at_us))
    }

    /// The request planned `nominal_us` after `at_us`, moved by at most half of
    /// `nominal_us` so that the server answers it as its second turns (under
    /// the middle of the interval): whichever second its `Date` then tells
    /// halves the interval. `nominal_us` when the estimate is already about
    /// a round trip wide (polls need not all land on the second boundary),
    /// or has no upper end.
    pub fn aligned_wait_us(&self, nominal_us: i64, at_us: i64) -> i64 {
        let (Some(lower), Some(upper)) = (self.lower, self.upper) else {
            return nominal_us;
        };
        let (lo, hi) = (lower.as_lower(at_us), upper.as_upper(at_us));
        if hi - lo <= 2 * self.round_trip_us + ALIGN_SLACK_US {
            return nominal_us;
        }
        let mid = lo + (hi - lo) / 2;
        // The server reads its clock about half a round trip after we send.
        let answered = at_us
            .saturating_add(nominal_us)
            .saturating_add(self.round_trip_us / 2);
        let phase = answered.saturating_add(mid).rem_euclid(SECOND_US);
        let shift = if phase < SECOND_US / 2 {
            -phase
        } else {
            SECOND_US - phase
        };
        if shift.abs() > nominal_us / 2 {
            return nominal_us;
        }
        nominal_us.saturating_add(shift)
    }
}

/// `OffsetEstimate` on our clocks, shared by a source's requests.
#[derive(Debug)]
pub struct ServerClock {
    /// Our monotonic zero.
    base: Instant,
    estimate: Mutex<OffsetEstimate>,
}

impl Default for ServerClock {
    fn default() -> Self {
        ServerClock {
            base: Instant::now(),
            estimate: Mutex::new(OffsetEstimate::default()),
        }
    }
}

impl ServerClock {
    fn us(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.base) {
            Some(d) => d.as_micros() as i64,
            None => -(self.base.duration_since(t).as_micros() as i64),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetEstimate> {
        self.estimate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `Date` header of a request sent at `sent` whose headers came back at `received`.
    pub fn observe_date(&self, date: DateTime<Utc>, sent: Instant, received: Instant) {
        let (sent, received) = (self.us(sent), self.us(received));
        self.lock().observe_date(date.timestamp(), sent, received);
    }

    /// A millisecond-precision server time we had in hand at `received`.
    pub fn observe_instant(&self, instant: DateTime<Utc>, received: Instant) {
        let received = self.us(received);
        self.lock()
            .observe_instant(instant.timestamp_micros(), received);
    }

    /// The server's current time, never ahead of it; `None` before any
    /// response told us.
    pub fn now_safe(&self) -> Option<DateTime<Utc>> {
        let now = self.us(Instant::now());
        self.lock()
            .now_safe_us(now)
            .and_then(DateTime::from_timestamp_micros)
    }

    /// The latest the server's current time can be; `None` until a `Date` told us.
    pub fn now_latest(&self) -> Option<DateTime<Utc>> {
        let now = self.us(Instant::now());
        self.lock()
            .now_latest_us(now)
            .and_then(DateTime::from_timestamp_micros)
    }

    /// How long to wait before a request planned `nominal` from now, so that
    /// it teaches the most about the server's clock (see `OffsetEstimate::aligned_wait_us`).
    pub fn aligned_wait(&self, nominal: Duration) -> Duration {
        let nominal_us = i64::try_from(nominal.as_micros()).unwrap_or(i64::MAX);
        let now = self.us(Instant::now());
        let us = self.lock().aligned_wait_us(nominal_us, now);
        Duration::from_micros(us.max(0) as u64)
    }
}

#[cfg(test)]
#[path = "clock_tests.rs"]
mod tests;
