//! The sandbox over HTTP: history, deletes, quirks, Group and patient searches.

use super::*;
use serde_json::{Value, json};

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(url: &str) -> Answer {
    send(reqwest::Client::new().get(url)).await
}

fn next_of(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(String::from)
}

/// Every entry of every page from `url` on.
async fn walk(url: &str) -> Vec<Value> {
    let mut url = Some(url.to_string());
    let mut entries = vec![];
    while let Some(u) = url {
        let a = get(&u).await;
        assert_eq!(a.status, 200, "{u}: {}", a.body);
        entries.extend(a.body["entry"].as_array().cloned().unwrap_or_default());
        url = next_of(&a.body);
    }
    entries
}

fn ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap_or("-").to_string())
        .collect()
}

#[tokio::test]
async fn history_pages_creates_updates_and_deletes_oldest_first() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let base = fhir.base_url();
    let s = &fhir.store;
    s.freeze_clock(Some(1_000_000));
    s.upsert("Observation", Some("early"), json!({}));
    s.freeze_clock(Some(2_000_000));
    s.upsert("Observation", Some("a"), json!({"status": "preliminary"}));
    s.upsert("Observation", Some("a"), json!({"status": "final"}));
    let client = reqwest::Client::new();
    let gone = send(client.delete(format!("{base}/Observation/a"))).await;
    assert_eq!(gone.status, 204);

    let since = "1970-01-01T00:33:20.000Z"; // 2,000,000 ms: inclusive
    let entries = walk(&format!(
        "{base}/Observation/_history?_since={since}&_count=2"
    ))
    .await;
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            let text = |p: &str| {
                e.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (
                text("/request/method"),
                text("/request/url"),
                text("/response/etag"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("POST".into(), "Observation".into(), "W/\"1\"".into()),
            ("PUT".into(), "Observation/a".into(), "W/\"2\"".into()),
            ("DELETE".into(), "Observation/a".into(), "W/\"3\"".into()),
        ]
    );
    assert_eq!(entries[0]["fullUrl"], format!("{base}/Observation/a"));
    assert_eq!(entries[1]["resource"]["status"], "final");
    assert!(entries[2].get("resource").is_none());
    assert_eq!(entries[2]["response"]["lastModified"], since);

    let instance = walk(&format!("{base}/Observation/a/_history")).await;
    assert_eq!(instance.len(), 3);
    assert_eq!(
        get(&format!("{base}/Observation/none/_history"))
            .await
            .status,
        404
    );
    let all = get(&format!("{base}/Observation/_history")).await;
    assert_eq!(all.body["type"], "history");
    assert_eq!(all.body["entry"].as_array().map(Vec::len), Some(4));
}

/// The `hapi_history` quirk: newest first, and the DELETE entry as HAPI
/// writes it (versioned `request.url`, "200 OK", an etag, no lastModified).
#[tokio::test]
async fn hapi_history_lists_newest_first_and_a_delete_has_no_time() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let base = fhir.base_url();
    let s = &fhir.store;
    s.quirks.hapi_history(true);
    s.upsert("Observation", Some("a"), json!({}));
    s.upsert("Observation", Some("a"), json!({"status": "final"}));
    assert!(s.delete("Observation", "a"));
    let entries = walk(&format!("{base}/Observation/_history?_count=1")).await;
    let methods: Vec<&str> = (entries.iter())
        .map(|e| e["request"]["method"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    let delete = &entries[0];
    assert_eq!(delete["request"]["url"], "Observation/a/_history/3");
    assert_eq!(delete["response"]["status"], "200 OK");
    assert_eq!(delete["response"]["etag"], "W/\"3\"");
    assert!(delete.get("resource").is_none());
    assert!(delete["response"].get("lastModified").is_none());
    assert!(entries[1]["response"]["lastModified"].is_string());
}

#[tokio::test]
async fn a_deleted_resource_reads_gone_and_leaves_search() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let base = fhir.base_url();
    fhir.store.upsert("Observation", Some("a"), json!({}));
    fhir.store.upsert("Observation", Some("b"), json!({}));
    let client = reqwest::Client::new();
    assert_eq!(
        send(client.delete(format!("{base}/Observation/a")))
            .await
            .status,
        204
    );
    assert_eq!(
        send(client.delete(format!("{base}/Observation/a")))
            .await
            .status,
        204
    );
    assert_eq!(
        send(client.delete(format!("{base}/Observation/zz")))
            .await
            .status,
        404
    );
    let read = get(&format!("{base}/Observation/a")).await;
    assert_eq!(read.status, 410);
    assert_eq!(read.body["resourceType"], "OperationOutcome");
    assert_eq!(get(&format!("{base}/Observation/zz")).await.status, 404);
    assert_eq!(ids(&walk(&format!("{base}/Observation")).await), ["b"]);
    assert!(fhir.store.delete("Observation", "b"));
    assert!(walk(&format!("{base}/Observation")).await.is_empty());
}

