//! `$previous`: how filters see the resource's last seen version.

use super::*;
use serde_json::json;

fn val(v: serde_json::Value) -> Resource {
    parse_resource(&v.to_string()).unwrap()
}

fn check(f: &Filter, now: serde_json::Value, previous: serde_json::Value) -> bool {
    f.matches_change(&val(now), &val(previous), &AtomicBool::new(false))
        .unwrap()
}

#[test]
fn uses_previous_is_what_the_compiler_sees() {
    let uses = |code: &str| Filter::compile(code).unwrap().uses_previous();
    assert!(!uses(".status == \"finished\""));
    assert!(uses("$previous == null"));
    assert!(uses(".a as $x | $previous.status != $x"));
    // Only in a string or a comment, or a local binding of the same name.
    assert!(!uses(r#".text == "$previous""#));
    assert!(!uses("# $previous\n.a"));
    assert!(!uses(". as $previous | $previous.a"));
    assert!(uses("(. as $previous | $previous.a), $previous"));
    // Other undefined things are still errors, reported as before.
    let e = Filter::compile("$nope").unwrap_err().to_string();
    assert!(e.contains("undefined variable"), "{e}");
    assert!(!e.contains("previous"), "{e}");
    let e = Filter::compile("$previous | nope").unwrap_err().to_string();
    assert!(e.contains("undefined filter `nope`"), "{e}");
}

#[test]
fn previous_is_null_on_a_create() {
    let f = Filter::compile("$previous == null").unwrap();
    assert!(f.matches(&val(json!({"id": "1"}))).unwrap());
    assert!(check(&f, json!({"id": "1"}), json!(null)));
    assert!(!check(&f, json!({"id": "1"}), json!({"id": "1"})));
}

#[test]
fn a_transition_filter_sees_both_versions() {
    let f = Filter::compile(
        r#".resourceType == "Encounter" and .status == "finished" and $previous.status != "finished""#,
    )
    .unwrap();
    let enc = |s: &str| json!({"resourceType": "Encounter", "id": "e", "status": s});
    assert!(check(&f, enc("finished"), enc("in-progress")));
    assert!(check(&f, enc("finished"), json!(null)));
    assert!(!check(&f, enc("finished"), enc("finished")));
    assert!(!check(&f, enc("in-progress"), enc("planned")));
}

#[test]
fn both_parts_of_a_conjunction_must_match_on_one_budget() {
    let f = Filter::compile(".a == 1")
        .unwrap()
        .and(Filter::compile("$previous.a != 1").unwrap());
    assert!(f.uses_previous());
    assert!(check(&f, json!({"a": 1}), json!({"a": 0})));
    assert!(!check(&f, json!({"a": 1}), json!({"a": 1})));
    assert!(!check(&f, json!({"a": 2}), json!({"a": 0})));
    // The second part's error is the whole filter's.
    let g = Filter::compile("true")
        .unwrap()
        .and(Filter::compile("def f: f; f").unwrap());
    assert!(matches!(
        g.matches(&val(json!({}))),
        Err(FilterError::Budget(_))
    ));
    // The first part's non-match stops before the second runs.
    let h = Filter::compile("false")
        .unwrap()
        .and(Filter::compile("def f: f; f").unwrap());
    assert!(!h.matches(&val(json!({}))).unwrap());
}
