//! The subscription channel of a FHIR-format hook: a handshake before the
//! first event (and after `hook enable`), the status it leads to, and a
//! heartbeat whenever nothing else was sent for `heartbeat_period`.
//!
//! The status lives in the state (`requested` until a handshake gets a 2xx,
//! then `active`, `error` after a failed attempt); events wait, pending,
//! while the handshake fails.

use super::attempt::Attempt;
use super::retry::next_delay;
use super::sender::Sender;
use crate::config::{Config, Hook};
use crate::payload::fhir::{Channel, NotificationType, notification};
use crate::retry_action::RetryAction;
use crate::state::{ChannelState, Store};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Namespace for handshake and heartbeat ids.
const CHANNEL_NS: Uuid = Uuid::from_u128(0x51d7_a3e9_6c08_4f2b_8e4d_0b7a_c9f3_1e62);

/// How often the cached status is read again (`hook enable` may reset it).
const REFRESH: Duration = Duration::from_secs(1);

/// What the notifications of a hook say about it, fixed while it runs.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    /// The subscription's reference: where `$status` and `$events` answer
    /// (the admin listener) or, without one, a URN naming the hook.
    pub subscription: String,
    /// The topic's canonical URL.
    pub topic: String,
    /// Each source's base URL (no trailing slash), for `fullUrl` and `focus`.
    pub bases: HashMap<String, String>,
}

impl ChannelInfo {
    /// `admin`: the admin listener's bound address, if it runs.
    pub fn for_hook(config: &Config, hook: &Hook, admin: Option<SocketAddr>) -> ChannelInfo {
        let subscription = match admin {
            Some(addr) => format!("http://{addr}/hooks/{}", hook.name),
            None => format!("urn:fhir-bridge:hook:{}", hook.name),
        };
        ChannelInfo {
            subscription,
            // A named topic is shared by every hook that uses it; a hook's own
            // filter is a topic of its own.
            topic: match hook.topic {
                Some(t) => format!("urn:fhir-bridge:topic:{}", t.name),
                None => format!("urn:fhir-bridge:topic:hook:{}", hook.name),
            },
            bases: config
                .sources
                .iter()
                .map(|s| {
                    let base = s.base_url.as_str().trim_end_matches('/').to_string();
                    (s.name.clone(), base)
                })
                .collect(),
        }
    }
}

/// The live facts a FHIR notification states besides its events.
pub(super) struct ChannelNow<'a> {
    pub info: &'a ChannelInfo,
    pub status: &'a str,
    pub events_since_start: i64,
}

impl ChannelNow<'_> {
    pub fn channel(&self, hook: &Hook) -> Channel<'_> {
        Channel {
            format: hook.notification.format,
            subscription: &self.info.subscription,
            topic: &self.info.topic,
            status: self.status,
            events_since_start: self.events_since_start,
        }
    }
}

/// How a channel POST went, for the worker.
pub(super) enum Sent {
    Ok,
    Failed,
    /// 410 Gone: the hook is disabled.
    Gone,
}

pub(super) struct Keeper {
    pub info: ChannelInfo,
    state: ChannelState,
    read_at: Option<Instant>,
    /// The highest `events-since-subscription-start` stated so far: a
    /// notification never states less (the count read lags by up to `REFRESH`).
    stated: i64,
    /// When anything (event, handshake, heartbeat) was last POSTed.
    last_sent: Instant,
    handshake_failures: u32,
    next_handshake: Instant,
}

impl Keeper {
    pub fn new(info: ChannelInfo) -> Keeper {
        Keeper {
            info,
            state: ChannelState {
                events: 0,
                status: None,
                error: None,
            },
            read_at: None,
            stated: 0,
            last_sent: Instant::now(),
            handshake_failures: 0,
            next_handshake: Instant::now(),
        }
    }

    async fn refresh(&mut self, store: &Store, hook: &str) {
        if self.read_at.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        match store.channel_state(hook).await {
            Ok(s) => {
                self.state = s;
                self.read_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(hook, error = %e, "cannot read the subscription status"),
        }
    }

    /// The channel as the notification about to be POSTed states it, its
    /// newest event numbered `newest` (0: none): the count of events never
    /// goes backwards from one notification to the next, even for a retry
    /// of older events after a newer one went out.
    pub fn stamp(&mut self, newest: i64) -> ChannelNow<'_> {
        self.last_sent = Instant::now();
        self.stated = self.stated.max(self.state.events).max(newest);
        ChannelNow {
            info: &self.info,
            status: self.state.status(),
            events_since_start: self.stated,
        }
    }

    /// Whether events may go: a due handshake is sent first (and until it
    /// gets a 2xx, events wait). `Err` with how long to wait before trying again.
    pub async fn ready(
        &mut self,
        store: &Store,
        sender: &Sender,
        hook: &Hook,
    ) -> Result<(), Duration> {
        self.refresh(store, &hook.name).await;
        if !self.state.needs_handshake() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.next_handshake {
            return Err(self.next_handshake - now);
        }
        match self
            .post(store, sender, hook, NotificationType::Handshake)
            .await
        {
            Sent::Ok => {
                self.handshake_failures = 0;
                Ok(())
            }
            Sent::Failed | Sent::Gone => {
                self.handshake_failures += 1;
                let delay = next_delay(
                    &hook.retry_schedule,
                    self.handshake_failures,
                    u32::MAX,
                    None,
                    fastrand::f64(),
                )
                .unwrap_or(REFRESH);
                self.next_handshake = Instant::now() + delay;
                Err(delay)
            }
        }
    }

