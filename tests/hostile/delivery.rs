//! Hostile receivers: redirects must never lose a webhook or carry it elsewhere.

use crate::common::scripted::{Scripted, Seen, status_with};
use crate::common::{Bridge, config, hook, wait_for};

/// Item 2: a receiver answering 301/302/307/308 to another host. Nothing is
/// sent there (no GET that "delivers", no re-POST of the payload); each
/// attempt fails with a clear error and the message ends in the dead-letter
/// queue, from where it can be redriven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_redirects_are_failed_attempts_never_followed() {
    let elsewhere = Scripted::start(|_: &Seen| status_with(200, &[])).await;
    let target = elsewhere.url("/collect");
    let receiver = Scripted::start(move |s: &Seen| {
        let code = match s.uri.as_str() {
            "/hooks/r301" => 301,
            "/hooks/r302" => 302,
            "/hooks/r307" => 307,
            _ => 308,
        };
        status_with(code, &[("location", &target)])
    })
    .await;
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    let extra = "max_attempts = 2\nretry_schedule = [\"1s\"]";
    let hooks: String = ["r301", "r302", "r307", "r308"]
        .iter()
        .map(|h| hook(h, &receiver.url(&format!("/hooks/{h}")), "true", extra))
        .collect();
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    crate::common::store_observation(&sandbox.store, "o1");
    wait_for(30, "every hook's message dead-lettered", || {
        let st = bridge.status_json();
        st["hooks"]
            .as_array()
            .is_some_and(|hs| hs.iter().all(|h| h["dead_lettered"] == 1))
    })
    .await;
    let st = bridge.status_json();
    for h in st["hooks"].as_array().unwrap() {
        let code = &h["name"].as_str().unwrap()[1..];
        assert_eq!(
            h["last_error"].as_str(),
            Some(format!("HTTP {code} redirect to another URL (not followed)").as_str()),
            "{h}"
        );
        assert_eq!(h["delivered"], 0, "{h}");
    }
    assert_eq!(elsewhere.count(), 0, "the redirect target was contacted");
    assert_eq!(receiver.count(), 8, "two attempts per hook");
    // Dead letters are critical.
    assert_eq!(bridge.cli(&["status"]).status.code(), Some(2));
    bridge.stop();
}

/// One classification for every outcome (`RetryAction`): a receiver that
/// refuses the message itself (400, 413, 415, 422) gets it once and it is
/// dead-lettered at once; one that refuses the endpoint (401, 403, 404) is
/// retried up to `max_attempts`, since fixing the endpoint should let every
/// waiting message through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_message_are_final_refusals_of_the_endpoint_are_retried() {
    let receiver = Scripted::start(|s: &Seen| {
        let code = s.uri.trim_start_matches("/hooks/s").parse().unwrap_or(500);
        status_with(code, &[])
    })
    .await;
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    let extra = "max_attempts = 3\nretry_schedule = [\"1s\"]";
    let codes = [400u16, 413, 415, 422, 401, 403, 404];
    let hooks: String = codes
        .iter()
        .map(|c| {
            hook(
                &format!("s{c}"),
                &receiver.url(&format!("/hooks/s{c}")),
                "true",
                extra,
            )
        })
        .collect();
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    crate::common::store_observation(&sandbox.store, "o1");
    wait_for(30, "every hook's message dead-lettered", || {
        bridge.status_json()["hooks"]
            .as_array()
            .is_some_and(|hs| hs.iter().all(|h| h["dead_lettered"] == 1))
    })
    .await;
    let st = bridge.status_json();
    bridge.stop();
    let posts = |c: u16| {
        receiver
            .seen()
            .iter()
            .filter(|s| s.uri == format!("/hooks/s{c}"))
            .count()
    };
    for c in codes {
        let h = st["hooks"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["name"] == format!("s{c}")))
            .cloned()
            .unwrap_or_default();
        if [400, 413, 415, 422].contains(&c) {
            assert_eq!(posts(c), 1, "{c} was retried");
            assert_eq!(
                h["last_error"].as_str(),
                Some(format!("HTTP {c} (refused by the receiver: not retried)").as_str()),
                "{h}"
            );
        } else {
            assert_eq!(posts(c), 3, "{c} was not retried up to max_attempts");
        }
    }
}
