//! Deliveries to failing receivers (issue 17, items 17 and 18): a batched
//! FHIR notification that failed comes back as the same notification, across
//! kill -9 too; a reload that fixes a hook's endpoint sends what waited at once.

use crate::common::hostile::r4_events;
use crate::common::scripted::{Scripted, Seen, status_with};
use crate::common::store_observation as observation;
use crate::common::{Bridge, config, hook, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Item 17: a receiver fails the first 4 attempts of a batch of 5 events,
/// then accepts. Every attempt is the same notification: the same
/// `webhook-id` (= Bundle.id), the same events 1..=5 in number order; a
/// kill -9 between attempts changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_as_the_same_batch_across_kill9() {
    const FAILS: usize = 4;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let receiver = Scripted::start(move |s: &Seen| {
        if r4_events(&s.json()).0 != "event-notification" {
            return status_with(200, &[]);
        }
        if counted.fetch_add(1, Ordering::SeqCst) < FAILS {
            status_with(503, &[])
        } else {
            status_with(200, &[])
        }
    })
    .await;
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    for i in 1..=5 {
        observation(&sandbox.store, &format!("o{i}"));
    }
    let extra = "format = \"fhir-backport-r4\"\ncontent = \"id-only\"\nmax_events_per_bundle = 5\n\
                 concurrency = 1\nretry_schedule = [\"1s\"]\nmax_attempts = 100";
    let hooks = hook("h", &receiver.url("/hooks/h"), "true", extra);
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    wait_for(30, "two failed attempts", || {
        attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    bridge.kill9();
    bridge.restart();
    wait_for(60, "the batch delivered", || {
        bridge.status_json()["hooks"][0]["delivered"] == 5
    })
    .await;
    let sent: Vec<(String, String, Vec<i64>)> = receiver
        .seen()
        .iter()
        .filter_map(|s| {
            let body = s.json();
            let (kind, numbers) = r4_events(&body);
            (kind == "event-notification").then(|| {
                let id = s.header("webhook-id").unwrap_or_default();
                assert_eq!(body["id"].as_str(), Some(id.as_str()), "Bundle.id");
                (id, body["id"].as_str().unwrap_or("").to_string(), numbers)
            })
        })
        .collect();
    assert!(sent.len() > FAILS, "{} attempts", sent.len());
    let first = &sent[0];
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s.2, [1, 2, 3, 4, 5], "attempt {i}: the events, in order");
        assert_eq!(s.0, first.0, "attempt {i}: the same webhook-id");
    }
    bridge.stop();
}

/// Item 17, a batch that must be split: `max_events_per_bundle` shrinks
/// from 5 to 2 by a reload while a batch of 5 waits to be retried. What is
/// left of it goes in event-number order: 1-2, 3-4, 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_by_a_reload_keeps_number_order() {
    // This receiver refuses any notification of more than 2 events.
    let receiver = Scripted::start(|s: &Seen| {
        let (kind, numbers) = r4_events(&s.json());
        if kind == "event-notification" && numbers.len() > 2 {
            status_with(503, &[])
        } else {
            status_with(200, &[])
        }
    })
    .await;
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    for i in 1..=5 {
        observation(&sandbox.store, &format!("o{i}"));
    }
    let text = |per_bundle: usize| {
        let extra = format!(
            "format = \"fhir-backport-r4\"\ncontent = \"id-only\"\n\
             max_events_per_bundle = {per_bundle}\nconcurrency = 1\nretry_schedule = [\"1s\"]\n\
             max_attempts = 100"
        );
        let hooks = hook("h", &receiver.url("/hooks/h"), "true", &extra);
        config(&sandbox.base_url(), &["Observation"], "beginning", &hooks)
    };
    let mut bridge = Bridge::start(&text(5));
    let notifications = |r: &Scripted| -> Vec<(String, Vec<i64>)> {
        r.seen()
            .iter()
            .filter_map(|s| {
                let (kind, numbers) = r4_events(&s.json());
                (kind == "event-notification")
                    .then(|| (s.header("webhook-id").unwrap_or_default(), numbers))
            })
            .collect()
    };
    wait_for(30, "two failed attempts", || {
        notifications(&receiver).len() >= 2
    })
    .await;
    std::fs::write(bridge.config_path(), text(2)).unwrap();
    bridge.sighup();
    wait_for(60, "the batch delivered", || {
        bridge.status_json()["hooks"][0]["delivered"] == 5
    })
    .await;
    let sent = notifications(&receiver);
    let (whole, split): (Vec<_>, Vec<_>) = sent.iter().partition(|(_, n)| n.len() == 5);
    assert!(whole.iter().all(|w| *w == whole[0]), "{whole:?}");
    assert_eq!(whole[0].1, [1, 2, 3, 4, 5]);
    let split: Vec<&Vec<i64>> = split.iter().map(|(_, n)| n).collect();
    assert_eq!(split, [&vec![1, 2], &vec![3, 4], &vec![5]]);
    bridge.stop();
}

