//! Filter tests: matching, compiling, and the budget.

use super::*;
use std::sync::atomic::AtomicBool;

fn obs(code: &str) -> Resource {
    parse_resource(&format!(
        r#"{{"resourceType":"Observation","id":"1","interpretation":[{{"coding":[{{"code":"{code}"}}]}}]}}"#
    ))
    .unwrap()
}

#[test]
fn any_truthy_output_matches() {
    let f = Filter::compile(
        r#".resourceType == "Observation" and any(.interpretation[]?.coding[]?; .code == "HH" or .code == "LL")"#,
    )
    .unwrap();
    assert!(f.matches(&obs("HH")).unwrap());
    assert!(!f.matches(&obs("N")).unwrap());
    // Several outputs: one truthy is enough.
    let multi = Filter::compile(".interpretation[].coding[].code == \"HH\", false").unwrap();
    assert!(multi.matches(&obs("HH")).unwrap());
    // No output at all is a non-match.
    assert!(
        !Filter::compile("empty")
            .unwrap()
            .matches(&obs("HH"))
            .unwrap()
    );
    assert!(
        !Filter::compile("null")
            .unwrap()
            .matches(&obs("HH"))
            .unwrap()
    );
}

#[test]
fn compile_errors_are_readable() {
    let e = Filter::compile(".resourceType ==").unwrap_err().to_string();
    assert!(e.contains("expected"), "{e}");
    let e = Filter::compile("nosuchfn(1)").unwrap_err().to_string();
    assert!(e.contains("undefined filter `nosuchfn`"), "{e}");
}

#[test]
fn oversized_filters_are_refused_before_jaq_sees_them() {
    let deep = format!("{}.{}", "(".repeat(100), ")".repeat(100));
    assert!(
        Filter::compile(&deep)
            .unwrap_err()
            .to_string()
            .contains("nests deeper")
    );
    let long_or = vec![".a == 1"; 400].join(" or ");
    assert!(
        Filter::compile(&long_or)
            .unwrap_err()
            .to_string()
            .contains("operators")
    );
    // Operators inside strings do not count.
    let strings = format!(".code == \"{}\"", "|".repeat(2000));
    assert!(Filter::compile(&strings).is_ok());
}

#[test]
fn runtime_errors_are_errors_not_panics() {
    let f = Filter::compile(".id + 1").unwrap();
    assert!(matches!(
        f.matches(&obs("HH")),
        Err(FilterError::Runtime(_))
    ));
}

#[test]
fn filters_are_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Filter>();
    assert_send_sync::<Resource>();
}

// The budget. Each hostile filter ends in a budget error on that resource,
// and the same `Filter` works on the next one.

fn budget_error(code: &str) -> Exceeded {
    let f = Filter::compile(code).unwrap();
    match f.matches(&obs("HH")) {
        Err(FilterError::Budget(e)) => {
            // The same filter (and a fresh evaluation) works afterwards.
            assert!(matches!(f.matches(&obs("HH")), Err(FilterError::Budget(_))));
            e
        }
        other => panic!("{code}: expected a budget error, got {other:?}"),
    }
}

/// Steps or time, whichever runs out first (time first in a debug build).
fn is_steps_or_time(e: Exceeded) -> bool {
    matches!(e, Exceeded::Steps(_) | Exceeded::Time(_))
}

#[test]
fn endless_tail_recursion_runs_out_of_budget() {
    assert!(is_steps_or_time(budget_error("def f: f; f")));
}

#[test]
fn native_range_is_metered() {
    assert!(is_steps_or_time(budget_error("[range(1e9)] | length > 0")));
    assert!(is_steps_or_time(budget_error("[limit(1e9; repeat(1))]")));
}

#[test]
fn deep_recursion_stops_before_the_stack_ends() {
    assert_eq!(budget_error("def f: 1 + f; f"), Exceeded::Depth);
    assert_eq!(budget_error("def f: [f]; f"), Exceeded::Depth);
}

