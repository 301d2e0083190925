//! The chaos proxy: sits in front of a FHIR server and, per request, injects a
//! fault chosen by a seeded RNG (so a failing run can be replayed with the same
//! seed), or passes the request through. Next links in passed-through bodies are
//! rewritten to point back at the proxy.

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    TooManyRequests,
    Status500,
    Status502,
    Status503,
    Timeout,
    Reset,
    Truncated,
    InvalidJson,
    OperationOutcome,
    EmptyPageWithNext,
    NextLinkLoop,
    ExpiredPageLink,
    Slow,
}

pub const ALL_FAULTS: [Fault; 13] = [
    Fault::TooManyRequests,
    Fault::Status500,
    Fault::Status502,
    Fault::Status503,
    Fault::Timeout,
    Fault::Reset,
    Fault::Truncated,
    Fault::InvalidJson,
    Fault::OperationOutcome,
    Fault::EmptyPageWithNext,
    Fault::NextLinkLoop,
    Fault::ExpiredPageLink,
    Fault::Slow,
];

/// How long `Timeout` stalls: configure the source's `timeout` below this.
pub const STALL: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub enum Plan {
    Off,
    /// Each request gets a fault from `faults` with probability `p`.
    Mix {
        p: f64,
        faults: Vec<Fault>,
    },
}

struct Shared {
    upstream: String,
    me: String,
    plan: Mutex<Plan>,
    rng: Mutex<fastrand::Rng>,
    injected: Mutex<BTreeMap<Fault, usize>>,
    requests: Mutex<usize>,
    client: reqwest::Client,
}

#[derive(Clone)]
pub struct ChaosProxy {
    shared: Arc<Shared>,
}

const PASS: &str = "_chaos_pass=1";

impl ChaosProxy {
    /// `upstream`: a FHIR base like http://127.0.0.1:1234/fhir
    pub async fn start(upstream: &str, seed: u64) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            me: format!("http://{addr}/fhir"),
            plan: Mutex::new(Plan::Off),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            injected: Mutex::new(BTreeMap::new()),
            requests: Mutex::new(0),
            client: reqwest::Client::new(),
        });
        let app = Router::new()
            .route("/fhir/{*rest}", get(handle))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ChaosProxy { shared }
    }

    pub fn base_url(&self) -> String {
        self.shared.me.clone()
    }

    pub fn set_plan(&self, plan: Plan) {
        *self.shared.plan.lock().unwrap() = plan;
    }

    pub fn injected(&self) -> BTreeMap<Fault, usize> {
        self.shared.injected.lock().unwrap().clone()
    }

    pub fn total_injected(&self) -> usize {
        self.injected().values().sum()
    }

    pub fn requests(&self) -> usize {
        *self.shared.requests.lock().unwrap()
    }
}

fn fhir(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body,
    )
        .into_response()
}

fn outcome(status: StatusCode) -> Response {
    let b = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]});
    fhir(status, b.to_string())
}

fn empty_bundle(next: &str) -> String {
    json!({"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": next}], "entry": []})
        .to_string()
}

async fn handle(State(s): State<Arc<Shared>>, uri: Uri, RawQuery(q): RawQuery) -> Response {
    *s.requests.lock().unwrap() += 1;
    let q = q.unwrap_or_default();
    let passed = q.contains(PASS);
    let query: String = q
        .split('&')
        .filter(|p| *p != PASS)
        .collect::<Vec<_>>()
        .join("&");
    let rest = uri.path().trim_start_matches("/fhir");
    let upstream = format!("{}{rest}?{query}", s.upstream);
    let my_url = format!("{}{rest}?{query}", s.me);
    let is_later_page = query.contains("_cursor=") || query.contains("_offset=");

    let fault = if passed {
        None
    } else {
        let plan = s.plan.lock().unwrap().clone();
        match plan {
            Plan::Off => None,
            Plan::Mix { p, faults } => {
                let mut rng = s.rng.lock().unwrap();
                (rng.f64() < p && !faults.is_empty()).then(|| faults[rng.usize(..faults.len())])
            }
        }
    };
    // An expired page link only makes sense on a later page.
    let fault = fault.filter(|f| *f != Fault::ExpiredPageLink || is_later_page);
    if let Some(f) = fault {
        *s.injected.lock().unwrap().entry(f).or_default() += 1;
    }
    match fault {
        Some(Fault::TooManyRequests) => {
            return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response();
        }
        Some(Fault::Status500) => return outcome(StatusCode::INTERNAL_SERVER_ERROR),
        Some(Fault::Status502) => return outcome(StatusCode::BAD_GATEWAY),
        Some(Fault::Status503) => return outcome(StatusCode::SERVICE_UNAVAILABLE),
        Some(Fault::Timeout) => {
            tokio::time::sleep(STALL).await;
            return outcome(StatusCode::GATEWAY_TIMEOUT);
        }
        Some(Fault::Reset) => {
            // A body that fails mid-stream: the connection is cut mid-response.
            let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
                Ok("{\"resourceType\":\"Bundle\",\"entry\":["),
                Err(std::io::Error::other("connection reset")),
            ];
            return Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
        }
        Some(Fault::InvalidJson) => {
            return fhir(StatusCode::OK, "<html>upstream error</html>".into());
        }
        Some(Fault::OperationOutcome) => return outcome(StatusCode::OK),
        Some(Fault::EmptyPageWithNext) => {
            let sep = if query.is_empty() { "" } else { "&" };
            return fhir(
                StatusCode::OK,
                empty_bundle(&format!("{my_url}{sep}{PASS}")),
            );
        }
        Some(Fault::NextLinkLoop) => return fhir(StatusCode::OK, empty_bundle(&my_url)),
        Some(Fault::ExpiredPageLink) => return outcome(StatusCode::GONE),
        Some(Fault::Slow) => tokio::time::sleep(Duration::from_millis(1500)).await,
        Some(Fault::Truncated) | None => {}
    }
    let resp = match s
        .client
        .get(&upstream)
        .header("accept", "application/fhir+json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return outcome(StatusCode::BAD_GATEWAY),
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = resp
        .text()
        .await
        .unwrap_or_default()
        .replace(&s.upstream, &s.me);
    if fault == Some(Fault::Truncated) {
        let cut = body
            .char_indices()
            .nth(body.chars().count() / 2)
            .map(|(i, _)| i)
            .unwrap_or(0);
        return fhir(status, body[..cut].to_string());
    }
    fhir(status, body)
}
