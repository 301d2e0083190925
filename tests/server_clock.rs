//! End-to-end: the real binary against a server that tells its time only by
//! a second-precision `Date` header (no Bundle.meta.lastUpdated), its clock
//! off ours: the sandbox in that mode. `start = "now"` emits nothing that
//! existed before the start, and the poll bound (`_lastUpdated=lt`) never runs
//! ahead of the server and closes in on its clock to well under a second.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use common::{Bridge, config, hook, wait_for};
use fhir_bridge::sandbox::{FhirSandbox, Receiver, SandboxClock};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn obs(tag: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": tag}})
}

async fn date_only_sandbox(offset_ms: i64) -> FhirSandbox {
    let fhir = FhirSandbox::start(0).await.expect("sandbox");
    fhir.store.set_clock(SandboxClock {
        offset_ms,
        date_only: true,
    });
    fhir
}

/// One source polling `base` every second, one hook taking everything.
fn one_second_config(base: &str, start: &str, rx: &Receiver) -> String {
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    config(base, &["Observation"], start, &hooks).replace("every = \"300ms\"", "every = \"1s\"")
}

fn lu_ms(resource: &str) -> i64 {
    let v: Value = serde_json::from_str(resource).expect("json");
    instant_ms(v["meta"]["lastUpdated"].as_str().expect("lastUpdated"))
}

fn instant_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("instant")
        .timestamp_millis()
}

fn id_of(resource: &str) -> String {
    let v: Value = serde_json::from_str(resource).expect("json");
    format!("Observation/{}", v["id"].as_str().expect("id"))
}

fn watermark(bridge: &Bridge) -> Option<String> {
    bridge.status_json()["sources"][0]["targets"][0]["watermark"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_emits_nothing_from_the_second_before_start() {
    // The server's clock 1.3 s behind ours.
    let fhir = date_only_sandbox(-1_300).await;
    let rx = Receiver::start(0, None).await.unwrap();
    // Just after the server's second turns, so that the bridge's first look
    // at its clock most likely falls in the same second: a `Date` then reads
    // earlier than this write.
    let into_second = fhir.store.now_ms().rem_euclid(1000);
    tokio::time::sleep(Duration::from_millis((1020 - into_second) as u64)).await;
    let before = fhir.store.upsert("Observation", None, obs("before"));
    let bridge = Bridge::start(&one_second_config(&fhir.base_url(), "now", &rx));
    wait_for(30, "the target to initialise", || {
        watermark(&bridge).is_some()
    })
    .await;
    let start = watermark(&bridge).expect("watermark");
    assert!(
        instant_ms(&start) > lu_ms(&before),
        "start {start} is not after the write before it ({before})"
    );
    // Once the start is recorded, every write is after it.
    let after = fhir.store.upsert("Observation", None, obs("after"));
    only_after_start(&rx, id_of(&after)).await;
}

/// Waits for the write after start, and long enough for one from before it
/// (it would have come with the first poll, if at all): only the first came.
async fn only_after_start(rx: &Receiver, after: String) {
    wait_for(30, "the write after start", || !rx.received().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.resource_id.clone())
        .collect();
    assert_eq!(got, vec![after], "only the write after start");
}

/// What the proxy saw of each bounded search: the server's time when it
/// arrived and the search's `_lastUpdated=lt` bound (ms).
type Seen = Arc<Mutex<Vec<(i64, i64)>>>;

#[derive(Clone)]
struct Proxy {
    fhir: FhirSandbox,
    http: reqwest::Client,
    own: String,
    seen: Seen,
}

/// The `lt` bound of a search, if any.
fn upper_bound(query: &str) -> Option<i64> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "_lastUpdated")
        .find_map(|(_, v)| v.strip_prefix("lt").map(instant_ms))
}

