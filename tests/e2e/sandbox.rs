//! End-to-end: the real binary against the in-crate sandbox FHIR server.

use crate::common;

use common::{FhirServer, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_updates_filter_and_restart() {
    scenarios::creates_updates_filter_and_restart(&FhirServer::sandbox().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outage_then_recovery() {
    scenarios::receiver_outage_then_recovery(&FhirServer::sandbox().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_redrive() {
    scenarios::dead_letters_and_redrive(&FhirServer::sandbox().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_nothing() {
    scenarios::kill9_loses_nothing(&FhirServer::sandbox().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_skips_the_past() {
    scenarios::start_now_skips_the_past(&FhirServer::sandbox().await).await;
}
