//! Polling strategies end to end, on the in-crate sandbox (Medplum's engine
//! has no type-level `_history` and leaves no trace of a delete): `history`
//! gives creates, updates and deletes once each, in order per resource,
//! across `kill -9`; `last-updated` loses nothing on a server that returns
//! newest first (as Cerner does). The same on Medplum (`medplum`) and on
//! SEKMET (`sekmet`), modules of this binary so the crate is linked once.

mod common;

#[path = "strategies/medplum.rs"]
mod medplum;
#[path = "strategies/sekmet.rs"]
mod sekmet;

use common::scenarios::observation;
use common::{Bridge, FhirServer, by_resource, config_for, hook, wait_for};
use fhir_bridge::sandbox::{Received, Receiver};
use std::collections::BTreeMap;

/// The id of what `store.upsert` stored.
fn id_of(stored: std::sync::Arc<str>) -> String {
    let v: serde_json::Value = serde_json::from_str(&stored).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// The test source (all Observations from the beginning) with `extra` keys.
fn source_with(fhir: &FhirServer, hooks: &str, extra: &str) -> String {
    config_for(fhir, &["Observation"], "2000-01-01T00:00:00Z", hooks).replace(
        "owner_id = \"org/test\"",
        &format!("owner_id = \"org/test\"\n{extra}"),
    )
}

/// Waits until the first target's `field` on status contains `text` (poll
/// outcomes are written up to a second after the poll).
async fn wait_for_status(bridge: &Bridge, field: &str, text: &str) {
    wait_for(30, &format!("{field} with {text:?} on status"), || {
        bridge.status_json()["sources"][0]["targets"][0][field]
            .as_str()
            .is_some_and(|v| v.contains(text))
    })
    .await;
}

/// `n` final Observations written to the sandbox; their ids.
fn seed(store: &fhir_bridge::sandbox::SandboxStore, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| id_of(store.upsert("Observation", None, observation("N", "final"))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gives_creates_updates_and_deletes_once_in_order_across_kill9() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source_with(&fhir, &hooks, "strategy = \"history\"");
    let mut bridge = Bridge::start(&config);
    // a: created, updated, deleted; b: created, deleted, created again; c: created.
    let a = id_of(store.upsert("Observation", None, observation("N", "preliminary")));
    let b = id_of(store.upsert("Observation", None, observation("N", "final")));
    wait_for(30, "two creates", || rx.count() >= 2).await;
    store.upsert("Observation", Some(&a), observation("H", "final"));
    assert!(store.delete("Observation", &b), "a={a} b={b}");
    bridge.kill9();
    assert!(store.delete("Observation", &a));
    store.upsert("Observation", Some(&b), observation("N", "amended"));
    let c = id_of(store.upsert("Observation", None, observation("L", "final")));
    bridge.restart();
    wait_for(30, "every version", || {
        by_resource(&rx.received())
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 7
    })
    .await;
    let got = by_resource(&rx.received());
    let events =
        |id: &str| -> Vec<(String, Option<String>)> { got[&format!("Observation/{id}")].clone() };
    let v = |e: &str, n: &str| (e.to_string(), Some(n.to_string()));
    assert_eq!(
        events(&a),
        [v("create", "1"), v("update", "2"), v("delete", "3")]
    );
    assert_eq!(
        events(&b),
        [v("create", "1"), v("delete", "2"), v("create", "3")]
    );
    assert_eq!(events(&c), [v("create", "1")]);
    // A delete carries no resource.
    for r in rx.received().iter().filter(|r| r.event == "delete") {
        assert_eq!(r.body["resourceIncluded"], false);
        assert!(r.body.get("resource").is_none());
    }
    // Polls go on re-reading the window: nothing more arrives.
    let before = rx.count();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        by_resource(&rx.received())
            .values()
            .map(Vec::len)
            .sum::<usize>(),
        7
    );
    assert!(rx.count() >= before);
}

/// History listed newest first (as the spec has it), over many pages: a
/// resource's create, update and delete fall on different pages, and still
/// arrive once each, in order (the chain is read ahead and taken last page
/// first). Then more of the same while the bridge runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_first_history_over_many_pages_keeps_every_version_in_order() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.quirks.descending(true);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source_with(&fhir, &hooks, "strategy = \"history\"")
        .replace("page_size = 7", "page_size = 2");
    assert!(config.contains("page_size = 2"), "{config}");
    let ids: Vec<String> = (0..5)
        .map(|_| id_of(store.upsert("Observation", None, observation("N", "preliminary"))))
        .collect();
    for id in &ids {
        store.upsert("Observation", Some(id), observation("N", "final"));
    }
    assert!(store.delete("Observation", &ids[0]));
    assert!(store.delete("Observation", &ids[3]));
    let mut bridge = Bridge::start(&config);
    let total = |rx: &Receiver| {
        by_resource(&rx.received())
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_for(30, "12 versions", || total(&rx) == 12).await;
    bridge.kill9();
    for id in &ids[1..3] {
        store.upsert("Observation", Some(id), observation("H", "amended"));
    }
    assert!(store.delete("Observation", &ids[4]));
    bridge.restart();
    wait_for(30, "15 versions", || total(&rx) == 15).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let got = by_resource(&rx.received());
    let events = |id: &str| -> Vec<String> {
        got[&format!("Observation/{id}")]
            .iter()
            .map(|e| e.0.clone())
            .collect()
    };
    assert_eq!(events(&ids[0]), ["create", "update", "delete"]);
    assert_eq!(events(&ids[1]), ["create", "update", "update"]);
    assert_eq!(events(&ids[2]), ["create", "update", "update"]);
    assert_eq!(events(&ids[3]), ["create", "update", "delete"]);
    assert_eq!(events(&ids[4]), ["create", "update", "delete"]);
    assert_eq!(total(&rx), 15);
}

/// A newest-first history chain longer than the read-ahead (here the page
/// cap) goes through in the server's order, and status says what that may
/// cost; the newest version of everything still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_chain_past_the_read_ahead_is_noted_on_status() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.quirks.descending(true);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source_with(
        &fhir,
        &hooks,
        "strategy = \"history\"\nmax_pages_per_poll = 2",
    )
    .replace("page_size = 7", "page_size = 2");
    let ids: Vec<String> = (0..6)
        .map(|_| id_of(store.upsert("Observation", None, observation("N", "final"))))
        .collect();
    let bridge = Bridge::start(&config);
    wait_for_status(&bridge, "last_warning", "longer than the read-ahead").await;
    // Newest first: the two pages read hold the four newest creates.
    wait_for(30, "the four newest", || {
        by_resource(&rx.received()).len() == 4
    })
    .await;
    let got = by_resource(&rx.received());
    for id in &ids[2..] {
        assert!(
            got.contains_key(&format!("Observation/{id}")),
            "{id}: {got:?}"
        );
    }
    wait_for_status(&bridge, "last_error", "max_pages_per_poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_updated_loses_nothing_on_a_server_that_returns_newest_first() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.quirks.descending(true);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks);
    let mut bridge = Bridge::start(&config);
    let total = |rx: &Receiver| {
        by_resource(&rx.received())
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    let mut ids = seed(store, 20);
    wait_for(60, "20 creates", || total(&rx) == 20).await;
    bridge.kill9();
    ids.extend(seed(store, 20));
    bridge.restart();
    wait_for(60, "40 creates", || total(&rx) == 40).await;
    for id in ids.iter().take(10) {
        store.upsert("Observation", Some(id), observation("H", "amended"));
    }
    wait_for(60, "10 updates", || total(&rx) == 50).await;
    let got = by_resource(&rx.received());
    assert_eq!(got.len(), 40);
    for (i, id) in ids.iter().enumerate() {
        let events: Vec<&str> = got[&format!("Observation/{id}")]
            .iter()
            .map(|e| e.0.as_str())
            .collect();
        let expected: &[&str] = if i < 10 {
            &["create", "update"]
        } else {
            &["create"]
        };
        assert_eq!(events, expected, "{id}");
    }
}

/// An expired page context (a `next` link answering 410): the poll starts
/// the search again from the watermark instead of failing, and nothing is
/// lost or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_next_link_restarts_the_search_from_the_watermark() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks);
    for _ in 0..30 {
        store.upsert("Observation", None, observation("N", "final"));
    }
    // The first poll's page 2 finds its page context gone.
    store.quirks.expire_next_link_once();
    let bridge = Bridge::start(&config);
    let total = |rx: &Receiver| {
        by_resource(&rx.received())
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_for(60, "30 creates", || total(&rx) == 30).await;
    assert_eq!(rx.count(), 30, "each once");
    wait_for_status(&bridge, "last_warning", "expired next link").await;
}

/// `Prefer: handling=strict`: a parameter the server does not know is its
/// error, on status, not a different search answered silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_search_parameter_is_an_error_not_a_wider_search() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.quirks.strict_params(true);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = config_for(&fhir, &["Observation"], "2000-01-01T00:00:00Z", &hooks)
        + "\n[source.params]\nObservation = \"no-such-param=1\"\n";
    store.upsert("Observation", None, observation("N", "final"));
    let bridge = Bridge::start(&config);
    wait_for(30, "a failed poll", || {
        bridge.status_json()["sources"][0]["targets"][0]["last_outcome"] == "error"
    })
    .await;
    let target = &bridge.status_json()["sources"][0]["targets"][0];
    assert!(
        target["last_error"].as_str().unwrap().contains("HTTP 400"),
        "{target}"
    );
    assert_eq!(rx.count(), 0);
}

