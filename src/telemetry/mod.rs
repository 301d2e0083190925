//! Telemetry: one struct per thing that happens (a poll completed, a delivery
//! attempted, a token refreshed ...), each with an `emit()` that writes its
//! log line and updates its metrics. Call sites say what happened and nothing
//! about how it is told, so a log line and its counter never drift apart.
//!
//! Metrics go to a Prometheus recorder, installed only when the `[admin]`
//! listener is on (`install`); without it the metric updates go to `metrics`'
//! no-op recorder and only the log lines remain. `/metrics` renders the text
//! from the handle (see `crate::admin`): the exporter runs no server of its own.
//!
//! Names follow Prometheus' conventions: `fhir_bridge_` prefix, counters end
//! in `_total`, durations are `_seconds`. Labels are configuration names
//! (source, hook), resource types and small fixed sets (outcome, kind,
//! status class): never ids, URLs or anything a server sent.

pub mod auth;
pub mod delivery;
pub mod gauges;
pub mod source;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Something that happened, told once: its log line and its metric updates.
pub trait Event {
    fn emit(self);
}

/// Every metric name the bridge defines (the dashboard and alert rules are
/// checked against it).
pub const ALL: &[&str] = &[
    source::POLLS,
    source::POLL_DURATION,
    source::PAGES,
    source::RESOURCES,
    source::CHANGES,
    source::FILTER_DECISIONS,
    source::FILTER_ERRORS,
    delivery::DELIVERIES,
    delivery::ATTEMPT_DURATION,
    delivery::DELIVERY_LATENCY,
    delivery::END_TO_END_LATENCY,
    delivery::ATTEMPTS_PER_MESSAGE,
    delivery::RETRIES,
    delivery::DEAD_LETTERED,
    delivery::CHANNEL_NOTIFICATIONS,
    auth::TOKEN_REFRESHES,
    gauges::OUTBOX_PENDING,
    gauges::DEAD_LETTERS,
    gauges::OLDEST_PENDING_AGE,
    gauges::HOOK_DISABLED,
    gauges::WATERMARK_LAG,
    gauges::BUILD_INFO,
    gauges::START_TIME,
];

/// Poll durations: a quiet target answers in milliseconds, a backlog poll
/// reads up to `max_pages_per_poll` pages.
const POLL_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0];
/// One HTTP attempt to a receiver (the hook's `timeout` is 15 s by default).
const ATTEMPT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];
/// Detection (or lastUpdated) to acknowledgement: a second when all is well,
/// up to hours through a receiver outage's retry schedule.
const LATENCY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];
const ATTEMPTS_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0, 50.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls return the
/// same handle) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed already (a test
            // that installed its own); the bridge's metrics then go there.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe_metrics();
            gauges::set_process_info();
            handle
        })
        .clone()
}

/// The recorder's configuration: true histograms (not summaries) for every
/// `_seconds` histogram and the attempts per message.
pub fn builder() -> PrometheusBuilder {
    let buckets = [
        (source::POLL_DURATION, POLL_BUCKETS),
        (delivery::ATTEMPT_DURATION, ATTEMPT_BUCKETS),
        (delivery::DELIVERY_LATENCY, LATENCY_BUCKETS),
        (delivery::END_TO_END_LATENCY, LATENCY_BUCKETS),
        (delivery::ATTEMPTS_PER_MESSAGE, ATTEMPTS_BUCKETS),
    ];
    let mut b = PrometheusBuilder::new();
    for (name, values) in buckets {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.to_string()), values)
            .expect("bucket lists are constants, never empty");
    }
    b
}

/// The HELP lines.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        source::POLLS,
        "Polls of one poll target, by outcome (ok or the kind of failure)"
    );
    describe_histogram!(
        source::POLL_DURATION,
        "How long one poll of one target took, all its pages"
    );
    describe_counter!(source::PAGES, "Search pages fetched");
    describe_counter!(
        source::RESOURCES,
        "Resources read from search pages (re-reads inside the overlap included)"
    );
    describe_counter!(
        source::CHANGES,
        "New resource versions committed, by kind (create, update)"
    );
    describe_counter!(
        source::FILTER_DECISIONS,
        "Changes a hook's filter kept (in) or dropped (out)"
    );
    describe_counter!(
        source::FILTER_ERRORS,
        "Filter evaluations that raised an error or went over budget (non-matches)"
    );
    describe_counter!(
        delivery::DELIVERIES,
        "Delivery attempts, by outcome (delivered, failed) and status class"
    );
    describe_histogram!(
        delivery::ATTEMPT_DURATION,
        "How long one delivery attempt (the POST) took"
    );
    describe_histogram!(
        delivery::DELIVERY_LATENCY,
        "From the change's entry into the outbox to its acknowledgement (2xx)"
    );
    describe_histogram!(
        delivery::END_TO_END_LATENCY,
        "From the resource's meta.lastUpdated (the EHR's clock) to its acknowledgement (2xx)"
    );
    describe_histogram!(
        delivery::ATTEMPTS_PER_MESSAGE,
        "Attempts a message took, when it was delivered or dead-lettered"
    );
    describe_counter!(delivery::RETRIES, "Failed attempts scheduled for a retry");
    describe_counter!(
        delivery::DEAD_LETTERED,
        "Messages moved to the dead-letter queue (attempts exhausted)"
    );
    describe_counter!(
        delivery::CHANNEL_NOTIFICATIONS,
        "Handshakes and heartbeats of FHIR-format hooks, by type and outcome"
    );
    describe_counter!(
        auth::TOKEN_REFRESHES,
        "Access token requests, by owner (a source or a hook) and outcome"
    );
    describe_gauge!(gauges::OUTBOX_PENDING, "Messages waiting for delivery");
    describe_gauge!(gauges::DEAD_LETTERS, "Messages in the dead-letter queue");
    describe_gauge!(
        gauges::OLDEST_PENDING_AGE,
        "Age of the hook's oldest pending message (0 when none)"
    );
    describe_gauge!(
        gauges::HOOK_DISABLED,
        "1 while the hook is disabled (its receiver answered 410 Gone)"
    );
    describe_gauge!(
        gauges::WATERMARK_LAG,
        "The server's clock minus the target's watermark (grows on a quiet target too)"
    );
    describe_gauge!(gauges::BUILD_INFO, "1, labelled with the version");
    describe_gauge!(
        gauges::START_TIME,
        "When this process started, Unix seconds"
    );
}

#[cfg(test)]
mod tests;

/// What tests of telemetry events (here and where gauges are collected) share.
#[cfg(test)]
pub(crate) mod test_util {
    use super::{builder, describe_metrics};

    /// Runs `f` with a fresh recorder of the bridge's configuration and returns
    /// the Prometheus text it renders.
    pub(crate) fn render(f: impl FnOnce()) -> String {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            f()
        });
        handle.render()
    }

    /// The value of the series `series` (name and labels exactly as rendered).
    pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}
