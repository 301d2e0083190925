//! The R4 validation harness: Medplum's validator (a third-party FHIR
//! library, from npm) behind `POST /_validate` of the Medplum test server,
//! reached through `common::validator::validate_r4`.
//!
//! The fixtures in tests/fixtures/backport-r4-*.json are hand-written R4
//! Subscriptions Backport IG notification bundles (handshake, id-only and
//! full-resource event notifications, after the IG's examples): references for
//! the bridge's renderer. Broken variants show what the validator rejects;
//! `rules_medplum_does_not_check` pins what it lets through, so nobody trusts
//! it for those. Needs `npm ci --prefix tests/fhir-server`.

mod common;

use common::validator::{shared_validate_url, validate_r4, validate_r4_outcome};
use serde_json::{Value, json};

const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn full() -> Value {
    fixture("backport-r4-event-full.json")
}

/// The value of the status Parameters' parameter `name`.
fn parameter<'a>(bundle: &'a Value, name: &str) -> &'a Value {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("parameter {name}"))
}

#[tokio::test]
async fn backport_r4_fixtures_are_valid() {
    for (name, kind, entries) in [
        ("backport-r4-handshake.json", "handshake", 1),
        ("backport-r4-event-id-only.json", "event-notification", 2),
        ("backport-r4-event-full.json", "event-notification", 2),
    ] {
        let bundle = fixture(name);
        // The shape the IG asks for, so the fixtures stay what they claim to be.
        assert_eq!(bundle["type"], "history", "{name}");
        let entry = bundle["entry"].as_array().unwrap();
        assert_eq!(entry.len(), entries, "{name}");
        assert_eq!(entry[0]["resource"]["resourceType"], "Parameters", "{name}");
        assert_eq!(entry[0]["resource"]["meta"]["profile"][0], STATUS_PROFILE);
        assert_eq!(parameter(&bundle, "type")["valueCode"], kind, "{name}");
        for e in entry {
            assert!(
                e["request"].is_object() && e["response"].is_object(),
                "{name}"
            );
        }
        if let Err(errors) = validate_r4(&bundle).await {
            panic!("{name} should be valid R4:\n{}", errors.join("\n"));
        }
    }
    let id_only = fixture("backport-r4-event-id-only.json");
    assert!(id_only["entry"][1].get("resource").is_none());
    assert!(full()["entry"][1]["resource"].is_object());
}

/// Applies `breaks` to the full-resource fixture and expects an error
/// mentioning every one of `expect`.
async fn rejected(what: &str, breaks: impl FnOnce(&mut Value), expect: &[&str]) {
    let mut bundle = full();
    breaks(&mut bundle);
    let errors = match validate_r4(&bundle).await {
        Ok(()) => panic!("{what}: accepted, expected an error with {expect:?}"),
        Err(errors) => errors,
    };
    assert!(
        errors
            .iter()
            .any(|e| expect.iter().all(|part| e.contains(part))),
        "{what}: no error with {expect:?} in:\n{}",
        errors.join("\n")
    );
}

fn status_param(b: &mut Value, i: usize) -> &mut Value {
    &mut b["entry"][0]["resource"]["parameter"][i]
}

#[tokio::test]
async fn history_bundle_rules_are_checked() {
    // bdl-3 / bdl-4: every entry of a history bundle has request and response.
    rejected(
        "entry without request",
        |b| {
            b["entry"][1].as_object_mut().unwrap().remove("request");
        },
        &["bdl-3", "at Bundle:"],
    )
    .await;
    rejected(
        "status entry without response",
        |b| {
            b["entry"][0].as_object_mut().unwrap().remove("response");
        },
        &["bdl-4"],
    )
    .await;
    // bdl-5: an entry needs a resource, a request or a response.
    rejected(
        "entry with only a fullUrl",
        |b| {
            let url = b["entry"][1]["fullUrl"].clone();
            b["entry"][1] = json!({ "fullUrl": url });
        },
        &["bdl-5", "Bundle.entry[1]"],
    )
    .await;
    rejected(
        "entry.search in a history bundle",
        |b| b["entry"][1]["search"] = json!({ "mode": "match" }),
        &["bdl-2"],
    )
    .await;
    rejected(
        "version-specific fullUrl",
        |b| b["entry"][1]["fullUrl"] = json!("https://example.org/fhir/Encounter/1/_history/2"),
        &["bdl-8", "Bundle.entry[1]"],
    )
    .await;
    // Another bundle type with request/response on its entries.
    rejected(
        "collection bundle with requests",
        |b| b["type"] = json!("collection"),
        &["bdl-3"],
    )
    .await;
    rejected(
        "request without url",
        |b| {
            b["entry"][1]["request"]
                .as_object_mut()
                .unwrap()
                .remove("url");
        },
        &["Missing required property", "Bundle.entry[1].request.url"],
    )
    .await;
    rejected(
        "response.status as a number",
        |b| b["entry"][1]["response"]["status"] = json!(201),
        &["Invalid JSON type", "Bundle.entry[1].response.status"],
    )
    .await;
}

