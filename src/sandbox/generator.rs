//! Synthetic clinical traffic for the sandbox: patients, lab observations
//! (about one in five critical: HH or LL), encounters, and updates.
//! All data is made up; none of it is PHI.

use super::store::SandboxStore;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LABS: [(&str, &str, &str, f64, f64); 4] = [
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.1),
    ("2951-2", "Sodium", "mmol/L", 136.0, 145.0),
    ("2345-7", "Glucose", "mg/dL", 70.0, 99.0),
    ("718-7", "Hemoglobin", "g/dL", 12.0, 17.5),
];

pub fn observation(patient: u64, rng: &mut fastrand::Rng) -> Value {
    let (code, name, unit, lo, hi) = LABS[rng.usize(..LABS.len())];
    let roll = rng.f64();
    let (value, interp) = if roll < 0.1 {
        (lo * 0.6, "LL")
    } else if roll < 0.2 {
        (hi * 1.5, "HH")
    } else {
        (lo + (hi - lo) * rng.f64(), "N")
    };
    json!({
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": (value * 10.0).round() / 10.0, "unit": unit},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": interp}]}]
    })
}

fn patient(rng: &mut fastrand::Rng) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": format!("Synthetic{}", rng.u32(1000..9999)), "given": ["Test"]}],
        "gender": if rng.bool() { "female" } else { "male" },
    })
}

fn encounter(patient: u64, status: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": format!("Patient/{patient}")},
    })
}

/// Writes about `per_second` resources per second until cancelled.
pub async fn run(store: Arc<SandboxStore>, per_second: f64, seed: u64, cancel: CancellationToken) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.01));
    let mut patients: Vec<String> = Vec::new();
    let mut observations: Vec<String> = Vec::new();
    let mut encounters: Vec<String> = Vec::new();
    let id_of = |body: &str| -> String {
        serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from))
            .unwrap_or_default()
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = cancel.cancelled() => return,
        }
        let pid: u64 = patients.last().and_then(|p| p.parse().ok()).unwrap_or(0);
        let roll = rng.f64();
        if patients.is_empty() || roll < 0.1 {
            patients.push(id_of(&store.upsert("Patient", None, patient(&mut rng))));
        } else if roll < 0.55 {
            observations.push(id_of(&store.upsert(
                "Observation",
                None,
                observation(pid, &mut rng),
            )));
        } else if roll < 0.7 && !observations.is_empty() {
            // A preliminary result becomes final: an update.
            let id = observations.swap_remove(rng.usize(..observations.len()));
            if let Some(body) = store.read("Observation", &id)
                && let Ok(mut v) = serde_json::from_str::<Value>(&body)
            {
                v["status"] = json!("final");
                store.upsert("Observation", Some(&id), v);
            }
        } else if roll < 0.85 || encounters.is_empty() {
            encounters.push(id_of(&store.upsert(
                "Encounter",
                None,
                encounter(pid, "in-progress"),
            )));
        } else {
            let id = encounters.swap_remove(rng.usize(..encounters.len()));
            store.upsert("Encounter", Some(&id), encounter(pid, "finished"));
        }
    }
}
