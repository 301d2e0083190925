//! The collector of the gauges whose truth lives in the state (outbox and
//! dead-letter depth, oldest pending age, a hook disabled, watermark lag),
//! refreshed by one task every `REFRESH` with one read of the state for all
//! hooks and targets, on a read-only connection of its own (WAL: it never
//! waits for the writer, nor holds it up). Their names are
//! `telemetry::gauges`'.

use crate::config::Config;
use crate::fhir::parse_instant;
use crate::source::client::FhirClient;
use crate::state::{GaugeSnapshot, Store, now_ms};
use crate::telemetry::gauges::{
    DEAD_LETTERS, HOOK_DISABLED, OLDEST_PENDING_AGE, OUTBOX_PENDING, WATERMARK_LAG,
};
use chrono::Utc;
use metrics::{Gauge, gauge};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the gauges are read from the state (and histograms drained).
pub const REFRESH: Duration = Duration::from_secs(10);

struct HookGauges {
    pending: Gauge,
    dead: Gauge,
    oldest_age: Gauge,
    disabled: Gauge,
}

/// A resource type's lag gauge, and its source's view of the server's clock.
struct TargetGauge {
    lag: Gauge,
    clock: Option<FhirClient>,
    /// A fan-out source: the lag is that of its patient furthest behind.
    per_patient: bool,
}

/// The gauges of the configured hooks and targets; handles are made once, so
/// a refresh at ten thousand targets allocates no label strings.
pub struct Gauges {
    hook_names: Vec<String>,
    hooks: Vec<HookGauges>,
    /// source -> resource type -> gauge.
    targets: HashMap<String, HashMap<String, TargetGauge>>,
}

impl Gauges {
    /// `clocks`: each source's client, whose `server_now` is the EHR's clock
    /// as last seen (our own clock for a source not in it).
    pub fn new(config: &Config, clocks: &HashMap<String, FhirClient>) -> Gauges {
        let hooks = config
            .hooks
            .iter()
            .map(|h| {
                let g = |name: &'static str| gauge!(name, "hook" => h.name.clone());
                HookGauges {
                    pending: g(OUTBOX_PENDING),
                    dead: g(DEAD_LETTERS),
                    oldest_age: g(OLDEST_PENDING_AGE),
                    disabled: g(HOOK_DISABLED),
                }
            })
            .collect();
        let targets = config
            .sources
            .iter()
            .map(|s| {
                let per_type = s
                    .resources
                    .iter()
                    .map(|rt| {
                        let lag = gauge!(WATERMARK_LAG, "source" => s.name.clone(), "resource_type" => rt.clone());
                        let clock = clocks.get(&s.name).cloned();
                        let per_patient = s.fan_out.is_some();
                        (rt.clone(), TargetGauge { lag, clock, per_patient })
                    })
                    .collect();
                (s.name.clone(), per_type)
            })
            .collect();
        Gauges {
            hook_names: config.hooks.iter().map(|h| h.name.clone()).collect(),
            hooks,
            targets,
        }
    }

    /// Sets every gauge from one snapshot of the state.
    pub fn apply(&self, snap: &GaugeSnapshot) {
        let now = now_ms();
        for (g, d) in self.hooks.iter().zip(&snap.hooks) {
            g.pending.set(d.pending as f64);
            g.dead.set(d.dead as f64);
            let age = d.oldest_pending_at_ms.map_or(0, |at| (now - at).max(0));
            g.oldest_age.set(age as f64 / 1000.0);
            g.disabled.set(if d.disabled { 1.0 } else { 0.0 });
        }
        for t in &snap.targets {
            let Some(g) = self
                .targets
                .get(&t.source)
                .and_then(|m| m.get(&t.resource_type))
            else {
                // A target no longer in the config.
                continue;
            };
            if g.per_patient != t.per_patient {
                // A population-wide row left from before fan-out (or the
                // reverse): not what is polled now.
                continue;
            }
            let Some(watermark) = t.watermark.as_deref().and_then(parse_instant) else {
                continue;
            };
            let server_now = g
                .clock
                .as_ref()
                .and_then(|c| c.server_now())
                .unwrap_or_else(Utc::now);
            let lag = (server_now - watermark).num_milliseconds().max(0);
            g.lag.set(lag as f64 / 1000.0);
        }
    }
}

/// Refreshes the gauges now and every `REFRESH` until cancelled, and drains
/// the histograms (the exporter has no task of its own to do it).
pub async fn run(
    store: Store,
    gauges: Gauges,
    handle: PrometheusHandle,
    cancel: CancellationToken,
) {
    loop {
        match store.gauge_snapshot(gauges.hook_names.clone()).await {
            Ok(snap) => gauges.apply(&snap),
            Err(e) => tracing::warn!(error = %e, "cannot read the state for the metrics' gauges"),
        }
        handle.run_upkeep();
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
#[path = "gauges_tests.rs"]
mod tests;
