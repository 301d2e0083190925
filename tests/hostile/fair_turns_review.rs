//! Review of item 7 of issue 17 (fair turns), by someone other than its
//! author: a long `next` chain read a slice per turn must not hold the
//! source's other targets past their schedule, and its kept position must
//! survive what a hostile EHR does between and within its slices.

use crate::common::scripted::{
    Scripted, Seen, bundle, last_updated_ge, now_instant, observation, query_pairs, status_with,
};
use crate::common::{Bridge, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the server answered, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A Patient search (a poll of the other type).
    Patient,
    /// An Observation search's first page (a new search).
    ObservationSearch,
    /// The page with Observation's last entry.
    ObservationEnd,
}

/// A server with an Observation backlog of `pages` pages (two entries a page,
/// 10 s apart, offset-paged) and one Patient. `refuse` is asked about each
/// continuation page (its offset, and whether another search was made since
/// its link was given) and may answer in its place (a 429, a 410).
fn chain_server(
    pages: usize,
    events: Arc<Mutex<Vec<Event>>>,
    refuse: impl Fn(usize, bool) -> Option<axum::response::Response> + Send + Sync + 'static,
) -> impl Fn(&Seen) -> axum::response::Response + Send + Sync + 'static {
    // The latest search: a server that keeps one page context at a time.
    let context = Arc::new(AtomicUsize::new(0));
    // One base for every server of the process: two servers of one test
    // serve the same versions at the same times (a reload to another one).
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| chrono::Utc::now() - chrono::Duration::seconds(5000));
    assert!(pages <= 200, "the backlog stays in the past");
    let at = move |i: usize| {
        (base + chrono::Duration::seconds(10 * i as i64))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    move |seen: &Seen| {
        let uri = seen.uri.as_str();
        if uri.contains("_sort=") {
            context.fetch_add(1, Ordering::SeqCst);
        }
        let current = context.load(Ordering::SeqCst);
        if uri.starts_with("/fhir/Patient?") && uri.contains("_sort") {
            events.lock().unwrap().push(Event::Patient);
        }
        if uri.starts_with("/fhir/Patient") {
            let p = json!({"resourceType": "Patient", "id": "pt1", "active": true,
                "meta": {"versionId": "1", "lastUpdated": at(0)}});
            return bundle(&now_instant(), vec![p], None);
        }
        if !uri.starts_with("/fhir/Observation") {
            return bundle(&now_instant(), vec![], None);
        }
        let query = query_pairs(uri);
        let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let ge = last_updated_ge(&query);
        let first = match &ge {
            Some(x) => (0..2 * pages).find(|i| at(*i) >= *x).unwrap_or(2 * pages),
            None => 0,
        };
        let offset: Option<usize> = param("_offset").and_then(|o| o.parse().ok());
        let stale = param("_ctx").is_some_and(|c| c != current.to_string());
        if let Some(o) = offset
            && let Some(answer) = refuse(o, stale)
        {
            return answer;
        }
        if offset.is_none() && param("_sort").is_some() {
            events.lock().unwrap().push(Event::ObservationSearch);
        }
        let offset = offset.unwrap_or(0);
        let from = first + 2 * offset;
        // Entry 3 (page 2) has an id that is no FHIR id: skipped, counted.
        let entries: Vec<_> = (from..(from + 2).min(2 * pages))
            .map(|i| match i {
                3 => observation("bad id", "1", &at(i)),
                _ => observation(&format!("o{i}"), "1", &at(i)),
            })
            .collect();
        if from + 2 >= 2 * pages && from < 2 * pages {
            events.lock().unwrap().push(Event::ObservationEnd);
        }
        let next = (from + 2 < 2 * pages).then(|| {
            let ge = ge
                .clone()
                .map(|g| format!("&_lastUpdated=ge{g}"))
                .unwrap_or_default();
            let ctx = param("_ctx").unwrap_or_else(|| current.to_string());
            format!("Observation?_offset={}&_ctx={ctx}{ge}", offset + 1)
        });
        bundle(&now_instant(), entries, next.as_deref())
    }
}

fn config(fhir: &Scripted, rx: &Receiver, extra: &str) -> String {
    format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{}"
resources = ["Observation", "Patient"]
every = "300ms"
overlap = "5s"
start = "beginning"
timeout = "2s"
{extra}

{}
"#,
        fhir.url("/fhir"),
        hook("all", &rx.url("hooks/all"), "true", "")
    )
}

