//! Helpers of the per-patient fan-out tests on the in-crate sandbox: labs
//! about a patient, what a receiver got, and the fan-out source's config.

use crate::common::FhirServer;
use crate::common::scenarios::observation;
use fhir_bridge::sandbox::Receiver;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Stores an Observation about `patient`; returns `Observation/{id}`.
pub fn lab(fhir: &FhirServer, patient: &str) -> String {
    let mut o = observation("N", "final");
    o["subject"] = json!({"reference": format!("Patient/{patient}")});
    let stored = fhir.as_sandbox().store.upsert("Observation", None, o);
    let v: Value = serde_json::from_str(&stored).unwrap();
    format!("Observation/{}", v["id"].as_str().unwrap())
}

/// The resource ids a receiver got.
pub fn delivered(rx: &Receiver) -> BTreeSet<String> {
    rx.received().into_iter().map(|r| r.resource_id).collect()
}

/// One source polling `Observation` per patient of `patients` (a TOML
/// value), the roster read again every `refresh`; then `hooks`.
pub fn fan_out_config(
    base: &str,
    start: &str,
    patients: &str,
    refresh: &str,
    hooks: &str,
) -> String {
    format!(
        r#"state_dir = "state"

[[source]]
name = "ehr"
base_url = "{base}"
resources = ["Observation"]
every = "300ms"
overlap = "5s"
start = "{start}"
timeout = "2s"
patients = {patients}
roster_refresh = "{refresh}"

{hooks}
"#
    )
}
