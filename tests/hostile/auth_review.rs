//! The adversarial review of the auth code (issue 17): a hostile EHR, token
//! endpoint and receiver on cases `auth.rs` does not cover. An EHR that
//! accepts each token once, a token endpoint that redirects (the client
//! secret must not follow), one whose body never ends.

use crate::common::scripted::{Scripted, Seen, bundle, fhir_json, now_instant, status_with};
use crate::common::{Bridge, wait_for};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SECRET: &str = "cs-9b2e-never-logged";

/// One source polling three types every 100 ms, with no request budget (so
/// that a storm would show), authenticating with client credentials.
fn config(base: &str, token_url: &str) -> String {
    format!(
        "state_dir = \"state\"\n\n[[source]]\nname = \"ehr\"\nbase_url = \"{base}\"\nresources = [\"Observation\", \"Encounter\", \"Patient\"]\nevery = \"100ms\"\nstart = \"beginning\"\ntimeout = \"2s\"\n[source.auth]\ntype = \"client-credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"bridge\"\nclient_secret = \"{SECRET}\"\n"
    )
}

fn errors(bridge: &Bridge) -> Vec<String> {
    bridge.status_json()["sources"][0]["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["last_error"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Neither the client secret nor any token issued is in the logs or status.
fn assert_no_secret(bridge: &Bridge, tokens: usize) {
    let text = format!("{}\n{}", bridge.logs(), bridge.status_json());
    assert!(!text.contains(SECRET), "the client secret leaked");
    for n in 0..tokens {
        assert!(!text.contains(&format!("at-{n}-x")), "token {n} leaked");
    }
}

fn counting_token_endpoint(issued: Arc<AtomicUsize>) -> impl Fn(&Seen) -> Response {
    move |_: &Seen| {
        let n = issued.fetch_add(1, Ordering::SeqCst);
        fhir_json(
            200,
            json!({"access_token": format!("at-{n}-x"), "token_type": "Bearer", "expires_in": 3600}),
        )
    }
}

/// An EHR that answers every other request 401 (a token accepted once and
/// refused next, say two servers behind a balancer, one of which does not
/// know the tokens): each refused token had worked, so on the old code each
/// 401 fetched a new one, one token request per two searches, as fast as the
/// polls went. A token refused within the failure hold of its issue is held
/// like a fresh refusal: about one token per hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ehr_accepting_each_token_once_gets_no_token_storm() {
    let issued = Arc::new(AtomicUsize::new(0));
    let token = Scripted::start(counting_token_endpoint(issued.clone())).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let ehr = Scripted::start(move |_: &Seen| {
        if calls.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return status_with(401, &[("www-authenticate", "Bearer")]);
        }
        bundle(&now_instant(), vec![], None)
    })
    .await;
    let mut bridge = Bridge::start(&config(&ehr.url("/fhir"), &token.url("/token")));
    wait_for(20, "the first 401", || ehr.count() > 1).await;
    let (ehr_requests, tokens, elapsed) =
        crate::common::scripted::requests_during(6, &ehr, &token).await;
    assert!(bridge.exited().is_none(), "the daemon died");
    assert_no_secret(&bridge, issued.load(Ordering::SeqCst));
    bridge.stop();
    eprintln!("{elapsed:.1} s: {ehr_requests} EHR requests, {tokens} token requests");
    assert!(tokens <= 3, "{tokens} token requests in {elapsed:.1} s");
    let why = "HTTP 401 again within 5s of replacing a refused token";
    assert!(bridge.logs().contains(why), "no `{why}` logged");
}

