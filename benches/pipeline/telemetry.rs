//! What telemetry costs at 10,000 poll targets (release build): one
//! `PollCompleted` per poll, the exporter's upkeep, and one scrape of every
//! series.

use fhir_bridge::telemetry::Event;
use fhir_bridge::telemetry::source::PollCompleted;
use std::time::{Duration, Instant};

pub fn telemetry() {
    let recorder = fhir_bridge::telemetry::builder().build_recorder();
    let handle = recorder.handle();
    let targets: Vec<(String, String)> = (0..1000)
        .flat_map(|s| (0..10).map(move |t| (format!("source-{s}"), format!("Type{t}"))))
        .collect();
    let rounds = 5;
    let started = Instant::now();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..rounds {
            for (s, rt) in &targets {
                PollCompleted {
                    source: s,
                    resource_type: rt,
                    outcome: Ok(0),
                    duration: Duration::from_millis(3),
                    pages: 1,
                    resources: 2,
                }
                .emit();
            }
        }
    });
    let per_poll = started.elapsed() / (rounds * targets.len() as u32);
    let started = Instant::now();
    handle.run_upkeep();
    let upkeep = started.elapsed();
    let started = Instant::now();
    let text = handle.render();
    let render = started.elapsed();
    println!(
        "| telemetry | in-process | 10000 targets (1000 sources x 10 types), 5 polls each | {:.1} us per poll event; upkeep {:.1} ms; /metrics render {:.0} ms for {} lines ({} KB) |",
        per_poll.as_secs_f64() * 1e6,
        upkeep.as_secs_f64() * 1e3,
        render.as_secs_f64() * 1e3,
        text.lines().count(),
        text.len() / 1024
    );
}
