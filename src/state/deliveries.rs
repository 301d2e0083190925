//! The delivery side's records: messages into the outbox, claims, delivery
//! outcomes, stored changes and bodies, a hook's subscription channel.

use super::{Fence, StateError};
use std::sync::Arc;
use std::time::Duration;

/// A message to enqueue, written in the same transaction as its page: a
/// hook and its message_id for a change. The messages of one change share
/// it (the same `Arc`, next to each other): it is stored once.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub hook: String,
    pub message_id: String,
    pub change: Arc<ChangeRecord>,
}

#[cfg(test)]
impl NewMessage {
    /// A message of its own change of `rt/id` from source `s`, body `{}`.
    pub fn test(hook: &str, message_id: &str, rt: &str, id: &str) -> Self {
        NewMessage {
            hook: hook.into(),
            message_id: message_id.into(),
            change: Arc::new(ChangeRecord {
                id: 0,
                source: "s".into(),
                owner_id: "o".into(),
                resource_type: rt.into(),
                resource_id: id.into(),
                version_id: None,
                last_updated: None,
                event: "create".into(),
                detected_at: "2026-01-01T00:00:00Z".into(),
                body: Some(b"{}".to_vec()),
            }),
        }
    }

    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        Arc::make_mut(&mut self.change).body = Some(body);
        self
    }
}

/// A message claimed for a delivery attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub message_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub attempts: u32,
    /// The hook's event number for it; `None` for a message from before numbers.
    pub event_number: Option<i64>,
    /// What to render for the hook (`MessageBody::render`).
    pub body: MessageBody,
    /// When the message entered the outbox (our clock, ms), for latency metrics.
    pub created_at_ms: i64,
    /// The webhook-id of the batched notification it went out in (see
    /// `assign_batches`): it goes again only with the others of that batch.
    pub batch_id: Option<String>,
}

/// How one delivery attempt ended. Errors are PHI-free text.
#[derive(Debug, Clone)]
pub enum DeliveryRecord {
    Delivered {
        status: u16,
    },
    Failed {
        status: Option<u16>,
        error: String,
        /// `None`: attempts are exhausted and the message goes to the dead-letter queue.
        retry_at_ms: Option<i64>,
    },
}

/// One detected change of one resource version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// The `change` row; 0 before it is stored.
    pub id: i64,
    pub source: String,
    pub owner_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: Option<String>,
    pub last_updated: Option<String>,
    /// "create" or "update".
    pub event: String,
    /// When the bridge detected it (RFC 3339, the payload's `time`).
    pub detected_at: String,
    /// The resource bytes exactly as the server sent them; `None` when no
    /// hook sends them (id-only hooks, over the size limit) or once deleted.
    pub body: Option<Vec<u8>>,
}

/// What a message sends: a payload rendered and stored before migration 7,
/// or its change, rendered for the hook at send time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    Stored(Vec<u8>),
    Change(ChangeRecord),
    /// Neither (a delivered message of an old version whose payload is gone).
    Missing,
}

impl MessageBody {
    /// Drops the resource bytes (a reader that must not hand them out).
    pub fn forget_resource(&mut self) {
        match self {
            MessageBody::Change(c) => c.body = None,
            MessageBody::Stored(_) => *self = MessageBody::Missing,
            MessageBody::Missing => {}
        }
    }
}

#[cfg(test)]
impl MessageBody {
    /// The stored payload, or the change's resource bytes: what a test enqueued.
    pub fn raw(&self) -> Vec<u8> {
        match self {
            MessageBody::Stored(p) => p.clone(),
            MessageBody::Change(c) => c.body.clone().unwrap_or_default(),
            MessageBody::Missing => vec![],
        }
    }
}

/// Most events one `$events` answer carries.
pub const MAX_EVENTS_PER_QUERY: i64 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState {
    /// The hook's last event number.
    pub events: i64,
    /// `None`: never handshaken (the same as `requested`).
    pub status: Option<String>,
    /// What the last failed handshake or notification said (PHI-free).
    pub error: Option<String>,
}

impl ChannelState {
    /// A handshake is due before any event goes out.
    pub fn needs_handshake(&self) -> bool {
        matches!(self.status.as_deref(), None | Some("requested"))
    }

    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("requested")
    }
}

