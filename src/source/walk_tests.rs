//! The walk's decisions, page by page, without a server.

use super::*;
use std::time::Duration;

const RT: &str = "Observation";

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
}

fn link(n: usize) -> Url {
    Url::parse(&format!("https://ehr.example/fhir/Observation?_offset={n}")).unwrap()
}

/// A restarted search's first request: its `since` shows in the link.
fn first_url(since: Option<DateTime<Utc>>, _until: Option<DateTime<Utc>>) -> Url {
    let mut u = link(0);
    if let Some(s) = since {
        u.query_pairs_mut()
            .append_pair("since", &s.timestamp().to_string());
    }
    u
}

fn start(kind: Walk, max_pages: usize, watermark: Option<DateTime<Utc>>) -> PageWalk {
    let start = WalkStart {
        resource_type: RT,
        kind,
        max_pages,
        overlap: chrono::Duration::seconds(10),
        floor: None,
        watermark,
        horizon: t(1_000_000),
        until: None,
        detected_at: "2026-01-01T00:00:00Z".into(),
    };
    PageWalk::start(start, &mut Notes::default(), first_url)
}

fn last_updated() -> Walk {
    Walk::Poll(Strategy::LastUpdated)
}

/// Reads one page at `instants` whose next link is `next`.
fn read(
    walk: &mut PageWalk,
    instants: &[DateTime<Utc>],
    total: Option<u64>,
    next: Option<Url>,
) -> AfterRead {
    walk.begin_page(None);
    let page = PageRead {
        total,
        bad_total: false,
        instants,
        next: next.map(Ok),
    };
    walk.page_read(page, &mut Notes::default())
}

fn status(status: u16, retry_after: Option<u64>) -> FetchError {
    FetchError::Status {
        status,
        retry_after: retry_after.map(Duration::from_secs),
    }
}

#[test]
fn a_chain_is_followed_to_its_end_and_moves_the_watermark_below_ties() {
    let mut walk = start(last_updated(), 100, None);
    let after = read(&mut walk, &[t(1), t(2), t(2)], Some(6), Some(link(1)));
    assert_eq!(after.watermark, Some(t(1)));
    assert!(matches!(after.then, Step::Fetch));
    assert_eq!(walk.url(), &link(1));
    let after = read(&mut walk, &[t(2), t(3), t(4)], Some(6), None);
    assert_eq!(after.watermark, Some(t(4)));
    assert!(matches!(after.then, Step::Done { complete: true }));
}

#[test]
fn the_page_cap_stops_a_backlog_and_fails_a_walk_going_nowhere() {
    // The watermark moved: a long backlog, gone on with at the next poll.
    let mut walk = start(Walk::Poll(Strategy::History), 2, None);
    read(&mut walk, &[t(1), t(2)], None, Some(link(1)));
    let mut notes = Notes::default();
    walk.begin_page(None);
    let page = PageRead {
        total: None,
        bad_total: false,
        instants: &[t(3), t(4)],
        next: Some(Ok(link(2))),
    };
    let after = walk.page_read(page, &mut notes);
    assert!(matches!(after.then, Step::Done { complete: false }));
    assert!(notes.last.unwrap().contains("max_pages_per_poll"));

    // Every page at one instant: the watermark never moves, a poll error.
    let mut walk = start(Walk::Poll(Strategy::History), 2, None);
    read(&mut walk, &[t(1), t(1)], None, Some(link(1)));
    let after = read(&mut walk, &[t(1), t(1)], None, Some(link(2)));
    assert!(matches!(
        after.then,
        Step::Fail(PollError::PageCap { pages: 2, .. })
    ));
}

#[test]
fn a_next_link_back_to_a_page_read_is_a_loop() {
    let mut walk = start(last_updated(), 100, None);
    read(&mut walk, &[t(1)], None, Some(link(1)));
    let after = read(&mut walk, &[t(2)], None, Some(link(0)));
    assert!(matches!(
        after.then,
        Step::Fail(PollError::NextLinkLoop { page: 2, .. })
    ));
}

