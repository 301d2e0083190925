//! End to end, one module per feature: the real binary against the in-crate
//! sandbox or Medplum's engine, and a real receiver, on 127.0.0.1. One test
//! binary for all of them, so the crate is linked once rather than per file.

mod common;

#[path = "e2e/backfill.rs"]
mod backfill;
#[path = "e2e/isolation.rs"]
mod isolation;
#[path = "e2e/medplum.rs"]
mod medplum;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/poll_once.rs"]
mod poll_once;
#[cfg(feature = "postgres")]
#[path = "e2e/postgres_outbox.rs"]
mod postgres_outbox;
#[path = "e2e/reload.rs"]
mod reload;
#[cfg(feature = "postgres")]
#[path = "e2e/replicas.rs"]
mod replicas;
#[path = "e2e/sandbox.rs"]
mod sandbox;
#[path = "e2e/storage_faults.rs"]
mod storage_faults;
#[path = "e2e/transitions.rs"]
mod transitions;