#[tokio::test]
async fn search_keeps_meta_and_paging_and_descending_pages_newest_first() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let base = fhir.base_url();
    for (ms, id) in [(1_000, "a"), (2_000, "b"), (3_000, "c")] {
        fhir.store.freeze_clock(Some(ms));
        fhir.store.upsert("Observation", Some(id), json!({}));
    }
    let url = format!(
        "{base}/Observation?_lastUpdated=ge1970-01-01T00:00:01Z&_sort=_lastUpdated&_count=2"
    );
    let first = get(&url).await;
    assert!(first.body["meta"]["lastUpdated"].is_string());
    assert!(next_of(&first.body).is_some());
    assert_eq!(ids(&walk(&url).await), ["a", "b", "c"]);
    fhir.store.quirks.descending(true);
    assert_eq!(ids(&walk(&url).await), ["c", "b", "a"]);
}

#[tokio::test]
async fn expired_page_links_answer_gone() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let base = fhir.base_url();
    for _ in 0..3 {
        fhir.store.upsert("Observation", None, json!({}));
    }
    let url = format!("{base}/Observation?_count=1");
    let history_url = format!("{base}/Observation/_history?_count=1");
    let next = next_of(&get(&url).await.body).expect("next");
    let history_next = next_of(&get(&history_url).await.body).expect("next");
    fhir.store.quirks.expire_page_links();
    for stale in [&next, &history_next] {
        let a = get(stale).await;
        assert_eq!(a.status, 410, "{stale}");
        assert_eq!(a.body["resourceType"], "OperationOutcome");
    }
    // A new chain works again.
    assert_eq!(walk(&url).await.len(), 3);
    assert_eq!(walk(&history_url).await.len(), 3);

    fhir.store.quirks.expire_next_links(true);
    let fresh = next_of(&get(&url).await.body).expect("next");
    assert_eq!(get(&fresh).await.status, 410);
    fhir.store.quirks.expire_next_links(false);
    assert_eq!(get(&fresh).await.status, 200);
}

#[tokio::test]
async fn strict_handling_rejects_unknown_parameters() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let url = format!("{}/Observation?category=laboratory", fhir.base_url());
    let strict = |u: &str| {
        reqwest::Client::new()
            .get(u)
            .header("Prefer", "handling=strict")
    };
    assert_eq!(send(strict(&url)).await.status, 200, "quirk off");
    fhir.store.quirks.strict_params(true);
    let rejected = send(strict(&url)).await;
    assert_eq!(rejected.status, 400);
    assert_eq!(rejected.body["resourceType"], "OperationOutcome");
    assert_eq!(get(&url).await.status, 200, "lenient without the header");
    let known = format!("{}/Observation?patient=1&_count=5", fhir.base_url());
    assert_eq!(send(strict(&known)).await.status, 200);
}

#[tokio::test]
async fn date_only_gives_no_bundle_meta_but_a_date_header() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    fhir.store.upsert("Observation", None, json!({}));
    fhir.store.quirks.date_only(true);
    for url in [
        format!("{}/Observation", fhir.base_url()),
        format!("{}/Observation/_history", fhir.base_url()),
    ] {
        let a = get(&url).await;
        assert_eq!(a.status, 200);
        assert!(a.body.get("meta").is_none(), "{}", a.body);
        assert_eq!(a.body["entry"].as_array().map(Vec::len), Some(1));
        let date = a.headers["date"].to_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc2822(date).is_ok(), "{date}");
    }
}

#[tokio::test]
async fn group_members_and_per_patient_searches() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let base = fhir.base_url();
    let s = &fhir.store;
    s.set_group("123", ["p1", "p2"]);
    s.upsert(
        "Patient",
        Some("p1"),
        json!({"managingOrganization": {"reference": "Organization/x"}}),
    );
    s.upsert(
        "Patient",
        Some("p2"),
        json!({"managingOrganization": {"reference": "Organization/y"}}),
    );
    s.upsert(
        "Observation",
        Some("o1"),
        json!({"subject": {"reference": "Patient/p1"}}),
    );
    s.upsert(
        "Observation",
        Some("o2"),
        json!({"subject": {"reference": "Patient/p2"}}),
    );
    s.upsert(
        "AllergyIntolerance",
        Some("al"),
        json!({"patient": {"reference": "Patient/p1"}}),
    );

    let group = get(&format!("{base}/Group/123")).await;
    let members: Vec<&str> = group.body["member"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["entity"]["reference"].as_str())
        .collect();
    assert_eq!(members, ["Patient/p1", "Patient/p2"]);

    assert_eq!(
        ids(&walk(&format!("{base}/Observation?patient=p1")).await),
        ["o1"]
    );
    assert_eq!(
        ids(&walk(&format!("{base}/Observation?subject=Patient/p2")).await),
        ["o2"]
    );
    assert_eq!(
        ids(&walk(&format!("{base}/AllergyIntolerance?patient=Patient/p1")).await),
        ["al"]
    );
    assert!(
        walk(&format!("{base}/Observation?patient=p3"))
            .await
            .is_empty()
    );
    let org = format!("{base}/Patient?organization=Organization/x");
    assert_eq!(ids(&walk(&org).await), ["p1"]);
}