#[test]
fn a_next_link_that_cannot_be_followed_fails_after_the_page() {
    let mut walk = start(last_updated(), 100, None);
    walk.begin_page(None);
    let foreign = PollError::ForeignNextLink {
        resource_type: RT.into(),
        page: 1,
    };
    let page = PageRead {
        total: None,
        bad_total: false,
        instants: &[t(1), t(2)],
        next: Some(Err(foreign)),
    };
    let after = walk.page_read(page, &mut Notes::default());
    // The page itself still counts: its entries are the EHR's own.
    assert_eq!(after.watermark, Some(t(1)));
    assert!(matches!(
        after.then,
        Step::Fail(PollError::ForeignNextLink { .. })
    ));
}

#[test]
fn a_changed_total_holds_the_watermark_for_the_rest_of_the_walk() {
    let mut walk = start(last_updated(), 100, Some(t(0)));
    let after = read(&mut walk, &[t(1), t(2)], Some(10), Some(link(1)));
    assert!(!after.drift_began && after.watermark == Some(t(1)));
    let after = read(&mut walk, &[t(3), t(4)], Some(9), Some(link(2)));
    assert!(after.drift_began && after.watermark.is_none());
    let after = read(&mut walk, &[t(5)], Some(10), None);
    assert!(!after.drift_began && after.watermark.is_none());
    let facts = walk.facts(false);
    assert!(facts.drifted && facts.total == Some(10));
}

#[test]
fn a_full_walk_never_moves_the_watermark() {
    let mut walk = start(Walk::Poll(Strategy::Snapshot), 100, Some(t(0)));
    let after = read(&mut walk, &[t(1), t(2)], Some(2), None);
    assert!(after.watermark.is_none());
    assert!(matches!(after.then, Step::Done { complete: true }));
}

#[test]
fn an_expired_link_restarts_the_search_once_then_fails() {
    let mut walk = start(Walk::Poll(Strategy::History), 100, Some(t(100)));
    read(&mut walk, &[t(101), t(102)], Some(4), Some(link(1)));
    walk.begin_page(None);
    let mut notes = Notes::default();
    let step = walk.fetch_failed(status(410, None), &mut notes, first_url);
    // From the committed watermark less the overlap, and with what the
    // first search saw forgotten.
    let again = first_url(Some(t(101) - chrono::Duration::seconds(10)), None);
    assert!(matches!(step, Step::Restart));
    assert_eq!(walk.url(), &again);
    assert!(notes.last.unwrap().contains("HTTP 410"));
    // The restarted search reads its first page again, without a loop.
    let after = read(&mut walk, &[t(101)], Some(3), Some(link(1)));
    assert!(!after.drift_began);
    assert!(matches!(after.then, Step::Fetch));
    walk.begin_page(None);
    let step = walk.fetch_failed(status(404, None), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Fail(PollError::Fetch { page: 4, .. })));
}

#[test]
fn the_first_page_refused_fails_at_once() {
    let mut walk = start(last_updated(), 100, None);
    walk.begin_page(None);
    let step = walk.fetch_failed(status(404, None), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Fail(PollError::Fetch { page: 1, .. })));
    let mut walk = start(last_updated(), 100, None);
    walk.begin_page(None);
    let step = walk.fetch_failed(status(429, Some(5)), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Fail(PollError::Fetch { page: 1, .. })));
}

#[test]
fn a_last_updated_walk_yields_after_its_slice_and_goes_on_from_there() {
    let mut walk = start(last_updated(), 1000, None);
    for n in 1..PAGE_SLICE {
        let after = read(&mut walk, &[t(n as i64)], None, Some(link(n)));
        assert!(matches!(after.then, Step::Fetch), "page {n}");
    }
    let after = read(
        &mut walk,
        &[t(PAGE_SLICE as i64)],
        None,
        Some(link(PAGE_SLICE)),
    );
    assert!(matches!(after.then, Step::Yield));
    // The next turn goes on from the next link, with a new slice.
    let mut walk = walk.resume();
    assert_eq!(walk.url(), &link(PAGE_SLICE));
    let after = read(&mut walk, &[t(100)], None, Some(link(PAGE_SLICE + 1)));
    assert!(matches!(after.then, Step::Fetch));
    assert_eq!(walk.page_no(), PAGE_SLICE + 1);
}

