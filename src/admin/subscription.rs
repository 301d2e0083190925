//! `GET /hooks/{name}/$status` and `GET /hooks/{name}/$events`: a hook seen
//! as a FHIR Subscription, so that a receiver that notices a gap in event
//! numbers can fill it (R4 Backport IG `$status` / `$events`).
//!
//! Resource bodies are PHI: `$events` hands them out only to a peer on this
//! machine that presents `[admin] token` as a bearer token (any local account
//! can connect to loopback), only for a hook that sends full resources, and
//! only while the bridge still holds them (pending and dead messages; a
//! delivered message's body is deleted). Without a configured token no
//! bodies at all: `content` is a hint the server may lower (Backport IG), so
//! the answer is `id-only`. A wrong token is a 401 whatever was asked; no
//! token where bodies would be served is a 401 too.

use crate::config::{AdminToken, Config, Content, Format, Hook};
use crate::delivery::ChannelInfo;
use crate::payload::fhir::{Channel, NotificationType, NumberedEvent, change_of, notification};
use crate::state::{MAX_EVENTS_PER_QUERY, Store};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
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
    answer(&h, &name, None).await
}

pub async fn events(
    State(h): State<HookEndpoints>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let config = h.config.borrow().clone();
    let token = config.admin.as_ref().and_then(|a| a.token.as_ref());
    let presented = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let bodies = match (caller(token, presented), peer.ip().is_loopback()) {
        (Caller::WrongCredential, _) => {
            return unauthorized("the Authorization header does not carry the admin token");
        }
        (_, false) => Bodies::Never,
        (Caller::Authenticated, true) => Bodies::Allowed,
        (Caller::Anonymous, true) if token.is_some() => Bodies::NeedToken,
        (Caller::Anonymous, true) => Bodies::Never,
    };
    answer(&h, &name, Some((q, bodies))).await
}

/// Who asks, as far as resource bodies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// No credential, or one while no token is configured (it proves nothing).
    Anonymous,
    Authenticated,
    /// A credential that is not the configured token.
    WrongCredential,
}

fn caller(token: Option<&AdminToken>, authorization: Option<&[u8]>) -> Caller {
    let (Some(token), Some(value)) = (token, authorization) else {
        return Caller::Anonymous;
    };
    match bearer(value) {
        Some(presented) if token.matches(presented) => Caller::Authenticated,
        _ => Caller::WrongCredential,
    }
}

/// The credential of `Bearer CREDENTIAL` (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Whether this `$events` request may have resource bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bodies {
    Allowed,
    /// A remote peer, or no token configured: at most `id-only`.
    Never,
    /// A token is configured and was not presented: bodies are a 401.
    NeedToken,
}

