//! Delivery: per-hook workers that POST outbox messages, at least once.

pub mod retry;
mod sender;
pub mod signature;
mod worker;

pub use sender::{Attempt, Sender};
pub use worker::HookWorker;