/// Observation has a 160-page backlog read at 40 requests a second (about
/// 4 s), Patient is polled every 300 ms. Patient keeps its schedule while the
/// chain is read, a slice at a time: before, the tick that started the chain
/// gave Patient its one turn, then read the chain's remaining slices back to
/// back, and Patient's next poll waited for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_types_keep_their_schedule_while_a_chain_is_read() {
    const PAGES: usize = 160;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let fhir = Scripted::start(chain_server(PAGES, events.clone(), |_, _| None)).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(&fhir, &rx, "max_requests_per_second = 40"));
    wait_for(60, "every resource delivered", || rx.count() >= 2 * PAGES).await;
    let events = events.lock().unwrap().clone();
    let search = events.iter().position(|e| *e == Event::ObservationSearch);
    let end = events.iter().position(|e| *e == Event::ObservationEnd);
    let (Some(search), Some(end)) = (search, end) else {
        panic!("no chain read: {events:?}");
    };
    let patient_polls = events[search..end]
        .iter()
        .filter(|e| **e == Event::Patient)
        .count();
    assert!(
        patient_polls >= 5,
        "Patient polled {patient_polls} times while Observation's chain was read (about 4 s at a 300 ms schedule)"
    );
    let ids: BTreeSet<String> = rx.received().into_iter().map(|r| r.resource_id).collect();
    assert_eq!(ids.len(), 2 * PAGES, "every resource but the one skipped");
    bridge.stop();
}

/// A 429 with `Retry-After: 1` on page 25 of a 60-page chain, once. The page
/// was not read: after the pause the walk goes on from that very page, as
/// from a slice's end, and does not start a new search (which re-reads the
/// overlap and, with the result set drifting under offset paging, may never
/// reach the end of a long chain under a steady 429 rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_within_a_chain_keeps_its_position() {
    const PAGES: usize = 60;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let refused = Arc::new(Mutex::new(false));
    let once = refused.clone();
    let fhir = Scripted::start(chain_server(PAGES, events.clone(), move |offset, _| {
        let mut done = once.lock().unwrap();
        (offset == 24 && !*done).then(|| {
            *done = true;
            status_with(429, &[("Retry-After", "1")])
        })
    }))
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(&fhir, &rx, ""));
    wait_for(60, "every resource delivered", || rx.count() >= 2 * PAGES).await;
    assert!(*refused.lock().unwrap(), "the 429 was sent");
    let events = events.lock().unwrap().clone();
    let end = events
        .iter()
        .position(|e| *e == Event::ObservationEnd)
        .expect("the chain's end");
    let searches = events[..end]
        .iter()
        .filter(|e| **e == Event::ObservationSearch)
        .count();
    assert_eq!(searches, 1, "one search to the chain's end: {events:?}");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(rx.count(), 2 * PAGES, "each resource once (one skipped)");
    bridge.stop();
}

/// The same page answers 429 with `Retry-After: 1` every time: the kept
/// position is read again once, then the poll fails and says so on status
/// (a walk held for ever would never record an outcome, and status would
/// stay green on a chain that never ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_always_answers_429_shows_on_status() {
    const PAGES: usize = 60;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let fhir = Scripted::start(chain_server(PAGES, events.clone(), |offset, _| {
        (offset == 24).then(|| status_with(429, &[("Retry-After", "1")]))
    }))
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(&fhir, &rx, ""));
    let observation_error = |bridge: &Bridge| {
        bridge.status_json()["sources"][0]["targets"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t["resource_type"] == "Observation")
                    .and_then(|t| t["last_error"].as_str().map(String::from))
            })
            .unwrap_or_default()
    };
    wait_for(30, "the 429 on status", || {
        observation_error(&bridge).contains("429")
    })
    .await;
    bridge.stop();
}

/// A server that keeps one page context at a time (the latest search's): a
/// kept link answers 410 once Patient's poll searched meanwhile, and the
/// overlap (10 min) holds 30 pages. Before, the walk started again from the
/// watermark, re-read the overlap for its slice, yielded, found its link
/// expired again and failed; each poll the same: the watermark never passed
/// page 10, and the rest of the chain was never delivered. A walk that had to
/// start again reads its chain to the end in that turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_expires_while_it_waits_its_turn_does_not_stall_the_chain() {
    const PAGES: usize = 60;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let fhir = Scripted::start(chain_server(PAGES, events.clone(), |_, stale| {
        stale.then(|| status_with(410, &[]))
    }))
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let config = config(&fhir, &rx, "max_requests_per_second = 20")
        .replace("overlap = \"5s\"", "overlap = \"10m\"");
    let mut bridge = Bridge::start(&config);
    wait_for(30, "every resource delivered", || rx.count() >= 2 * PAGES).await;
    let ids: BTreeSet<String> = rx.received().into_iter().map(|r| r.resource_id).collect();
    assert_eq!(ids.len(), 2 * PAGES, "every resource but the one skipped");
    bridge.stop();
}

/// A reload moves the source to another server (another `base_url`, origin
/// and all) while a walk's position is kept. The kept link is the old
/// search's on the old server: it is never followed after the reload (a
/// changed source starts afresh, its walks with it); the new server is
/// searched from the committed watermark and each resource is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_another_base_url_drops_the_kept_link() {
    const PAGES: usize = 80;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let old = Scripted::start(chain_server(PAGES, events.clone(), |_, _| None)).await;
    let new = Scripted::start(chain_server(PAGES, Arc::default(), |_, _| None)).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(&old, &rx, "max_requests_per_second = 20");
    let mut bridge = Bridge::start(&cfg);
    let continuation = |s: &Scripted| {
        s.seen()
            .iter()
            .filter(|r| r.uri.contains("_offset="))
            .count()
    };
    wait_for(30, "the old server's chain under way", || {
        continuation(&old) >= 15
    })
    .await;
    std::fs::write(
        bridge.config_path(),
        cfg.replace(&old.url("/fhir"), &new.url("/fhir")),
    )
    .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &bridge.pid().unwrap().to_string()])
        .status();
    wait_for(20, "the reload applied", || {
        bridge.logs().contains("reload applied")
    })
    .await;
    let old_requests = old.count();
    wait_for(30, "every resource delivered", || rx.count() >= 2 * PAGES).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(old.count(), old_requests, "nothing went to the old server");
    assert!(
        continuation(&old) < 2 * PAGES,
        "the old chain was not read to its end before the reload"
    );
    let ids: BTreeSet<String> = rx.received().into_iter().map(|r| r.resource_id).collect();
    assert_eq!(ids.len(), 2 * PAGES, "every resource but the one skipped");
    assert_eq!(rx.count(), 2 * PAGES, "each once");
    bridge.stop();
}

