//! Hostile token endpoints and EHRs (issue 17, items 10 to 12): where SMART
//! discovery may send the client assertion, an EHR that refuses every fresh
//! token, token and smart-configuration answers of hundreds of MB.

use crate::common::authed::generate_key;
use crate::common::scripted::{Scripted, Seen, bundle, fhir_json, now_instant, status_with};
use crate::common::{Bridge, wait_for};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One source per `(name, base, auth table)`, polling three types often, so
/// that a storm would show; no hook is needed.
fn config(sources: &[(&str, &str, String)], extra: &str) -> String {
    let mut out = String::from("state_dir = \"state\"\n\n");
    for (name, base, auth) in sources {
        out.push_str(&format!(
            "[[source]]\nname = \"{name}\"\nbase_url = \"{base}\"\nresources = [\"Observation\", \"Encounter\", \"Patient\"]\nevery = \"100ms\"\nstart = \"beginning\"\ntimeout = \"2s\"\n{extra}{auth}\n"
        ));
    }
    out
}

fn client_credentials(token_url: &str) -> String {
    format!(
        "[source.auth]\ntype = \"client-credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"bridge\"\nclient_secret = \"cs-0f4e-never-logged\"\n"
    )
}

/// Every target's `last_error` of one source.
fn errors(bridge: &Bridge, source: &str) -> Vec<String> {
    bridge.status_json()["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == source))
        .and_then(|s| s["targets"].as_array())
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["last_error"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn token_json(n: usize) -> Response {
    fhir_json(
        200,
        json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 300}),
    )
}

/// Item 10: `.well-known/smart-configuration` names a plain-http token
/// endpoint on another address (`http://0.0.0.0:PORT/token`, which reaches
/// this machine but is no loopback URL, so `validate` refuses it as
/// `token_url`). The client assertion is never sent there: the source shows
/// why on status, and the token endpoint sees no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_discovery_never_sends_the_assertion_in_clear_text() {
    let token = Scripted::start(|_: &Seen| token_json(0)).await;
    let cleartext = token.url("/token").replace("127.0.0.1", "0.0.0.0");
    let ehr = Scripted::start(move |s: &Seen| {
        if s.uri.ends_with("/.well-known/smart-configuration") {
            return fhir_json(200, json!({"token_endpoint": cleartext}));
        }
        bundle(&now_instant(), vec![], None)
    })
    .await;
    let keys = tempfile::tempdir().unwrap();
    let (pem, _) = generate_key("ES384", keys.path());
    let auth = format!(
        "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"app\"\nprivate_key = {{ file = \"{}\" }}\n",
        pem.display()
    );
    let mut bridge = Bridge::start(&config(&[("ehr", &ehr.url("/fhir"), auth)], ""));
    wait_for(20, "a poll error on status", || {
        !errors(&bridge, "ehr").is_empty() || token.count() > 0
    })
    .await;
    // Past a failure hold: discovery was tried again, still nothing sent.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let errors = errors(&bridge, "ehr");
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    assert_eq!(
        token.count(),
        0,
        "the client assertion went to {:?}",
        token.seen()
    );
    let why = ".well-known/smart-configuration: `token_endpoint`: plain http to another machine";
    assert!(errors.iter().any(|e| e.contains(why)), "{errors:?}");
    let asked = ehr
        .seen()
        .iter()
        .filter(|s| s.uri.ends_with("smart-configuration"))
        .count();
    assert!((1..=3).contains(&asked), "{asked} discovery reads");
}

/// Item 11: the EHR answers 401 to every token. A 401 to a token just
/// issued is a poll error held for a growing while, not another token per
/// search: over ~6 s at `max_requests_per_second = 5`, a token request
/// about once per hold, and all requests (EHR and token endpoint together)
/// within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ehr_refusing_every_token_gets_no_storm() {
    let issued = Arc::new(AtomicUsize::new(0));
    let n = issued.clone();
    let token = Scripted::start(move |_: &Seen| token_json(n.fetch_add(1, Ordering::SeqCst))).await;
    let ehr = Scripted::start(|_: &Seen| status_with(401, &[("www-authenticate", "Bearer")])).await;
    let mut bridge = Bridge::start(&config(
        &[(
            "ehr",
            &ehr.url("/fhir"),
            client_credentials(&token.url("/token")),
        )],
        "max_requests_per_second = 5\n",
    ));
    wait_for(20, "the first 401", || ehr.count() > 0).await;
    let (ehr_requests, token_requests, elapsed) =
        crate::common::scripted::requests_during(6, &ehr, &token).await;
    let errors = errors(&bridge, "ehr");
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    eprintln!("{elapsed:.1} s: {ehr_requests} EHR requests, {token_requests} token requests");
    // Holds of 5 s then 10 s: one or two new tokens in the window.
    assert!(
        token_requests <= 3,
        "{token_requests} token requests in {elapsed:.1} s"
    );
    // Within 5/s (and its one-second burst), with slack.
    let budget = (5.0 * elapsed + 5.0) as usize;
    assert!(
        ehr_requests + token_requests <= budget,
        "{ehr_requests} + {token_requests} requests in {elapsed:.1} s, budget {budget}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("HTTP 401 with a token just issued")),
        "{errors:?}"
    );
}

