use super::*;
use proptest::prelude::*;

const MS: i64 = 1_000;

/// A simulated server: its clock (µs since the epoch) is our monotonic µs
/// plus `offset_us`; it reads it `up_us` after we send and we have its
/// answer `down_us` later.
struct Server {
    offset_us: i64,
}

impl Server {
    /// One request sent at `sent_us` answered with only a `Date`; returns
    /// when the answer came back.
    fn date(&self, est: &mut OffsetEstimate, sent_us: i64, up_us: i64, down_us: i64) -> i64 {
        let read_at = sent_us + up_us;
        let received = read_at + down_us;
        let date_secs = (read_at + self.offset_us).div_euclid(SECOND_US);
        est.observe_date(date_secs, sent_us, received);
        received
    }

    fn now(&self, at_us: i64) -> i64 {
        at_us + self.offset_us
    }

    /// How far the safe estimate lags the server at `at_us` (never negative).
    fn lag(&self, est: &OffsetEstimate, at_us: i64) -> i64 {
        self.now(at_us) - est.now_safe_us(at_us).expect("an estimate")
    }
}

#[test]
fn nothing_is_known_before_a_response() {
    let est = OffsetEstimate::default();
    assert_eq!(est.now_safe_us(0), None);
    assert_eq!(est.now_latest_us(0), None);
    assert_eq!(est.aligned_wait_us(SECOND_US, 0), SECOND_US);
}

#[test]
fn one_date_bounds_the_server_clock_within_a_second() {
    let server = Server {
        offset_us: 1_700_000_000_700_000,
    };
    let mut est = OffsetEstimate::default();
    let at = server.date(&mut est, 10 * MS, MS, MS);
    let lag = server.lag(&est, at);
    assert!((0..SECOND_US + 2 * MS).contains(&lag), "{lag}");
    assert!(est.now_latest_us(at).unwrap() >= server.now(at));
}

#[test]
fn dates_at_different_phases_narrow_the_estimate_well_under_a_second() {
    let server = Server {
        offset_us: 1_700_000_000_000_000 + 123_456,
    };
    let mut est = OffsetEstimate::default();
    let mut at = 0;
    // Eight requests 1.125 s apart: their phases cover the second in 125 ms steps.
    for i in 0..8 {
        at = server.date(&mut est, i * 1_125 * MS, 2 * MS, 2 * MS);
    }
    let lag = server.lag(&est, at);
    assert!((0..130 * MS).contains(&lag), "lag {lag} µs");
    assert!(est.width_us(at).unwrap() < 260 * MS);
}

#[test]
fn aligned_requests_find_the_second_boundary_within_a_round_trip() {
    let server = Server {
        offset_us: 1_700_000_000_000_000 + 654_321,
    };
    let mut est = OffsetEstimate::default();
    let mut at = server.date(&mut est, 0, MS, MS);
    for _ in 0..14 {
        let sent = at + est.aligned_wait_us(SECOND_US, at);
        at = server.date(&mut est, sent, MS, MS);
    }
    // Within two round trips (of 2 ms) and the slack.
    let lag = server.lag(&est, at);
    assert!((0..=4 * MS + ALIGN_SLACK_US).contains(&lag), "lag {lag} µs");
    // Converged: polls are no longer moved.
    assert_eq!(est.aligned_wait_us(SECOND_US, at), SECOND_US);
}

#[test]
fn a_server_clock_stepped_back_restarts_the_estimate() {
    let mut server = Server {
        offset_us: 1_700_000_000_000_000 + 250_000,
    };
    let mut est = OffsetEstimate::default();
    let mut at = 0;
    for i in 0..8 {
        at = server.date(&mut est, i * 1_125 * MS, MS, MS);
    }
    server.offset_us -= 10 * SECOND_US;
    at = server.date(&mut est, at + SECOND_US, MS, MS);
    let lag = server.lag(&est, at);
    assert!((0..SECOND_US + 2 * MS).contains(&lag), "lag {lag} µs");
    // ...and goes on narrowing from there.
    for i in 1..9 {
        at = server.date(&mut est, at + i * 1_125 * MS, MS, MS);
    }
    assert!(server.lag(&est, at) < 130 * MS);
}

