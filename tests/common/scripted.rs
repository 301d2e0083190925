//! A scripted HTTP server for hostile-input tests: each test decides, per
//! request, what a (misbehaving) FHIR server or receiver answers. Every request
//! is recorded (method, path and query, headers, body) so a test can assert
//! what reached a host, and what did not.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, e.g. `/fhir/Observation?_count=1`.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

type Script = dyn Fn(&Seen) -> Response + Send + Sync;

struct Shared {
    script: Mutex<Arc<Script>>,
    seen: Mutex<Vec<Seen>>,
}

/// A server on 127.0.0.1 whose answers come from a closure.
#[derive(Clone)]
pub struct Scripted {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
}

impl Scripted {
    pub async fn start(script: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, "http", script)
    }

    /// Serves on `listener` (a TLS listener, say); `scheme` goes into `url`.
    pub fn serve<L>(
        listener: L,
        scheme: &'static str,
        script: impl Fn(&Seen) -> Response + Send + Sync + 'static,
    ) -> Scripted
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            script: Mutex::new(Arc::new(script)),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Scripted {
            addr,
            scheme,
            shared,
        }
    }

    /// `http://127.0.0.1:PORT` (or https) + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn set_script(&self, script: impl Fn(&Seen) -> Response + Send + Sync + 'static) {
        *self.shared.script.lock().unwrap() = Arc::new(script);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        uri: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body,
    };
    let script = s.script.lock().unwrap().clone();
    let resp = script(&seen);
    s.seen.lock().unwrap().push(seen);
    resp
}

/// A FHIR JSON response.
pub fn fhir_json(status: u16, body: serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

/// A searchset Bundle: `meta.lastUpdated` = `now` (the server's clock), the
/// given resources as matches, and an optional `next` link.
pub fn bundle(now: &str, resources: Vec<serde_json::Value>, next: Option<&str>) -> Response {
    let mut links = vec![serde_json::json!({"relation": "self", "url": "self"})];
    if let Some(n) = next {
        links.push(serde_json::json!({"relation": "next", "url": n}));
    }
    let entries: Vec<_> = resources
        .into_iter()
        .map(|r| serde_json::json!({"resource": r, "search": {"mode": "match"}}))
        .collect();
    fhir_json(
        200,
        serde_json::json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "meta": {"lastUpdated": now},
            "link": links,
            "entry": entries,
        }),
    )
}

/// An Observation with the given id, versionId and lastUpdated.
pub fn observation(id: &str, version: &str, last_updated: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Observation",
        "id": id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "status": "final",
    })
}

/// A plain response with a status and headers (redirects, errors).
pub fn status_with(status: u16, headers: &[(&str, &str)]) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            header::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// A request's query as name/value pairs, decoded.
pub fn query_pairs(uri: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.split_once('?').map(|(_, q)| q).unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The `X` of a search's `_lastUpdated=geX`, if it has one.
pub fn last_updated_ge(query: &[(String, String)]) -> Option<String> {
    query
        .iter()
        .find_map(|(n, v)| {
            (n == "_lastUpdated")
                .then(|| v.strip_prefix("ge"))
                .flatten()
        })
        .map(String::from)
}

/// The current time as a FHIR instant (UTC, ms).
pub fn now_instant() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// How many requests `a` and `b` get during the next `secs` seconds, and
/// the seconds that really passed.
pub async fn requests_during(secs: u64, a: &Scripted, b: &Scripted) -> (usize, usize, f64) {
    let started = std::time::Instant::now();
    let (a_before, b_before) = (a.count(), b.count());
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    (a.count() - a_before, b.count() - b_before, elapsed)
}