/// `$status` when `events` is `None`, else `$events`.
async fn answer(h: &HookEndpoints, name: &str, events: Option<(EventsQuery, Bodies)>) -> Response {
    let config = h.config.borrow().clone();
    let Some(hook) = config.hooks.iter().find(|x| x.name == name) else {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no hook of that name");
    };
    let state = match h.store.channel_state(name).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(hook = name, error = %e, "cannot read the subscription status");
            return state_unreadable();
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
    let now = crate::fhir::format_instant(chrono::Utc::now());
    let id = Uuid::new_v5(
        &QUERY_NS,
        format!("{name}\n{now}\n{}", events.is_some()).as_bytes(),
    )
    .to_string();
    let Some((q, bodies)) = events else {
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
    query_event(h, name, hook, &channel, &info, (q, bodies), (&id, &now)).await
}

/// `$events`: the retained events the query asks for, as a `query-event`
/// notification (bodies only for a caller with the admin token).
async fn query_event(
    h: &HookEndpoints,
    name: &str,
    hook: &crate::config::Hook,
    channel: &Channel<'_>,
    info: &ChannelInfo,
    (q, bodies): (EventsQuery, Bodies),
    (id, now): (&str, &str),
) -> Response {
    let (since, until, content) = match parse(&q, hook, channel.events_since_start, bodies) {
        Ok(p) => p,
        Err(Refused::Invalid(text)) => return outcome(StatusCode::BAD_REQUEST, "invalid", &text),
        Err(Refused::NeedToken) => {
            return unauthorized(
                "resource bodies need `Authorization: Bearer` with the admin token; ask content=id-only for ids alone",
            );
        }
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
            return state_unreadable();
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
        channel,
        NotificationType::QueryEvent,
        content,
        &numbered,
        id,
        now,
    );
    fhir(body)
}

fn state_unreadable() -> Response {
    outcome(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "cannot read the state",
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Invalid(String),
    NeedToken,
}

impl From<String> for Refused {
    fn from(text: String) -> Refused {
        Refused::Invalid(text)
    }
}

/// The range asked for (defaults: from 1 to the last event) and the content
/// mode: what was asked, never more than the hook sends, and bodies only as
/// `bodies` allows.
fn parse(
    q: &EventsQuery,
    hook: &Hook,
    last: i64,
    bodies: Bodies,
) -> Result<(i64, i64, Content), Refused> {
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
    // Past the last event without an end (a receiver asking whether anything
    // came after what it has): an empty answer, not an error about a
    // parameter it never sent.
    let until_given = !matches!(q.events_until_number.as_deref(), None | Some(""));
    if until < since && until_given {
        return Err(Refused::Invalid(
            "eventsUntilNumber is below eventsSinceNumber".into(),
        ));
    }
    let until = until.min(since.saturating_add(MAX_EVENTS_PER_QUERY - 1));
    let asked = match q.content.as_deref() {
        None | Some("") => hook.content,
        Some("full-resource") => Content::FullResource,
        Some("id-only") => Content::IdOnly,
        Some("empty") => Content::Empty,
        Some(_) => {
            return Err(Refused::Invalid(
                "content must be empty, id-only or full-resource".into(),
            ));
        }
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
    if content == Content::FullResource {
        match bodies {
            Bodies::Allowed => {}
            Bodies::Never => content = Content::IdOnly,
            Bodies::NeedToken => return Err(Refused::NeedToken),
        }
    }
    Ok((since, until, content))
}

fn fhir(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

/// A 401 that asks for the bearer token; nothing about the hook or its events.
fn unauthorized(text: &str) -> Response {
    let mut r = outcome(StatusCode::UNAUTHORIZED, "login", text);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"fhir-bridge admin\""),
    );
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(admin: &str) -> Config {
        let text = format!(
            "state_dir = \"s\"\n[[source]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:1/fhir\"\nresources = [\"Patient\"]\n[[hook]]\nname = \"h\"\nurl = \"http://127.0.0.1:2/h\"\nfilter = \"true\"\nformat = \"fhir-backport-r4\"\n{admin}"
        );
        Config::from_str(&text, std::path::Path::new("b.toml")).unwrap()
    }

    fn query(content: Option<&str>) -> EventsQuery {
        EventsQuery {
            events_since_number: None,
            events_until_number: None,
            content: content.map(String::from),
        }
    }

    #[test]
    fn only_the_configured_bearer_token_authenticates() {
        let c = config("[admin]\nlisten = \"127.0.0.1:9464\"\ntoken = \"0123456789abcdef\"\n");
        let token = c.admin.as_ref().and_then(|a| a.token.as_ref());
        assert_eq!(caller(token, None), Caller::Anonymous);
        assert_eq!(
            caller(token, Some(b"Bearer 0123456789abcdef")),
            Caller::Authenticated
        );
        assert_eq!(
            caller(token, Some(b"bearer  0123456789abcdef ")),
            Caller::Authenticated
        );
        for wrong in [
            &b"Bearer 0123456789abcdeX"[..],
            b"Bearer ",
            b"Bearer0123456789abcdef",
            b"Basic 0123456789abcdef",
            b"0123456789abcdef",
            b"",
        ] {
            assert_eq!(caller(token, Some(wrong)), Caller::WrongCredential);
        }
        // Without a configured token a credential proves nothing.
        assert_eq!(
            caller(None, Some(b"Bearer 0123456789abcdef")),
            Caller::Anonymous
        );
    }

    /// `eventsSinceNumber` past the last event, no end given: nothing to
    /// answer (an empty range), not a 400; an end below the start given
    /// explicitly is still refused.
    #[test]
    fn asking_past_the_last_event_is_an_empty_range() {
        let c = config("");
        let hook = &c.hooks[0];
        let q = |since: &str, until: Option<&str>| EventsQuery {
            events_since_number: Some(since.into()),
            events_until_number: until.map(String::from),
            content: Some("id-only".into()),
        };
        let (since, until, _) = parse(&q("6", None), hook, 5, Bodies::Never).unwrap();
        assert!(until < since, "{since}..={until}");
        let (since, until, _) = parse(&q("1", None), hook, 0, Bodies::Never).unwrap();
        assert!(until < since, "{since}..={until}");
        assert!(matches!(
            parse(&q("6", Some("5")), hook, 9, Bodies::Never),
            Err(Refused::Invalid(_))
        ));
        assert_eq!(parse(&q("2", None), hook, 5, Bodies::Never).unwrap().1, 5);
    }

    #[test]
    fn bodies_only_for_an_authenticated_local_caller() {
        let c = config("");
        let hook = &c.hooks[0];
        assert_eq!(hook.content, Content::FullResource);
        let content = |asked, bodies| parse(&query(asked), hook, 5, bodies).map(|p| p.2);
        for asked in [None, Some("full-resource")] {
            assert_eq!(content(asked, Bodies::Allowed), Ok(Content::FullResource));
            assert_eq!(content(asked, Bodies::Never), Ok(Content::IdOnly));
            assert_eq!(content(asked, Bodies::NeedToken), Err(Refused::NeedToken));
        }
        for bodies in [Bodies::Allowed, Bodies::Never, Bodies::NeedToken] {
            assert_eq!(content(Some("id-only"), bodies), Ok(Content::IdOnly));
            assert_eq!(content(Some("empty"), bodies), Ok(Content::Empty));
        }
        assert!(matches!(
            content(Some("all"), Bodies::Allowed),
            Err(Refused::Invalid(_))
        ));
    }
}
