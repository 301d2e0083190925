//! Helpers shared by the hostile-input tests against scripted servers: the
//! one-source, one-hook config they start from, look-ups on status and on
//! what a receiver got, and the shapes a scripted server answers with
//! (`$export` jobs and NDJSON files, snapshot searches and reads).

use crate::common::scripted::{Scripted, Seen, fhir_json, observation, status_with};
use axum::response::{IntoResponse, Response};
use fhir_bridge::sandbox::Receiver;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One source `ehr` on `base` reading `resources`, with `source_lines` (its
/// schedule, start, strategy ... as TOML lines, kept in the given order so a
/// test can still edit the text) and one hook `all` on `hook_url` retrying
/// after 1 s.
pub fn one_source_config(
    base: &str,
    resources: &[&str],
    source_lines: &str,
    hook_url: &str,
) -> String {
    let resources: Vec<String> = resources.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{base}"
resources = [{}]
{source_lines}
[[hook]]
name = "all"
url = "{hook_url}"
retry_schedule = ["1s"]
"#,
        resources.join(", ")
    )
}

/// The status of the first source's target for `rt` (Null if none).
pub fn target(status: &Value, rt: &str) -> Value {
    status["sources"][0]["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["resource_type"] == rt))
        .cloned()
        .unwrap_or_default()
}

/// The resource ids a receiver got, in arrival order.
pub fn received_ids(rx: &Receiver) -> Vec<String> {
    rx.received()
        .iter()
        .map(|r| r.resource_id.clone())
        .collect()
}

/// The `type` and the event numbers of an R4 backport notification.
pub fn r4_events(body: &Value) -> (String, Vec<i64>) {
    let params = body["entry"][0]["resource"]["parameter"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kind = params
        .iter()
        .find(|p| p["name"] == "type")
        .and_then(|p| p["valueCode"].as_str())
        .unwrap_or("")
        .to_string();
    let numbers = params
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .filter_map(|p| {
            p["part"].as_array()?.iter().find_map(|x| {
                (x["name"] == "event-number")
                    .then(|| x["valueString"].as_str()?.parse().ok())
                    .flatten()
            })
        })
        .collect();
    (kind, numbers)
}

/// A resource of type `rt` at version 1.
pub fn resource(rt: &str, id: &str, last_updated: &str) -> Value {
    json!({
        "resourceType": rt,
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": last_updated},
    })
}

/// A bulk export output file holding `resources`.
pub fn ndjson(resources: &[Value]) -> Response {
    let body: String = resources.iter().map(|r| format!("{r}\n")).collect();
    ([("content-type", "application/fhir+ndjson")], body).into_response()
}

/// The job number in `/fhir/_export/{n}...`.
pub fn job_no(uri: &str) -> Option<usize> {
    let rest = uri.strip_prefix("/fhir/_export/")?;
    rest.split(['/', '?']).next()?.parse().ok()
}

/// Every `$export` kick-off the server got.
pub fn kickoffs(fhir: &Scripted) -> Vec<Seen> {
    (fhir.seen().into_iter())
        .filter(|s| s.method == "GET" && s.uri.starts_with("/fhir/$export"))
        .collect()
}

/// What a scripted snapshot server answers: the search's ids and total, and
/// per read path (after `/fhir/Observation/`) its status (`200` gives the
/// resource).
#[derive(Default)]
pub struct SnapshotScript {
    pub ids: Vec<&'static str>,
    pub total: u64,
    pub reads: HashMap<&'static str, u16>,
}

/// A server answering the `Observation` search from `script`, a read with
/// the status the script gives it, and any other path (or a read the script
/// does not list) with `unlisted()`.
pub async fn snapshot_server(
    script: Arc<Mutex<SnapshotScript>>,
    unlisted: impl Fn() -> Response + Send + Sync + 'static,
) -> Scripted {
    Scripted::start(move |req: &Seen| {
        let s = script.lock().unwrap();
        let at = "2026-01-01T00:00:00Z";
        let path = req.uri.split('?').next().unwrap_or_default();
        if path != "/fhir/Observation" {
            let read = path.strip_prefix("/fhir/Observation/");
            return match read.and_then(|id| Some((id, s.reads.get(id).copied()?))) {
                Some((id, 200)) => fhir_json(200, observation(id, "1", at)),
                Some((_, code)) => status_with(code, &[]),
                None => unlisted(),
            };
        }
        let entries: Vec<_> = (s.ids.iter())
            .map(|id| json!({"resource": observation(id, "1", at), "search": {"mode": "match"}}))
            .collect();
        fhir_json(
            200,
            json!({"resourceType": "Bundle", "type": "searchset",
                "meta": {"lastUpdated": crate::common::scripted::now_instant()},
                "total": s.total, "entry": entries}),
        )
    })
    .await
}

/// Searches for `Observation` the server got.
pub fn searches(fhir: &Scripted) -> usize {
    (fhir.seen().iter())
        .filter(|s| s.uri.starts_with("/fhir/Observation?"))
        .count()
}

/// Waits until the server got `n` more `Observation` searches.
pub async fn more_walks(fhir: &Scripted, n: usize) {
    let before = searches(fhir);
    crate::common::wait_for(30, &format!("{n} more walks"), || {
        searches(fhir) >= before + n
    })
    .await;
}

/// The status of the first source's first target.
pub fn first_target(bridge: &crate::common::Bridge) -> Value {
    bridge.status_json()["sources"][0]["targets"][0].clone()
}

/// Waits up to `secs` until the `rt` target's `field` on status (its
/// `last_error`, `last_warning` ...) contains `text`.
pub async fn wait_for_target(
    bridge: &crate::common::Bridge,
    secs: u64,
    what: &str,
    (rt, field): (&str, &str),
    text: &str,
) {
    crate::common::wait_for(secs, what, || {
        target(&bridge.status_json(), rt)[field]
            .as_str()
            .is_some_and(|v| v.contains(text))
    })
    .await;
}

/// A scripted `$export` server's answer to a kick-off: 202 with the status
/// URL of job n on `base` (its own origin), n counted by `jobs` from 1.
pub fn kick_off(base: &str, jobs: &std::sync::atomic::AtomicUsize) -> Response {
    let n = jobs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let loc = format!("{base}/fhir/_export/{n}");
    status_with(202, &[("content-location", &loc)])
}
