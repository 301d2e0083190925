//! Adversarial review of the admin listener, `source rename` and batched
//! deliveries (issue 17, items 5 and 14-19): cases not in admin.rs and
//! deliveries.rs.

use crate::common::hostile::r4_events;
use crate::common::store_observation as observation;
use crate::common::{Bridge, config, hook, wait_for};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One event notification as received: its webhook-id and event numbers.
type Notified = (String, Vec<i64>);

/// A receiver that answers 200, except that while `hold` is set it never
/// answers an event notification (a POST that is in flight for ever).
/// Records each event notification's webhook-id and event numbers.
#[derive(Clone, Default)]
struct HoldingReceiver {
    hold: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Notified>>>,
}

impl HoldingReceiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/h", listener.local_addr().unwrap());
        let me = self.clone();
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let me = me.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (kind, numbers) = r4_events(&body);
                if kind == "event-notification" {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    me.events.lock().unwrap().push((id, numbers));
                    if me.hold.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                }
                StatusCode::OK
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    fn events(&self) -> Vec<Notified> {
        self.events.lock().unwrap().clone()
    }
}

/// Item 17, a POST cut short (kill -9, or the shutdown grace over, while a
/// lone event is in flight): the receiver may have it. After the restart
/// that event goes again under the same webhook-id, alone, and does not join
/// a new batch (under an id the receiver never saw) with events written
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_event_cut_short_in_flight_keeps_its_webhook_id() {
    let receiver = HoldingReceiver::default();
    receiver.hold.store(true, Ordering::SeqCst);
    let url = receiver.start().await;
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    observation(&sandbox.store, "o1");
    let extra = "format = \"fhir-backport-r4\"\ncontent = \"id-only\"\nmax_events_per_bundle = 5\n\
                 concurrency = 1\ntimeout = \"60s\"";
    let hooks = hook("h", &url, "true", extra);
    let mut bridge = Bridge::start(&config(
        &sandbox.base_url(),
        &["Observation"],
        "beginning",
        &hooks,
    ));
    wait_for(30, "event 1 in flight", || !receiver.events().is_empty()).await;
    observation(&sandbox.store, "o2");
    observation(&sandbox.store, "o3");
    wait_for(30, "events 2 and 3 pending", || {
        bridge.status_json()["hooks"][0]["pending"] == 3
    })
    .await;
    bridge.kill9();
    receiver.hold.store(false, Ordering::SeqCst);
    bridge.restart();
    wait_for(60, "every event delivered", || {
        bridge.status_json()["hooks"][0]["delivered"] == 3
    })
    .await;
    let events = receiver.events();
    let (first_id, first_numbers) = events[0].clone();
    assert_eq!(first_numbers, [1], "{events:?}");
    for (id, numbers) in &events {
        if numbers.contains(&1) {
            assert_eq!(
                (id, numbers),
                (&first_id, &vec![1]),
                "event 1 went again under another webhook-id: {events:?}"
            );
        }
    }
    let mut numbers: Vec<i64> = events.iter().flat_map(|e| e.1.clone()).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers, [1, 2, 3], "{events:?}");
    bridge.stop();
}

/// Rows in the state's `backfill` table (read-only, beside the writers).
fn backfill_rows(bridge: &Bridge) -> i64 {
    let path = bridge.dir.path().join("state").join("bridge.db");
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT count(*) FROM backfill", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// Item 5: `source rename` while a `backfill` of the source runs (beside a
/// stopped daemon) is refused: the backfill would go on writing seen
/// versions, messages and its cursor under the old name, orphaned, and a
/// later backfill of the new name would send them again under new ids.
/// Once the backfill is gone, the rename goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_is_refused_while_a_backfill_runs() {
    let sandbox = fhir_bridge::sandbox::FhirSandbox::start(0).await.unwrap();
    for i in 0..40 {
        observation(&sandbox.store, &format!("o{i}"));
    }
    let receiver = HoldingReceiver::default();
    let url = receiver.start().await;
    let cfg = config(
        &sandbox.base_url(),
        &["Observation"],
        "now",
        &hook("h", &url, "true", ""),
    );
    let mut bridge = Bridge::start(&cfg);
    wait_for(30, "the first poll", || {
        bridge.logs().contains("poll ok source=ehr")
    })
    .await;
    bridge.stop();
    let mut backfill = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-bridge"))
        .args(["backfill", "--source", "ehr", "--since", "beginning"])
        .args(["--rate", "0.5", "-c"])
        .arg(bridge.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(30, "the backfill under way", || backfill_rows(&bridge) > 0).await;
    std::fs::write(
        bridge.config_path(),
        cfg.replace("name = \"ehr\"", "name = \"ehr2\""),
    )
    .unwrap();
    let during = bridge.cli(&["source", "rename", "ehr", "ehr2"]);
    let still_running = backfill.try_wait().unwrap().is_none();
    let _ = backfill.kill();
    let _ = backfill.wait();
    assert!(still_running, "the backfill ended before the rename");
    assert!(
        !during.status.success(),
        "renamed under a running backfill: {}",
        String::from_utf8_lossy(&during.stdout)
    );
    let e = String::from_utf8_lossy(&during.stderr);
    assert!(e.contains("backfill"), "{e}");
    let after = bridge.cli(&["source", "rename", "ehr", "ehr2"]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
}
