//! Filter -> outbox: turns a detected change into one outbox message per
//! matching hook, with a deterministic `message_id`.

use crate::config::{Config, Content, Hook};
use crate::diff::Event;
use crate::filter::{Filter, Resource};
use crate::payload::{ChangeView, zus_hook};
use crate::state::NewMessage;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Namespace for fhir-bridge message ids (UUIDv5).
const MESSAGE_NS: Uuid = Uuid::from_u128(0x6a1c_2d4e_9b7f_4f31_8e52_c0de_f00d_b1d6);

/// The same change for the same hook always gets the same id, so a re-send
/// after a crash can be deduplicated by the receiver.
pub fn message_id(
    hook: &str,
    source: &str,
    resource_type: &str,
    id: &str,
    version: &str,
) -> String {
    let name = format!("{hook}\n{source}\n{resource_type}/{id}\n{version}");
    Uuid::new_v5(&MESSAGE_NS, name.as_bytes()).to_string()
}

/// A hook as one source's poller sees it.
#[derive(Debug, Clone)]
pub struct Route {
    pub hook: String,
    pub filter: Arc<Filter>,
    pub content: Content,
}

impl Route {
    pub fn for_source(config: &Config, source: &str) -> Vec<Route> {
        config.hooks_for_source(source).map(Route::from).collect()
    }
}

impl From<&Hook> for Route {
    fn from(h: &Hook) -> Self {
        Route {
            hook: h.name.clone(),
            filter: h.filter.clone(),
            content: h.content,
        }
    }
}

/// A change detected by the diff stage.
pub struct Change<'a> {
    pub source: &'a str,
    pub owner_id: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub version_id: Option<&'a str>,
    pub last_updated: Option<&'a str>,
    /// Identifies this version when the server gives no versionId.
    pub content_hash: &'a [u8; 32],
    pub event: Event,
    pub raw: &'a str,
    pub time: &'a str,
}

/// Runs every route's filter on the change and builds a message for each match.
/// Filter runtime errors are non-matches, counted per hook in `filter_errors`.
pub fn route_change(
    change: &Change,
    routes: &[Route],
    out: &mut Vec<NewMessage>,
    filter_errors: &mut HashMap<String, u64>,
) {
    if routes.is_empty() {
        return;
    }
    let resource: Option<Resource> = crate::filter::parse_resource(change.raw).ok();
    let version_key = match (change.version_id, change.last_updated) {
        (Some(v), _) => format!("v:{v}"),
        (None, lu) => format!("h:{}:{}", hex(change.content_hash), lu.unwrap_or("")),
    };
    for route in routes {
        let matched = match &resource {
            Some(r) => route.filter.matches(r),
            None => Err(crate::filter::FilterError::Input(
                "unparseable resource".into(),
            )),
        };
        match matched {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(hook = %route.hook, resource = %format!("{}/{}", change.resource_type, change.resource_id), error = %e, "filter error counted as non-match");
                *filter_errors.entry(route.hook.clone()).or_default() += 1;
                continue;
            }
        }
        let mid = message_id(
            &route.hook,
            change.source,
            change.resource_type,
            change.resource_id,
            &version_key,
        );
        let view = ChangeView {
            message_id: &mid,
            time: change.time,
            resource_type: change.resource_type,
            resource_id: change.resource_id,
            owner_id: change.owner_id,
            source_name: change.source,
            event: change.event.as_str(),
            version_id: change.version_id,
            last_updated: change.last_updated,
            raw: change.raw,
        };
        out.push(NewMessage {
            hook: route.hook.clone(),
            payload: zus_hook(&view, route.content),
            message_id: mid,
            source: change.source.to_string(),
            resource_type: change.resource_type.to_string(),
            resource_id: change.resource_id.to_string(),
            version_id: change.version_id.map(String::from),
            event: change.event.as_str(),
        });
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, code: &str) -> Route {
        Route {
            hook: name.into(),
            filter: Arc::new(Filter::compile(code).unwrap()),
            content: Content::FullResource,
        }
    }

    #[test]
    fn message_ids_are_deterministic_and_distinct() {
        let a = message_id("h", "s", "Observation", "1", "v:1");
        assert_eq!(a, message_id("h", "s", "Observation", "1", "v:1"));
        assert_ne!(a, message_id("h", "s", "Observation", "1", "v:2"));
        assert_ne!(a, message_id("h2", "s", "Observation", "1", "v:1"));
        assert_ne!(a, message_id("h", "s2", "Observation", "1", "v:1"));
    }

    #[test]
    fn one_message_per_matching_hook_and_errors_are_counted() {
        let routes = vec![
            route("all", "true"),
            route("none", ".resourceType == \"Patient\""),
            route("broken", ".id + 1"),
        ];
        let hash = [0u8; 32];
        let change = Change {
            source: "s",
            owner_id: "o",
            resource_type: "Observation",
            resource_id: "1",
            version_id: Some("1"),
            last_updated: Some("2026-01-01T00:00:00Z"),
            content_hash: &hash,
            event: Event::Create,
            raw: r#"{"resourceType":"Observation","id":"1"}"#,
            time: "2026-01-01T00:00:01Z",
        };
        let (mut out, mut errs) = (vec![], HashMap::new());
        route_change(&change, &routes, &mut out, &mut errs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].hook, "all");
        assert_eq!(
            out[0].message_id,
            message_id("all", "s", "Observation", "1", "v:1")
        );
        assert_eq!(errs.get("broken"), Some(&1));
    }
}