/// SIGTERM while a walk waits for its next turn (here held by a 429 with
/// `Retry-After: 5` on page 11), after its first slice skipped an entry whose
/// id is no FHIR id. The restart goes on from the committed watermark, past
/// that page, so the skip is never seen again: what the walk's turns found
/// must be recorded when it stops. Before, it was dropped with the kept walk,
/// and status never counted the entry that was not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_stopped_between_its_turns_still_reports_what_it_skipped() {
    const PAGES: usize = 40;
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let refused = Arc::new(Mutex::new(false));
    let once = refused.clone();
    let fhir = Scripted::start(chain_server(PAGES, events.clone(), move |offset, _| {
        let mut done = once.lock().unwrap();
        (offset == 10 && !*done).then(|| {
            *done = true;
            status_with(429, &[("Retry-After", "5")])
        })
    }))
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(&fhir, &rx, ""));
    wait_for(20, "the walk held by the 429", || *refused.lock().unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    bridge.stop();
    bridge.restart();
    wait_for(30, "every resource delivered", || rx.count() >= 2 * PAGES).await;
    let skipped = |bridge: &Bridge| {
        bridge.status_json()["sources"][0]["targets"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t["resource_type"] == "Observation")
                    .and_then(|t| t["entries_skipped"].as_i64())
            })
            .unwrap_or_default()
    };
    assert_eq!(
        skipped(&bridge),
        1,
        "the skipped entry is counted on status"
    );
    bridge.stop();
}

/// A server that ignores `_sort` (pages in id order, times scattered) and
/// answers a link whose page context it dropped (another search came
/// between) with an empty last page, 200, no `next`. Its walk moves the
/// watermark only at the chain's end, to the latest time seen: a chain cut
/// short after a yield took the watermark past the older entries of the
/// pages never read, and the next search started above them (lost for
/// good). A walk whose pages are out of time order reads on to its end in
/// one turn, as it did before slicing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_out_of_time_order_is_not_cut_short_by_a_yield() {
    const N: usize = 60;
    let base = chrono::Utc::now() - chrono::Duration::seconds(20 * N as i64 + 100);
    let at = move |i: usize| {
        (base + chrono::Duration::seconds(10 * ((i * 37) % N) as i64))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    let context = Arc::new(AtomicUsize::new(0));
    let fhir = Scripted::start(move |seen: &Seen| {
        let uri = seen.uri.as_str();
        if uri.contains("_sort=") {
            context.fetch_add(1, Ordering::SeqCst);
        }
        let current = context.load(Ordering::SeqCst).to_string();
        if uri.starts_with("/fhir/Patient") {
            let p = json!({"resourceType": "Patient", "id": "pt1", "active": true,
                "meta": {"versionId": "1", "lastUpdated": at(0)}});
            return bundle(&now_instant(), vec![p], None);
        }
        if !uri.starts_with("/fhir/Observation") {
            return bundle(&now_instant(), vec![], None);
        }
        let query = query_pairs(uri);
        let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if param("_ctx").is_some_and(|c| c != current) {
            return bundle(&now_instant(), vec![], None);
        }
        let ge = last_updated_ge(&query);
        let matching: Vec<usize> = (0..N)
            .filter(|i| ge.as_ref().is_none_or(|g| at(*i) >= *g))
            .collect();
        let offset: usize = param("_offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let entries: Vec<_> = matching
            .iter()
            .skip(2 * offset)
            .take(2)
            .map(|i| observation(&format!("o{i}"), "1", &at(*i)))
            .collect();
        let next = (2 * offset + 2 < matching.len()).then(|| {
            let ctx = param("_ctx").unwrap_or(current.clone());
            let ge = ge
                .clone()
                .map(|g| format!("&_lastUpdated=ge{g}"))
                .unwrap_or_default();
            format!("Observation?_offset={}&_ctx={ctx}{ge}", offset + 1)
        });
        bundle(&now_instant(), entries, next.as_deref())
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(&fhir, &rx, "max_requests_per_second = 20"));
    wait_for(30, "every resource delivered", || rx.count() > N).await;
    let ids: BTreeSet<String> = rx.received().into_iter().map(|r| r.resource_id).collect();
    assert_eq!(ids.len(), N + 1, "every resource");
    bridge.stop();
}
