//! The operator's command line against the real binary: `status` exit codes
//! for monitors (0 OK, 1 warning, 2 critical), `dlq` filters and `show`,
//! `replay` of delivered messages under their message_ids (by time, or from
//! an event number), completions.

mod common;

use common::{Bridge, FhirServer, hook_of, wait_for};
use fhir_bridge::sandbox::{Behaviour, Receiver};
use serde_json::{Value, json};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_fhir-bridge");

fn obs(note: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "note": [{"text": note}]})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
}

fn dlq(b: &Bridge, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["dlq", "list", "--json"];
    args.extend(filters);
    json_of(&b.cli(&args))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// 0 while all is well; 1 once the daemon is stopped (a warning: the outbox
/// keeps everything); 2 with dead letters (critical). Then the dead letters
/// by filter, one shown (its payload only when asked), one purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exit_codes_and_dlq_filters() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    rx.set_behaviour_for("/hooks/bad", Behaviour::Status(503));
    let hooks = common::hook("good", &rx.url("hooks/good"), "true", "")
        + &common::hook("bad", &rx.url("hooks/bad"), "true", "max_attempts = 1");
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    wait_for(15, "status OK (exit 0)", || {
        bridge.cli(&["status"]).status.code() == Some(0)
    })
    .await;
    assert_eq!(bridge.status_json()["level"], "ok");

    bridge.stop();
    let out = bridge.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("WARNING   daemon: not running"));
    let st = bridge.status_json();
    assert_eq!(
        (st["level"].as_str(), st["healthy"].as_bool()),
        (Some("warning"), Some(false))
    );

    bridge.restart();
    let (id1, _) = fhir.create(obs("phi-marker-one")).await;
    let (id2, _) = fhir.create(obs("phi-marker-two")).await;
    wait_for(15, "two dead letters", || dlq(&bridge, &[]).len() == 2).await;
    let out = bridge.cli(&["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stdout).starts_with("fhir-bridge status: CRITICAL"));
    assert!(!text(&out.stdout).contains('\x1b'), "no colour into a pipe");
    let st = bridge.status_json();
    assert_eq!(st["level"], "critical");
    assert!(
        st["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["level"] == "critical" && p["subject"] == "hook bad"),
        "{st:#}"
    );

    // Filters.
    let res1 = format!("Observation/{id1}");
    let one = dlq(&bridge, &["--resource", &res1]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["resource_id"], id1.as_str());
    assert_eq!(dlq(&bridge, &["--resource", "Observation"]).len(), 2);
    assert_eq!(dlq(&bridge, &["--resource", "Patient"]).len(), 0);
    assert_eq!(dlq(&bridge, &["--source", "ehr", "--since", "1h"]).len(), 2);
    assert_eq!(dlq(&bridge, &["--source", "other"]).len(), 0);
    assert_eq!(dlq(&bridge, &["--since", "2099-01-01T00:00:00Z"]).len(), 0);
    assert_eq!(dlq(&bridge, &["--hook", "good"]).len(), 0);
    let out = bridge.cli(&["dlq", "list", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );

    // show: metadata without PHI; the payload only with --payload.
    let row = one[0]["id"].to_string();
    let shown = stdout(&bridge.cli(&["dlq", "show", &row]));
    for want in [
        "hook          bad",
        "state         dead",
        "attempts      1",
        "last status   503",
        &format!("resource      {res1}"),
        "bytes stored (--payload prints it; it contains PHI)",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    assert!(!shown.contains("phi-marker"), "{shown}");
    let mid = one[0]["message_id"].as_str().unwrap();
    let with = stdout(&bridge.cli(&["dlq", "show", mid, "--payload"]));
    assert!(with.contains("phi-marker-one"), "{with}");
    let as_json = json_of(&bridge.cli(&["dlq", "show", mid, "--json", "--payload"]));
    assert_eq!(as_json[0]["payload"]["message_id"], mid);
    let out = bridge.cli(&["dlq", "show", "no-such-message"]);
    assert_eq!(out.status.code(), Some(2));

    // purge by resource: no terminal, so no question; it says what it did.
    let out = stdout(&bridge.cli(&["dlq", "purge", "--resource", &res1]));
    assert!(out.contains("deleted 1 message(s)"), "{out}");
    let left = dlq(&bridge, &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["resource_id"], id2.as_str());
    bridge.stop();
}

/// A delivered message, replayed, arrives again with its message_id: as
/// the same id-only notification for an id-only hook; for a full-resource
/// hook (whose payload was deleted on delivery) only with --id-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_delivered_messages_with_their_message_ids() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = common::hook("ids", &rx.url("hooks/ids"), "true", "content = \"id-only\"")
        + &common::hook("full", &rx.url("hooks/full"), "true", "");
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    let (id, version) = fhir.create(obs("replayed")).await;
    wait_for(15, "both hooks delivered", || {
        let st = bridge.status_json();
        hook_of(&st, "ids")["delivered"] == 1 && hook_of(&st, "full")["delivered"] == 1
    })
    .await;
    let first = rx.received();
    assert_eq!(first.len(), 2);
    let original = |path: &str| {
        first
            .iter()
            .find(|r| r.path == path)
            .cloned()
            .expect("delivered")
    };
    let (ids0, full0) = (original("/hooks/ids"), original("/hooks/full"));
    assert_eq!(full0.body["resourceIncluded"], true);

    // The full-resource payload is gone: nothing is sent without --id-only.
    let out = stdout(&bridge.cli(&["replay", "--hook", "full", "--since", "1h"]));
    assert!(out.contains("requeued 0 of 1"), "{out}");
    assert!(out.contains("1 message(s) cannot be replayed"), "{out}");
    let out = stdout(&bridge.cli(&["replay", "--hook", "ids", "--since", "2099-01-01T00:00:00Z"]));
    assert!(out.contains("requeued 0 of 0"), "{out}");

    let out = stdout(&bridge.cli(&["replay", "--hook", "ids", "--since", "1h"]));
    assert!(out.contains("requeued 1 of 1"), "{out}");
    wait_for(15, "the id-only replay", || rx.count() == 3).await;
    let again = rx.received().pop().unwrap();
    assert_eq!(
        (again.path.as_str(), again.message_id.as_str()),
        ("/hooks/ids", ids0.message_id.as_str())
    );
    assert_eq!(again.body, ids0.body, "the same id-only notification");

    let res = format!("Observation/{id}");
    let out = stdout(&bridge.cli(&[
        "replay",
        "--hook",
        "full",
        "--since",
        "1h",
        "--resource",
        &res,
        "--id-only",
        "--yes",
    ]));
    assert!(out.contains("requeued 1 of 1"), "{out}");
    wait_for(15, "the full hook's replay", || rx.count() == 4).await;
    let again = rx.received().pop().unwrap();
    assert_eq!(again.path, "/hooks/full");
    assert_eq!(again.message_id, full0.message_id, "same message_id");
    assert_eq!(again.body["resourceIncluded"], false);
    assert_eq!(again.body["resourceId"], res.as_str());
    assert_eq!(again.body["versionId"], version.as_str());
    assert!(again.body.get("resource").is_none());
    wait_for(15, "delivered again", || {
        hook_of(&bridge.status_json(), "full")["delivered"] == 1
    })
    .await;
    let out = bridge.cli(&["replay", "--hook", "nosuch", "--since", "1h"]);
    assert_eq!(out.status.code(), Some(2));
    bridge.stop();
}

/// `replay --from-event N`: the hook's messages numbered N or later are sent
/// again under their message_ids, and keep their event numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_an_event_number_resends_the_later_events() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = common::hook("ids", &rx.url("hooks/ids"), "true", "content = \"id-only\"");
    let mut bridge = Bridge::start(&common::config(
        &fhir.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    for i in 1..=3 {
        fhir.create(obs(&format!("event {i}"))).await;
    }
    wait_for(15, "three delivered", || {
        hook_of(&bridge.status_json(), "ids")["delivered"] == 3
    })
    .await;
    let number_of = |mid: &str| {
        json_of(&bridge.cli(&["dlq", "show", mid, "--json"]))[0]["event_number"].as_i64()
    };
    let mut numbered: Vec<_> = rx
        .received()
        .iter()
        .map(|r| (number_of(&r.message_id), r.message_id.clone()))
        .collect();
    numbered.sort();
    let numbers: Vec<_> = numbered.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [Some(1), Some(2), Some(3)]);

    let out = stdout(&bridge.cli(&["replay", "--hook", "ids", "--from-event", "2"]));
    assert!(out.contains("requeued 2 of 2"), "{out}");
    assert!(out.contains("from event 2"), "{out}");
    wait_for(15, "events 2 and 3 again", || rx.count() == 5).await;
    let mut again: Vec<_> = rx.received()[3..]
        .iter()
        .map(|r| r.message_id.clone())
        .collect();
    again.sort();
    let mut want = vec![numbered[1].1.clone(), numbered[2].1.clone()];
    want.sort();
    assert_eq!(again, want, "the same message_ids");
    wait_for(15, "delivered again", || {
        hook_of(&bridge.status_json(), "ids")["delivered"] == 3
    })
    .await;
    assert_eq!(number_of(&numbered[2].1), Some(3), "the same number");
    let shown = stdout(&bridge.cli(&["dlq", "show", &numbered[1].1]));
    assert!(shown.contains("event number  2"), "{shown}");

    let out = stdout(&bridge.cli(&["replay", "--hook", "ids", "--from-event", "4"]));
    assert!(out.contains("requeued 0 of 0"), "{out}");
    let both = bridge.cli(&[
        "replay",
        "--hook",
        "ids",
        "--since",
        "1h",
        "--from-event",
        "1",
    ]);
    assert_eq!(both.status.code(), Some(2));
    bridge.stop();
}

#[test]
fn completions_help_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = stdout(&out);
        assert!(
            script.len() > 1000 && script.contains("fhir-bridge"),
            "{shell}"
        );
        assert!(
            // fish names a long option `-l watch`.
            script.contains("replay")
                && script.contains(if shell == "fish" {
                    "-l watch"
                } else {
                    "--watch"
                }),
            "{shell}"
        );
    }
    let out = Command::new(BIN)
        .args(["completions", "powershell"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let version = stdout(&Command::new(BIN).arg("--version").output().unwrap());
    let expected = format!("fhir-bridge {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version}");
    for cmd in [
        &["status"][..],
        &["dlq", "show"],
        &["replay"],
        &["dlq", "purge"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = stdout(&Command::new(BIN).args(&args).output().unwrap());
        assert!(help.contains("Example"), "{cmd:?}: {help}");
    }
}

/// `status` and `validate` by a user who may not read the config (the packaged
/// one is root:fhir-bridge 0640): the io error and what to do, exit 2, no panic.
/// As root (who reads everything) the command runs as `nobody` through `setpriv`.
#[test]
fn an_unreadable_config_says_what_to_do() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("private");
    std::fs::create_dir(&secret).unwrap();
    let config = secret.join("bridges.toml");
    std::fs::write(&config, "").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let as_root = std::fs::metadata(&config).unwrap().uid() == 0;
    for cmd in ["status", "validate"] {
        let mut command = if as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
            c
        } else {
            Command::new(BIN)
        };
        let out = command.arg(cmd).arg("-c").arg(&config).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("cannot read config: Permission denied"),
            "{cmd}: {err}"
        );
        assert!(err.contains("name another config with -c"), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
}

/// Without `-c`, a `./bridges.toml` that another user owns or every user may
/// write (a shared directory like /tmp) is not taken: it would choose where
/// changes go and which state is opened, as whoever runs the command. `-c`
/// takes it on purpose.
#[test]
fn a_local_config_another_user_could_have_written_is_not_taken_without_c() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridges.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/bridges.toml"),
        &config,
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("FHIR_BRIDGE_CONFIG")
            .output()
            .unwrap()
    };
    assert_eq!(run(&["validate"]).status.code(), Some(0));

    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("writable by every user (mode 0666)"));
    assert_eq!(run(&["status"]).status.code(), Some(2));
    assert_eq!(
        run(&["validate", "-c", "./bridges.toml"]).status.code(),
        Some(0)
    );

    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    if std::fs::metadata(&config).unwrap().uid() == 0 {
        let chown = Command::new("chown")
            .arg("65534")
            .arg(&config)
            .status()
            .unwrap();
        assert!(chown.success());
        let out = run(&["validate"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("belongs to another user (uid 65534)"));
    }
}
