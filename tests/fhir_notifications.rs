//! FHIR-native notifications end to end: R4 backport and R5 bundles from the
//! real binary, polled from Medplum (a third-party FHIR server), checked
//! against the backport IG's rules and by Medplum's validator; event numbers
//! across kill -9 and redrive; heartbeats; `$status` and `$events` filling a
//! gap.

mod common;

use common::scenarios::observation;
use common::validator::validate_r4_on;
use common::{Bridge, FhirServer, config_for, hook, wait_for};
use fhir_bridge::sandbox::{Behaviour, Received, Receiver};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// One notification as a receiver reads it (R4 backport or R5).
#[derive(Debug, Clone)]
struct Note {
    kind: String,
    status: String,
    events_since_start: i64,
    /// (event number, focus reference) per notification-event.
    events: Vec<(i64, Option<String>)>,
    bundle: Value,
}

fn parse(bundle: &Value) -> Note {
    let status = &bundle["entry"][0]["resource"];
    let num = |v: &Value| v.as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
    if status["resourceType"] == "SubscriptionStatus" {
        let events = status["notificationEvent"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            num(&e["eventNumber"]),
                            e["focus"]["reference"].as_str().map(String::from),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Note {
            kind: status["type"].as_str().unwrap_or("").into(),
            status: status["status"].as_str().unwrap_or("").into(),
            events_since_start: num(&status["eventsSinceSubscriptionStart"]),
            events,
            bundle: bundle.clone(),
        };
    }
    assert_eq!(
        status["resourceType"], "Parameters",
        "first entry is the status: {bundle}"
    );
    let params = status["parameter"].as_array().cloned().unwrap_or_default();
    let value = |name: &str, key: &str| {
        params
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p[key].clone())
            .unwrap_or(Value::Null)
    };
    let events = params
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| {
            let parts = p["part"].as_array().cloned().unwrap_or_default();
            let part = |name: &str| parts.iter().find(|x| x["name"] == name).cloned();
            let number = part("event-number")
                .map(|x| num(&x["valueString"]))
                .unwrap_or(-1);
            let focus = part("focus")
                .and_then(|x| x["valueReference"]["reference"].as_str().map(String::from));
            (number, focus)
        })
        .collect();
    Note {
        kind: value("type", "valueCode").as_str().unwrap_or("").into(),
        status: value("status", "valueCode").as_str().unwrap_or("").into(),
        events_since_start: num(&value("events-since-subscription-start", "valueString")),
        events,
        bundle: bundle.clone(),
    }
}

fn notes(rx: &Receiver, hook: &str) -> Vec<Note> {
    rx.received()
        .iter()
        .filter(|r: &&Received| r.path == format!("/hooks/{hook}"))
        .map(|r| parse(&r.body))
        .collect()
}

fn event_numbers(notes: &[Note]) -> Vec<i64> {
    let mut n: Vec<i64> = notes
        .iter()
        .filter(|n| n.kind == "event-notification")
        .flat_map(|n| n.events.iter().map(|e| e.0))
        .collect();
    n.sort();
    n
}

fn distinct(numbers: &[i64]) -> BTreeSet<i64> {
    numbers.iter().copied().collect()
}

