//! Unit tests of the poll loop against the in-crate sandbox.

use super::*;
use crate::config::{Content, Schedule};
use crate::filter::Filter;
use crate::route::Route;
use crate::sandbox::FhirSandbox;
use crate::source::walk::MAX_NEXT_LINK_BYTES;
use crate::state::test_util::temp_store;
use std::time::Duration;
use url::Url;

fn task(base: &str, store: Store, page_size: u32, start: Start) -> SourceTask {
    let source = Source {
        name: "s".into(),
        base_url: Url::parse(&format!("{base}/")).unwrap(),
        resources: vec!["Observation".into()],
        schedule: Schedule::Every(Duration::from_secs(1)),
        page_size,
        overlap: Duration::ZERO,
        start,
        owner_id: "o".into(),
        timeout: Duration::from_secs(5),
        params: Default::default(),
        max_pages_per_poll: 1000,
        strategies: Default::default(),
        reconcile: None,
        lag: Duration::ZERO,
        fan_out: None,
        max_requests_per_second: None,
        allowed_origins: vec![],
        auth: Default::default(),
        tls: None,
        fingerprint: Default::default(),
    };
    let routes = vec![Route {
        hook: "h".into(),
        filter: Arc::new(Filter::compile("true").unwrap()),
        topic: None,
        content: Content::IdOnly,
    }];
    SourceTask {
        fence: crate::state::Fence::private(),
        source,
        routing: crate::source::Routing { routes }.fixed(),
        store,
        client: FhirClient::new(Duration::from_secs(5)).unwrap(),
        first_poll_spread: Duration::ZERO,
        known: Default::default(),
        limiter: Default::default(),
        outcomes: None,
        beat: crate::progress::Beat::detached(),
        dry_run: None,
        left_search: Default::default(),
    }
}

async fn pending(store: &Store) -> usize {
    store.claim_due("h", vec![], 10_000).await.unwrap().len()
        + store.hook_report("h").await.unwrap().delivered as usize
}

/// With no overlap at all, ties that straddle page boundaries must still be
/// read exactly once: the watermark never moves into a tie.
#[tokio::test]
async fn ties_across_pages_are_read_once_without_overlap() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let (_d, store) = temp_store();
    let t = task(&fhir.base_url(), store.clone(), 7, Start::Beginning);
    let cancel = CancellationToken::new();
    fhir.store.freeze_clock(Some(1_700_000_000_000));
    for _ in 0..25 {
        fhir.store
            .upsert("Observation", None, serde_json::json!({}));
    }
    assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 25);
    // More at the same instant, then later ones, then a re-poll: nothing twice.
    for _ in 0..10 {
        fhir.store
            .upsert("Observation", None, serde_json::json!({}));
    }
    fhir.store.freeze_clock(Some(1_700_000_000_005));
    for _ in 0..4 {
        fhir.store
            .upsert("Observation", None, serde_json::json!({}));
    }
    assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 14);
    assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 0);
    assert_eq!(pending(&store).await, 39);
    let st = store
        .target_state(&crate::state::TargetKey::population("s", "Observation"))
        .await
        .unwrap();
    assert_eq!(st.watermark.as_deref(), Some("2023-11-14T22:13:20.005Z"));
}

/// A watermark poisoned before the bridge bounded it (year 9999) is not
/// a dead end: the target polls from its start again and heals.
#[tokio::test]
async fn a_watermark_in_the_future_heals() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let (_d, store) = temp_store();
    store
        .init_target(
            &crate::state::Fence::private(),
            &crate::state::TargetKey::population("s", "Observation"),
            Some("9999-12-31T23:59:59.000Z".into()),
            None,
        )
        .await
        .unwrap();
    for _ in 0..3 {
        fhir.store
            .upsert("Observation", None, serde_json::json!({}));
    }
    let t = task(&fhir.base_url(), store.clone(), 100, Start::Beginning);
    let cancel = CancellationToken::new();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 3);
    let st = store
        .target_state(&crate::state::TargetKey::population("s", "Observation"))
        .await
        .unwrap();
    assert!(st.watermark.unwrap().as_str() < "2100");
}

#[tokio::test]
async fn start_now_and_bad_bundles() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let (_d, store) = temp_store();
    for _ in 0..3 {
        fhir.store
            .upsert("Observation", None, serde_json::json!({}));
    }
    let t = task(&fhir.base_url(), store.clone(), 100, Start::Now);
    let cancel = CancellationToken::new();
    assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    fhir.store
        .upsert("Observation", None, serde_json::json!({}));
    // Each poll reads up to the server's "now" less a 25 ms margin.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(t.poll_target("Observation", &cancel).await.unwrap(), 1);

    // A base URL that answers 404 is a clear error, not a panic.
    let bad = task(
        &format!("{}/nowhere", fhir.base_url()),
        store.clone(),
        100,
        Start::Beginning,
    );
    let err = bad
        .poll_target("Observation", &cancel)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Observation search page 1: HTTP 404"), "{err}");
}

/// A `next` link is bounded on its own (a sliced walk keeps one per target
/// between turns, and a page may be 256 MB): past 16 KiB it is not followed,
/// and the poll error says how long it was, not what it said.
#[test]
fn a_next_link_longer_than_16_kib_is_not_followed() {
    let (_d, store) = temp_store();
    let t = task("http://127.0.0.1:9", store, 10, Start::Beginning);
    let current = Url::parse("http://127.0.0.1:9/Observation?_count=10").unwrap();
    let link = |len: usize| {
        let head = "http://127.0.0.1:9/Observation?ct=";
        format!("{head}{}", "a".repeat(len - head.len()))
    };
    let fits = link(MAX_NEXT_LINK_BYTES);
    assert!(matches!(
        next_link(&t.source, &current, Some(&fits), "Observation", 3),
        Some(Ok(_))
    ));
    let long = link(MAX_NEXT_LINK_BYTES + 1);
    let Some(Err(e)) = next_link(&t.source, &current, Some(&long), "Observation", 3) else {
        panic!("a link past the bound is followed");
    };
    assert_eq!(
        e.to_string(),
        "Observation search page 3: next link is 16385 bytes long, more than 16 KiB (not followed)"
    );
}