/// The events received on one hook path, per resource (see `by_resource`).
fn on_path(rx: &Receiver, path: &str) -> BTreeMap<String, Vec<(String, Option<String>)>> {
    let got: Vec<Received> = rx
        .received()
        .into_iter()
        .filter(|r| r.path.ends_with(path))
        .collect();
    by_resource(&got)
}

fn event_count(events: &BTreeMap<String, Vec<(String, Option<String>)>>) -> usize {
    events.values().map(Vec::len).sum()
}

/// `snapshot`: every poll walks the whole set; creates and an update come
/// from the diff, a delete from what a complete walk no longer meets, each
/// once, across `kill -9`. A delete goes through the filters as a stub with
/// `$previous` (the last version seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_gives_creates_updates_and_deletes_once_across_kill9() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "")
        + &hook(
            "was-preliminary",
            &rx.url("hooks/prev"),
            r#"$previous.status == "preliminary""#,
            "",
        );
    let config = source_with(&fhir, &hooks, "strategy = \"snapshot\"");
    // Two pages and a bit (page_size 7).
    let mut ids = Vec::new();
    for i in 0..16 {
        let status = if i == 1 { "preliminary" } else { "final" };
        ids.push(id_of(store.upsert(
            "Observation",
            None,
            observation("N", status),
        )));
    }
    let mut bridge = Bridge::start(&config);
    wait_for(60, "16 creates", || {
        event_count(&on_path(&rx, "/all")) == 16
    })
    .await;
    let (a, b, c, e) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    store.upsert("Observation", Some(a), observation("H", "amended"));
    assert!(store.delete("Observation", b));
    wait_for(60, "an update and a delete", || {
        event_count(&on_path(&rx, "/all")) == 18
    })
    .await;
    bridge.kill9();
    assert!(store.delete("Observation", c));
    store.upsert("Observation", Some(e), observation("H", "amended"));
    let d = id_of(store.upsert("Observation", None, observation("L", "final")));
    bridge.restart();
    wait_for(60, "a delete, an update and a create", || {
        event_count(&on_path(&rx, "/all")) == 21
    })
    .await;
    // Many more walks: nothing more arrives.
    let polls = |b: &Bridge| b.status_json()["sources"][0]["targets"][0]["resources_read"].as_i64();
    let before = polls(&bridge);
    wait_for(60, "more walks", || polls(&bridge) > before.map(|n| n + 50)).await;
    let got = on_path(&rx, "/all");
    assert_eq!(event_count(&got), 21);
    let events = |id: &str| -> Vec<String> {
        got[&format!("Observation/{id}")]
            .iter()
            .map(|e| e.0.clone())
            .collect()
    };
    assert_eq!(events(a), ["create", "update"]);
    assert_eq!(events(b), ["create", "delete"]);
    assert_eq!(events(c), ["create", "delete"]);
    assert_eq!(events(e), ["create", "update"]);
    assert_eq!(events(&d), ["create"]);
    assert_eq!(events(&ids[4]), ["create"]);
    for r in rx.received().iter().filter(|r| r.event == "delete") {
        assert_eq!(r.body["resourceIncluded"], false);
        assert!(r.body.get("resource").is_none());
    }
    // The filter saw the delete of the preliminary one with its last version.
    let prev = on_path(&rx, "/prev");
    assert_eq!(
        prev.keys().collect::<Vec<_>>(),
        [&format!("Observation/{b}")]
    );
    assert_eq!(prev[&format!("Observation/{b}")][0].0, "delete");
    // A snapshot has no watermark to show.
    assert!(bridge.status_json()["sources"][0]["targets"][0]["watermark"].is_null());
}