/// A free port on 127.0.0.1 for the admin listener.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn fhir_hook(name: &str, rx: &Receiver, extra: &str) -> String {
    hook(
        name,
        &rx.url(&format!("hooks/{name}")),
        "true",
        &format!("retry_schedule = [\"1s\"]\nmax_attempts = 1000\n{extra}"),
    )
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Each format and content mode on one source: a handshake first, then
/// consecutive event numbers; what each content mode carries; every R4
/// bundle valid for Medplum's validator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_backport_ig_in_each_format_and_content_mode() {
    let fhir = FhirServer::medplum("cursor");
    let rx = Receiver::start(0, None).await.unwrap();
    let r4 = "format = \"fhir-backport-r4\"";
    let hooks = [
        fhir_hook("full", &rx, r4),
        fhir_hook("ids", &rx, &format!("{r4}\ncontent = \"id-only\"")),
        fhir_hook("empty", &rx, &format!("{r4}\ncontent = \"empty\"")),
        fhir_hook("batched", &rx, &format!("{r4}\nmax_events_per_bundle = 20")),
        fhir_hook("r5", &rx, "format = \"fhir-r5\""),
    ]
    .concat();
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks)
        + &format!("\n[admin]\nlisten = \"{}\"\n", free_addr());
    let bridge = Bridge::start(&config);
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, _) = fhir
            .create(observation(if i % 2 == 0 { "H" } else { "N" }, "final"))
            .await;
        ids.push(id);
    }
    // The updates after the creates were read, or the bridge sees only the last version.
    wait_for(60, "6 events on full", || {
        distinct(&event_numbers(&notes(&rx, "full"))).len() == 6
    })
    .await;
    fhir.update(&ids[0], observation("HH", "amended")).await;
    fhir.update(&ids[1], observation("LL", "amended")).await;
    let all: Vec<i64> = (1..=8).collect();
    for h in ["full", "ids", "empty", "batched", "r5"] {
        wait_for(60, &format!("8 events on {h}"), || {
            distinct(&event_numbers(&notes(&rx, h))).len() == 8
        })
        .await;
    }
    for h in ["full", "ids", "empty", "batched", "r5"] {
        let got = notes(&rx, h);
        assert_eq!(got[0].kind, "handshake", "{h}: a handshake comes first");
        assert_eq!(got[0].status, "requested", "{h}");
        assert!(got[0].events.is_empty(), "{h}");
        assert_eq!(
            got.iter().filter(|n| n.kind == "handshake").count(),
            1,
            "{h}: one handshake"
        );
        let numbers = event_numbers(&got);
        assert_eq!(
            distinct(&numbers).into_iter().collect::<Vec<_>>(),
            all,
            "{h}: 1..=8, no gap"
        );
        for n in got.iter().skip(1) {
            assert_eq!(n.kind, "event-notification", "{h}");
            assert_eq!(n.status, "active", "{h}");
            let max = n.events.iter().map(|e| e.0).max().unwrap_or(0);
            assert!(
                n.events_since_start >= max,
                "{h}: events-since-subscription-start"
            );
            let order: Vec<i64> = n.events.iter().map(|e| e.0).collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "{h}: in event-number order"
            );
        }
    }
    // What each content mode carries.
    for n in notes(&rx, "full").iter().skip(1) {
        let entries = n.bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["resource"]["resourceType"], "Observation");
        assert_eq!(
            Some(entries[1]["fullUrl"].as_str().unwrap().to_string()),
            n.events[0].1
        );
    }
    for n in notes(&rx, "ids").iter().skip(1) {
        let e = &n.bundle["entry"][1];
        assert!(e.get("resource").is_none(), "id-only: no resource");
        assert!(e["fullUrl"].as_str().unwrap().contains("/Observation/"));
        assert!(e["request"]["method"].is_string());
    }
    for n in notes(&rx, "empty").iter().skip(1) {
        assert_eq!(
            n.bundle["entry"].as_array().unwrap().len(),
            1,
            "empty: the status only"
        );
        assert!(n.events.iter().all(|e| e.1.is_none()), "empty: no focus");
    }
    let batched = notes(&rx, "batched");
    assert!(
        batched.iter().any(|n| n.events.len() > 1),
        "some notification carries several events"
    );
    for n in notes(&rx, "r5").iter() {
        assert_eq!(
            n.bundle["entry"][0]["resource"]["resourceType"],
            "SubscriptionStatus"
        );
        let expected = if n.kind == "handshake" || n.kind == "event-notification" {
            "subscription-notification"
        } else {
            "history"
        };
        assert_eq!(n.bundle["type"], expected);
    }
    // A third-party validator agrees.
    for h in ["full", "ids", "empty", "batched"] {
        for n in notes(&rx, h) {
            if let Err(errors) = validate_r4_on(&fhir, &n.bundle).await {
                panic!("{h}: Medplum rejects {}: {errors:?}", n.bundle);
            }
        }
    }
    let status = bridge.status_json();
    for h in status["hooks"].as_array().unwrap() {
        assert_eq!(h["subscription"]["status"], "active", "{h}");
        assert_eq!(h["events"], 8, "{h}");
    }
}