/// One retained event of a hook, for `$events`.
#[derive(Debug, Clone)]
pub struct RetainedEvent {
    pub number: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub body: MessageBody,
}

crate::state::role! {
    /// The delivery side's contract: claiming due messages in per-resource order,
    /// recording attempts (retries, dead letters, event numbers), disabling a
    /// hook, a subscription channel's state and retained events.
    pub trait DeliveryStore {
        /// Due pending messages of a hook, oldest first, skipping any message
        /// whose resource has an older version still pending (per-resource
        /// order) and the ids in `in_flight`. A claimed message of a batch
        /// brings the batch's other pending members along (beyond `limit` if
        /// need be). Costs O(claimed), not O(backlog).
        async fn claim_due(
            &self,
            hook: &str,
            in_flight: Vec<i64>,
            limit: usize,
        ) -> Result<Vec<Claimed>, StateError>;
        /// Writes each batch's webhook-id to its messages before the batch is
        /// first POSTed (one transaction): from then on they go only together,
        /// as that notification, until delivered, a kill -9 notwithstanding.
        async fn assign_batches(&self, batches: Vec<(String, Vec<i64>)>) -> Result<(), StateError>;
        /// Makes the hook's pending messages due now (its endpoint changed: the
        /// backoff earned against the old one means nothing). Dead letters stay
        /// for `dlq redrive`. Returns how many were waiting.
        async fn pending_due_now(&self, hook: &str) -> Result<usize, StateError>;
        /// When the hook's next pending message falls due (ms), if any.
        async fn next_due_ms(&self, hook: &str) -> Result<Option<i64>, StateError>;
        /// Records one attempt's outcome for a claimed message.
        async fn record_delivery(
            &self,
            fence: &Fence,
            hook: &str,
            id: i64,
            record: DeliveryRecord,
        ) -> Result<(), StateError>;
        /// Records many attempts' outcomes in one transaction. With `channel` (a
        /// FHIR-format hook), an `active` or `error` subscription status follows
        /// the last outcome.
        async fn record_deliveries(
            &self,
            fence: &Fence,
            hook: &str,
            records: Vec<(i64, DeliveryRecord)>,
            channel: bool,
        ) -> Result<(), StateError>;
        /// Stops deliveries to a hook (its receiver said 410 Gone). Messages keep
        /// accumulating as pending; nothing is dropped.
        async fn disable_hook(&self, hook: &str, reason: &str) -> Result<(), StateError>;
        /// Re-enables a disabled hook. Returns whether it was disabled.
        async fn enable_hook(&self, hook: &str) -> Result<bool, StateError>;
        async fn hook_disabled(&self, hook: &str) -> Result<bool, StateError>;
        async fn channel_state(&self, hook: &str) -> Result<ChannelState, StateError>;
        /// Records the channel's status; `error` is kept only with a failure.
        async fn set_channel_status(
            &self,
            hook: &str,
            status: &str,
            error: Option<String>,
        ) -> Result<(), StateError>;
        /// The hook's events numbered `since..=until` still in the outbox (pending,
        /// dead, or delivered and not yet pruned), in number order, at most
        /// `MAX_EVENTS_PER_QUERY`. Bodies come along only when `with_bodies`.
        async fn retained_events(
            &self,
            hook: &str,
            since: i64,
            until: i64,
            with_bodies: bool,
        ) -> Result<Vec<RetainedEvent>, StateError>;
        /// Waits until `notify_due(hook)` is called or `timeout` passes;
        /// returns whether it was woken. A wake-up sent while nobody waited
        /// is kept (one, not a count): the next wait returns at once. It may
        /// also return early for nothing: the caller looks at the outbox
        /// (`claim_due`) either way, so a wake-up is a hint, never a record.
        async fn wait_due(&self, hook: &str, timeout: Duration) -> bool;
    }
    blocking {
        /// Wakes whoever waits in `wait_due(hook)`: messages for it were just
        /// committed (or it was started). Never blocks, never fails: a lost
        /// wake-up costs latency (the worker looks again within its timeout),
        /// not a message.
        fn notify_due(&self, hook: &str);
    }
}