/// A walk whose chain breaks (every next link 410, the restart too) fails
/// the poll and infers no deletes: what it did not read is not gone. Once
/// the chain reads to its end again, the deletes come, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_walk_that_breaks_midway_infers_no_deletes() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source_with(&fhir, &hooks, "strategy = \"snapshot\"");
    let ids = seed(store, 20);
    let bridge = Bridge::start(&config);
    wait_for(60, "20 creates", || {
        event_count(&on_path(&rx, "/all")) == 20
    })
    .await;
    store.quirks.expire_next_links(true);
    // One on the first page (still read), one beyond it (never reached).
    assert!(store.delete("Observation", &ids[0]));
    assert!(store.delete("Observation", &ids[19]));
    let target = |b: &Bridge| b.status_json()["sources"][0]["targets"][0].clone();
    wait_for(60, "three failed walks", || {
        target(&bridge)["consecutive_failures"].as_i64() >= Some(3)
    })
    .await;
    let t = target(&bridge);
    assert!(t["last_error"].as_str().unwrap().contains("410"), "{t}");
    assert_eq!(event_count(&on_path(&rx, "/all")), 20, "no delete inferred");
    store.quirks.expire_next_links(false);
    wait_for(60, "two deletes", || {
        event_count(&on_path(&rx, "/all")) == 22
    })
    .await;
    let got = on_path(&rx, "/all");
    for id in [&ids[0], &ids[19]] {
        let events: Vec<&str> = got[&format!("Observation/{id}")]
            .iter()
            .map(|e| e.0.as_str())
            .collect();
        assert_eq!(events, ["create", "delete"]);
    }
}

