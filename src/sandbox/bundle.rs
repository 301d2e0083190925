//! The Bundles and responses the sandbox answers with, written as text: a
//! search page of a million-resource store must not be rebuilt as a `Value`.

use super::history::HistoryEntry;
use super::store::format_ms;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

pub(super) fn fhir_json(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    resp
}

pub(super) fn outcome(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": msg}]
    });
    fhir_json(status, body.to_string())
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A Bundle being written: `open`, `push_*` entries, then `respond`.
pub(super) struct BundleText {
    body: String,
    entries: usize,
    now: DateTime<Utc>,
}

impl BundleText {
    /// `date_only`: no `meta.lastUpdated`, the server time is the `Date`
    /// header. `now_ms`: the sandbox's clock (see `SandboxClock`).
    pub(super) fn open(
        kind: &str,
        self_url: &str,
        next_url: Option<&str>,
        date_only: bool,
        now_ms: i64,
        capacity: usize,
    ) -> BundleText {
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms).unwrap_or_default();
        let mut body = String::with_capacity(256 + capacity);
        body.push_str(r#"{"resourceType":"Bundle","type":"#);
        body.push_str(&json_str(kind));
        if !date_only {
            body.push_str(r#","meta":{"lastUpdated":""#);
            body.push_str(&format_ms(now.timestamp_millis()));
            body.push_str(r#""}"#);
        }
        body.push_str(r#","link":[{"relation":"self","url":"#);
        body.push_str(&json_str(self_url));
        body.push('}');
        if let Some(next) = next_url {
            body.push_str(r#",{"relation":"next","url":"#);
            body.push_str(&json_str(next));
            body.push('}');
        }
        body.push_str(r#"],"entry":["#);
        BundleText {
            body,
            entries: 0,
            now,
        }
    }

    fn start_entry(&mut self) {
        if self.entries > 0 {
            self.body.push(',');
        }
        self.entries += 1;
    }

    pub(super) fn push_match(&mut self, resource: &str) {
        self.start_entry();
        self.body.push_str(r#"{"resource":"#);
        self.body.push_str(resource);
        self.body.push_str(r#","search":{"mode":"match"}}"#);
    }

    /// One version: `request` says POST (version 1), PUT or DELETE. `hapi`:
    /// a DELETE entry as HAPI writes it (see `Quirks::hapi_history`).
    pub(super) fn push_version(
        &mut self,
        base: &str,
        resource_type: &str,
        e: &HistoryEntry,
        hapi: bool,
    ) {
        self.start_entry();
        let method = e.method();
        let (url, status) = match (method, hapi) {
            ("POST", _) => (resource_type.to_string(), "201 Created"),
            ("PUT", _) => (format!("{resource_type}/{}", e.id), "200 OK"),
            (_, true) => (
                format!("{resource_type}/{}/_history/{}", e.id, e.number),
                "200 OK",
            ),
            (_, false) => (format!("{resource_type}/{}", e.id), "204 No Content"),
        };
        let b = &mut self.body;
        b.push_str(r#"{"fullUrl":"#);
        b.push_str(&json_str(&format!("{base}/{resource_type}/{}", e.id)));
        if let Some(resource) = &e.body {
            b.push_str(r#","resource":"#);
            b.push_str(resource);
        }
        b.push_str(r#","request":{"method":""#);
        b.push_str(method);
        b.push_str(r#"","url":"#);
        b.push_str(&json_str(&url));
        b.push_str(r#"},"response":{"status":""#);
        b.push_str(status);
        b.push_str(r#"","etag":"#);
        b.push_str(&json_str(&format!("W/\"{}\"", e.number)));
        if !(hapi && method == "DELETE") {
            b.push_str(r#","lastModified":""#);
            b.push_str(&format_ms(e.lu_ms));
            b.push('"');
        }
        b.push_str("}}");
    }

    /// 200 with the Bundle and a second-precision `Date` header on the
    /// sandbox's clock (the only server time with `date_only`).
    pub(super) fn respond(mut self) -> Response {
        self.body.push_str("]}");
        let mut resp = fhir_json(StatusCode::OK, self.body);
        let date = self.now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(v) = HeaderValue::from_str(&date) {
            resp.headers_mut().insert(header::DATE, v);
        }
        resp
    }
}
