//! Bulk data `$export` in the sandbox, asynchronous as the spec has it:
//!
//! - kick-off `GET [base]/$export?_type=A,B&_since=…` (or
//!   `[base]/Group/{id}/$export`: the group's patients and what refers to
//!   them) with `Prefer: respond-async` → 202, `Content-Location:
//!   [base]/_export/{job}`. The job is a snapshot of the live resources of
//!   each type last updated at or after `_since`, taken at kick-off, whose
//!   time is the manifest's `transactionTime`;
//! - status `GET [base]/_export/{job}` → 202 with `X-Progress` and
//!   `Retry-After: 1` for the first `set_pending_polls` requests (1 by
//!   default), then 200 with the manifest; output files hold at most
//!   `set_file_lines` lines (1000 by default), `[base]/_export/{job}/{n}.ndjson`;
//! - `DELETE [base]/_export/{job}` → 202; the job is gone (404 afterwards).
//!
//! `stall_file(n, lines)`: the download of file `n` (of any job) sends that
//! many lines and then nothing more, for a test to kill the bridge mid-file.
//! The jobs and those switches are held in export_jobs.rs.

use super::AppState;
use super::bundle::{fhir_json, outcome};
use super::export_jobs::Job;
use super::store::format_ms;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

fn param<'a>(raw: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub(super) async fn kick_off_system(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    kick_off(&st, None, &headers, &raw.unwrap_or_default())
}

pub(super) async fn kick_off_group(
    State(st): State<AppState>,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if rtype != "Group" {
        return outcome(
            StatusCode::NOT_FOUND,
            "$export is for the system or a Group",
        );
    }
    let Some(group) = st.store.read("Group", &id) else {
        return outcome(StatusCode::NOT_FOUND, "no such Group");
    };
    let members = serde_json::from_str::<Value>(&group)
        .ok()
        .and_then(|g| g["member"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["entity"]["reference"].as_str().map(str::to_string))
        .collect();
    kick_off(&st, Some(members), &headers, &raw.unwrap_or_default())
}

/// Whether a resource belongs to a group of `Patient/{id}` references.
fn in_group(members: &BTreeSet<String>, rtype: &str, body: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return false;
    };
    if rtype == "Patient" {
        return v["id"]
            .as_str()
            .is_some_and(|id| members.contains(&format!("Patient/{id}")));
    }
    ["subject", "patient"].iter().any(|k| {
        v[k]["reference"]
            .as_str()
            .is_some_and(|r| members.contains(r))
    })
}

fn kick_off(
    st: &AppState,
    group: Option<BTreeSet<String>>,
    headers: &HeaderMap,
    raw: &str,
) -> Response {
    let async_ok = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("respond-async"));
    if !async_ok {
        return outcome(
            StatusCode::BAD_REQUEST,
            "$export needs Prefer: respond-async",
        );
    }
    let since_ms = match param(raw, "_since") {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => return outcome(StatusCode::BAD_REQUEST, "_since is not an instant"),
        },
    };
    let types: Vec<String> = match param(raw, "_type") {
        Some(t) => t.split(',').map(str::to_string).collect(),
        None => st.store.types(),
    };
    let exports = &st.store.exports;
    let per_file = exports.file_lines.load(Ordering::Relaxed).max(1);
    let transaction_ms = st.store.now_ms();
    let mut files = Vec::new();
    for rt in &types {
        let mut lines = st.store.live_since(rt, since_ms);
        if let Some(members) = &group {
            lines.retain(|b| in_group(members, rt, b));
        }
        for chunk in lines.chunks(per_file) {
            files.push((rt.clone(), chunk.to_vec()));
        }
    }
    let job = exports.next_job.fetch_add(1, Ordering::Relaxed) + 1;
    let polls_left = exports.pending_polls.load(Ordering::Relaxed);
    exports.jobs().insert(
        job,
        Job {
            polls_left,
            transaction_ms,
            files,
        },
    );
    exports.kickoffs.fetch_add(1, Ordering::Relaxed);
    let mut resp = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/_export/{job}", st.base)) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    resp
}

pub(super) async fn status(State(st): State<AppState>, Path(job): Path<usize>) -> Response {
    let mut jobs = st.store.exports.jobs();
    let Some(j) = jobs.get_mut(&job) else {
        return outcome(StatusCode::NOT_FOUND, "no such export job");
    };
    if j.polls_left > 0 {
        j.polls_left -= 1;
        let mut resp = StatusCode::ACCEPTED.into_response();
        let h = resp.headers_mut();
        h.insert("x-progress", HeaderValue::from_static("in progress"));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let output: Vec<Value> = (j.files.iter().enumerate())
        .map(|(n, (rt, lines))| {
            json!({"type": rt, "url": format!("{}/_export/{job}/{n}.ndjson", st.base), "count": lines.len()})
        })
        .collect();
    let manifest = json!({
        "transactionTime": format_ms(j.transaction_ms),
        "request": format!("{}/$export", st.base),
        "requiresAccessToken": true,
        "output": output,
        "error": [],
    });
    fhir_json(StatusCode::OK, manifest.to_string())
}

pub(super) async fn delete_job(State(st): State<AppState>, Path(job): Path<usize>) -> Response {
    let exports = &st.store.exports;
    if exports.jobs().remove(&job).is_none() {
        return outcome(StatusCode::NOT_FOUND, "no such export job");
    }
    exports.deletes.fetch_add(1, Ordering::Relaxed);
    StatusCode::ACCEPTED.into_response()
}

pub(super) async fn file(
    State(st): State<AppState>,
    Path((job, file)): Path<(usize, String)>,
) -> Response {
    let exports = &st.store.exports;
    let n = file
        .strip_suffix(".ndjson")
        .and_then(|n| n.parse::<usize>().ok());
    let lines = n.and_then(|n| {
        let jobs = exports.jobs();
        jobs.get(&job)
            .and_then(|j| j.files.get(n))
            .map(|f| f.1.clone())
    });
    let (Some(n), Some(lines)) = (n, lines) else {
        return outcome(StatusCode::NOT_FOUND, "no such export file");
    };
    let stall = *exports.stall.lock().unwrap_or_else(|p| p.into_inner());
    let cut = stall.filter(|(f, _)| *f == n).map(|(_, l)| l);
    if cut.is_some() {
        exports.stalled.fetch_add(1, Ordering::Relaxed);
    }
    let sent = lines.len().min(cut.unwrap_or(usize::MAX));
    let body = futures_util::stream::iter(lines.into_iter().take(sent))
        .map(|l| Ok::<_, std::io::Error>(Bytes::from(format!("{l}\n"))));
    let body = match cut {
        Some(_) => Body::from_stream(body.chain(futures_util::stream::pending())),
        None => Body::from_stream(body),
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    resp
}