/// Event numbers stay consecutive across kill -9 and a redrive: a re-sent
/// notification carries the number it had, and nothing is numbered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_numbers_survive_kill9_and_redrive() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = fhir_hook(
        "h",
        &rx,
        "format = \"fhir-backport-r4\"\ncontent = \"id-only\"",
    );
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks);
    let mut bridge = Bridge::start(&config);
    for _ in 0..3 {
        fhir.create(observation("N", "final")).await;
    }
    wait_for(30, "events 1..=3", || {
        distinct(&event_numbers(&notes(&rx, "h"))).len() == 3
    })
    .await;
    bridge.kill9();
    for _ in 0..3 {
        fhir.create(observation("N", "final")).await;
    }
    bridge.restart();
    wait_for(30, "events 1..=6", || {
        distinct(&event_numbers(&notes(&rx, "h"))).len() == 6
    })
    .await;
    // The receiver refuses the next two: dead-lettered at once (400).
    rx.set_behaviour(Behaviour::Status(400));
    for _ in 0..2 {
        fhir.create(observation("N", "final")).await;
    }
    wait_for(30, "two dead letters", || {
        bridge.status_json()["hooks"][0]["dead_lettered"] == 2
    })
    .await;
    rx.set_behaviour(Behaviour::Accept);
    let out = bridge.cli(&["dlq", "redrive", "--hook", "h", "--all", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(30, "events 1..=8", || {
        distinct(&event_numbers(&notes(&rx, "h"))).len() == 8
    })
    .await;
    let got = notes(&rx, "h");
    assert_eq!(
        distinct(&event_numbers(&got))
            .into_iter()
            .collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // A duplicate (at least once) is the same notification: same id, same number.
    let mut by_id = std::collections::HashMap::new();
    for n in &got {
        if let Some(id) = n.bundle["id"].as_str() {
            let prev = by_id.insert(id.to_string(), n.events.clone());
            if let Some(prev) = prev {
                assert_eq!(prev, n.events, "a re-sent notification keeps its numbers");
            }
        }
    }
    assert_eq!(
        got.iter().filter(|n| n.kind == "handshake").count(),
        1,
        "restarts do not handshake again"
    );
}

/// A heartbeat arrives when nothing else was sent for `heartbeat_period`,
/// and never sooner after another notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_come_when_idle_and_not_when_busy() {
    let fhir = FhirServer::sandbox().await;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = fhir_hook(
        "h",
        &rx,
        "format = \"fhir-backport-r4\"\nheartbeat_period = \"2s\"",
    );
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks);
    let _bridge = Bridge::start(&config);
    let kinds =
        |rx: &Receiver| -> Vec<String> { notes(rx, "h").into_iter().map(|n| n.kind).collect() };
    wait_for(30, "two heartbeats while idle", || {
        kinds(&rx).iter().filter(|k| *k == "heartbeat").count() >= 2
    })
    .await;
    // Busy: a change every 300 ms for 4 s.
    for _ in 0..13 {
        fhir.create(observation("N", "final")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(30, "13 events", || {
        distinct(&event_numbers(&notes(&rx, "h"))).len() == 13
    })
    .await;
    let got: Vec<Received> = rx.received();
    for (i, r) in got.iter().enumerate().skip(1) {
        if parse(&r.body).kind == "heartbeat" {
            let gap = r.received_at - got[i - 1].received_at;
            assert!(
                gap >= chrono::Duration::milliseconds(1_000),
                "a heartbeat {gap} after the notification before it"
            );
        }
    }
    let first = kinds(&rx);
    assert_eq!(first[0], "handshake");
}

/// `$status` and `$events`: a receiver that dropped notifications 3 and 4
/// sees the gap in event numbers and fills it from `$events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fill_a_gap_the_receiver_noticed() {
    let fhir = FhirServer::medplum("cursor");
    let rx = Receiver::start(0, None).await.unwrap();
    let admin = free_addr();
    let hooks = fhir_hook("h", &rx, "format = \"fhir-backport-r4\"");
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks)
        + &format!("\n[admin]\nlisten = \"{admin}\"\n");
    let _bridge = Bridge::start(&config);
    for _ in 0..6 {
        fhir.create(observation("N", "final")).await;
    }
    wait_for(60, "events 1..=6", || {
        distinct(&event_numbers(&notes(&rx, "h"))).len() == 6
    })
    .await;
    // The receiver "lost" 3 and 4 (acknowledged, then dropped).
    let kept: Vec<Note> = notes(&rx, "h")
        .into_iter()
        .filter(|n| !n.events.iter().any(|e| e.0 == 3 || e.0 == 4))
        .collect();
    let seen = distinct(&event_numbers(&kept));
    let missing: Vec<i64> = (1..=*seen.last().unwrap())
        .filter(|n| !seen.contains(n))
        .collect();
    assert_eq!(missing, [3, 4]);
    let handshake = &notes(&rx, "h")[0];
    let subscription =
        handshake.bundle["entry"][0]["resource"]["parameter"][0]["valueReference"]["reference"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(subscription, format!("http://{admin}/hooks/h"));
    let (code, status) = get_json(&format!("{subscription}/$status")).await;
    assert_eq!(code, 200);
    let status = parse(&status);
    assert_eq!(
        (status.kind.as_str(), status.status.as_str()),
        ("query-status", "active")
    );
    assert_eq!(status.events_since_start, 6);
    let (code, filled) = get_json(&format!(
        "{subscription}/$events?eventsSinceNumber={}&eventsUntilNumber={}",
        missing[0], missing[1]
    ))
    .await;
    assert_eq!(code, 200);
    if let Err(errors) = validate_r4_on(&fhir, &filled).await {
        panic!("Medplum rejects the $events bundle: {errors:?}");
    }
    let filled = parse(&filled);
    assert_eq!(filled.kind, "query-event");
    let lost: Vec<(i64, Option<String>)> = notes(&rx, "h")
        .into_iter()
        .flat_map(|n| n.events)
        .filter(|e| e.0 == 3 || e.0 == 4)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(filled.events, lost, "the same events, numbers and focus");
    // Bad requests get an OperationOutcome, an unknown hook a 404.
    let (code, oo) = get_json(&format!("{subscription}/$events?eventsSinceNumber=x")).await;
    assert_eq!(
        (code, oo["resourceType"].as_str()),
        (400, Some("OperationOutcome"))
    );
    let (code, _) = get_json(&format!("http://{admin}/hooks/nope/$status")).await;
    assert_eq!(code, 404);
}
