//! Sources: one task per configured EHR, polling each resource type on schedule.

pub mod bundle;
pub mod client;
pub mod outcomes;
mod poll;
pub mod watermark;

pub use poll::{PollError, SourceTask, first_poll_spread};
