//! Key material, below config and the components that use it: config
//! parses keys once at load (a bad key is a config error with its line),
//! and auth and delivery sign with them.
//!
//! - `smart.rs`: SMART Backend Services private keys and client assertions
//!   (auth to an EHR's token endpoint).
//! - `webhook.rs`: Standard Webhooks signing and verifying keys (what a
//!   hook's receiver checks).

pub mod smart;
pub mod webhook;