#[test]
fn a_restarted_or_out_of_order_walk_reads_on_to_its_end() {
    // Restarted after an expired link.
    let mut walk = start(last_updated(), 1000, None);
    read(&mut walk, &[t(1)], None, Some(link(1)));
    walk.begin_page(None);
    let step = walk.fetch_failed(status(410, None), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Restart));
    for n in 2..PAGE_SLICE * 3 {
        let after = read(&mut walk, &[t(n as i64)], None, Some(link(n)));
        assert!(matches!(after.then, Step::Fetch), "page {n}");
    }
    // Times out of order.
    let mut walk = start(last_updated(), 1000, None);
    for n in 1..PAGE_SLICE * 3 {
        let at = t(1000 - n as i64);
        let after = read(&mut walk, &[at], None, Some(link(n)));
        assert!(after.watermark.is_none() || n == 1);
        assert!(matches!(after.then, Step::Fetch), "page {n}");
    }
}

#[test]
fn other_walks_never_yield() {
    for kind in [
        Walk::Poll(Strategy::Snapshot),
        Walk::Poll(Strategy::History),
        Walk::Reconcile,
    ] {
        let mut walk = start(kind, 1000, None);
        for n in 1..PAGE_SLICE * 2 {
            let after = read(&mut walk, &[t(n as i64)], None, Some(link(n)));
            assert!(matches!(after.then, Step::Fetch), "{kind:?} page {n}");
        }
    }
}

#[test]
fn a_429_keeps_the_position_once_per_page() {
    let mut walk = start(last_updated(), 1000, None);
    read(&mut walk, &[t(1)], None, Some(link(1)));
    walk.begin_page(None);
    let mut notes = Notes::default();
    let step = walk.fetch_failed(status(429, Some(5)), &mut notes, first_url);
    assert!(matches!(step, Step::Yield));
    assert!(notes.last.unwrap().contains("Retry-After"));
    // The page was not read: the next turn reads it again, from its link.
    let mut walk = walk.resume();
    assert_eq!((walk.page_no(), walk.url()), (1, &link(1)));
    walk.begin_page(None);
    assert_eq!(walk.page_no(), 2);
    // Asked to wait again for the same page: the poll fails.
    let step = walk.fetch_failed(status(503, Some(5)), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Fail(PollError::Fetch { page: 2, .. })));
}

#[test]
fn a_429_without_retry_after_or_on_another_walk_fails_the_poll() {
    let mut walk = start(last_updated(), 1000, None);
    read(&mut walk, &[t(1)], None, Some(link(1)));
    walk.begin_page(None);
    let step = walk.fetch_failed(status(429, None), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Fail(_)));
    let mut walk = start(Walk::Poll(Strategy::Snapshot), 1000, None);
    read(&mut walk, &[t(1)], None, Some(link(1)));
    walk.begin_page(None);
    let step = walk.fetch_failed(status(429, Some(5)), &mut Notes::default(), first_url);
    assert!(matches!(step, Step::Fail(_)));
}

#[test]
fn a_stored_watermark_in_the_future_starts_from_the_floor() {
    let mut notes = Notes::default();
    let walk = PageWalk::start(
        WalkStart {
            resource_type: RT,
            kind: last_updated(),
            max_pages: 10,
            overlap: chrono::Duration::seconds(10),
            floor: Some(t(5)),
            watermark: Some(t(500)),
            horizon: t(100),
            until: None,
            detected_at: String::new(),
        },
        &mut notes,
        first_url,
    );
    assert_eq!(walk.url(), &first_url(Some(t(5)), None));
    assert_eq!(walk.window_start(), Some(t(5)));
    assert!(notes.last.unwrap().contains("in the future"));
}
