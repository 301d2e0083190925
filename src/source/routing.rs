//! Where a source's changes go: the hooks that take them (with their
//! filters) and how to wake each hook's worker. The supervisor publishes a
//! new `Routing` when hooks are added, removed or changed; a poll takes the
//! current one at its start, so a reload never pauses a source.

use crate::outbox::Route;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

#[derive(Default)]
pub struct Routing {
    pub routes: Vec<Route>,
    /// Wakes a hook's delivery worker when new messages are committed.
    pub wakers: HashMap<String, Arc<Notify>>,
}

pub type RoutingRx = watch::Receiver<Arc<Routing>>;

impl Routing {
    /// A routing that never changes (tests, one-off polls).
    pub fn fixed(self) -> RoutingRx {
        watch::channel(Arc::new(self)).1
    }
}
