//! Item 7 of issue 17: one type's long `next` chain does not hold its
//! source's other types. A `last-updated` poll reads a slice of pages per
//! turn, the other targets take theirs, and it goes on from its kept `next`
//! link (no new search, so nothing is re-read and nothing skipped).

use crate::common::scripted::{
    Scripted, Seen, bundle, last_updated_ge, now_instant, observation, query_pairs,
};
use crate::common::{Bridge, hook, wait_for};
use fhir_bridge::sandbox::Receiver;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAGES: usize = 200;

/// What the server answered, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A Patient search.
    Patient,
    /// An Observation search's first page (a new search).
    ObservationSearch,
    /// The page with Observation's last entry.
    ObservationEnd,
}

/// Observation has a 200-page backlog (two entries a page, 10 s apart),
/// Patient one change. Patient's poll goes out before Observation's chain is
/// done (today it waited for all 200 pages), Observation's chain is one
/// search followed to its end, and every resource is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_long_chain_does_not_hold_the_other_types() {
    let base = chrono::Utc::now() - chrono::Duration::seconds(5000);
    let at = move |i: usize| {
        (base + chrono::Duration::seconds(10 * i as i64))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let log = events.clone();
    let fhir = Scripted::start(move |seen: &Seen| {
        let uri = seen.uri.as_str();
        if uri.starts_with("/fhir/Patient?") {
            log.lock().unwrap().push(Event::Patient);
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
        // `_lastUpdated=geX`: the first entry at or after X.
        let ge = last_updated_ge(&query);
        let first = match &ge {
            Some(x) => (0..2 * PAGES).find(|i| at(*i) >= *x).unwrap_or(2 * PAGES),
            None => 0,
        };
        let offset: Option<usize> = param("_offset").and_then(|o| o.parse().ok());
        // A walk's search (the first poll's one-entry clock probe has no `_sort`).
        if offset.is_none() && param("_sort").is_some() {
            log.lock().unwrap().push(Event::ObservationSearch);
        }
        let offset = offset.unwrap_or(0);
        let from = first + 2 * offset;
        let entries: Vec<_> = (from..(from + 2).min(2 * PAGES))
            .map(|i| observation(&format!("o{i}"), "1", &at(i)))
            .collect();
        if from + 2 >= 2 * PAGES && from < 2 * PAGES {
            log.lock().unwrap().push(Event::ObservationEnd);
        }
        let next = (from + 2 < 2 * PAGES).then(|| {
            let ge = ge
                .clone()
                .map(|g| format!("&_lastUpdated=ge{g}"))
                .unwrap_or_default();
            format!("Observation?_offset={}{ge}", offset + 1)
        });
        bundle(&now_instant(), entries, next.as_deref())
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let config = format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{}"
resources = ["Observation", "Patient"]
every = "300ms"
overlap = "5s"
start = "beginning"
timeout = "2s"

{}
"#,
        fhir.url("/fhir"),
        hook("all", &rx.url("hooks/all"), "true", "")
    );
    let mut bridge = Bridge::start(&config);
    wait_for(60, "every resource delivered", || rx.count() > 2 * PAGES).await;
    let events = events.lock().unwrap().clone();
    let patient = events.iter().position(|e| *e == Event::Patient);
    let chain_done = events.iter().position(|e| *e == Event::ObservationEnd);
    assert!(
        patient.is_some() && patient < chain_done,
        "Patient polled at {patient:?}, Observation's chain done at {chain_done:?}"
    );
    let searches = events[..chain_done.unwrap()]
        .iter()
        .filter(|e| **e == Event::ObservationSearch)
        .count();
    assert_eq!(
        searches, 1,
        "the chain goes on from its next link: {events:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: BTreeSet<String> = rx.received().into_iter().map(|r| r.resource_id).collect();
    assert_eq!(ids.len(), 2 * PAGES + 1, "every resource");
    assert_eq!(rx.count(), 2 * PAGES + 1, "each once");
    bridge.stop();
}
