//! Slow hook isolation (reliability scenario 3), in its own test binary so that
//! no other test competes for the CPU while latencies are measured.

use crate::common;

use common::checker::converge;
use common::writer::Writer;
use common::{Bridge, FhirServer};
use fhir_bridge::sandbox::{Behaviour, Receiver};
use std::sync::Arc;
use std::time::Duration;

fn config(fhir: &str, hooks: &[(&str, String, &str)]) -> String {
    let mut t = format!(
        "state_dir = \"state\"\n[[source]]\nname = \"ehr\"\nbase_url = \"{fhir}\"\nresources = [\"Observation\"]\nevery = \"1s\"\nstart = \"beginning\"\n\n"
    );
    for (name, url, extra) in hooks {
        t += &format!("[[hook]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n\n");
    }
    t
}

fn p99_latency_ms(rx: &Receiver, path: &str) -> f64 {
    let mut lat: Vec<f64> = rx
        .received()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| {
            let lu = chrono::DateTime::parse_from_rfc3339(r.body["lastUpdated"].as_str()?).ok()?;
            Some((r.received_at - lu.to_utc()).num_milliseconds() as f64)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    lat.get(((lat.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// One hook takes 10 s per call; the other hook's p99 delivery latency stays
/// within 2x of a run without the slow hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_hook_does_not_delay_others() {
    let mut p99 = vec![];
    for with_slow in [false, true] {
        let fhir = Arc::new(FhirServer::medplum("cursor"));
        let rx = Receiver::start(0, None).await.unwrap();
        rx.set_behaviour_for("/hooks/slow", Behaviour::Stall(Duration::from_secs(10)));
        let mut hooks = vec![("fast", rx.url("hooks/fast"), "")];
        if with_slow {
            hooks.push((
                "slow",
                rx.url("hooks/slow"),
                "timeout = \"15s\"\nconcurrency = 4",
            ));
        }
        let mut bridge = Bridge::start(&config(&fhir.base_url(), &hooks));
        let writer = Writer::start(fhir.clone(), 20.0, 20261121);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let writes = writer.stop().await;
        converge(&rx, &writes, "/hooks/fast", |_| true, 30)
            .await
            .assert_ok("isolation/fast");
        p99.push(p99_latency_ms(&rx, "/hooks/fast"));
        bridge.kill9();
    }
    println!(
        "isolation: fast hook p99 {:.0} ms alone, {:.0} ms beside a 10 s/call hook",
        p99[0], p99[1]
    );
    assert!(
        p99[1] <= 2.0 * p99[0],
        "slow hook delayed the fast one: {p99:?}"
    );
}
