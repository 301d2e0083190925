//! fhir-bridge: turns FHIR search polling into at-least-once webhooks.
//!
//! Data flows one way: [`source`] (poll) -> [`diff`] -> [`filter`] ->
//! [`route`] (to each hook's outbox, durable, in [`state`]) -> [`delivery`]. [`config`] reads
//! `bridges.toml`; [`daemon`] runs it all, with [`housekeeping`] keeping the
//! state bounded; [`cli`] holds the operator commands. [`telemetry`] tells
//! what happens (log lines and metrics), [`admin`] serves the metrics and
//! health endpoints. At the bottom, shared by all and importing none of
//! them: [`fhir`] (ids, instants, the Bundle reader), [`http`] (what every
//! HTTP exchange shares: error text without URLs, `Retry-After`, bounded
//! body reads) and [`signing`] (SMART and webhook keys).

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod diff;
pub mod fhir;
pub mod filter;
pub mod housekeeping;
pub mod http;
pub mod logsafe;
pub mod payload;
pub mod progress;
pub mod retry_action;
pub mod route;
pub mod sandbox;
pub mod signing;
pub mod source;
pub mod state;
pub mod telemetry;

#[cfg(test)]
mod architecture_tests;