/// A body of `total` bytes (spaces), made piece by piece as it is read, no
/// Content-Length; `sent` counts what went out.
fn streamed(total: usize, sent: Arc<AtomicUsize>) -> Response {
    const PIECE: usize = 64 * 1024;
    let piece = axum::body::Bytes::from(vec![b' '; PIECE]);
    let pieces = futures_util::stream::iter((0..total / PIECE).map(move |_| {
        sent.fetch_add(PIECE, Ordering::SeqCst);
        Ok::<_, std::io::Error>(piece.clone())
    }));
    (
        [("content-type", "application/json")],
        axum::body::Body::from_stream(pieces),
    )
        .into_response()
}

/// The daemon's peak resident memory (`VmHWM`), in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

/// Item 12: a token endpoint, and another source's smart-configuration,
/// answering 300 MB. Each read stops at 256 KB: a clear error on status,
/// the daemon's peak memory stays far below the answer, and it keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_token_and_discovery_answers_are_refused_unread() {
    const HUGE: usize = 300 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let huge = Scripted::start(move |_: &Seen| streamed(HUGE, s.clone())).await;
    let s = sent.clone();
    let ehr = Scripted::start(move |req: &Seen| {
        if req.uri.ends_with("/.well-known/smart-configuration") {
            return streamed(HUGE, s.clone());
        }
        bundle(&now_instant(), vec![], None)
    })
    .await;
    let keys = tempfile::tempdir().unwrap();
    let (pem, _) = generate_key("ES384", keys.path());
    let smart = format!(
        "[source.auth]\ntype = \"smart-backend\"\nclient_id = \"app\"\nprivate_key = {{ file = \"{}\" }}\n",
        pem.display()
    );
    let mut bridge = Bridge::start(&config(
        &[
            (
                "cc",
                &ehr.url("/fhir"),
                client_credentials(&huge.url("/token")),
            ),
            ("smart", &ehr.url("/fhir"), smart),
        ],
        "",
    ));
    wait_for(30, "poll errors on status", || {
        !errors(&bridge, "cc").is_empty() && !errors(&bridge, "smart").is_empty()
    })
    .await;
    // Past a failure hold: each was asked again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pid = bridge.pid().expect("the daemon's pid");
    let peak = peak_rss_mb(pid);
    let (cc, smart) = (errors(&bridge, "cc"), errors(&bridge, "smart"));
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    let sent = sent.load(Ordering::SeqCst) / 1024 / 1024;
    eprintln!("peak RSS {peak} MB; the servers got {sent} MB out");
    assert!(peak < 100, "peak RSS {peak} MB");
    let why = "token endpoint: HTTP 200, response larger than 256 KB (not read)";
    assert!(cc.iter().any(|e| e.contains(why)), "{cc:?}");
    let why = ".well-known/smart-configuration: response larger than 256 KB";
    assert!(smart.iter().any(|e| e.contains(why)), "{smart:?}");
}

/// The same for a receiver (`[hook.auth] type = "oauth"`) that answers 401
/// to every token: five messages retried every second do not fetch a token
/// and POST twice per attempt; the attempts fail with the refusal while it
/// is held, and the hook's `last_error` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_every_token_gets_no_storm() {
    let issued = Arc::new(AtomicUsize::new(0));
    let n = issued.clone();
    let token = Scripted::start(move |_: &Seen| token_json(n.fetch_add(1, Ordering::SeqCst))).await;
    let receiver = Scripted::start(|_: &Seen| status_with(401, &[])).await;
    let ids = ["a", "b", "c", "d", "e"];
    let ehr = Scripted::start(move |_: &Seen| {
        let rs = ids
            .iter()
            .map(|id| crate::common::scripted::observation(id, "1", "2026-01-01T00:00:00Z"))
            .collect();
        bundle(&now_instant(), rs, None)
    })
    .await;
    let hook = format!(
        "[[hook]]\nname = \"rx\"\nurl = \"{}\"\nretry_schedule = [\"1s\"]\nmax_attempts = 100\n[hook.auth]\ntype = \"oauth\"\ntoken_url = \"{}\"\nclient_id = \"bridge\"\nclient_secret = \"hs-7d1c-never-logged\"\n",
        receiver.url("/hooks/rx"),
        token.url("/token"),
    );
    let mut bridge = Bridge::start(&format!(
        "{}{hook}",
        config(&[("ehr", &ehr.url("/fhir"), String::new())], "")
    ));
    wait_for(20, "the first 401", || receiver.count() > 0).await;
    let (posts, tokens, elapsed) =
        crate::common::scripted::requests_during(6, &receiver, &token).await;
    let hook_status = bridge.status_json()["hooks"][0].clone();
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    eprintln!("{elapsed:.1} s: {posts} POSTs, {tokens} token requests");
    assert!(tokens <= 3, "{tokens} token requests in {elapsed:.1} s");
    assert!(posts <= 3, "{posts} POSTs in {elapsed:.1} s");
    assert!(
        hook_status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 401 with a token just issued")),
        "{hook_status}"
    );
}
