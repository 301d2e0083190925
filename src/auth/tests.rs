//! The token cache against a real HTTP token endpoint on 127.0.0.1.

use super::*;
use crate::signing::smart::{KeyAlg, SmartKey, generate_pem};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Endpoint {
    base: url::Url,
    tokens: Arc<AtomicUsize>,
    discoveries: Arc<AtomicUsize>,
}

/// `/token` answers `status` (200: a token); `/fhir/.well-known/...` points at it.
async fn endpoint(status: u16) -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tokens, discoveries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (t, d) = (tokens.clone(), discoveries.clone());
    let app = Router::new()
        .route(
            "/token",
            post(move || async move {
                let n = t.fetch_add(1, Ordering::SeqCst);
                let code = StatusCode::from_u16(status).unwrap();
                if status == 200 {
                    (
                        code,
                        format!(r#"{{"access_token":"t{n}","expires_in":300}}"#),
                    )
                } else {
                    (code, r#"{"error":"invalid_client"}"#.to_string())
                }
            }),
        )
        .route(
            "/fhir/.well-known/smart-configuration",
            get(move || async move {
                d.fetch_add(1, Ordering::SeqCst);
                format!(r#"{{"token_endpoint":"http://127.0.0.1:{port}/token"}}"#)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Endpoint {
        base: format!("http://127.0.0.1:{port}/fhir/").parse().unwrap(),
        tokens,
        discoveries,
    }
}

fn smart(e: &Endpoint) -> Authenticator {
    let pem = generate_pem(KeyAlg::Es384).unwrap();
    let auth = SourceAuth::SmartBackend {
        client_id: "app".into(),
        key: Arc::new(SmartKey::from_pem(&pem, None).unwrap()),
        scope: None,
        token_url: None,
        allow_insecure_http: false,
    };
    Authenticator::new(
        auth,
        e.base.clone(),
        reqwest::Client::new(),
        Duration::from_secs(5),
    )
}

/// A refusing token endpoint is asked once per hold, however many requests
/// wait for a token, and each gets the same error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_held_not_repeated_per_request() {
    let e = endpoint(400).await;
    let auth = Arc::new(smart(&e));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let a = auth.clone();
            tokio::spawn(async move { a.header().await })
        })
        .collect();
    for c in calls {
        let err = c.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "token endpoint: HTTP 400 invalid_client");
    }
    assert_eq!(e.tokens.load(Ordering::SeqCst), 1);
}

/// The discovered token endpoint is kept: a new token after a 401 to a
/// token that had worked does not read `.well-known/smart-configuration`
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_discovered_token_endpoint_is_kept() {
    let e = endpoint(200).await;
    let auth = smart(&e);
    for _ in 0..3 {
        let h = auth.header().await.unwrap().unwrap();
        auth.accepted(&h);
        auth.refused(&h).await.unwrap();
        // As if a hold had passed since (see the next test).
        auth.cached.lock().await.replaced_at = None;
    }
    assert_eq!(e.tokens.load(Ordering::SeqCst), 3);
    assert_eq!(e.discoveries.load(Ordering::SeqCst), 1);
}

/// A token that had worked is replaced at once after a 401, but not two
/// within a hold: a server accepting each token once gets the second
/// refusal held, not a token request every other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_had_worked_are_replaced_once_per_hold() {
    let e = endpoint(200).await;
    let auth = smart(&e);
    let first = auth.header().await.unwrap().unwrap();
    auth.accepted(&first);
    auth.refused(&first).await.unwrap();
    let second = auth.header().await.unwrap().unwrap();
    assert_ne!(first, second);
    auth.accepted(&second);
    let err = auth.refused(&second).await.unwrap_err();
    assert_eq!(err, AuthError::RefusedAgain { hold: FAILURE_HOLD });
    assert!(
        err.to_string()
            .starts_with("HTTP 401 again within 5s of replacing a refused token"),
        "{err}"
    );
    assert_eq!(auth.header().await.unwrap_err(), err);
    assert_eq!(e.tokens.load(Ordering::SeqCst), 2);
}