/// `reconcile`: a `last-updated` source walks each type in full on its
/// schedule. A resource stamped below the watermark (missed by every poll)
/// and a delete (invisible to a search) are found, once each; the
/// watermark stays; status counts what the reconciliation found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_finds_what_last_updated_missed_and_deletes() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = source_with(&fhir, &hooks, "reconcile = \"*/2 * * * * *\"");
    let ids = seed(store, 10);
    let bridge = Bridge::start(&config);
    wait_for(60, "10 creates", || {
        event_count(&on_path(&rx, "/all")) == 10
    })
    .await;
    let target = |b: &Bridge| b.status_json()["sources"][0]["targets"][0].clone();
    // A write stamped in 2001, far below the watermark; and a delete.
    store.freeze_clock(Some(978_307_200_000));
    let late = id_of(store.upsert("Observation", None, observation("N", "final")));
    store.freeze_clock(None);
    assert!(store.delete("Observation", &ids[3]));
    wait_for(60, "a late create and a delete", || {
        event_count(&on_path(&rx, "/all")) == 12
    })
    .await;
    let got = on_path(&rx, "/all");
    assert_eq!(got[&format!("Observation/{late}")][0].0, "create");
    let deleted: Vec<&str> = got[&format!("Observation/{}", ids[3])]
        .iter()
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(deleted, ["create", "delete"]);
    wait_for_status(&bridge, "last_warning", "the reconciliation found").await;
    // Later passes find nothing more: the count on status goes back to 0.
    wait_for(30, "a clean reconciliation", || {
        target(&bridge)["last_reconcile_changes"] == 0
    })
    .await;
    let t = target(&bridge);
    assert!(t["last_reconcile_at"].is_string(), "{t}");
    let watermark = t["watermark"].as_str().unwrap();
    assert!(watermark > "2002", "the watermark stays: {watermark}");
    assert_eq!(event_count(&on_path(&rx, "/all")), 12);
}

