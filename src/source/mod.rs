//! Sources: one task per configured EHR, polling each resource type on schedule.

pub mod backfill;
mod capability;
pub mod client;
pub mod clock;
mod commit;
mod errors;
mod fanout;
mod fetch;
mod notes;
pub mod outcomes;
mod page;
mod poll;
pub mod rate;
mod roster;
mod start;
pub mod strategy;
pub mod targets;
mod walk;
pub mod watermark;

pub use crate::route::{Routing, RoutingRx};
pub use commit::DryRun;
pub use poll::{PollError, SourceTask};
pub use targets::{KnownTargets, first_poll_spread};