#[test]
fn a_server_clock_stepped_forward_is_followed() {
    let mut server = Server {
        offset_us: 1_700_000_000_000_000,
    };
    let mut est = OffsetEstimate::default();
    let mut at = server.date(&mut est, 0, MS, MS);
    server.offset_us += 3_600 * SECOND_US;
    at = server.date(&mut est, at + SECOND_US, MS, MS);
    let lag = server.lag(&est, at);
    assert!((0..SECOND_US + 2 * MS).contains(&lag), "lag {lag} µs");
}

#[test]
fn an_instant_bounds_from_below_only() {
    let mut est = OffsetEstimate::default();
    est.observe_instant(5_000 * MS, 1_000 * MS);
    assert_eq!(est.now_safe_us(1_000 * MS), Some(5_000 * MS));
    assert_eq!(est.now_latest_us(1_000 * MS), None);
    // An older instant does not pull the estimate back.
    est.observe_instant(5_500 * MS, 2_000 * MS);
    let now = est.now_safe_us(2_000 * MS).unwrap();
    assert!((5_999 * MS..=6_000 * MS).contains(&now), "{now}");
    // Nothing to align to without an upper end.
    assert_eq!(est.aligned_wait_us(SECOND_US, 2_000 * MS), SECOND_US);
}

#[test]
fn an_instant_past_the_upper_end_restarts_from_it() {
    let mut est = OffsetEstimate::default();
    // Date 100 s read between 0 and 1 ms: the offset is at most 101 s.
    est.observe_date(100, 0, MS);
    est.observe_instant(500 * SECOND_US, 2 * MS);
    assert_eq!(est.now_safe_us(2 * MS), Some(500 * SECOND_US));
    assert_eq!(est.now_latest_us(2 * MS), None);
}

#[test]
fn bounds_loosen_with_age() {
    let mut est = OffsetEstimate::default();
    est.observe_instant(10 * SECOND_US, 0);
    // 1,000 s later the lower end has given up 100 ms (100 ppm).
    let later = 1_000 * SECOND_US;
    assert_eq!(
        est.now_safe_us(later),
        Some(10 * SECOND_US + later - 100 * MS)
    );
}

proptest! {
    #[test]
    fn the_estimate_is_never_ahead_of_the_server(
        offset_us in -1_000_000_000_000i64..4_000_000_000_000_000,
        requests in prop::collection::vec((0i64..3_000_000, 0i64..200_000, 0i64..200_000), 1..40),
    ) {
        let server = Server { offset_us };
        let mut est = OffsetEstimate::default();
        let mut at = 0;
        for (gap, up, down) in requests {
            at = server.date(&mut est, at + gap, up, down);
            prop_assert!(est.now_safe_us(at).unwrap() <= server.now(at));
            prop_assert!(est.now_latest_us(at).unwrap() >= server.now(at));
            let later = at + 5 * SECOND_US;
            prop_assert!(est.now_safe_us(later).unwrap() <= server.now(later));
        }
    }

    #[test]
    fn aligned_requests_converge_within_the_round_trip(
        offset_us in 1_000_000_000_000_000i64..2_000_000_000_000_000,
        max_delay_us in 0i64..50_000,
        delays in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 16),
    ) {
        let server = Server { offset_us };
        let mut est = OffsetEstimate::default();
        let mut at = 0;
        for (up, down) in delays {
            let sent = at + est.aligned_wait_us(SECOND_US, at);
            let (up, down) = ((up * max_delay_us as f64) as i64, (down * max_delay_us as f64) as i64);
            at = server.date(&mut est, sent, up, down);
            prop_assert!(est.now_safe_us(at).unwrap() <= server.now(at));
        }
        let lag = server.lag(&est, at);
        // Two round trips of at most 2 x max_delay, the slack, and drift.
        prop_assert!(lag <= 4 * max_delay_us + ALIGN_SLACK_US + 5 * MS, "lag {} µs", lag);
    }
}