/// Item 18: a hook pointing at a dead port, its messages waiting out a 1 h
/// backoff; a reload with the fixed URL sends them within seconds. A dead
/// letter stays dead (for `dlq redrive`); a reload that changes anything but
/// the endpoint leaves the backoff alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_endpoint_makes_waiting_messages_due_at_once() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead_url = format!("http://127.0.0.1:{dead_port}/hooks/h");
    let receiver = Scripted::start(|_: &Seen| status_with(200, &[])).await;
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    let write = |url: &str, extra: &str, bridge: &Bridge| {
        let hooks = hook("h", url, "true", extra);
        let text = config(&sandbox.base_url(), &["Observation"], "beginning", &hooks);
        std::fs::write(bridge.config_path(), text).unwrap();
    };
    let hooks = hook("h", &dead_url, "true", "max_attempts = 1");
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    let hook_status = |bridge: &Bridge| bridge.status_json()["hooks"][0].clone();
    let reloads = |bridge: &Bridge| bridge.logs().matches("reload applied").count();
    // o1 is dead-lettered on its first attempt.
    observation(&sandbox.store, "o1");
    wait_for(30, "o1 dead-lettered", || {
        hook_status(&bridge)["dead_lettered"] == 1
    })
    .await;
    // o2 and o3 fail once, then wait out their hour.
    let backoff = "max_attempts = 10\nretry_schedule = [\"1h\"]";
    write(&dead_url, backoff, &bridge);
    bridge.sighup();
    wait_for(10, "the first reload applied", || reloads(&bridge) == 1).await;
    observation(&sandbox.store, "o2");
    observation(&sandbox.store, "o3");
    wait_for(30, "o2 and o3 failed once, waiting", || {
        let h = hook_status(&bridge);
        h["pending"] == 2 && h["failed_attempts"] == 3
    })
    .await;
    // A change that is not the endpoint: the backoff stands (a new attempt
    // at the dead port would count a failure).
    let backoff = "max_attempts = 11\nretry_schedule = [\"1h\"]";
    write(&dead_url, backoff, &bridge);
    bridge.sighup();
    wait_for(10, "the second reload applied", || reloads(&bridge) == 2).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(hook_status(&bridge)["failed_attempts"], 3);
    // The fixed URL: what waits is due now.
    write(&receiver.url("/hooks/h"), backoff, &bridge);
    bridge.sighup();
    wait_for(10, "the third reload applied", || reloads(&bridge) == 3).await;
    wait_for(20, "o2 and o3 delivered", || {
        hook_status(&bridge)["delivered"] == 2
    })
    .await;
    let got: Vec<String> = receiver
        .seen()
        .iter()
        .map(|s| s.json()["resourceId"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(!got.contains(&"Observation/o1".to_string()), "{got:?}");
    let h = hook_status(&bridge);
    assert_eq!(
        h["dead_lettered"], 1,
        "the dead letter stays for redrive: {h}"
    );
    bridge.stop();
}