/// A token endpoint answering 307 (keeps the POST and its body) or 302 to
/// another host: not followed, so the client secret never reaches that
/// host; status says `token endpoint: HTTP 307`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_token_endpoint_sends_the_secret_nowhere_else() {
    let elsewhere = Scripted::start(counting_token_endpoint(Arc::default())).await;
    let location = elsewhere.url("/token");
    let token = Scripted::start(move |_: &Seen| status_with(307, &[("location", &location)])).await;
    let ehr = Scripted::start(|_: &Seen| bundle(&now_instant(), vec![], None)).await;
    let mut bridge = Bridge::start(&config(&ehr.url("/fhir"), &token.url("/token")));
    wait_for(20, "a poll error on status", || !errors(&bridge).is_empty()).await;
    let errors = errors(&bridge);
    assert!(bridge.exited().is_none(), "the daemon died");
    assert_no_secret(&bridge, 0);
    bridge.stop();
    assert_eq!(elsewhere.count(), 0, "{:?}", elsewhere.seen());
    assert_eq!(ehr.count(), 0, "a search went out without a token");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("token endpoint: HTTP 307")),
        "{errors:?}"
    );
}

/// A token endpoint that sends its headers, then a byte every 300 ms,
/// chunked, forever (each read well within the 2 s timeout): the token
/// request times out as a whole, status says so, and the endpoint is asked
/// again only after the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_body_that_never_ends_times_out_whole() {
    let token = Scripted::start(|_: &Seen| {
        let drip = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
                (),
            ))
        });
        (
            [("content-type", "application/json")],
            axum::body::Body::from_stream(drip),
        )
            .into_response()
    })
    .await;
    let ehr = Scripted::start(|_: &Seen| bundle(&now_instant(), vec![], None)).await;
    let mut bridge = Bridge::start(&config(&ehr.url("/fhir"), &token.url("/token")));
    wait_for(30, "a poll error on status", || !errors(&bridge).is_empty()).await;
    let errors = errors(&bridge);
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("token endpoint: timed out")),
        "{errors:?}"
    );
    assert!(token.count() <= 3, "{} token requests", token.count());
}

/// A raw HTTP/1.1 token endpoint on 127.0.0.1 that writes `answer` to every
/// connection, then closes it.
async fn raw_endpoint(answer: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/token")
}

