//! End-to-end: the real binary against a real third-party FHIR server,
//! Medplum's FHIR engine (@medplum/fhir-router, from npm) behind the small
//! Node wrapper in tests/fhir-server/. Its versionIds are UUIDs and its
//! lastUpdated values tie at millisecond precision: we test against its
//! behaviour, not our own assumptions. Needs `npm ci --prefix tests/fhir-server`.

use crate::common;

use common::authed::{AuthKind, Authed};
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

/// The core scenarios again, polled through an auth proxy that only takes
/// tokens from its own token endpoint (tests/common/auth_server.rs). Tokens
/// live 5 s, the one serving the 3rd request is revoked, and one page is
/// held until its token is due for renewal, so renewal between pages and
/// 401-then-refresh happen in every run; the proxy's books are checked
/// afterwards (`runs`: daemon starts in the scenario).
macro_rules! through_auth_proxy {
    ($($name:ident: $kind:expr, $scenario:ident, pages = $pages:expr, runs = $runs:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let t = Authed::start(FhirServer::medplum("cursor"), $kind).await;
            scenarios::$scenario(&t.fhir).await;
            t.check(stringify!($name), $pages, $runs);
        }
    )*};
}

const CC: AuthKind = AuthKind::ClientCredentials;
const ES384_DISCOVERY: AuthKind = AuthKind::Smart {
    alg: "ES384",
    discovery: true,
};
const RS384: AuthKind = AuthKind::Smart {
    alg: "RS384",
    discovery: false,
};

through_auth_proxy! {
    client_credentials_creates_updates_filter_and_restart: CC, creates_updates_filter_and_restart, pages = true, runs = 2;
    client_credentials_kill9_loses_nothing: CC, kill9_loses_nothing, pages = true, runs = 4;
    client_credentials_receiver_outage_then_recovery: CC, receiver_outage_then_recovery, pages = false, runs = 1;
    client_credentials_dead_letters_and_redrive: CC, dead_letters_and_redrive, pages = false, runs = 1;
    client_credentials_start_now_skips_the_past: CC, start_now_skips_the_past, pages = false, runs = 1;
    smart_es384_discovery_creates_updates_filter_and_restart: ES384_DISCOVERY, creates_updates_filter_and_restart, pages = true, runs = 2;
    smart_es384_discovery_kill9_loses_nothing: ES384_DISCOVERY, kill9_loses_nothing, pages = true, runs = 4;
    smart_es384_discovery_receiver_outage_then_recovery: ES384_DISCOVERY, receiver_outage_then_recovery, pages = false, runs = 1;
    smart_es384_discovery_dead_letters_and_redrive: ES384_DISCOVERY, dead_letters_and_redrive, pages = false, runs = 1;
    smart_es384_discovery_start_now_skips_the_past: ES384_DISCOVERY, start_now_skips_the_past, pages = false, runs = 1;
    smart_rs384_creates_updates_filter_and_restart: RS384, creates_updates_filter_and_restart, pages = true, runs = 2;
    smart_rs384_kill9_loses_nothing: RS384, kill9_loses_nothing, pages = true, runs = 4;
    smart_rs384_receiver_outage_then_recovery: RS384, receiver_outage_then_recovery, pages = false, runs = 1;
}
