//! The delivery worker of one hook: claims due outbox messages and POSTs them,
//! at most `concurrency` at once, never two versions of one resource at once.
//! A slow or broken hook only ever occupies its own worker.

use super::retry::next_delay;
use super::sender::{Attempt, Sender};
use crate::config::Hook;
use crate::progress::Beat;
use crate::retry_action::RetryAction;
use crate::state::{Claimed, DeliveryRecord, Store, now_ms};
use crate::telemetry::Event;
use crate::telemetry::delivery::{DeadLettered, DeliveryAttempted, HookDisabled, RetryScheduled};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Even without a wake-up, look for due messages this often (redrives from
/// the CLI, retries falling due).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Whether the hook is disabled, re-read from the database at most once per
/// `IDLE_POLL` (an operator may re-enable it from the CLI at any time).
#[derive(Default)]
struct DisabledCheck {
    checked: Option<std::time::Instant>,
    disabled: bool,
}

impl DisabledCheck {
    async fn is_disabled(&mut self, store: &Store, hook: &str) -> bool {
        if self.checked.is_none_or(|t| t.elapsed() >= IDLE_POLL) {
            self.checked = Some(std::time::Instant::now());
            match store.hook_disabled(hook).await {
                Ok(d) => self.disabled = d,
                Err(e) => {
                    tracing::warn!(hook, error = %e, "cannot read whether the hook is disabled")
                }
            }
        }
        self.disabled
    }

    fn recheck_soon(&mut self) {
        self.checked = None;
    }
}

pub struct HookWorker {
    pub hook: Hook,
    pub store: Store,
    pub sender: Sender,
    pub wake: Arc<Notify>,
    /// Tells the watchdog by when this worker moves on again.
    pub beat: Beat,
}

/// An outcome waiting to be written, and who waits for it.
type Pending = (i64, DeliveryRecord, oneshot::Sender<()>);

/// Writes delivery outcomes in batches: one transaction for whatever has
/// finished meanwhile, instead of one per message. A message stays in flight
/// (not claimable) until its outcome is written.
async fn record_batches(store: Store, hook: String, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut acks = Vec::with_capacity(batch.len());
        let records = batch
            .into_iter()
            .map(|(id, rec, ack)| {
                acks.push(ack);
                (id, rec)
            })
            .collect();
        if let Err(e) = store.record_deliveries(&hook, records).await {
            // These messages stay pending and are sent again, with the same message_ids.
            tracing::error!(hook = %hook, error = %e, "cannot record delivery outcomes");
            tokio::time::sleep(IDLE_POLL).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

impl HookWorker {
    pub async fn run(self, cancel: CancellationToken) {
        let (record_tx, record_rx) = mpsc::channel(self.hook.concurrency * 2);
        let recorder = tokio::spawn(record_batches(
            self.store.clone(),
            self.hook.name.clone(),
            record_rx,
        ));
        // Claim in batches: a query per few completions rather than per completion.
        let claim_at = (self.hook.concurrency / 4).max(1);
        let this = Arc::new(self);
        let mut in_flight: HashSet<i64> = HashSet::new();
        let mut tasks: JoinSet<(i64, bool)> = JoinSet::new();
        let mut stopping = false;
        let mut disabled = DisabledCheck::default();
        // Each turn of the loop ends within IDLE_POLL, or when a delivery
        // ends (each within the hook's timeout, twice with an OAuth refresh).
        let allowance = IDLE_POLL + this.hook.timeout * 3 + Duration::from_secs(30);
        loop {
            this.beat.expect_within(allowance);
            let free = this.hook.concurrency.saturating_sub(in_flight.len());
            let mut wait = IDLE_POLL;
            let can_claim = free >= claim_at || (free > 0 && in_flight.is_empty());
            if can_claim && !stopping && !disabled.is_disabled(&this.store, &this.hook.name).await {
                match this
                    .store
                    .claim_due(&this.hook.name, in_flight.iter().copied().collect(), free)
                    .await
                {
                    Ok(batch) => {
                        let filled = batch.len() == free;
                        for msg in batch {
                            in_flight.insert(msg.id);
                            let worker = this.clone();
                            let record_tx = record_tx.clone();
                            tasks.spawn(async move { worker.deliver(msg, record_tx).await });
                        }
                        if !filled {
                            wait = this.time_to_next_due().await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(hook = %this.hook.name, error = %e, "cannot claim messages")
                    }
                }
            }
            if stopping && tasks.is_empty() {
                drop(record_tx);
                let _ = recorder.await;
                return;
            }
            let free = this.hook.concurrency.saturating_sub(in_flight.len());
            let full = !(free >= claim_at || (free > 0 && in_flight.is_empty()));
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((id, gone)) = done {
                        in_flight.remove(&id);
                        if gone {
                            disabled.recheck_soon();
                        }
                    } else {
                        // A panicked delivery task: its message stays pending and is retried.
                        in_flight.clear();
                        tasks.abort_all();
                    }
                }
                _ = this.wake.notified(), if !full && !stopping => {}
                _ = tokio::time::sleep(wait), if !full && !stopping => {}
                _ = cancel.cancelled(), if !stopping => { stopping = true; }
            }
        }
    }

    async fn time_to_next_due(&self) -> Duration {
        match self.store.next_due_ms(&self.hook.name).await {
            Ok(Some(at)) => {
                Duration::from_millis((at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64) as u64)
            }
            _ => IDLE_POLL,
        }
    }

    /// Returns the message id, and whether the receiver said 410 Gone.
    async fn deliver(&self, msg: Claimed, recorder: mpsc::Sender<Pending>) -> (i64, bool) {
        let hook = &self.hook;
        // Rendered for this hook now (its content mode), then signed and sent
        // as these exact bytes.
        let body = msg.body.render(&msg.message_id, hook.content);
        let last_updated = crate::payload::last_updated(&body);
        let started = std::time::Instant::now();
        let attempt = self.sender.post(hook, &msg.message_id, body).await;
        let attempts = msg.attempts + 1;
        DeliveryAttempted {
            hook: &hook.name,
            message_id: &msg.message_id,
            resource_type: &msg.resource_type,
            resource_id: &msg.resource_id,
            attempt: &attempt,
            attempts,
            duration: started.elapsed(),
            created_at_ms: msg.created_at_ms,
            last_updated,
        }
        .emit();
        let action = attempt.action();
        let gone = action == RetryAction::Disable;
        let record = match attempt {
            Attempt::Delivered { status } => DeliveryRecord::Delivered { status },
            Attempt::Failed { status, error, .. } if action == RetryAction::Disable => {
                // 410 Gone: the receiver says this endpoint is no more. Stop sending
                // to it (nothing is dropped: messages wait as pending) until an
                // operator runs `fhir-bridge hook enable`.
                HookDisabled {
                    hook: &hook.name,
                    message_id: &msg.message_id,
                }
                .emit();
                if let Err(e) = self
                    .store
                    .disable_hook(&hook.name, "receiver answered 410 Gone")
                    .await
                {
                    tracing::error!(hook = %hook.name, error = %e, "cannot record that the hook is disabled");
                }
                DeliveryRecord::Failed {
                    status,
                    error,
                    retry_at_ms: Some(now_ms()),
                }
            }
            Attempt::Failed { status, error, .. } if action == RetryAction::GiveUp => {
                // The receiver read this message and refused it: the same bytes
                // would get the same answer. Dead-lettered now, redrivable.
                let error = format!("{error} (refused by the receiver: not retried)");
                DeadLettered {
                    hook: &hook.name,
                    message_id: &msg.message_id,
                    status,
                    attempts,
                    error: &error,
                }
                .emit();
                DeliveryRecord::Failed {
                    status,
                    error,
                    retry_at_ms: None,
                }
            }
            Attempt::Failed { status, error, .. } => {
                let retry_after = match action {
                    RetryAction::RetryAfter(d) => Some(d),
                    _ => None,
                };
                let delay = next_delay(
                    &hook.retry_schedule,
                    attempts,
                    hook.max_attempts,
                    retry_after,
                    fastrand::f64(),
                );
                let (hook_name, message_id) = (hook.name.as_str(), msg.message_id.as_str());
                match delay {
                    Some(delay) => RetryScheduled {
                        hook: hook_name,
                        message_id,
                        status,
                        attempts,
                        error: &error,
                        delay,
                    }
                    .emit(),
                    None => DeadLettered {
                        hook: hook_name,
                        message_id,
                        status,
                        attempts,
                        error: &error,
                    }
                    .emit(),
                }
                DeliveryRecord::Failed {
                    status,
                    error,
                    retry_at_ms: delay.map(|d| {
                        now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    }),
                }
            }
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        if recorder.send((msg.id, record, ack_tx)).await.is_ok() {
            let _ = ack_rx.await;
        }
        (msg.id, gone)
    }
}
