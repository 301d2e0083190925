//! The token cache against a real HTTP token endpoint on 127.0.0.1.

use super::*;
use crate::auth::smart::{KeyAlg, SmartKey, generate_pem};
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

/// The discovered token endpoint is kept: a new token after a 401 does not
/// read `.well-known/smart-configuration` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_discovered_token_endpoint_is_kept() {
    let e = endpoint(200).await;
    let auth = smart(&e);
    for _ in 0..3 {
        let h = auth.header().await.unwrap().unwrap();
        auth.invalidate(&h).await;
    }
    assert_eq!(e.tokens.load(Ordering::SeqCst), 3);
    assert_eq!(e.discoveries.load(Ordering::SeqCst), 1);
}
