//! The sandbox's HTTP face: `[base]/{Type}` search, create, update, read and
//! delete; type and instance `_history`.

use super::AppState;
use super::bundle::{BundleText, fhir_json, outcome};
use super::params::{Cursor, CursorAt, next_link, parse_history, parse_search, prefers_strict};
use super::store::{Lookup, SandboxStore};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
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
            .route("/fhir/$export", get(super::export::kick_off_system))
            .route(
                "/fhir/{rtype}/{id}/$export",
                get(super::export::kick_off_group),
            )
            .route(
                "/fhir/_export/{job}",
                get(super::export::status).delete(super::export::delete_job),
            )
            .route("/fhir/_export/{job}/{file}", get(super::export::file))
            .route("/fhir/{rtype}", get(search).post(create))
            .route("/fhir/{rtype}/_history", get(type_history))
            .route("/fhir/{rtype}/{id}", get(read).put(update).delete(delete))
            .route("/fhir/{rtype}/{id}/_history", get(instance_history))
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

/// 410 for a page link that has expired (the `expire_*` quirks).
fn expired(st: &AppState, link_generation: Option<u64>) -> Option<Response> {
    let stale = link_generation.is_some_and(|g| st.store.quirks.link_is_stale(g));
    stale.then(|| {
        outcome(
            StatusCode::GONE,
            "page link expired: start the search again",
        )
    })
}

async fn search(
    State(st): State<AppState>,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    st.store.count_request();
    let raw = raw.unwrap_or_default();
    let quirks = &st.store.quirks;
    let strict = quirks.is_strict_params() && prefers_strict(&headers);
    let req = match parse_search(&raw, strict, quirks.is_descending()) {
        Ok(r) => r,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, &e),
    };
    if let Some(gone) = expired(&st, req.link_generation) {
        return gone;
    }
    let page = st.store.search(&rtype, &req.query);
    let path = format!("{}/{rtype}", st.base);
    let next = page.next_after.map(|(ms, id)| {
        let at = if req.query.descending {
            CursorAt::Descending(ms, id)
        } else {
            CursorAt::Ascending(ms, id)
        };
        let generation = quirks.link_generation();
        next_link(&path, &raw, &Cursor { generation, at })
    });
    let capacity = page.bodies.iter().map(|b| b.len() + 64).sum::<usize>();
    let mut bundle = BundleText::open(
        "searchset",
        &format!("{path}?{raw}"),
        next.as_deref(),
        quirks.is_date_only(),
        st.store.now_ms(),
        capacity,
    );
    for b in &page.bodies {
        bundle.push_match(b);
    }
    bundle.respond()
}

async fn type_history(
    State(st): State<AppState>,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    history(&st, &rtype, None, &headers, &raw.unwrap_or_default())
}

async fn instance_history(
    State(st): State<AppState>,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Lookup::Missing = st.store.lookup(&rtype, &id) {
        return outcome(StatusCode::NOT_FOUND, "not found");
    }
    history(&st, &rtype, Some(&id), &headers, &raw.unwrap_or_default())
}

fn history(
    st: &AppState,
    rtype: &str,
    id: Option<&str>,
    headers: &HeaderMap,
    raw: &str,
) -> Response {
    st.store.count_request();
    let quirks = &st.store.quirks;
    let strict = quirks.is_strict_params() && prefers_strict(headers);
    let mut req = match parse_history(raw, strict, id) {
        Ok(r) => r,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, &e),
    };
    let hapi = quirks.is_hapi_history();
    req.query.newest_first = quirks.is_descending() || hapi;
    if let Some(gone) = expired(st, req.link_generation) {
        return gone;
    }
    let page = st.store.history(rtype, &req.query);
    let path = match id {
        Some(id) => format!("{}/{rtype}/{id}/_history", st.base),
        None => format!("{}/{rtype}/_history", st.base),
    };
    let next = page.next_after.map(|key| {
        let generation = quirks.link_generation();
        let at = CursorAt::History(key);
        next_link(&path, raw, &Cursor { generation, at })
    });
    let capacity = page
        .entries
        .iter()
        .map(|e| e.body.as_ref().map_or(0, |b| b.len()) + 256)
        .sum::<usize>();
    let mut bundle = BundleText::open(
        "history",
        &format!("{path}?{raw}"),
        next.as_deref(),
        quirks.is_date_only(),
        st.store.now_ms(),
        capacity,
    );
    for e in &page.entries {
        bundle.push_version(&st.base, rtype, e, hapi);
    }
    bundle.respond()
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
    st.store.count_request();
    match st.store.lookup(&rtype, &id) {
        Lookup::Found(b) => fhir_json(StatusCode::OK, b.to_string()),
        Lookup::Gone => outcome(StatusCode::GONE, "deleted"),
        Lookup::Missing => outcome(StatusCode::NOT_FOUND, "not found"),
    }
}

/// 204 for a delete, and again for a repeated one; 404 for what never was.
async fn delete(State(st): State<AppState>, Path((rtype, id)): Path<(String, String)>) -> Response {
    if !st.store.delete(&rtype, &id) && matches!(st.store.lookup(&rtype, &id), Lookup::Missing) {
        return outcome(StatusCode::NOT_FOUND, "not found");
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
#[path = "fhir_server_tests.rs"]
mod tests;
