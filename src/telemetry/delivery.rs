//! Delivery: attempts and their outcomes, latencies, retries, dead letters.

use super::Event;
use chrono::{DateTime, Utc};
use metrics::{counter, histogram};
use std::time::Duration;

pub const DELIVERIES: &str = "fhir_bridge_deliveries_total";
pub const ATTEMPT_DURATION: &str = "fhir_bridge_delivery_attempt_duration_seconds";
pub const DELIVERY_LATENCY: &str = "fhir_bridge_delivery_latency_seconds";
pub const END_TO_END_LATENCY: &str = "fhir_bridge_end_to_end_latency_seconds";
pub const ATTEMPTS_PER_MESSAGE: &str = "fhir_bridge_delivery_attempts_per_message";
pub const RETRIES: &str = "fhir_bridge_retries_scheduled_total";
pub const DEAD_LETTERED: &str = "fhir_bridge_dead_lettered_total";
pub const CHANNEL_NOTIFICATIONS: &str = "fhir_bridge_channel_notifications_total";

/// The target these log lines had before they moved here (log filters).
const WORKER_TARGET: &str = "fhir_bridge::delivery::worker";

/// One POST of one message to a hook, whatever its answer.
pub struct DeliveryAttempted<'a> {
    pub hook: &'a str,
    pub message_id: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// `2xx` ... `5xx`, or without an answer `timeout`, `auth`, `network`.
    pub status_class: &'static str,
    pub delivered: bool,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// How long this attempt took.
    pub duration: Duration,
    /// When the message entered the outbox (our clock, ms): the change's detection.
    pub created_at_ms: i64,
    /// The resource's meta.lastUpdated (the EHR's clock), if the payload has it.
    pub last_updated: Option<DateTime<Utc>>,
}

impl DeliveryAttempted<'_> {
    fn delivered_at(&self, now: DateTime<Utc>) {
        let hook = self.hook.to_string();
        // Clocks differ (the EHR's), and a message may be older than this
        // process: never a negative latency.
        let since_ms = |ms: i64| (now.timestamp_millis() - ms).max(0) as f64 / 1000.0;
        histogram!(DELIVERY_LATENCY, "hook" => hook.clone()).record(since_ms(self.created_at_ms));
        if let Some(lu) = self.last_updated {
            histogram!(END_TO_END_LATENCY, "hook" => hook.clone())
                .record(since_ms(lu.timestamp_millis()));
        }
        histogram!(ATTEMPTS_PER_MESSAGE, "hook" => hook).record(self.attempts as f64);
    }
}

impl Event for DeliveryAttempted<'_> {
    fn emit(self) {
        // Failures are told by what follows them: RetryScheduled,
        // DeadLettered, HookDisabled.
        let outcome = if self.delivered {
            tracing::debug!(target: WORKER_TARGET, hook = %self.hook, message_id = %self.message_id, resource = %format!("{}/{}", self.resource_type, self.resource_id), status = self.status, "delivered");
            "delivered"
        } else {
            "failed"
        };
        counter!(DELIVERIES, "hook" => self.hook.to_string(), "outcome" => outcome, "status_class" => self.status_class)
            .increment(1);
        histogram!(ATTEMPT_DURATION, "hook" => self.hook.to_string())
            .record(self.duration.as_secs_f64());
        if outcome == "delivered" {
            self.delivered_at(Utc::now());
        }
    }
}

/// A failed attempt, to be tried again after `delay`.
pub struct RetryScheduled<'a> {
    pub hook: &'a str,
    pub message_id: &'a str,
    pub status: Option<u16>,
    pub attempts: u32,
    /// The bridge's description of the failure (status, connection error), never a body.
    pub error: &'a str,
    pub delay: Duration,
}

impl Event for RetryScheduled<'_> {
    fn emit(self) {
        tracing::info!(target: WORKER_TARGET, hook = %self.hook, message_id = %self.message_id, status = self.status, attempts = self.attempts, error = %self.error, retry_in_s = self.delay.as_secs_f64(), "delivery failed; will retry");
        counter!(RETRIES, "hook" => self.hook.to_string()).increment(1);
    }
}

/// A failed attempt was the last: the message goes to the dead-letter queue.
pub struct DeadLettered<'a> {
    pub hook: &'a str,
    pub message_id: &'a str,
    pub status: Option<u16>,
    pub attempts: u32,
    pub error: &'a str,
}

impl Event for DeadLettered<'_> {
    fn emit(self) {
        tracing::warn!(target: WORKER_TARGET, hook = %self.hook, message_id = %self.message_id, status = self.status, attempts = self.attempts, error = %self.error, "delivery failed; moved to the dead-letter queue");
        counter!(DEAD_LETTERED, "hook" => self.hook.to_string()).increment(1);
        histogram!(ATTEMPTS_PER_MESSAGE, "hook" => self.hook.to_string())
            .record(self.attempts as f64);
    }
}

/// The receiver answered 410 Gone: the hook is disabled until an operator
/// re-enables it (the `fhir_bridge_hook_disabled` gauge shows it).
pub struct HookDisabled<'a> {
    pub hook: &'a str,
    pub message_id: &'a str,
}

impl Event for HookDisabled<'_> {
    fn emit(self) {
        tracing::error!(target: WORKER_TARGET, hook = %self.hook, message_id = %self.message_id, "receiver answered 410 Gone; hook disabled until `fhir-bridge hook enable {}`", self.hook);
    }
}

/// A handshake or heartbeat of a FHIR-format hook, whatever its answer.
pub struct ChannelNotified<'a> {
    pub hook: &'a str,
    /// `handshake` or `heartbeat`.
    pub kind: &'static str,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why it failed; `None`: acknowledged.
    pub error: Option<&'a str>,
}

impl Event for ChannelNotified<'_> {
    fn emit(self) {
        let outcome = match self.error {
            None => {
                tracing::info!(target: WORKER_TARGET, hook = %self.hook, kind = self.kind, status = self.status, "subscription notification acknowledged");
                "delivered"
            }
            Some(error) => {
                tracing::warn!(target: WORKER_TARGET, hook = %self.hook, kind = self.kind, status = self.status, error = %error, "subscription notification failed");
                "failed"
            }
        };
        counter!(CHANNEL_NOTIFICATIONS, "hook" => self.hook.to_string(), "type" => self.kind, "outcome" => outcome)
            .increment(1);
    }
}