#[test]
fn memory_is_limited() {
    assert_eq!(
        budget_error(r#"reduce range(64) as $i ("x"; . + .)"#),
        Exceeded::Memory(budget::MEMORY)
    );
    // Big integers grow too (on a smaller limit: squaring a 50 MB integer is slow).
    let f = Filter::compile("reduce range(40) as $i (3; . * .) | . > 0").unwrap();
    let small = Limits {
        memory: 1 << 20,
        ..Limits::default()
    };
    assert!(matches!(
        f.matches_within(&obs("HH"), &Val::Null, &AtomicBool::new(false), small),
        Err(FilterError::Budget(Exceeded::Memory(_)))
    ));
}

#[test]
fn budget_errors_read_well() {
    let text = |e| FilterError::Budget(e).to_string();
    assert_eq!(
        text(Exceeded::Steps(budget::STEPS)),
        "filter exceeded its budget: more than 1000000 steps"
    );
    assert_eq!(
        text(Exceeded::Time(budget::TIME)),
        "filter exceeded its budget: took longer than 100ms"
    );
    assert_eq!(
        text(Exceeded::Memory(budget::MEMORY)),
        "filter exceeded its budget: used more than 64 MiB"
    );
    assert_eq!(
        text(Exceeded::Depth),
        "filter exceeded its budget: recursed too deeply"
    );
}

#[test]
fn each_limit_is_enforced_on_its_own() {
    let f = Filter::compile("def f: f; f").unwrap();
    let never = AtomicBool::new(false);
    let steps = Limits {
        steps: 10_000,
        time: std::time::Duration::from_secs(60),
        ..Limits::default()
    };
    assert!(matches!(
        f.matches_within(&obs("HH"), &Val::Null, &never, steps),
        Err(FilterError::Budget(Exceeded::Steps(10_000)))
    ));
    let time = Limits {
        steps: u64::MAX,
        time: std::time::Duration::from_millis(20),
        ..Limits::default()
    };
    assert!(matches!(
        f.matches_within(&obs("HH"), &Val::Null, &never, time),
        Err(FilterError::Budget(Exceeded::Time(_)))
    ));
}

#[test]
fn ordinary_filters_fit_easily() {
    let f = Filter::compile(
        r#".resourceType == "Observation" and any(.interpretation[]?.coding[]?; .code == "HH" or .code == "LL")"#,
    )
    .unwrap();
    let tight = Limits {
        steps: 200,
        memory: 64 << 10,
        ..Limits::default()
    };
    let never = AtomicBool::new(false);
    assert!(
        f.matches_within(&obs("HH"), &Val::Null, &never, tight)
            .unwrap()
    );
    assert!(
        !f.matches_within(&obs("N"), &Val::Null, &never, tight)
            .unwrap()
    );
}

#[test]
fn cancellation_stops_an_evaluation() {
    let f = Filter::compile("def f: f; f").unwrap();
    let cancel = AtomicBool::new(true);
    assert!(matches!(
        f.matches_with(&obs("HH"), &cancel),
        Err(FilterError::Cancelled)
    ));
    // Set from another thread while the evaluation runs.
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let setter = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let no_deadline = Limits {
        steps: u64::MAX,
        time: std::time::Duration::from_secs(60),
        ..Limits::default()
    };
    assert!(matches!(
        f.matches_within(&obs("HH"), &Val::Null, &cancel, no_deadline),
        Err(FilterError::Cancelled)
    ));
    setter.join().unwrap();
}

#[test]
fn halt_is_an_error_not_an_exit() {
    for code in ["halt", "halt_error(1)", "try halt catch true"] {
        let f = Filter::compile(code).unwrap();
        assert!(
            matches!(f.matches(&obs("HH")), Err(FilterError::Runtime(_))),
            "{code}"
        );
    }
}

#[test]
fn shared_and_deep_values_are_refused_not_printed() {
    // A trillion leaves in forty steps: printing it would never end.
    assert!(is_steps_or_time(budget_error(
        "reduce range(40) as $i (0; [., .]) | tojson | length > 0"
    )));
    assert!(is_steps_or_time(budget_error(
        "reduce range(40) as $i (0; [., .]) | tostring | length > 0"
    )));
    // Roomy time: on a loaded machine the time budget could end it first.
    let roomy = |f: &Filter| {
        let limits = Limits {
            time: std::time::Duration::from_secs(60),
            ..Limits::default()
        };
        let never = AtomicBool::new(false);
        (f.matches_within(&obs("HH"), &Val::Null, &never, limits))
            .unwrap_err()
            .to_string()
    };
    let f = Filter::compile("reduce range(20000) as $i (0; [.]) | tojson").unwrap();
    let e = roomy(&f);
    assert!(e.contains("nested deeper than 10000"), "{e}");
    // Paths of a deep value: N paths of up to N elements each.
    for code in [
        "reduce range(30000) as $i (0; [.]) | [paths] | length > 0",
        "reduce range(30000) as $i (0; [.]) | walk(.) | true",
        "reduce range(60) as $i (0; [., .]) | [paths] | length > 0",
        "reduce range(60) as $i (0; [., .]) | walk(.) | true",
    ] {
        budget_error(code);
    }
    // jaq-json's parser would recurse to the end of the stack.
    let f = Filter::compile(r#""[" * 100000 | fromjson"#).unwrap();
    let e = roomy(&f);
    assert!(e.contains("recursion limit"), "{e}");
}

#[test]
fn deep_values_are_dropped_and_compared_safely() {
    // Built within the budget, then dropped and compared recursively by jaq.
    let f = Filter::compile("reduce range(30000) as $i (0; [.]) | . == [.[0]]").unwrap();
    // Room on the clock for a debug build on a loaded machine: what is
    // tested is that nothing overflows.
    let roomy = Limits {
        time: std::time::Duration::from_secs(30),
        ..Limits::default()
    };
    let never = AtomicBool::new(false);
    assert!(
        f.matches_within(&obs("HH"), &Val::Null, &never, roomy)
            .unwrap()
    );
}

#[test]
fn tojson_tostring_and_fromjson_still_work() {
    for code in [
        r#"{a: [1, "x", null]} | tojson == "{\"a\":[1,\"x\",null]}""#,
        r#"{a: 1} | tostring == "{\"a\":1}""#,
        r#""ab" | tostring == "ab""#,
        r#"[1, 2] | "\(.)" == "[1,2]""#,
        r#""[1, {\"a\": 2}] 3" | [fromjson] == [[1, {"a": 2}], 3]"#,
        r#"(try ("{" | fromjson) catch "caught") == "caught""#,
        r#"[range(5)] == [0, 1, 2, 3, 4] and [range(0; 1; 0.25)] == [0, 0.25, 0.5, 0.75]"#,
        r#"[range(3; 0; -1)] == [3, 2, 1]"#,
        r#"{a: [1, {b: 2}]} | [paths] == [["a"], ["a", 0], ["a", 1], ["a", 1, "b"]]"#,
        r#"path(.a[0].b) == ["a", 0, "b"]"#,
        r#"{a: [1, "x"]} | [paths(type == "number")] == [["a", 0]]"#,
        r#"{a: [1, {b: 2}]} | walk(if type == "number" then . + 1 else . end) == {a: [2, {b: 3}]}"#,
        r#"[[3, 1], [2]] | walk(if type == "array" then sort else . end) == [[1, 3], [2]]"#,
        r#"{a: 1, b: 2} | del(.a) == {b: 2}"#,
    ] {
        let f = Filter::compile(code).unwrap();
        assert!(f.matches(&obs("HH")).unwrap(), "{code}");
    }
}

#[test]
fn hostile_filters_compile_quickly() {
    let start = std::time::Instant::now();
    for code in [
        "def f: f; f",
        "def f: 1 + f; f",
        "[range(1e9)] | length > 0",
        r#"reduce range(64) as $i ("x"; . + .)"#,
        "def a: 1; def b: a, a; def c: b, b; def d: c, c; def e: d, d; def f: e, e; [f] | length",
    ] {
        Filter::compile(code).unwrap();
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn runtime_error_messages_are_bounded() {
    let f = Filter::compile(r#"error("x" * 1000000)"#).unwrap();
    let e = f.matches(&obs("HH")).unwrap_err().to_string();
    assert!(e.len() < 400, "{}", e.len());
    let f = Filter::compile("reduce range(60) as $i (0; [., .]) | error").unwrap();
    let e = f.matches(&obs("HH")).unwrap_err().to_string();
    assert!(e.ends_with("..."), "{e}");
}

#[test]
fn a_budget_error_is_for_that_resource_only() {
    let f = Filter::compile(r#"if .id == "loop" then (def f: f; f) else true end"#).unwrap();
    let looping = parse_resource(r#"{"resourceType":"Observation","id":"loop"}"#).unwrap();
    assert!(matches!(f.matches(&looping), Err(FilterError::Budget(_))));
    assert!(f.matches(&obs("HH")).unwrap());
}

#[test]
fn the_evaluation_stack_is_reused_nests_and_passes_panics_on() {
    let depth_ok = with_eval_stack(|| with_eval_stack(|| 1 + 1));
    assert_eq!(depth_ok, 2);
    let caught = std::panic::catch_unwind(|| with_eval_stack(|| panic!("inside")));
    assert!(caught.is_err());
    // Still usable after a panic on it, and deep native recursion fits.
    let f = Filter::compile("reduce range(30000) as $i (0; [.]) | true").unwrap();
    // What is tested is the stack: the time budget gets room for a debug
    // build on a loaded machine (100 ms was missed under parallel tests).
    let roomy = Limits {
        time: std::time::Duration::from_secs(30),
        ..Limits::default()
    };
    let never = AtomicBool::new(false);
    for _ in 0..3 {
        assert!(
            with_eval_stack(|| f.matches_within(&obs("HH"), &Val::Null, &never, roomy)).unwrap()
        );
    }
}
