//! Sources: one task per configured EHR, polling each resource type on schedule.

pub mod backfill;
mod capability;
pub mod client;
pub mod clock;
pub mod confirm;
mod errors;
mod export_job;
mod export_status;
mod fanout;
mod full_walk;
mod history_order;
mod notes;
pub mod outcomes;
mod page;
mod poll;
pub mod rate;
mod read_ahead;
mod roster;
pub mod strategy;
pub mod targets;
mod walk_position;
pub mod watermark;

pub use crate::route::{Routing, RoutingRx};
pub use poll::{DryRun, PollError, SourceTask};
pub use targets::{KnownTargets, first_poll_spread};
