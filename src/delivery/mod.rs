//! Delivery: per-hook workers that POST outbox messages, at least once.

mod batch;
mod channel;
mod render;
pub mod retry;
mod sender;
mod worker;

pub use channel::ChannelInfo;
pub use sender::{Attempt, Sender};
pub use worker::HookWorker;