/// A `bulk-export` config: the source's types in one `$export` job.
fn bulk_config(fhir: &FhirServer, types: &[&str], hooks: &str, extra: &str) -> String {
    config_for(fhir, types, "2000-01-01T00:00:00Z", hooks).replace(
        "owner_id = \"org/test\"",
        &format!("owner_id = \"org/test\"\nstrategy = \"bulk-export\"\n{extra}"),
    )
}

/// Two export rounds: creates and updates arrive once each, every exported
/// type's watermark moves to the job's transactionTime, and each finished
/// job is deleted on the server. (Medplum's engine has no `$export`: the
/// sandbox's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_delivers_creates_and_updates_once_across_rounds() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.exports.set_file_lines(3);
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = bulk_config(&fhir, &["Patient", "Observation"], &hooks, "");
    let mut obs = Vec::new();
    for _ in 0..5 {
        obs.push(id_of(store.upsert(
            "Observation",
            None,
            observation("N", "final"),
        )));
    }
    for _ in 0..3 {
        store.upsert("Patient", None, serde_json::json!({"active": true}));
    }
    let bridge = Bridge::start(&config);
    let total = |rx: &Receiver| {
        by_resource(&rx.received())
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_for(60, "8 creates", || total(&rx) == 8).await;
    wait_for(30, "the first job deleted", || store.exports.deletes() >= 1).await;
    store.upsert("Observation", Some(&obs[0]), observation("H", "amended"));
    store.upsert("Observation", Some(&obs[1]), observation("H", "amended"));
    let p = id_of(store.upsert("Patient", None, serde_json::json!({"active": false})));
    wait_for(60, "2 updates and a create", || total(&rx) == 11).await;
    // More rounds (each re-exports the overlap): nothing more arrives.
    let rounds = store.exports.kickoffs();
    wait_for(60, "three more exports", || {
        store.exports.deletes() >= rounds + 3
    })
    .await;
    assert_eq!(total(&rx), 11);
    let got = by_resource(&rx.received());
    let events = |r: &str| -> Vec<String> { got[r].iter().map(|e| e.0.clone()).collect() };
    assert_eq!(
        events(&format!("Observation/{}", obs[0])),
        ["create", "update"]
    );
    assert_eq!(events(&format!("Observation/{}", obs[2])), ["create"]);
    assert_eq!(events(&format!("Patient/{p}")), ["create"]);
    // Both types' watermarks are the same job's transactionTime.
    wait_for(30, "watermarks on status", || {
        let targets = bridge.status_json()["sources"][0]["targets"].clone();
        let marks: Vec<_> = (0..2).map(|i| targets[i]["watermark"].clone()).collect();
        marks[0].is_string() && marks[0] == marks[1]
    })
    .await;
    assert!(store.exports.live_jobs() <= 1, "finished jobs are deleted");
}

