//! End-to-end: the real binary against a real third-party FHIR server,
//! Medplum's FHIR engine (@medplum/fhir-router, from npm) behind the small
//! Node wrapper in tests/fhir-server/. Its versionIds are UUIDs and its
//! lastUpdated values tie at millisecond precision: we test against its
//! behaviour, not our own assumptions. Needs `npm ci --prefix tests/fhir-server`.

mod common;

use common::{FhirServer, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_creates_updates_filter_and_restart() {
    scenarios::creates_updates_filter_and_restart(&FhirServer::medplum("cursor")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_offset_paging_creates_updates_filter_and_restart() {
    scenarios::creates_updates_filter_and_restart(&FhirServer::medplum("offset")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_receiver_outage_then_recovery() {
    scenarios::receiver_outage_then_recovery(&FhirServer::medplum("cursor")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_dead_letters_and_redrive() {
    scenarios::dead_letters_and_redrive(&FhirServer::medplum("cursor")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_kill9_loses_nothing() {
    scenarios::kill9_loses_nothing(&FhirServer::medplum("cursor")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_start_now_skips_the_past() {
    scenarios::start_now_skips_the_past(&FhirServer::medplum("cursor")).await;
}
