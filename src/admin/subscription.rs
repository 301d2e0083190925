//! `GET /hooks/{name}/$status` and `GET /hooks/{name}/$events`: a hook seen
//! as a FHIR Subscription, so that a receiver that notices a gap in event
//! numbers can fill it (R4 Backport IG `$status` / `$events`).
//!
//! Resource bodies are PHI: `$events` hands them out only to a peer on this
//! machine (an authenticating proxy in front, for instance), only for a hook
//! that sends full resources, and only while the bridge still holds them
//! (pending and dead messages; a delivered message's body is deleted).

use crate::config::{Config, Content, Format, Hook};
use crate::delivery::ChannelInfo;
use crate::payload::fhir::{Channel, NotificationType, NumberedEvent, change_of, notification};
use crate::state::{MAX_EVENTS_PER_QUERY, Store};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

/// What the hook endpoints need: the state, and the running config (reloads
/// replace it).
#[derive(Clone)]
pub struct HookEndpoints {
    pub store: Store,
    pub config: watch::Receiver<Arc<Config>>,
    /// The listener's bound address (the subscriptions' references).
    pub addr: SocketAddr,
}

const FHIR_JSON: &str = "application/fhir+json";
const QUERY_NS: Uuid = Uuid::from_u128(0x0c6d_95f2_3e1b_47a8_a4c0_6f2d_81e9_b357);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    events_since_number: Option<String>,
    events_until_number: Option<String>,
    content: Option<String>,
}

pub async fn status(State(h): State<HookEndpoints>, Path(name): Path<String>) -> Response {
    answer(&h, &name, None, true).await
}

pub async fn events(
    State(h): State<HookEndpoints>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Response {
    answer(&h, &name, Some((q, peer)), peer.ip().is_loopback()).await
}

/// `$status` when `events` is `None`, else `$events`.
async fn answer(
    h: &HookEndpoints,
    name: &str,
    events: Option<(EventsQuery, SocketAddr)>,
    local: bool,
) -> Response {
    let config = h.config.borrow().clone();
    let Some(hook) = config.hooks.iter().find(|x| x.name == name) else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no hook of that name");
    };
    let state = match h.store.channel_state(name).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(hook = name, error = %e, "cannot read the subscription status");
            return outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "cannot read the state",
            );
        }
    };
    let info = ChannelInfo::for_hook(&config, hook, Some(h.addr));
    let channel = Channel {
        // A zushook hook answers in the backport's shape too.
        format: match hook.notification.format {
            Format::FhirR5 => Format::FhirR5,
            _ => Format::FhirBackportR4,
        },
        subscription: &info.subscription,
        topic: &info.topic,
        status: state.status(),
        events_since_start: state.events,
    };
    let now = crate::source::bundle::format_instant(chrono::Utc::now());
    let id = Uuid::new_v5(
        &QUERY_NS,
        format!("{name}\n{now}\n{}", events.is_some()).as_bytes(),
    )
    .to_string();
    let Some((q, _peer)) = events else {
        let body = notification(
            &channel,
            NotificationType::QueryStatus,
            Content::Empty,
            &[],
            &id,
            &now,
        );
        return fhir(body);
    };
    let (since, until, content) = match parse(&q, hook, state.events, local) {
        Ok(p) => p,
        Err(text) => return outcome(StatusCode::BAD_REQUEST, "invalid", &text),
    };
    let with_bodies = content == Content::FullResource;
    let retained = match h
        .store
        .retained_events(name, since, until, with_bodies)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(hook = name, error = %e, "cannot read retained events");
            return outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "cannot read the state",
            );
        }
    };
    let records: Vec<_> = retained
        .iter()
        .map(|e| change_of(&e.body, &e.resource_type, &e.resource_id))
        .collect();
    let numbered: Vec<NumberedEvent> = retained
        .iter()
        .zip(&records)
        .map(|(e, c)| NumberedEvent {
            number: e.number,
            change: c,
            base_url: info.bases.get(&c.source).map(String::as_str),
        })
        .collect();
    let body = notification(
        &channel,
        NotificationType::QueryEvent,
        content,
        &numbered,
        &id,
        &now,
    );
    fhir(body)
}

/// The range asked for (defaults: from 1 to the last event) and the content
/// mode: what was asked, never more than the hook sends, and no bodies for a
/// peer on another machine.
fn parse(
    q: &EventsQuery,
    hook: &Hook,
    last: i64,
    local: bool,
) -> Result<(i64, i64, Content), String> {
    let number = |v: &Option<String>, key: &str, default: i64| match v.as_deref() {
        None | Some("") => Ok(default),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{key} must be a non-negative integer")),
    };
    let since = number(&q.events_since_number, "eventsSinceNumber", 1)?;
    let until = number(&q.events_until_number, "eventsUntilNumber", last)?;
    if until < since {
        return Err("eventsUntilNumber is below eventsSinceNumber".into());
    }
    let until = until.min(since.saturating_add(MAX_EVENTS_PER_QUERY - 1));
    let asked = match q.content.as_deref() {
        None | Some("") => hook.content,
        Some("full-resource") => Content::FullResource,
        Some("id-only") => Content::IdOnly,
        Some("empty") => Content::Empty,
        Some(_) => return Err("content must be empty, id-only or full-resource".into()),
    };
    let rank = |c: Content| match c {
        Content::Empty => 0,
        Content::IdOnly => 1,
        Content::FullResource => 2,
    };
    let mut content = if rank(asked) <= rank(hook.content) {
        asked
    } else {
        hook.content
    };
    if !local && content == Content::FullResource {
        content = Content::IdOnly;
    }
    Ok((since, until, content))
}

fn fhir(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

/// An OperationOutcome with one issue; the text is ours, never an input echoed.
fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    });
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}
