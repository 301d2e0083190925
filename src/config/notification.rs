//! A hook's notification shape: `format`, `content`, `max_events_per_bundle`
//! and `heartbeat_period`, validated together (some only make sense for the
//! FHIR formats).

use super::ctx::{Ctx, MIN_SECOND};
use super::raw::RawHook;
use super::{ConfigError, Content};
use std::time::Duration;

/// What a webhook body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `{message_id, source, time, resourceId, ...}`, one change per POST.
    #[default]
    ZusHook,
    /// A Subscriptions R5 Backport IG (R4) notification Bundle.
    FhirBackportR4,
    /// An R5 notification Bundle (SubscriptionStatus first).
    FhirR5,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::ZusHook => "zushook",
            Format::FhirBackportR4 => "fhir-backport-r4",
            Format::FhirR5 => "fhir-r5",
        }
    }

    /// A FHIR Subscriptions channel: handshake, heartbeats, event numbers in the body.
    pub fn is_fhir(self) -> bool {
        self != Format::ZusHook
    }
}

/// Most changes one notification may carry (Aidbox batches up to 20).
pub const MAX_EVENTS_PER_BUNDLE: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub format: Format,
    /// Changes per notification, in event-number order (1: one per POST).
    pub max_events_per_bundle: usize,
    /// A heartbeat after this long without any other notification (FHIR formats).
    pub heartbeat_period: Option<Duration>,
}

/// The hook's `content` and its notification shape.
pub(super) fn validate(
    ctx: &Ctx,
    what: &str,
    h: &RawHook,
) -> Result<(Content, Notification), ConfigError> {
    let format = match h.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
        None | Some(("zushook", _)) => Format::ZusHook,
        Some(("fhir-backport-r4", _)) => Format::FhirBackportR4,
        Some(("fhir-r5", _)) => Format::FhirR5,
        Some((_, span)) => {
            return Err(ctx.err(
                span,
                format!(
                    "{what}: `format` must be \"zushook\", \"fhir-backport-r4\" or \"fhir-r5\""
                ),
            ));
        }
    };
    let fhir_only = |key: &str, span| {
        ctx.err(
            span,
            format!(
                "{what}: `{key}` needs a FHIR format (`format = \"fhir-backport-r4\"` or \"fhir-r5\"); \
                 a zushook body carries one change"
            ),
        )
    };
    let content = match h.content.as_ref().map(|c| (c.get_ref().as_str(), c.span())) {
        None | Some(("full-resource", _)) => Content::FullResource,
        Some(("id-only", _)) => Content::IdOnly,
        Some(("empty", span)) if !format.is_fhir() => {
            return Err(fhir_only("content = \"empty\"", span));
        }
        Some(("empty", _)) => Content::Empty,
        Some((_, span)) => {
            return Err(ctx.err(
                span,
                format!("{what}: `content` must be \"full-resource\", \"id-only\" or \"empty\""),
            ));
        }
    };
    let max_events_per_bundle = match &h.max_events_per_bundle {
        None => 1,
        Some(n) if !(1..=MAX_EVENTS_PER_BUNDLE).contains(n.get_ref()) => {
            return Err(ctx.err(
                n.span(),
                format!("{what}: `max_events_per_bundle` must be 1..={MAX_EVENTS_PER_BUNDLE}"),
            ));
        }
        Some(n) if *n.get_ref() > 1 && !format.is_fhir() => {
            return Err(fhir_only("max_events_per_bundle", n.span()));
        }
        Some(n) => *n.get_ref() as usize,
    };
    let heartbeat_period = match &h.heartbeat_period {
        None => None,
        Some(p) if !format.is_fhir() => return Err(fhir_only("heartbeat_period", p.span())),
        Some(p) => Some(ctx.at_least(what, "heartbeat_period", p, MIN_SECOND)?),
    };
    Ok((
        content,
        Notification {
            format,
            max_events_per_bundle,
            heartbeat_period,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn hook(keys: &str) -> Result<(Content, Notification), String> {
        let text = format!(
            "state_dir = \"s\"\n[[source]]\nname = \"ehr\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n\
             resources = [\"Observation\"]\n[[hook]]\nname = \"h\"\nurl = \"http://127.0.0.1:2/\"\n{keys}"
        );
        Config::from_str(&text, Path::new("b.toml"))
            .map(|c| (c.hooks[0].content, c.hooks[0].notification.clone()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_one_zushook_change_per_post() {
        let (content, n) = hook("").unwrap();
        assert_eq!(n.format, Format::ZusHook);
        assert_eq!(content, Content::FullResource);
        assert_eq!((n.max_events_per_bundle, n.heartbeat_period), (1, None));
    }

    #[test]
    fn fhir_formats_take_batches_heartbeats_and_empty() {
        let (content, n) = hook(
            "format = \"fhir-backport-r4\"\ncontent = \"empty\"\nmax_events_per_bundle = 20\nheartbeat_period = \"60s\"\n",
        )
        .unwrap();
        assert_eq!(n.format, Format::FhirBackportR4);
        assert_eq!(content, Content::Empty);
        assert_eq!(n.max_events_per_bundle, 20);
        assert_eq!(n.heartbeat_period, Some(Duration::from_secs(60)));
        assert_eq!(
            hook("format = \"fhir-r5\"\n").unwrap().1.format,
            Format::FhirR5
        );
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = hook("format = \"fhir\"\n").unwrap_err();
        assert!(e.starts_with("b.toml:9: hook `h`: `format` must be"), "{e}");
        for (keys, key) in [
            ("content = \"empty\"\n", "content = \"empty\""),
            ("max_events_per_bundle = 5\n", "max_events_per_bundle"),
            ("heartbeat_period = \"60s\"\n", "heartbeat_period"),
        ] {
            let e = hook(keys).unwrap_err();
            assert!(e.contains(&format!("`{key}` needs a FHIR format")), "{e}");
            assert!(e.starts_with("b.toml:9:"), "{e}");
        }
        let e = hook("format = \"fhir-r5\"\nmax_events_per_bundle = 0\n").unwrap_err();
        assert!(e.contains("`max_events_per_bundle` must be 1..=100"), "{e}");
        let e = hook("format = \"fhir-r5\"\nheartbeat_period = \"10ms\"\n").unwrap_err();
        assert!(e.contains("`heartbeat_period` must be at least 1s"), "{e}");
    }
}
