//! The sandbox: an embedded FHIR endpoint that writes synthetic data, and an
//! embedded webhook receiver. It powers `fhir-bridge demo` and is the fast fake
//! server for tests and benchmarks. It is not a FHIR server: it supports just
//! what fhir-bridge asks of one:
//!
//! - search `[base]/{Type}`: `_lastUpdated` (ge/gt/le/lt/eq), `_count`, cursor
//!   paging through `next` links, `patient`/`subject` (matching
//!   `subject.reference` or `patient.reference` == `Patient/{id}`, a comma
//!   list is any of them) and `organization` (`managingOrganization`); `_sort`
//!   is accepted and the order is always by lastUpdated, oldest first; other
//!   parameters are ignored (see `strict_params`);
//! - create, update, read, and delete (a read of a deleted resource is 410);
//! - `[base]/{Type}/_history?_since=…&_count=…` and `[base]/{Type}/{id}/_history`:
//!   a `history` Bundle, oldest first, paged, `_since` inclusive; each entry's
//!   `request.method` is POST (version 1), PUT (later) or DELETE (no
//!   `resource`). Memory: see history.rs;
//! - `Group/{id}` with members, written by `SandboxStore::set_group`;
//! - bulk data `$export` (and `Group/{id}/$export`), asynchronous, NDJSON
//!   files: see export.rs (`store.exports` holds its test switches).
//!
//! Tests drive it through `FhirSandbox::store`: `upsert`, `delete`,
//! `set_group`, `freeze_clock`, and `store.quirks` (quirks.rs) to act like
//! awkward servers: `descending`, `expire_next_links`/`expire_page_links`
//! (410 on a page link), `strict_params` (400 under `Prefer: handling=strict`),
//! `date_only` (no `Bundle.meta.lastUpdated`, only the `Date` header),
//! `hapi_history` (history newest first, DELETE entries without a time).

mod bundle;
mod export;
mod export_jobs;
pub mod fhir_server;
pub mod generator;
mod history;
mod params;
mod quirks;
pub mod receiver;
mod search;
mod store;

pub use export_jobs::Exports;
pub use fhir_server::FhirSandbox;
pub use quirks::Quirks;
pub use receiver::{Behaviour, Hit, Received, Receiver};
pub use store::{SandboxClock, SandboxStore};

/// What every handler of the sandbox's FHIR endpoint is given: the store it
/// serves and its base URL (for page links and `Content-Location`).
#[derive(Clone)]
struct AppState {
    store: std::sync::Arc<SandboxStore>,
    base: String,
}
