//! The sandbox's HTTP face: `[base]/{Type}` search, create, update and read.

use super::store::{Query, SandboxStore, format_ms};
use crate::source::bundle::parse_instant;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct FhirSandbox {
    pub store: Arc<SandboxStore>,
    addr: SocketAddr,
}

#[derive(Clone)]
struct AppState {
    store: Arc<SandboxStore>,
    base: String,
}

impl FhirSandbox {
    /// Serves on `listener` until the runtime shuts down.
    pub fn serve(listener: TcpListener, store: Arc<SandboxStore>) -> std::io::Result<FhirSandbox> {
        let addr = listener.local_addr()?;
        let state = AppState {
            store: store.clone(),
            base: format!("http://{addr}/fhir"),
        };
        let app = Router::new()
            .route("/fhir/metadata", get(metadata))
            .route("/fhir/{rtype}", get(search).post(create))
            .route("/fhir/{rtype}/{id}", get(read).put(update))
            .with_state(state);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "sandbox FHIR server stopped");
            }
        });
        Ok(FhirSandbox { store, addr })
    }

    /// Binds 127.0.0.1 on `port` (0: any free port) and serves.
    pub async fn start(port: u16) -> std::io::Result<FhirSandbox> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        Self::serve(listener, Arc::new(SandboxStore::default()))
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/fhir", self.addr)
    }
}

fn fhir_json(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

fn outcome(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": msg}]
    });
    fhir_json(status, body.to_string())
}

async fn metadata() -> Response {
    fhir_json(
        StatusCode::OK,
        serde_json::json!({
            "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
            "fhirVersion": "4.0.1", "format": ["json"],
            "software": {"name": "fhir-bridge sandbox"}
        })
        .to_string(),
    )
}

fn parse_query(raw: &str) -> Result<Query, String> {
    let mut q = Query {
        count: 20,
        ..Default::default()
    };
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "_lastUpdated" => {
                let (prefix, value) = v.split_at(v.len().min(2));
                let (prefix, value) = if ["ge", "gt", "le", "lt", "eq"].contains(&prefix) {
                    (prefix, value)
                } else {
                    ("eq", v.as_ref())
                };
                let ms = parse_instant(value)
                    .ok_or_else(|| format!("bad _lastUpdated `{v}`"))?
                    .timestamp_millis();
                match prefix {
                    "ge" => q.ge_ms = Some(ms),
                    "gt" => q.gt_ms = Some(ms),
                    "le" => q.le_ms = Some(ms),
                    "lt" => q.lt_ms = Some(ms),
                    _ => {
                        q.ge_ms = Some(ms);
                        q.le_ms = Some(ms);
                    }
                }
            }
            "_count" => q.count = v.parse::<usize>().map_err(|_| "bad _count")?.min(1000),
            "_cursor" => {
                let (ms, id) = v.split_once(':').ok_or("bad _cursor")?;
                q.after = Some((ms.parse().map_err(|_| "bad _cursor")?, id.to_string()));
            }
            _ => {}
        }
    }
    Ok(q)
}

async fn search(
    State(st): State<AppState>,
    Path(rtype): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let raw = raw.unwrap_or_default();
    let q = match parse_query(&raw) {
        Ok(q) => q,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, &e),
    };
    let clock = st.store.clock();
    // Read before the search, as a server stamps its response as it starts it.
    let now_ms = st.store.now_ms();
    let page = st.store.search(&rtype, &q);
    let self_url = format!("{}/{rtype}?{raw}", st.base);
    let mut body =
        String::with_capacity(256 + page.bodies.iter().map(|b| b.len() + 64).sum::<usize>());
    body.push_str(r#"{"resourceType":"Bundle","type":"searchset","#);
    if !clock.date_only {
        body.push_str(r#""meta":{"lastUpdated":""#);
        body.push_str(&format_ms(now_ms));
        body.push_str(r#""},"#);
    }
    body.push_str(r#""link":[{"relation":"self","url":"#);
    body.push_str(&serde_json::Value::from(self_url).to_string());
    body.push('}');
    if let Some((ms, id)) = page.next_after {
        let kept: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                url::form_urlencoded::parse(raw.as_bytes()).filter(|(k, _)| k != "_cursor"),
            )
            .append_pair("_cursor", &format!("{ms}:{id}"))
            .finish();
        let next = format!("{}/{rtype}?{kept}", st.base);
        body.push_str(r#",{"relation":"next","url":"#);
        body.push_str(&serde_json::Value::from(next).to_string());
        body.push('}');
    }
    body.push_str(r#"],"entry":["#);
    for (i, b) in page.bodies.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"resource":"#);
        body.push_str(b);
        body.push_str(r#","search":{"mode":"match"}}"#);
    }
    body.push_str("]}");
    let mut resp = fhir_json(StatusCode::OK, body);
    if let Ok(date) = HeaderValue::from_str(&http_date(now_ms)) {
        resp.headers_mut().insert(header::DATE, date);
    }
    resp
}

/// An HTTP `Date` (whole seconds) of the sandbox's time `ms`.
fn http_date(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Stores a JSON object body as a resource (create when `id` is `None`).
fn write(
    st: &AppState,
    rtype: &str,
    id: Option<&str>,
    body: &Bytes,
    created: StatusCode,
) -> Response {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.is_object() => fhir_json(created, st.store.upsert(rtype, id, v).to_string()),
        _ => outcome(StatusCode::BAD_REQUEST, "body is not a JSON object"),
    }
}

async fn create(State(st): State<AppState>, Path(rtype): Path<String>, body: Bytes) -> Response {
    write(&st, &rtype, None, &body, StatusCode::CREATED)
}

async fn update(
    State(st): State<AppState>,
    Path((rtype, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    write(&st, &rtype, Some(&id), &body, StatusCode::OK)
}

async fn read(State(st): State<AppState>, Path((rtype, id)): Path<(String, String)>) -> Response {
    match st.store.read(&rtype, &id) {
        Some(b) => fhir_json(StatusCode::OK, b.to_string()),
        None => outcome(StatusCode::NOT_FOUND, "not found"),
    }
}
