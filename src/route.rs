//! Routing: which hooks a source's changes go to (`Route`, with their filters;
//! `Routing`, with the wake-ups of their workers), and a detected change turned
//! into one stored change and one outbox message per matching hook, with a
//! deterministic `message_id`. The body is rendered for each hook when it is
//! sent (`payload::render`).

use crate::config::{Config, Content, Hook};
use crate::diff::ChangeKind;
use crate::filter::topics::Topic;
use crate::filter::{Filter, FilterError, Resource};
use crate::payload::MAX_INCLUDED_BYTES;
use crate::state::{ChangeRecord, NewMessage};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::watch;
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
    pub topic: Option<&'static Topic>,
    pub content: Content,
}

impl Route {
    pub fn for_source(config: &Config, source: &str) -> Vec<Route> {
        config.hooks_for_source(source).map(Route::from).collect()
    }

    /// Whether this route's filter reads `$previous` on resources of this type.
    pub fn needs_previous(&self, resource_type: &str) -> bool {
        crate::filter::topics::needs_previous(&self.filter, self.topic, resource_type)
    }
}

impl From<&Hook> for Route {
    fn from(h: &Hook) -> Self {
        Route {
            hook: h.name.clone(),
            filter: h.filter.clone(),
            topic: h.topic,
            content: h.content,
        }
    }
}

/// Where a source's changes go: the hooks that take them (with their
/// filters); a commit wakes their workers through the state
/// (`Store::notify_due`). The supervisor publishes a
/// new `Routing` when hooks are added, removed or changed; a poll takes the
/// current one at its start, so a reload never pauses a source.
#[derive(Default)]
pub struct Routing {
    pub routes: Vec<Route>,
}

pub type RoutingRx = watch::Receiver<Arc<Routing>>;

