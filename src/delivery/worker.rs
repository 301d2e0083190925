//! The delivery worker of one hook: claims due outbox messages and POSTs them,
//! at most `concurrency` at once, never two versions of one resource at once.
//! A slow or broken hook only ever occupies its own worker.

use super::attempt::Attempt;
use super::batch::{batch_to_store, notifications};
use super::channel::{ChannelInfo, Keeper};
use super::render::{Outgoing, render};
use super::retry::next_delay;
use super::sender::Sender;
use crate::config::Hook;
use crate::progress::Beat;
use crate::retry_action::RetryAction;
use crate::state::{Claimed, DeliveryRecord, Fence, Store, now_ms};
use crate::telemetry::Event;
use crate::telemetry::delivery::{DeadLettered, DeliveryAttempted, HookDisabled, RetryScheduled};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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
    /// Shown with every delivery outcome it records (see `state::Fence`).
    pub fence: Fence,
    pub sender: Sender,
    /// Tells the watchdog by when this worker moves on again.
    pub beat: Beat,
    /// For a FHIR-format hook: what its notifications say about it.
    pub channel: Option<ChannelInfo>,
}

/// An outcome waiting to be written, and who waits for it.
type Pending = (i64, DeliveryRecord, oneshot::Sender<()>);

/// Writes delivery outcomes in batches: one transaction for whatever has
/// finished meanwhile, instead of one per message. A message stays in flight
/// (not claimable) until its outcome is written.
async fn record_batches(
    store: Store,
    fence: Fence,
    hook: String,
    channel: bool,
    mut rx: mpsc::Receiver<Pending>,
) {
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
        if let Err(e) = store
            .record_deliveries(&fence, &hook, records, channel)
            .await
        {
            // These messages stay pending and are sent again, with the same message_ids.
            tracing::error!(hook = %hook, error = %e, "cannot record delivery outcomes");
            tokio::time::sleep(IDLE_POLL).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// What `claim_and_send` adds its POSTs to (the loop's own state).
struct Sending<'a> {
    /// Messages in flight (not claimable again).
    in_flight: &'a mut HashSet<i64>,
    /// The POSTs carrying them.
    tasks: &'a mut JoinSet<(Vec<i64>, bool)>,
    /// A FHIR hook's channel, which stamps each notification.
    keeper: Option<&'a mut Keeper>,
    record_tx: &'a mpsc::Sender<Pending>,
}

impl HookWorker {
    pub async fn run(self, cancel: CancellationToken) {
        let per_post = self.hook.notification.max_events_per_bundle.max(1);
        let (record_tx, record_rx) = mpsc::channel(self.hook.concurrency * per_post * 2);
        let recorder = tokio::spawn(record_batches(
            self.store.clone(),
            self.fence.clone(),
            self.hook.name.clone(),
            self.channel.is_some(),
            record_rx,
        ));
        let mut keeper = self.channel.clone().map(Keeper::new);
        // Claim in batches: a query per few completions rather than per completion.
        let claim_at = (self.hook.concurrency / 4).max(1);
        let this = Arc::new(self);
        // Messages in flight (not claimable again), and the POSTs carrying them.
        let mut in_flight: HashSet<i64> = HashSet::new();
        let mut tasks: JoinSet<(Vec<i64>, bool)> = JoinSet::new();
        let mut stopping = false;
        let mut disabled = DisabledCheck::default();
        // Each turn of the loop ends within IDLE_POLL, or when a delivery
        // ends (each within the hook's timeout, twice with an OAuth refresh),
        // or after a handshake or heartbeat (one POST).
        let allowance = IDLE_POLL + this.hook.timeout * 6 + Duration::from_secs(30);
        loop {
            this.beat.expect_within(allowance);
            let free = this.hook.concurrency.saturating_sub(tasks.len());
            let mut wait = IDLE_POLL;
            let can_claim = free >= claim_at || (free > 0 && tasks.is_empty());
            let mut active = !stopping && !disabled.is_disabled(&this.store, &this.hook.name).await;
            if active && let Some(k) = keeper.as_mut() {
                if let Err(retry_in) = k.ready(&this.store, &this.sender, &this.hook).await {
                    active = false;
                    wait = retry_in.min(IDLE_POLL);
                } else if tasks.is_empty() {
                    k.heartbeat_if_due(&this.store, &this.sender, &this.hook)
                        .await;
                }
            }
            if can_claim && active {
                let sending = Sending {
                    in_flight: &mut in_flight,
                    tasks: &mut tasks,
                    keeper: keeper.as_mut(),
                    record_tx: &record_tx,
                };
                if let Some(next_due) = this.claim_and_send(free, per_post, sending).await {
                    wait = wait.min(next_due);
                }
            }
            if let Some(beat_in) = keeper.as_ref().and_then(|k| k.heartbeat_in(&this.hook)) {
                wait = wait.min(beat_in.max(Duration::from_millis(10)));
            }
            if stopping && tasks.is_empty() {
                drop(record_tx);
                let _ = recorder.await;
                return;
            }
            let free = this.hook.concurrency.saturating_sub(tasks.len());
            let full = !(free >= claim_at || (free > 0 && tasks.is_empty()));
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((ids, gone)) = done {
                        for id in ids {
                            in_flight.remove(&id);
                        }
                        if gone {
                            disabled.recheck_soon();
                        }
                    } else {
                        // A panicked delivery task: its messages stay pending and are retried.
                        in_flight.clear();
                        tasks.abort_all();
                    }
                }
                // Woken by a commit for this hook, or `wait` is up.
                _ = this.store.wait_due(&this.hook.name, wait), if !full && !stopping => {}
                _ = cancel.cancelled(), if !stopping => { stopping = true; }
            }
        }
    }

    /// Claims what `free` POSTs can carry and starts them, in event-number
    /// order. Returns when the next message falls due if the claim did not
    /// fill them (the loop's wait), `None` otherwise.
    async fn claim_and_send(
        self: &Arc<Self>,
        free: usize,
        per_post: usize,
        mut s: Sending<'_>,
    ) -> Option<Duration> {
        let want = free * per_post;
        let in_flight = s.in_flight.iter().copied().collect();
        let claimed = match self.store.claim_due(&self.hook.name, in_flight, want).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(hook = %self.hook.name, error = %e, "cannot claim messages");
                return None;
            }
        };
        let filled = claimed.len() >= want;
        // One POST per notification (a stored batch whole), in
        // event-number order; what does not fit is claimed again.
        let mut posts = notifications(claimed, per_post);
        posts.truncate(free);
        // A hook of one event per POST never batches: no write.
        let batching = per_post > 1;
        let batches = posts
            .iter()
            .filter_map(|p| batch_to_store(p, batching))
            .collect();
        let stored = self.store.assign_batches(batches).await;
        if let Err(e) = &stored {
            // Not sent before its batch is stored: tried again in IDLE_POLL.
            tracing::error!(hook = %self.hook.name, error = %e, "cannot store a batch");
            posts.clear();
        }
        for msgs in posts {
            s.in_flight.extend(msgs.iter().map(|m| m.id));
            let newest = msgs.iter().filter_map(|m| m.event_number).max();
            let channel = s.keeper.as_mut().map(|k| k.stamp(newest.unwrap_or(0)));
            let outgoing = render(&self.hook, channel.as_ref(), &msgs);
            let worker = self.clone();
            let record_tx = s.record_tx.clone();
            s.tasks
                .spawn(async move { worker.deliver(msgs, outgoing, record_tx).await });
        }
        let next_due = stored.is_ok() && !filled;
        if next_due {
            Some(self.time_to_next_due().await)
        } else {
            None
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

    /// POSTs `outgoing` (the rendering of `msgs`) and records the outcome
    /// for each of them. Returns their ids, and whether the receiver said 410 Gone.
    async fn deliver(
        &self,
        msgs: Vec<Claimed>,
        outgoing: Outgoing,
        recorder: mpsc::Sender<Pending>,
    ) -> (Vec<i64>, bool) {
        let hook = &self.hook;
        let started = std::time::Instant::now();
        // Signed and sent as these exact bytes.
        let attempt = self
            .sender
            .post(hook, &outgoing.id, outgoing.body, outgoing.content_type)
            .await;
        let duration = started.elapsed();
        let retry = self.retry_of(&msgs, &attempt);
        let mut acks = Vec::with_capacity(msgs.len());
        let mut gone = false;
        for msg in &msgs {
            let (record, is_gone) = self.outcome(msg, &attempt, duration, retry).await;
            gone |= is_gone;
            let (ack_tx, ack_rx) = oneshot::channel();
            if recorder.send((msg.id, record, ack_tx)).await.is_ok() {
                acks.push(ack_rx);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        (msgs.iter().map(|m| m.id).collect(), gone)
    }

    /// When the messages of a failed POST are tried again: one time for
    /// them all (one jitter, the most attempts among them), so that a batch
    /// falls due whole and goes again as the same notification. `None`: to
    /// the dead-letter queue, all of them.
    fn retry_of(&self, msgs: &[Claimed], attempt: &Attempt) -> Option<(Duration, i64)> {
        let hook = &self.hook;
        let retry_after = match attempt.action() {
            RetryAction::RetryAfter(d) => Some(d),
            _ => None,
        };
        let attempts = msgs.iter().map(|m| m.attempts).max().unwrap_or(0) + 1;
        let delay = next_delay(
            &hook.retry_schedule,
            attempts,
            hook.max_attempts,
            retry_after,
            fastrand::f64(),
        )?;
        let at = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        Some((delay, at))
    }

    /// What one attempt means for one of the messages it carried; `retry`:
    /// the POST's (`retry_of`).
    async fn outcome(
        &self,
        msg: &Claimed,
        attempt: &Attempt,
        duration: Duration,
        retry: Option<(Duration, i64)>,
    ) -> (DeliveryRecord, bool) {
        let hook = &self.hook;
        let attempts = msg.attempts + 1;
        DeliveryAttempted {
            hook: &hook.name,
            message_id: &msg.message_id,
            resource_type: &msg.resource_type,
            resource_id: &msg.resource_id,
            status: attempt.status(),
            status_class: attempt.status_class(),
            delivered: matches!(attempt, Attempt::Delivered { .. }),
            attempts,
            duration,
            created_at_ms: msg.created_at_ms,
            last_updated: msg.body.last_updated(),
        }
        .emit();
        let action = attempt.action();
        let gone = action == RetryAction::Disable;
        let record = match attempt.clone() {
            Attempt::Delivered { status } => DeliveryRecord::Delivered { status },
            Attempt::Failed { kind, error, .. } if action == RetryAction::Disable => {
                self.gone(msg, kind.status(), error).await
            }
            Attempt::Failed { kind, error, .. } if action == RetryAction::GiveUp => {
                self.refused(msg, attempts, kind.status(), error)
            }
            Attempt::Failed { kind, error, .. } => {
                self.failed(msg, attempts, kind.status(), error, retry)
            }
        };
        (record, gone)
    }

    /// 410 Gone: the receiver says this endpoint is no more. Stop sending to
    /// it (nothing is dropped: messages wait as pending) until an operator
    /// runs `fhir-bridge hook enable`.
    async fn gone(&self, msg: &Claimed, status: Option<u16>, error: String) -> DeliveryRecord {
        let hook = &self.hook;
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

    /// The receiver read this message and refused it: the same bytes would
    /// get the same answer. Dead-lettered now, redrivable.
    fn refused(
        &self,
        msg: &Claimed,
        attempts: u32,
        status: Option<u16>,
        error: String,
    ) -> DeliveryRecord {
        let error = format!("{error} (refused by the receiver: not retried)");
        DeadLettered {
            hook: &self.hook.name,
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

    /// Any other failure: tried again at `retry`, or dead-lettered when the
    /// attempts are spent.
    fn failed(
        &self,
        msg: &Claimed,
        attempts: u32,
        status: Option<u16>,
        error: String,
        retry: Option<(Duration, i64)>,
    ) -> DeliveryRecord {
        let (hook_name, message_id) = (self.hook.name.as_str(), msg.message_id.as_str());
        match retry {
            Some((delay, _)) => RetryScheduled {
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
            retry_at_ms: retry.map(|(_, at)| at),
        }
    }
}