/// `Content-Length` lies: declared 100000 with 20 bytes sent before the
/// connection closes; declared 2 (`{}`) with a token after it. Neither
/// hangs nor is believed: a clear error on status each, the daemon up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_answers_lying_about_their_length_are_errors() {
    let short = raw_endpoint(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"access_token\":\"x\"",
    )
    .await;
    let long = raw_endpoint(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}{\"access_token\":\"at-0-x\"}",
    )
    .await;
    let ehr = Scripted::start(|_: &Seen| bundle(&now_instant(), vec![], None)).await;
    let cfg = format!(
        "{}{}",
        config(&ehr.url("/fhir"), &short),
        config(&ehr.url("/fhir"), &long)
            .replace("state_dir = \"state\"\n\n", "")
            .replace("name = \"ehr\"", "name = \"ehr2\"")
    );
    let mut bridge = Bridge::start(&cfg);
    let all_errors = |bridge: &Bridge| -> Vec<Vec<String>> {
        let st = bridge.status_json();
        (0..2)
            .map(|i| {
                st["sources"][i]["targets"]
                    .as_array()
                    .map(|ts| {
                        ts.iter()
                            .filter_map(|t| t["last_error"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    };
    wait_for(30, "poll errors on both sources", || {
        all_errors(&bridge).iter().all(|e| !e.is_empty())
    })
    .await;
    let errors = all_errors(&bridge);
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    eprintln!("{errors:?}");
    assert_eq!(ehr.count(), 0, "a search went out without a token");
    let why = [
        "token endpoint: request or response body error: error reading a body from connection: end of file before message length reached",
        "token endpoint: the response is not an OAuth token",
    ];
    for (errors, why) in errors.iter().zip(why) {
        assert!(errors.iter().all(|e| e.ends_with(why)), "{errors:?}");
    }
}

/// The same for a receiver (`[hook.auth] type = "oauth"`) that accepts each
/// token for one POST and answers 401 to its next, while five observations
/// change every second: about two tokens per hold, not one per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_accepting_each_token_once_gets_no_token_storm() {
    let issued = Arc::new(AtomicUsize::new(0));
    let token = Scripted::start(counting_token_endpoint(issued.clone())).await;
    let used = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let receiver = Scripted::start(move |s: &Seen| {
        let auth = s.header("authorization").unwrap_or_default();
        if used.lock().unwrap().insert(auth) {
            return status_with(200, &[]);
        }
        status_with(401, &[])
    })
    .await;
    let polls = Arc::new(AtomicUsize::new(0));
    let ehr = Scripted::start(move |_: &Seen| {
        let version = (polls.fetch_add(1, Ordering::SeqCst) + 1).to_string();
        let at = now_instant();
        let rs = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| crate::common::scripted::observation(id, &version, &at))
            .collect();
        bundle(&at, rs, None)
    })
    .await;
    let hook = format!(
        "[[hook]]\nname = \"rx\"\nurl = \"{}\"\nretry_schedule = [\"1s\"]\nmax_attempts = 100\n[hook.auth]\ntype = \"oauth\"\ntoken_url = \"{}\"\nclient_id = \"bridge\"\nclient_secret = \"{SECRET}\"\n",
        receiver.url("/hooks/rx"),
        token.url("/token"),
    );
    let source = format!(
        "state_dir = \"state\"\n\n[[source]]\nname = \"ehr\"\nbase_url = \"{}\"\nresources = [\"Observation\"]\nevery = \"1s\"\nstart = \"beginning\"\n",
        ehr.url("/fhir")
    );
    let mut bridge = Bridge::start(&format!("{source}{hook}"));
    wait_for(20, "the first 401", || receiver.count() > 1).await;
    let (posts, tokens, elapsed) =
        crate::common::scripted::requests_during(6, &receiver, &token).await;
    assert!(bridge.exited().is_none(), "the daemon died");
    assert_no_secret(&bridge, issued.load(Ordering::SeqCst));
    bridge.stop();
    eprintln!("{elapsed:.1} s: {posts} POSTs, {tokens} token requests");
    assert!(tokens <= 5, "{tokens} token requests in {elapsed:.1} s");
}

/// `.well-known/smart-configuration` answered with a 302 to another host
/// (whose document names a token endpoint that would answer): not followed,
/// no token endpoint, `... smart-configuration: HTTP 302` on status; the
/// other host and its token endpoint see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_smart_configuration_is_not_followed() {
    let token = Scripted::start(counting_token_endpoint(Arc::default())).await;
    let token_url = token.url("/token");
    let elsewhere =
        Scripted::start(move |_: &Seen| fhir_json(200, json!({"token_endpoint": token_url}))).await;
    let location = elsewhere.url("/.well-known/smart-configuration");
    let ehr = Scripted::start(move |s: &Seen| {
        if s.uri.ends_with("/.well-known/smart-configuration") {
            return status_with(302, &[("location", &location)]);
        }
        bundle(&now_instant(), vec![], None)
    })
    .await;
    let keys = tempfile::tempdir().unwrap();
    let (pem, _) = crate::common::authed::generate_key("ES384", keys.path());
    let cfg = config(&ehr.url("/fhir"), "https://unused.example/token").replace(
        &format!("type = \"client-credentials\"\ntoken_url = \"https://unused.example/token\"\nclient_id = \"bridge\"\nclient_secret = \"{SECRET}\"\n"),
        &format!(
            "type = \"smart-backend\"\nclient_id = \"app\"\nprivate_key = {{ file = \"{}\" }}\n",
            pem.display()
        ),
    );
    assert!(cfg.contains("smart-backend"), "{cfg}");
    let mut bridge = Bridge::start(&cfg);
    wait_for(20, "a poll error on status", || !errors(&bridge).is_empty()).await;
    let errors = errors(&bridge);
    assert!(bridge.exited().is_none(), "the daemon died");
    bridge.stop();
    assert_eq!(elsewhere.count(), 0, "{:?}", elsewhere.seen());
    assert_eq!(token.count(), 0, "{:?}", token.seen());
    let why = ".well-known/smart-configuration: HTTP 302; no token endpoint";
    assert!(errors.iter().any(|e| e.contains(why)), "{errors:?}");
}