#[tokio::test]
async fn status_parameters_are_checked() {
    rejected(
        "event timestamp without time",
        |b| status_param(b, 5)["part"][1]["valueInstant"] = json!("2020-05-29"),
        &[
            "Invalid instant format",
            "Bundle.entry[0].resource.parameter[5].part[1]",
        ],
    )
    .await;
    rejected(
        "event timestamp without zone",
        |b| status_param(b, 5)["part"][1]["valueInstant"] = json!("2020-05-29T11:44:13"),
        &["Invalid instant format"],
    )
    .await;
    rejected(
        "Bundle.timestamp on a day that does not exist",
        |b| b["timestamp"] = json!("2021-02-29T10:00:00Z"),
        &["Invalid instant value", "Bundle.timestamp"],
    )
    .await;
    // Parameters inv-1: one of value[x], resource, part.
    rejected(
        "parameter with a value and parts",
        |b| status_param(b, 5)["valueString"] = json!("2"),
        &["inv-1", "Bundle.entry[0].resource.parameter[5]"],
    )
    .await;
    rejected(
        "parameter without name",
        |b| {
            status_param(b, 2).as_object_mut().unwrap().remove("name");
        },
        &[
            "Missing required property",
            "Bundle.entry[0].resource.parameter[2].name",
        ],
    )
    .await;
    rejected(
        "events-since-subscription-start as a JSON number",
        |b| status_param(b, 4)["valueString"] = json!(2),
        &["Invalid JSON type"],
    )
    .await;
    rejected(
        "empty event-number",
        |b| status_param(b, 5)["part"][0]["valueString"] = json!(""),
        &["Bundle.entry[0].resource.parameter[5].part[0]"],
    )
    .await;
    rejected(
        "unknown property on Parameters",
        |b| b["entry"][0]["resource"]["subscription"] = json!("x"),
        &["Invalid additional property"],
    )
    .await;
}

#[tokio::test]
async fn resource_types_and_nested_resources_are_checked() {
    rejected(
        "unknown root resourceType",
        |b| b["resourceType"] = json!("Bundel"),
        &["Invalid resource type"],
    )
    .await;
    rejected(
        "unknown entry resourceType",
        |b| b["entry"][1]["resource"]["resourceType"] = json!("Encountr"),
        &["Encountr"],
    )
    .await;
    rejected(
        "entry resource missing a required element",
        |b| {
            b["entry"][1]["resource"]
                .as_object_mut()
                .unwrap()
                .remove("status");
        },
        &[
            "Missing required property",
            "Bundle.entry[1].resource.status",
        ],
    )
    .await;
    // Root-level invariants of an entry resource (dom-2 here): Medplum checks
    // them only for the top resource; validate.mjs validates each entry
    // resource on its own too.
    rejected(
        "entry resource with nested contained resources",
        |b| {
            b["entry"][1]["resource"]["contained"] = json!([{
                "resourceType": "Patient", "id": "p",
                "contained": [{ "resourceType": "Patient", "id": "q" }]
            }])
        },
        &["dom-2", "Bundle.entry[1].resource"],
    )
    .await;
}

type Break = Box<dyn FnOnce(&mut Value)>;

/// What Medplum 5.2.13 lets through (see tests/fhir-server/README.md). If one
/// of these starts failing, Medplum learned the rule: move it up.
#[tokio::test]
async fn rules_medplum_does_not_check() {
    let cases: Vec<(&str, Break)> = vec![
        // Required code bindings.
        (
            "unknown request.method",
            Box::new(|b| b["entry"][1]["request"]["method"] = json!("FETCH")),
        ),
        (
            "unknown subscription status code",
            Box::new(|b| status_param(b, 2)["valueCode"] = json!("sleeping")),
        ),
        (
            "unknown Encounter.status",
            Box::new(|b| b["entry"][1]["resource"]["status"] = json!("bogus")),
        ),
        // The backport profiles (meta.profile) are not available to Medplum.
        (
            "no subscription parameter",
            Box::new(|b| {
                b["entry"][0]["resource"]["parameter"]
                    .as_array_mut()
                    .unwrap()
                    .remove(0);
            }),
        ),
        (
            "Parameters not the first entry",
            Box::new(|b| b["entry"].as_array_mut().unwrap().reverse()),
        ),
        (
            "event-number that is not a number",
            Box::new(|b| status_param(b, 5)["part"][0]["valueString"] = json!("two")),
        ),
    ];
    for (what, breaks) in cases {
        let mut bundle = full();
        breaks(&mut bundle);
        assert_eq!(validate_r4(&bundle).await, Ok(()), "{what}");
    }
    // Two value[x] on one parameter: a warning only.
    let mut bundle = full();
    status_param(&mut bundle, 2)["valueString"] = json!("active");
    let outcome = validate_r4_outcome(&bundle).await;
    assert!(
        outcome["issue"].as_array().unwrap().iter().any(|i| {
            i["severity"] == "warning"
                && i["details"]["text"]
                    .as_str()
                    .unwrap()
                    .contains("Conflicting choice of type")
        }),
        "{outcome}"
    );
}

#[tokio::test]
async fn validate_endpoint_answers_400_for_non_resources() {
    let client = reqwest::Client::new();
    for body in ["not json", "[]", "42"] {
        let resp = client
            .post(shared_validate_url())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let outcome: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert_eq!(outcome["issue"][0]["severity"], "error");
    }
    // A JSON object that is no resource is validated, and invalid.
    let errors = validate_r4(&json!({})).await.unwrap_err();
    assert!(errors[0].contains("Invalid resource type"), "{errors:?}");
}