    /// How long until a heartbeat is due (`None`: the hook sends none).
    pub fn heartbeat_in(&self, hook: &Hook) -> Option<Duration> {
        let period = hook.notification.heartbeat_period?;
        Some(period.saturating_sub(self.last_sent.elapsed()))
    }

    /// Sends a heartbeat if one is due (nothing else sent for the period).
    pub async fn heartbeat_if_due(&mut self, store: &Store, sender: &Sender, hook: &Hook) {
        if self.heartbeat_in(hook) != Some(Duration::ZERO) || self.state.needs_handshake() {
            return;
        }
        self.post(store, sender, hook, NotificationType::Heartbeat)
            .await;
    }

    /// POSTs a handshake or heartbeat and records the status it leads to.
    async fn post(
        &mut self,
        store: &Store,
        sender: &Sender,
        hook: &Hook,
        kind: NotificationType,
    ) -> Sent {
        let stamp = crate::state::now_ms();
        let id = Uuid::new_v5(
            &CHANNEL_NS,
            format!("{}\n{}\n{stamp}", hook.name, kind.as_str()).as_bytes(),
        )
        .to_string();
        let now = crate::fhir::format_instant(chrono::Utc::now());
        let body = {
            let ch = self.stamp(0);
            notification(&ch.channel(hook), kind, hook.content, &[], &id, &now)
        };
        let attempt = sender
            .post(hook, &id, body, crate::payload::fhir::CONTENT_TYPE)
            .await;
        let handshake = kind == NotificationType::Handshake;
        let (status, error, sent) = match &attempt {
            Attempt::Delivered { .. } => ("active", None, Sent::Ok),
            Attempt::Failed { error, .. } => {
                let gone = attempt.action() == RetryAction::Disable;
                let status = if handshake { "requested" } else { "error" };
                let sent = if gone { Sent::Gone } else { Sent::Failed };
                (status, Some(format!("{}: {error}", kind.as_str())), sent)
            }
        };
        crate::telemetry::Event::emit(crate::telemetry::delivery::ChannelNotified {
            hook: &hook.name,
            kind: kind.as_str(),
            status: attempt.status(),
            error: match &attempt {
                Attempt::Delivered { .. } => None,
                Attempt::Failed { error, .. } => Some(error),
            },
        });
        if matches!(sent, Sent::Gone)
            && let Err(e) = store
                .disable_hook(&hook.name, "receiver answered 410 Gone")
                .await
        {
            tracing::error!(hook = %hook.name, error = %e, "cannot record that the hook is disabled");
        }
        if self.state.status.as_deref() != Some(status) || error.is_some() {
            match store
                .set_channel_status(&hook.name, status, error.clone())
                .await
            {
                Ok(()) => {
                    self.state.status = Some(status.to_string());
                    self.state.error = error;
                }
                Err(e) => {
                    tracing::error!(hook = %hook.name, error = %e, "cannot record the subscription status")
                }
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::render::render;
    use crate::state::{Claimed, MessageBody};

    const CONFIG: &str = "[[source]]\nname = \"s\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
        resources = [\"Observation\"]\n[[hook]]\nname = \"h\"\nurl = \"http://127.0.0.1:2/h\"\n\
        format = \"fhir-backport-r4\"\nmax_events_per_bundle = 5\n";

    fn claimed(number: i64) -> Claimed {
        Claimed {
            id: number,
            message_id: format!("m{number}"),
            resource_type: "Observation".into(),
            resource_id: format!("o{number}"),
            attempts: 0,
            event_number: Some(number),
            body: MessageBody::Missing,
            created_at_ms: 0,
            batch_id: None,
        }
    }

    /// `events-since-subscription-start` as a rendered notification states it.
    fn stated(body: &[u8]) -> i64 {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let params = v["entry"][0]["resource"]["parameter"].as_array().unwrap();
        let p = params
            .iter()
            .find(|p| p["name"] == "events-since-subscription-start")
            .unwrap();
        p["valueString"].as_str().unwrap().parse().unwrap()
    }

    /// Item 19: the count read from the state lags (read at most once a
    /// second); a notification of event 10, then a retry of event 3, must
    /// not state 10 then 5.
    #[test]
    fn events_since_start_never_goes_backwards() {
        let config = Config::from_str(CONFIG, std::path::Path::new("b.toml")).unwrap();
        let hook = &config.hooks[0];
        let mut k = Keeper::new(ChannelInfo::for_hook(&config, hook, None));
        k.state.events = 5;
        let first = stated(&render(hook, Some(&k.stamp(10)), &[claimed(10)]).body);
        let second = stated(&render(hook, Some(&k.stamp(3)), &[claimed(3)]).body);
        // A heartbeat after them, and a count read again, never lower either.
        let heartbeat = k.stamp(0).events_since_start;
        k.state.events = 12;
        let later = k.stamp(4).events_since_start;
        assert_eq!((first, second, heartbeat, later), (10, 10, 10, 12));
    }
}
