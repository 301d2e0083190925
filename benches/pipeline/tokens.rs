//! The token cache under load: many client-credentials sources against one
//! token endpoint and an EHR that accepts only issued, unexpired tokens. It
//! counts FHIR requests per token, the most token requests one client had in
//! flight at once (single flight: 1), 401s, and what one revocation of every
//! token costs (one new token per source, not one per target).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Token lifetime the endpoint grants (the bridge renews at half of it, or
/// 30 s before expiry).
const LIFETIME_S: u64 = 60;

#[derive(Default)]
struct Counters {
    fhir_requests: AtomicU64,
    unauthorized: AtomicU64,
    tokens: AtomicU64,
    /// token -> expiry
    valid: Mutex<HashMap<String, Instant>>,
    /// client_id -> token requests in flight now, and the most ever
    in_flight: Mutex<HashMap<String, (u32, u32)>>,
}

async fn token(State(c): State<Arc<Counters>>, headers: HeaderMap) -> Response {
    use base64::Engine;
    let client = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split(':').next().map(str::to_string))
        .unwrap_or_default();
    {
        let mut f = c.in_flight.lock().unwrap();
        let e = f.entry(client.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    // A token endpoint takes its time: concurrent requests would overlap.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = c.tokens.fetch_add(1, Ordering::Relaxed);
    let t = format!("bench-{client}-{n}");
    c.valid
        .lock()
        .unwrap()
        .insert(t.clone(), Instant::now() + Duration::from_secs(LIFETIME_S));
    if let Some(e) = c.in_flight.lock().unwrap().get_mut(&client) {
        e.0 -= 1;
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"access_token":"{t}","token_type":"Bearer","expires_in":{LIFETIME_S}}}"#),
    )
        .into_response()
}

async fn search(State(c): State<Arc<Counters>>, headers: HeaderMap) -> Response {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| c.valid.lock().unwrap().get(t).copied())
        .is_some_and(|exp| Instant::now() < exp);
    if !ok {
        c.unauthorized.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    c.fhir_requests.fetch_add(1, Ordering::Relaxed);
    let now = chrono::Utc::now();
    (
        [
            (header::CONTENT_TYPE, "application/fhir+json".to_string()),
            (header::DATE, now.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        ],
        format!(
            r#"{{"resourceType":"Bundle","type":"searchset","meta":{{"lastUpdated":"{}"}},"entry":[]}}"#,
            now.format("%Y-%m-%dT%H:%M:%S%.3fZ")
        ),
    )
        .into_response()
}

pub async fn tokens(sources: usize, seconds: u64) {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/token", post(token))
        .route("/fhir/{type}", get(search))
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("client-secret");
    std::fs::write(&secret, "bench-secret").unwrap();
    let mut cfg = String::from("state_dir = \"state\"\n");
    for i in 0..sources {
        let name = format!("site-{i:04}");
        cfg += &super::source_toml(
            &name,
            &format!("http://127.0.0.1:{port}/fhir"),
            &super::TYPES,
            "1s",
            100,
        );
        cfg += &format!(
            "[source.auth]\ntype = \"client-credentials\"\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"{name}\"\nclient_secret = {{ file = \"{}\" }}\n\n",
            secret.display()
        );
    }
    let bridge = super::Bridge::start(&cfg);
    // Revoked half-way through (45 s of 90): not at a renewal (every 30 s),
    // so every new token in the next seconds is the revocation's.
    let half = Duration::from_secs(seconds / 2);
    tokio::time::sleep(half).await;
    // Every token revoked at once: each source should fetch one new token.
    let before = counters.tokens.load(Ordering::Relaxed);
    counters.valid.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_revoke = counters.tokens.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_secs(seconds).saturating_sub(half + Duration::from_secs(5)))
        .await;
    bridge.stop();
    let requests = counters.fhir_requests.load(Ordering::Relaxed);
    let tokens = counters.tokens.load(Ordering::Relaxed);
    let most_in_flight = counters
        .in_flight
        .lock()
        .unwrap()
        .values()
        .map(|(_, max)| *max)
        .max()
        .unwrap_or(0);
    println!(
        "| token cache | token endpoint + EHR (bench) | {} targets ({sources} client-credentials sources x 10 types), 1 s interval, {LIFETIME_S} s tokens, {seconds} s, every token revoked once midway | {requests} FHIR requests, {tokens} tokens = {:.0} requests per token; at most {most_in_flight} token request(s) in flight per source; the revocation cost {after_revoke} tokens ({:.2} per source) and {} 401s |",
        sources * 10,
        requests as f64 / tokens.max(1) as f64,
        after_revoke as f64 / sources as f64,
        counters.unauthorized.load(Ordering::Relaxed),
    );
}