/// `kill -9` in the middle of a file: the restarted bridge resumes the same
/// job (one kick-off in all), after the last committed chunk, and every
/// resource arrives (once, by message id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_killed_mid_download_resumes_the_same_job_and_loses_nothing() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.exports.set_file_lines(5);
    // File 2 stops after 3 lines: chunks of 2 commit files 0 and 1 and
    // the first 2 lines of file 2, then the download hangs.
    store.exports.stall_file(Some((2, 3)));
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = bulk_config(&fhir, &["Observation"], &hooks, "")
        .replace("page_size = 7", "page_size = 2")
        // One export per run of the bridge: a second kick-off would be this test's failure.
        .replace("every = \"300ms\"", "every = \"1h\"");
    for _ in 0..40 {
        store.upsert("Observation", None, observation("N", "final"));
    }
    let mut bridge = Bridge::start(&config);
    let unique = |rx: &Receiver| by_resource(&rx.received()).len();
    wait_for(60, "12 resources, then the stall", || {
        unique(&rx) >= 12 && store.exports.stalled() >= 1
    })
    .await;
    assert!(unique(&rx) < 40);
    bridge.kill9();
    store.exports.stall_file(None);
    bridge.restart();
    wait_for(60, "all 40", || unique(&rx) == 40).await;
    wait_for(30, "the job deleted", || store.exports.deletes() == 1).await;
    assert_eq!(store.exports.kickoffs(), 1, "the same job, resumed");
    assert_eq!(store.exports.live_jobs(), 0);
    let got = by_resource(&rx.received());
    assert!(
        got.values().all(|e| e.len() == 1 && e[0].0 == "create"),
        "{got:?}"
    );
}

/// A job saved in state, then the source's types change while the bridge
/// is down: the old job is cancelled (DELETE), not resumed, and a new one
/// covers the new types from the watermarks. Nothing is lost or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_export_job_for_other_types_is_cancelled_not_resumed() {
    let fhir = FhirServer::sandbox().await;
    let store = &fhir.as_sandbox().store;
    store.exports.set_file_lines(5);
    store.exports.stall_file(Some((2, 3)));
    let rx = Receiver::start(0, None).await.unwrap();
    let hooks = hook("all", &rx.url("hooks/all"), "true", "");
    let config = |types: &[&str]| {
        bulk_config(&fhir, types, &hooks, "")
            .replace("page_size = 7", "page_size = 2")
            .replace("every = \"300ms\"", "every = \"1h\"")
    };
    for _ in 0..40 {
        store.upsert("Observation", None, observation("N", "final"));
    }
    for _ in 0..3 {
        store.upsert("Patient", None, serde_json::json!({"active": true}));
    }
    let mut bridge = Bridge::start(&config(&["Observation"]));
    let unique = |rx: &Receiver| by_resource(&rx.received()).len();
    wait_for(60, "12 resources, then the stall", || {
        unique(&rx) >= 12 && store.exports.stalled() >= 1
    })
    .await;
    bridge.kill9();
    store.exports.stall_file(None);
    std::fs::write(bridge.config_path(), config(&["Observation", "Patient"])).unwrap();
    bridge.restart();
    wait_for(60, "all 43", || unique(&rx) == 43).await;
    wait_for(30, "both jobs deleted", || store.exports.deletes() == 2).await;
    assert_eq!(store.exports.kickoffs(), 2, "a new job, not the old one");
    assert_eq!(store.exports.live_jobs(), 0);
    let got = by_resource(&rx.received());
    assert!(
        got.values().all(|e| e.len() == 1 && e[0].0 == "create"),
        "{got:?}"
    );
    wait_for_status(
        &bridge,
        "last_warning",
        "cancelled and a new export started",
    )
    .await;
}