/// A 401 to a token just issued is not answered with another token: the
/// refusal is held (every request meanwhile gets it, no token request goes
/// out), and the hold grows while failures follow each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_refused_is_held_not_replaced() {
    let e = endpoint(200).await;
    let auth = smart(&e);
    let h = auth.header().await.unwrap().unwrap();
    let err = auth.refused(&h).await.unwrap_err();
    assert_eq!(err, AuthError::Rejected { hold: FAILURE_HOLD });
    assert!(
        err.to_string()
            .starts_with("HTTP 401 with a token just issued"),
        "{err}"
    );
    for _ in 0..10 {
        assert_eq!(auth.header().await.unwrap_err(), err);
    }
    assert_eq!(e.tokens.load(Ordering::SeqCst), 1);
    // Another task's report of the same token changes nothing.
    auth.refused(&h).await.unwrap();
    assert_eq!(e.tokens.load(Ordering::SeqCst), 1);
}

#[test]
fn holds_double_up_to_five_minutes() {
    let secs: Vec<u64> = (1..=9).map(|n| hold_after(n).as_secs()).collect();
    assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(hold_after(u32::MAX), MAX_HOLD);
}

/// A token endpoint (or smart-configuration) answering hundreds of MB: the
/// read stops at `MAX_RESPONSE_BYTES`, a clear error, nothing buffered past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_token_and_discovery_answers_are_refused_unread() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicUsize::new(0));
    let huge = |sent: Arc<AtomicUsize>| {
        // 300 MB in 64 KB pieces, made as they are read (no Content-Length).
        let piece = bytes::Bytes::from(vec![b' '; 64 * 1024]);
        let stream = futures_util::stream::iter((0..4800).map(move |_| {
            sent.fetch_add(64 * 1024, Ordering::SeqCst);
            Ok::<_, std::io::Error>(piece.clone())
        }));
        axum::body::Body::from_stream(stream)
    };
    let (s1, s2) = (sent.clone(), sent.clone());
    let app = Router::new()
        .route("/token", post(move || async move { huge(s1) }))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(move || async move { huge(s2) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base: url::Url = format!("http://127.0.0.1:{port}/fhir/").parse().unwrap();
    let token_url: url::Url = format!("http://127.0.0.1:{port}/token").parse().unwrap();
    let pem = generate_pem(KeyAlg::Es384).unwrap();
    let key = Arc::new(SmartKey::from_pem(&pem, None).unwrap());
    let with = |token_url: Option<url::Url>| {
        Authenticator::new(
            SourceAuth::SmartBackend {
                client_id: "app".into(),
                key: key.clone(),
                scope: None,
                token_url,
                allow_insecure_http: false,
            },
            base.clone(),
            reqwest::Client::new(),
            Duration::from_secs(5),
        )
    };
    let err = with(Some(token_url)).header().await.unwrap_err();
    assert_eq!(err, AuthError::TooLarge { status: 200 });
    assert_eq!(
        err.to_string(),
        "token endpoint: HTTP 200, response larger than 256 KB (not read)"
    );
    let err = with(None).header().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("[base]/.well-known/smart-configuration: response larger than 256 KB"),
        "{err}"
    );
    // What the server got out before the bridge hung up: far from 300 MB.
    assert!(sent.load(Ordering::SeqCst) < 32 * 1024 * 1024);
}

/// Every request the cache makes takes a turn in its owner's budget first:
/// the discovery read and each token request; a cached token takes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_and_discovery_take_a_turn_in_the_budget() {
    let e = endpoint(200).await;
    let auth = smart(&e);
    let turns = AtomicUsize::new(0);
    let turn = || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        turns.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    };
    let h = auth.header_within(&turn).await.unwrap().unwrap();
    assert_eq!(turns.load(Ordering::SeqCst), 2, "discovery and a token");
    auth.accepted(&h);
    auth.header_within(&turn).await.unwrap();
    assert_eq!(turns.load(Ordering::SeqCst), 2, "the cached token");
    auth.refused(&h).await.unwrap();
    auth.header_within(&turn).await.unwrap();
    assert_eq!(turns.load(Ordering::SeqCst), 3, "one more token");
    assert_eq!(e.tokens.load(Ordering::SeqCst), 2);
}
