//! Validation of FHIR R4 JSON by a third-party validator: Medplum's
//! `validateResource`, behind `POST /_validate` of the Medplum test server
//! (tests/fhir-server/validate.mjs; what it checks and what it does not is in
//! tests/fhir-server/README.md).

use super::fhir::FhirServer;
use serde_json::Value;
use std::sync::OnceLock;

/// Validates `resource` with Medplum's validator on a Medplum test server
/// shared by the whole test binary (started on first use; it exits with the
/// test process). `Err` holds the error and fatal issues as text,
/// `"<severity> <code> at <expression>: <text>"`; warnings do not count.
pub async fn validate_r4(resource: &Value) -> Result<(), Vec<String>> {
    errors(&validate_r4_outcome(resource).await)
}

/// As `validate_r4`, on a Medplum server the test already runs.
pub async fn validate_r4_on(fhir: &FhirServer, resource: &Value) -> Result<(), Vec<String>> {
    errors(&outcome_from(&validate_url(fhir), resource).await)
}

/// The whole OperationOutcome (warnings too) from the shared server.
pub async fn validate_r4_outcome(resource: &Value) -> Value {
    outcome_from(shared_validate_url(), resource).await
}

/// `POST /_validate` of a running Medplum test server.
pub fn validate_url(fhir: &FhirServer) -> String {
    let base = match fhir {
        FhirServer::Medplum { base, .. } => base,
        FhirServer::Authed { inner, .. } => return validate_url(inner),
        FhirServer::Sandbox(_) => {
            panic!("validation needs the Medplum test server (FhirServer::medplum)")
        }
    };
    let root = base
        .strip_suffix("/fhir")
        .expect("Medplum base ends in /fhir");
    format!("{root}/_validate")
}

/// `POST /_validate` of the shared server (started on first use).
pub fn shared_validate_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        // Leaked on purpose: it lives as long as the test process, and exits
        // when its stdin (held by the leaked handle) closes with the process.
        let server: &'static FhirServer = Box::leak(Box::new(FhirServer::medplum("cursor")));
        validate_url(server)
    })
}

async fn outcome_from(url: &str, resource: &Value) -> Value {
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .expect("POST /_validate");
    let status = resp.status();
    let body = resp.bytes().await.expect("validation body");
    assert!(
        status.is_success(),
        "POST /_validate: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let outcome: Value = serde_json::from_slice(&body).expect("OperationOutcome JSON");
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome
}

/// The error and fatal issues of `outcome`, as text.
pub fn errors(outcome: &Value) -> Result<(), Vec<String>> {
    let issues = outcome["issue"].as_array().expect("issue array");
    let errors: Vec<String> = issues
        .iter()
        .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
        .map(issue_text)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn issue_text(issue: &Value) -> String {
    let at = issue["expression"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let text = issue["details"]["text"]
        .as_str()
        .or(issue["diagnostics"].as_str())
        .unwrap_or("(no text)");
    format!(
        "{} {} at {}: {text}",
        issue["severity"].as_str().unwrap_or("?"),
        issue["code"].as_str().unwrap_or("?"),
        if at.is_empty() { "(root)" } else { &at },
    )
}
