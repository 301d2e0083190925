//! Delivery: per-hook workers that POST outbox messages, at least once.

mod attempt;
mod batch;
mod channel;
mod render;
pub mod retry;
mod sender;
mod worker;

pub use attempt::{Attempt, FailureKind};
pub use channel::ChannelInfo;
pub use sender::Sender;
pub use worker::HookWorker;