impl Routing {
    /// A routing that never changes (tests, one-off polls).
    pub fn fixed(self) -> RoutingRx {
        watch::channel(Arc::new(self)).1
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
    /// The versionId was given before to other content of this resource (a
    /// server that never moves versionIds, or counts from 1 again after a
    /// delete): the message id takes the hash and time too, so it is not
    /// that earlier version's (which the outbox and receivers would drop).
    pub version_reused: bool,
    pub event: ChangeKind,
    pub raw: &'a str,
    /// The last version seen before this one (`$previous`); `None`: null.
    pub previous: Option<&'a Resource>,
    pub time: &'a str,
}

/// Filtering stopped because the caller set its cancellation flag. What
/// `route_change` added to `out` for this change is incomplete: the caller
/// drops the whole page, uncommitted, so it is read again after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("filtering cancelled")]
pub struct Cancelled;

/// Runs every route's filter on the change and builds a message for each match.
/// Filter runtime errors, budget overruns included, are non-matches, counted
/// per hook in `filter_errors`.
///
/// Blocking: each filter may take up to its time budget (100 ms) before it is
/// stopped. Call it from a blocking thread (`spawn_blocking`), ideally a whole
/// page inside one [`crate::filter::with_eval_stack`]. Called on a worker of
/// a multi-thread tokio runtime, it runs in `block_in_place`, so the worker's
/// other tasks move to another thread meanwhile (costs ~10 ns when the filters
/// are quick). Returns [`Cancelled`] soon after `cancel` becomes true.
pub fn route_change(
    change: &Change,
    routes: &[Route],
    out: &mut Vec<NewMessage>,
    filter_errors: &mut HashMap<String, u64>,
    cancel: &AtomicBool,
) -> Result<(), Cancelled> {
    if routes.is_empty() {
        return Ok(());
    }
    // One evaluation stack for every hook's filter on this resource.
    blocking(|| {
        crate::filter::with_eval_stack(|| route_parsed(change, routes, out, filter_errors, cancel))
    })
}

/// `f()`, in `block_in_place` when on a multi-thread runtime (it panics on a
/// current-thread one; on a blocking thread it is a no-op).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn route_parsed(
    change: &Change,
    routes: &[Route],
    out: &mut Vec<NewMessage>,
    filter_errors: &mut HashMap<String, u64>,
    cancel: &AtomicBool,
) -> Result<(), Cancelled> {
    let resource: Option<Resource> = crate::filter::parse_resource(change.raw).ok();
    let version_key = match (change.version_id, change.last_updated) {
        (Some(v), lu) if change.version_reused => {
            format!("v:{v}:h:{}:{}", hex(change.content_hash), lu.unwrap_or(""))
        }
        (Some(v), _) => format!("v:{v}"),
        (None, lu) => format!("h:{}:{}", hex(change.content_hash), lu.unwrap_or("")),
    };
    let null = Resource::Null;
    let previous = change.previous.unwrap_or(&null);
    let mut matched_routes = Vec::new();
    for route in routes {
        let matched = match &resource {
            Some(r) => route.filter.matches_change(r, previous, cancel),
            None => Err(FilterError::Input("unparseable resource".into())),
        };
        match matched {
            Ok(true) => {}
            Ok(false) => continue,
            Err(FilterError::Cancelled) => return Err(Cancelled),
            Err(e) => {
                crate::telemetry::Event::emit(crate::telemetry::source::FilterFailed {
                    hook: &route.hook,
                    resource_type: change.resource_type,
                    resource_id: change.resource_id,
                    error: &e,
                });
                *filter_errors.entry(route.hook.clone()).or_default() += 1;
                continue;
            }
        }
        matched_routes.push(route);
    }
    if matched_routes.is_empty() {
        return Ok(());
    }
    // The resource is stored only when some matching hook may send it: an
    // id-only hook never needs the PHI, nor does a resource over the limit.
    let keep_body = change.event != ChangeKind::Delete
        && change.raw.len() <= MAX_INCLUDED_BYTES
        && matched_routes
            .iter()
            .any(|r| r.content == Content::FullResource);
    let record = Arc::new(ChangeRecord {
        id: 0,
        source: change.source.to_string(),
        owner_id: change.owner_id.to_string(),
        resource_type: change.resource_type.to_string(),
        resource_id: change.resource_id.to_string(),
        version_id: change.version_id.map(String::from),
        last_updated: change.last_updated.map(String::from),
        event: change.event.as_str().to_string(),
        detected_at: change.time.to_string(),
        body: keep_body.then(|| change.raw.as_bytes().to_vec()),
    });
    for route in matched_routes {
        let mid = message_id(
            &route.hook,
            change.source,
            change.resource_type,
            change.resource_id,
            &version_key,
        );
        out.push(NewMessage {
            hook: route.hook.clone(),
            message_id: mid,
            change: record.clone(),
        });
    }
    Ok(())
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
            topic: None,
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

    const HASH: [u8; 32] = [0u8; 32];

    fn change() -> Change<'static> {
        Change {
            source: "s",
            owner_id: "o",
            resource_type: "Observation",
            resource_id: "1",
            version_id: Some("1"),
            last_updated: Some("2026-01-01T00:00:00Z"),
            content_hash: &HASH,
            version_reused: false,
            event: ChangeKind::Create,
            raw: r#"{"resourceType":"Observation","id":"1"}"#,
            previous: None,
            time: "2026-01-01T00:00:01Z",
        }
    }

    #[test]
    fn one_message_per_matching_hook_and_errors_are_counted() {
        let routes = vec![
            route("all", "true"),
            route("none", ".resourceType == \"Patient\""),
            route("broken", ".id + 1"),
        ];
        let (mut out, mut errs) = (vec![], HashMap::new());
        let never = AtomicBool::new(false);
        route_change(&change(), &routes, &mut out, &mut errs, &never).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].hook, "all");
        assert_eq!(
            out[0].message_id,
            message_id("all", "s", "Observation", "1", "v:1")
        );
        assert_eq!(errs.get("broken"), Some(&1));
    }

    /// One change for all matching hooks; its resource only when some hook
    /// may send it.
    #[test]
    fn the_matching_hooks_share_one_change() {
        let mut ids = route("ids", "true");
        ids.content = Content::IdOnly;
        let never = AtomicBool::new(false);
        let (mut out, mut errs) = (vec![], HashMap::new());
        let routes = vec![ids.clone(), route("full", "true")];
        route_change(&change(), &routes, &mut out, &mut errs, &never).unwrap();
        assert_eq!(out.len(), 2);
        assert!(Arc::ptr_eq(&out[0].change, &out[1].change));
        let c = &out[0].change;
        assert_eq!(c.body.as_deref(), Some(change().raw.as_bytes()));
        assert_eq!(
            (c.event.as_str(), c.detected_at.as_str()),
            ("create", change().time)
        );
        out.clear();
        route_change(&change(), &[ids], &mut out, &mut errs, &never).unwrap();
        assert_eq!(out[0].change.body, None, "no hook sends the resource");
    }

    #[test]
    fn a_filter_over_its_budget_is_a_counted_non_match() {
        let routes = vec![
            route("loops", "def f: f; f"),
            route("huge", "[range(1e9)] | length > 0"),
            route("all", "true"),
        ];
        let (mut out, mut errs) = (vec![], HashMap::new());
        let never = AtomicBool::new(false);
        route_change(&change(), &routes, &mut out, &mut errs, &never).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].hook, "all");
        assert_eq!(errs.get("loops"), Some(&1));
        assert_eq!(errs.get("huge"), Some(&1));
    }

    #[test]
    fn cancelling_stops_routing() {
        let routes = vec![route("all", "true"), route("loops", "def f: f; f")];
        let (mut out, mut errs) = (vec![], HashMap::new());
        let cancel = AtomicBool::new(true);
        assert_eq!(
            route_change(&change(), &routes, &mut out, &mut errs, &cancel),
            Err(Cancelled)
        );
        assert!(errs.is_empty(), "a cancelled filter is not a filter error");
    }
}
