//! Live reload (SIGHUP) and systemd's notify protocol, against the real
//! binary: a reload applies the config diff while deliveries are in flight
//! (nothing lost, nothing duplicated under another id, unchanged hooks never
//! paused), an invalid config is refused and the old one keeps running, and
//! the watchdog is pinged only while every task makes progress.

use crate::common;

use common::{Bridge, wait_for};
use fhir_bridge::sandbox::{Behaviour, FhirSandbox, Receiver};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn config(base: &str, hooks: &str) -> String {
    format!(
        "state_dir = \"state\"\n\n[[source]]\nname = \"ehr\"\nbase_url = \"{base}\"\nresources = [\"Observation\"]\nevery = \"300ms\"\noverlap = \"5s\"\nstart = \"beginning\"\ntimeout = \"2s\"\n\n{hooks}"
    )
}

fn hook(name: &str, url: &str, extra: &str) -> String {
    format!("[[hook]]\nname = \"{name}\"\nurl = \"{url}\"\nretry_schedule = [\"1s\"]\n{extra}\n")
}

/// resource id -> message ids it arrived under, for one hook.
fn ids_on(rx: &Receiver, hook: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rx
        .received()
        .iter()
        .filter(|r| r.path == format!("/hooks/{hook}"))
    {
        m.entry(r.resource_id.clone())
            .or_default()
            .insert(r.message_id.clone());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_diff_while_deliveries_are_in_flight() {
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    // Deliveries to `changing` take a while: some are in flight at the reload.
    rx.set_behaviour_for(
        "/hooks/changing",
        Behaviour::Stall(Duration::from_millis(300)),
    );
    // `removed` never accepts: its messages are pending when it goes.
    rx.set_behaviour_for("/hooks/removed", Behaviour::Status(503));
    let before = hook("steady", &rx.url("hooks/steady"), "")
        + &hook("changing", &rx.url("hooks/changing"), "concurrency = 4")
        + &hook("removed", &rx.url("hooks/removed"), "");
    let after = hook("steady", &rx.url("hooks/steady"), "")
        + &hook("changing", &rx.url("hooks/changing"), "concurrency = 2")
        + &hook("added", &rx.url("hooks/added"), "");
    let mut bridge = Bridge::start(&config(&fhir.base_url(), &before));

    const WRITES: usize = 120;
    let store = fhir.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..WRITES {
            common::store_observation(&store, &format!("o{i:03}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(bridge.config_path(), config(&fhir.base_url(), &after)).unwrap();
    bridge.sighup();
    let reloaded_at = chrono::Utc::now();
    wait_for(10, "the reload applied", || {
        bridge.logs().contains("reload applied")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A config that does not load is refused; the running one carries on.
    std::fs::write(bridge.config_path(), "this is [not toml").unwrap();
    bridge.sighup();
    wait_for(10, "the bad reload refused", || {
        bridge.logs().contains("reload refused")
    })
    .await;
    writer.await.unwrap();

    wait_for(30, "every write delivered to steady and changing", || {
        ids_on(&rx, "steady").len() == WRITES && ids_on(&rx, "changing").len() == WRITES
    })
    .await;
    let logs = bridge.logs();
    assert!(logs.contains("sources +0 -0 ~0, hooks +1 -1 ~1"), "{logs}");
    for h in ["steady", "changing"] {
        for (resource, ids) in ids_on(&rx, h) {
            assert_eq!(ids.len(), 1, "{h}: {resource} arrived under {ids:?}");
        }
    }
    // `steady` never paused: no gap in its deliveries while writes went on.
    let mut times: Vec<_> = rx
        .received()
        .iter()
        .filter(|r| r.path == "/hooks/steady")
        .map(|r| r.received_at)
        .collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .max()
        .unwrap_or(0);
    assert!(gap < 1500, "steady paused for {gap} ms");
    eprintln!(
        "reload: {WRITES} writes; steady {} POSTs (largest gap {gap} ms), changing {} POSTs, added {} resources",
        times.len(),
        rx.received()
            .iter()
            .filter(|r| r.path == "/hooks/changing")
            .count(),
        ids_on(&rx, "added").len()
    );
    // The added hook gets what changed after the reload.
    let added = ids_on(&rx, "added");
    assert!(!added.is_empty(), "the added hook got nothing");
    assert!(
        rx.received()
            .iter()
            .filter(|r| r.path == "/hooks/added")
            .all(|r| r.received_at >= reloaded_at)
    );
    // The removed hook's messages wait, shown as orphaned (status reads
    // the config file: the running one again).
    std::fs::write(bridge.config_path(), config(&fhir.base_url(), &after)).unwrap();
    let st = bridge.status_json();
    let orphaned = st["orphaned_hooks"]
        .as_array()
        .and_then(|o| o.iter().find(|h| h["name"] == "removed"))
        .cloned()
        .unwrap_or_default();
    assert!(orphaned["pending"].as_i64().unwrap_or(0) > 0, "{st}");
    bridge.stop();
}

/// `NOTIFY_SOCKET` as systemd sets it: READY, STATUS and WATCHDOG arrive;
/// when a task wedges, the pings stop (and systemd would restart us).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_only_while_tasks_make_progress() {
    use std::os::unix::net::UnixDatagram;
    let fhir = FhirSandbox::start(0).await.unwrap();
    let rx = Receiver::start(0, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |wedge: &str| {
        let path = dir.path().join(format!("notify-{wedge}.sock"));
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut env = vec![
            ("NOTIFY_SOCKET", path.to_str().unwrap().to_string()),
            ("WATCHDOG_USEC", "2000000".to_string()),
        ];
        if !wedge.is_empty() {
            env.push(("FHIR_BRIDGE_TEST_WEDGE", wedge.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let bridge = Bridge::start_with_env(
            &config(&fhir.base_url(), &hook("all", &rx.url("hooks/all"), "")),
            &env,
        );
        (bridge, sock)
    };
    // (seconds since start, message) for `secs` seconds.
    let listen = |sock: &UnixDatagram, secs: u64| {
        let start = std::time::Instant::now();
        let mut got = vec![];
        let mut buf = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(secs) {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push((
                    start.elapsed().as_secs_f64(),
                    String::from_utf8_lossy(&buf[..n]).to_string(),
                ));
            }
        }
        got
    };

    let (mut healthy, sock) = run("");
    let got = tokio::task::spawn_blocking(move || listen(&sock, 5))
        .await
        .unwrap();
    healthy.stop();
    assert!(got.iter().any(|(_, m)| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter()
            .any(|(_, m)| m.contains("STATUS=running: 1 sources, 1 hooks")),
        "{got:?}"
    );
    let pings = got.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 3,
        "{pings} pings in 5 s at a 2 s watchdog: {got:?}"
    );

    // The source's task hangs after its first polls; it is overdue ~10 s
    // later, and from then on nothing pings.
    let (mut wedged, sock) = run("ehr");
    let got = tokio::task::spawn_blocking(move || listen(&sock, 18))
        .await
        .unwrap();
    let logs = wedged.logs();
    wedged.stop();
    let last_ping = got
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    assert!(last_ping > 0.0, "never pinged: {got:?}");
    assert!(
        last_ping < 14.0,
        "still pinging at {last_ping:.1} s: {got:?}"
    );
    assert!(
        got.iter()
            .any(|(_, m)| m.contains("STATUS=wedged: source ehr")),
        "{got:?}"
    );
    assert!(logs.contains("no progress"), "{logs}");
}
