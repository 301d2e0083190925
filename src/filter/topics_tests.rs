use super::*;
use crate::filter::{Filter, parse_resource};
use serde_json::{Value, json};
use std::sync::atomic::AtomicBool;

fn compiled(name: &str) -> Filter {
    Filter::compile(find(name).unwrap().jq).unwrap()
}

/// Whether topic `name` matches `now`, after `previous`.
fn fires(name: &str, now: &Value, previous: &Value) -> bool {
    let r = |v: &Value| parse_resource(&v.to_string()).unwrap();
    compiled(name)
        .matches_change(&r(now), &r(previous), &AtomicBool::new(false))
        .unwrap()
}

#[test]
fn every_topic_compiles_and_names_are_unique() {
    for t in TOPICS {
        let f = Filter::compile(t.jq).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert!(f.uses_previous(), "{} is a transition", t.name);
        assert_eq!(TOPICS.iter().filter(|u| u.name == t.name).count(), 1);
        // Another type never matches, whatever its fields.
        let other = json!({"resourceType": "Basic", "status": "finished"});
        assert!(!fires(t.name, &other, &Value::Null), "{}", t.name);
    }
    assert!(find("nope").is_none());
    assert!(names().starts_with("critical-lab-result, adt-discharge"));
}

/// A re-read of the same version (or an unchanged one) never fires.
fn same_twice_is_quiet(name: &str, r: &Value) {
    assert!(!fires(name, r, r), "{name} fired on an unchanged resource");
}

#[test]
fn critical_lab_result() {
    let obs = |code: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "id": "o", "status": "final"});
        if let Some(c) = code {
            o["interpretation"] = json!([{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "code": c}]}]);
        }
        o
    };
    assert!(fires("critical-lab-result", &obs(Some("HH")), &Value::Null));
    assert!(fires(
        "critical-lab-result",
        &obs(Some("LL")),
        &obs(Some("N"))
    ));
    assert!(fires("critical-lab-result", &obs(Some("AA")), &obs(None)));
    assert!(!fires("critical-lab-result", &obs(Some("H")), &obs(None)));
    assert!(!fires(
        "critical-lab-result",
        &obs(Some("LL")),
        &obs(Some("HH"))
    ));
    assert!(!fires("critical-lab-result", &obs(None), &obs(Some("HH"))));
    let other_system = json!({"resourceType": "Observation", "interpretation": [
        {"coding": [{"system": "http://example.org/local", "code": "HH"}]}]});
    assert!(!fires("critical-lab-result", &other_system, &Value::Null));
    same_twice_is_quiet("critical-lab-result", &obs(Some("HH")));
}

#[test]
fn adt_discharge() {
    let enc = |s: &str| json!({"resourceType": "Encounter", "id": "e", "status": s});
    assert!(fires(
        "adt-discharge",
        &enc("finished"),
        &enc("in-progress")
    ));
    assert!(fires(
        "adt-discharge",
        &enc("completed"),
        &enc("in-progress")
    ));
    assert!(fires("adt-discharge", &enc("finished"), &Value::Null));
    assert!(!fires(
        "adt-discharge",
        &enc("in-progress"),
        &enc("planned")
    ));
    same_twice_is_quiet("adt-discharge", &enc("finished"));
}

#[test]
fn new_medication_order() {
    let mr = |s: &str, i: &str| json!({"resourceType": "MedicationRequest", "id": "m", "status": s, "intent": i});
    assert!(fires(
        "new-medication-order",
        &mr("active", "order"),
        &Value::Null
    ));
    assert!(fires(
        "new-medication-order",
        &mr("active", "order"),
        &mr("draft", "order")
    ));
    assert!(!fires(
        "new-medication-order",
        &mr("active", "plan"),
        &Value::Null
    ));
    assert!(!fires(
        "new-medication-order",
        &mr("on-hold", "order"),
        &Value::Null
    ));
    assert!(!fires(
        "new-medication-order",
        &mr("active", "order"),
        &mr("active", "order")
    ));
    same_twice_is_quiet("new-medication-order", &mr("active", "order"));
}

#[test]
fn patient_demographic_update() {
    let pat = json!({"resourceType": "Patient", "id": "p", "gender": "female",
        "name": [{"family": "Doe"}], "birthDate": "1980-01-01", "active": true});
    let mut renamed = pat.clone();
    renamed["name"] = json!([{"family": "Roe"}]);
    let mut moved = pat.clone();
    moved["address"] = json!([{"city": "Oslo"}]);
    let mut other = pat.clone();
    other["active"] = json!(false);
    assert!(fires("patient-demographic-update", &renamed, &pat));
    assert!(fires("patient-demographic-update", &moved, &pat));
    assert!(!fires("patient-demographic-update", &other, &pat));
    assert!(!fires("patient-demographic-update", &pat, &Value::Null));
    same_twice_is_quiet("patient-demographic-update", &pat);
}

#[test]
fn appointment_no_show() {
    let appt = |s: &str| json!({"resourceType": "Appointment", "id": "a", "status": s});
    assert!(fires(
        "appointment-no-show",
        &appt("noshow"),
        &appt("booked")
    ));
    assert!(fires("appointment-no-show", &appt("noshow"), &Value::Null));
    assert!(!fires(
        "appointment-no-show",
        &appt("fulfilled"),
        &appt("booked")
    ));
    same_twice_is_quiet("appointment-no-show", &appt("noshow"));
}