/// Passes requests to the sandbox (its `Date` header too) and records bounds.
async fn pass(State(p): State<Proxy>, uri: Uri) -> Response {
    let arrived_ms = p.fhir.store.now_ms();
    let query = uri.query().unwrap_or_default();
    if let Some(lt) = upper_bound(query) {
        p.seen.lock().unwrap().push((arrived_ms, lt));
    }
    let path = uri.path_and_query().map(|x| x.as_str()).unwrap_or("/");
    let upstream = p.fhir.base_url().trim_end_matches("/fhir").to_string();
    let Ok(resp) = p.http.get(format!("{upstream}{path}")).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let mut headers = HeaderMap::new();
    for name in [header::DATE, header::CONTENT_TYPE] {
        if let Some(v) = resp.headers().get(name.as_str()) {
            headers.insert(name, v.to_str().unwrap().parse().unwrap());
        }
    }
    let body = resp.text().await.unwrap_or_default();
    (status, headers, body.replace(&upstream, &p.own)).into_response()
}

async fn start_proxy(fhir: FhirSandbox, seen: Seen) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let own = format!("http://{}", listener.local_addr().unwrap());
    let proxy = Proxy {
        fhir,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        own: own.clone(),
        seen,
    };
    let app = axum::Router::new().fallback(pass).with_state(proxy);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("{own}/fhir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_delivered_and_the_poll_bound_closes_in_on_the_server_clock() {
    // The server's clock 0.7 s ahead of ours.
    let fhir = date_only_sandbox(700).await;
    let seen = Seen::default();
    let base = start_proxy(fhir.clone(), seen.clone()).await;
    let rx = Receiver::start(0, None).await.unwrap();
    let bridge = Bridge::start(&one_second_config(&base, "now", &rx));
    wait_for(30, "the target to initialise", || {
        watermark(&bridge).is_some()
    })
    .await;
    let mut written = vec![];
    for i in 0..24 {
        let r = fhir
            .store
            .upsert("Observation", None, obs(&format!("w{i}")));
        written.push(id_of(&r));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    wait_for(30, "every write delivered", || {
        rx.received().len() >= written.len()
    })
    .await;
    let mut got: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.resource_id.clone())
        .collect();
    got.sort();
    written.sort();
    assert_eq!(got, written);

    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 10, "bounded polls: {seen:?}");
    // Never ahead of the server...
    for (arrived, lt) in &seen {
        assert!(lt <= arrived, "a bound {lt} past the server's {arrived}");
    }
    // ...and after a few polls within a small part of a second of it (a
    // `Date` alone leaves up to a second). Generous: the margin is 25 ms.
    let lags: Vec<i64> = seen.iter().map(|(arrived, lt)| arrived - lt).collect();
    let mut last = lags[lags.len() - 5..].to_vec();
    last.sort();
    assert!(
        last[2] < 200,
        "the last bounds lag the server by {lags:?} ms"
    );
}

/// The same rule on a third-party server (Medplum's engine) that tells its
/// time only by Node's second-precision `Date`: a write 20 ms into the
/// second before start is not emitted; one after start is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_emits_nothing_from_the_second_before_start_on_medplum() {
    let fhir = common::FhirServer::medplum_with("cursor", &["--date-only"]);
    let rx = Receiver::start(0, None).await.unwrap();
    // Medplum's clock is ours (same machine): just after our second turns.
    let into_second = chrono::Utc::now().timestamp_subsec_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1020 - into_second)).await;
    let before = fhir.write(None, obs("before")).await;
    let bridge = Bridge::start(&one_second_config(&fhir.base_url(), "now", &rx));
    wait_for(30, "the target to initialise", || {
        watermark(&bridge).is_some()
    })
    .await;
    let start = watermark(&bridge).expect("watermark");
    let before_ms = instant_ms(before["meta"]["lastUpdated"].as_str().expect("lastUpdated"));
    assert!(
        instant_ms(&start) > before_ms,
        "start {start} is not after the write before it ({before})"
    );
    let after = fhir.write(None, obs("after")).await;
    let after_id = format!("Observation/{}", after["id"].as_str().expect("id"));
    only_after_start(&rx, after_id).await;
}
