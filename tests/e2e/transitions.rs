//! Transition filters against the real binary: `$previous` and named topics
//! on the sandbox EHR, and the `topics` and `test-filter` commands.

use crate::common;

use common::{Bridge, config, hook, wait_for};
use fhir_bridge::sandbox::{FhirSandbox, Receiver};
use serde_json::json;
use std::process::{Command, Output};

fn on(rx: &Receiver, path: &str) -> Vec<String> {
    rx.received()
        .iter()
        .filter(|r| r.path == path)
        .map(|r| {
            r.body["resource"]["status"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// Resources the daemon has read of one type, re-reads included.
fn reads(bridge: &Bridge, rt: &str) -> i64 {
    let status = bridge.status_json();
    status["sources"][0]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["resource_type"] == rt)
        .and_then(|t| t["resources_read"].as_i64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discharge_fires_once_and_a_plain_filter_sees_every_version() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = format!(
        "[[hook]]\nname = \"discharges\"\nurl = \"{}\"\ntopic = \"adt-discharge\"\n\n{}",
        rx.url("hooks/discharges"),
        hook(
            "encounters",
            &rx.url("hooks/encounters"),
            r#".resourceType == "Encounter""#,
            ""
        )
    );
    let mut bridge = Bridge::start(&config(
        &fhir.base_url(),
        &["Encounter", "Observation"],
        "beginning",
        &hooks,
    ));
    let encounter = |status: &str| json!({"resourceType": "Encounter", "status": status});
    for (i, status) in ["planned", "in-progress", "finished"].iter().enumerate() {
        fhir.store
            .upsert("Encounter", Some("e1"), encounter(status));
        wait_for(30, &format!("version {} delivered", i + 1), || {
            on(&rx, "/hooks/encounters").len() == i + 1
        })
        .await;
    }
    wait_for(30, "the discharge", || {
        on(&rx, "/hooks/discharges").len() == 1
    })
    .await;
    assert_eq!(on(&rx, "/hooks/discharges"), ["finished"]);
    assert_eq!(
        on(&rx, "/hooks/encounters"),
        ["planned", "in-progress", "finished"]
    );

    // Overlapping polls read the finished version again: nothing more.
    fhir.store
        .upsert("Observation", Some("o1"), json!({"status": "final"}));
    let before = reads(&bridge, "Encounter");
    wait_for(30, "three re-reads of the encounter", || {
        reads(&bridge, "Encounter") >= before + 3
    })
    .await;
    assert_eq!(on(&rx, "/hooks/discharges").len(), 1);
    assert_eq!(on(&rx, "/hooks/encounters").len(), 3);

    // Bodies are kept for Encounter alone (the topic's type), one per resource.
    wait_for(30, "the observation read", || {
        reads(&bridge, "Observation") >= 1
    })
    .await;
    bridge.stop();
    let db = rusqlite::Connection::open(bridge.dir.path().join("state/bridge.db")).unwrap();
    let kept: Vec<(String, String)> = db
        .prepare("SELECT resource_type, resource_id FROM seen_body")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, [("Encounter".to_string(), "e1".to_string())]);
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
        .args(args)
        .env_remove("FHIR_BRIDGE_CONFIG")
        .output()
        .expect("run fhir-bridge")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn test_filter_says_match_or_no_match_and_exits_2_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
    write(
        "bridges.toml",
        r#"
[[source]]
name = "ehr"
base_url = "http://127.0.0.1:9/fhir"
resources = ["Encounter"]
[[hook]]
name = "discharges"
url = "http://127.0.0.1:9/hooks"
topic = "adt-discharge"
[[hook]]
name = "broken"
url = "http://127.0.0.1:9/hooks"
filter = ".status + 1"
"#,
    );
    write(
        "v2.json",
        r#"{"resourceType": "Encounter", "status": "in-progress"}"#,
    );
    write(
        "v3.json",
        r#"{"resourceType": "Encounter", "status": "finished"}"#,
    );
    write("bad.json", "{\"resourceType\": ");
    let run = |hook: &str, resource: &str, previous: Option<&str>| {
        let mut args = vec!["test-filter", "-c", &*path("bridges.toml")]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(["--hook".into(), hook.into(), path(resource)]);
        if let Some(p) = previous {
            args.extend(["--previous".into(), path(p)]);
        }
        let out = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    assert_eq!(
        run("discharges", "v3.json", Some("v2.json")),
        (Some(0), "match\n".into(), String::new())
    );
    // Without --previous, `$previous` is null: a first sighting.
    assert_eq!(run("discharges", "v3.json", None).0, Some(0));
    assert_eq!(
        run("discharges", "v3.json", Some("v3.json")),
        (Some(1), "no match\n".into(), String::new())
    );
    let (code, out, err) = run("discharges", "bad.json", None);
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert!(
        err.starts_with(&format!("fhir-bridge: {}: not JSON: ", path("bad.json"))),
        "{err}"
    );
    let (code, _, err) = run("discharges", "v3.json", Some("missing.json"));
    assert_eq!(code, Some(2));
    assert!(err.contains("missing.json: cannot read"), "{err}");
    let (code, _, err) = run("broken", "v3.json", None);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("fhir-bridge: hook `broken`: filter error: "),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = run("nope", "v3.json", None);
    assert_eq!(code, Some(2));
    assert!(err.contains("no hook is named `nope`"), "{err}");
}

#[test]
fn topics_lists_every_topic_with_its_jq() {
    let out = cli(&["topics"]);
    assert_eq!(out.status.code(), Some(0));
    let listed = text(&out.stdout);
    for t in fhir_bridge::filter::topics::TOPICS {
        assert!(
            listed.contains(&format!("{} ({})", t.name, t.resource_type)),
            "{listed}"
        );
        for line in t.jq.lines() {
            assert!(listed.contains(line), "{} jq missing: {line}", t.name);
        }
    }
}

/// A backfill goes through the same pipeline: it keeps the bodies the
/// daemon's later polls take `$previous` from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_keeps_the_bodies_later_transitions_compare_with() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    let encounter = |status: &str, n: u32| json!({"resourceType": "Encounter", "status": status, "length": {"value": n}});
    let day_ago = chrono::Utc::now().timestamp_millis() - 86_400_000;
    fhir.store.freeze_clock(Some(day_ago));
    fhir.store
        .upsert("Encounter", Some("e1"), encounter("in-progress", 1));
    fhir.store
        .upsert("Encounter", Some("e2"), encounter("finished", 1));
    fhir.store.freeze_clock(None);
    let hooks = format!(
        "[[hook]]\nname = \"discharges\"\nurl = \"{}\"\ntopic = \"adt-discharge\"\n\n{}",
        rx.url("hooks/discharges"),
        hook("all", &rx.url("hooks/all"), "true", "")
    );
    // The daemon starts now: the past is the backfill's.
    let bridge = Bridge::start(&config(&fhir.base_url(), &["Encounter"], "now", &hooks));
    wait_for(20, "the daemon up", || {
        bridge.logs().contains("fhir-bridge started")
    })
    .await;
    let out = bridge.cli(&[
        "backfill",
        "--source",
        "ehr",
        "--since",
        "beginning",
        "--rate",
        "50",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids = |path: &str| -> Vec<String> {
        rx.received()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.resource_id.clone())
            .collect()
    };
    // e2 was finished when first seen: a discharge (a first sighting).
    wait_for(30, "the backfill delivered", || {
        ids("/hooks/all").len() == 2
    })
    .await;
    wait_for(30, "e2's discharge", || {
        ids("/hooks/discharges") == ["Encounter/e2"]
    })
    .await;

    // e1 finishes; e2 changes while staying finished: its previous is the
    // body the backfill kept, so it is not discharged again.
    fhir.store
        .upsert("Encounter", Some("e1"), encounter("finished", 2));
    fhir.store
        .upsert("Encounter", Some("e2"), encounter("finished", 2));
    wait_for(30, "both updates delivered", || {
        ids("/hooks/all").len() == 4
    })
    .await;
    wait_for(30, "every discharge message settled", || {
        let status = bridge.status_json();
        let h = status["hooks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h["name"] == "discharges")
            .cloned()
            .unwrap_or_default();
        h["pending"] == 0 && h["delivered"] == 2
    })
    .await;
    assert_eq!(ids("/hooks/discharges"), ["Encounter/e2", "Encounter/e1"]);
}
