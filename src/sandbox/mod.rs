//! The sandbox: an embedded FHIR endpoint that writes synthetic data, and an
//! embedded webhook receiver. It powers `fhir-bridge demo` and is the fast fake
//! server for tests and benchmarks. It is not a FHIR server: it supports just
//! the searches fhir-bridge makes (`_lastUpdated`, `_sort=_lastUpdated`, `_count`,
//! cursor paging), create, update and read.

pub mod fhir_server;
pub mod generator;
pub mod receiver;
mod store;

pub use fhir_server::FhirSandbox;
pub use receiver::{Behaviour, Hit, Received, Receiver};
pub use store::{SandboxClock, SandboxStore};
