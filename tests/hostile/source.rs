//! Hostile input from the FHIR server: future timestamps and clocks, links and
//! redirects to other hosts, ids built to forge log lines, endless paging.

use crate::common::hostile::{one_source_config, received_ids, target, wait_for_target};
use crate::common::scripted::{Scripted, Seen, bundle, now_instant, observation, status_with};
use crate::common::{Bridge, wait_for};
use fhir_bridge::sandbox::Receiver;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One source on `base` polling `resources`, one hook taking everything.
fn config(base: &str, resources: &[&str], start: &str, hook_url: &str) -> String {
    let source =
        format!("every = \"300ms\"\noverlap = \"5s\"\nstart = \"{start}\"\ntimeout = \"2s\"\n");
    one_source_config(base, resources, &source, hook_url)
}

/// Item 1: a server that ignores `_lastUpdated` returns a resource stamped
/// 9999. It is delivered, the watermark does not jump to 9999, and a later
/// change is still delivered; status counts the future entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_last_updated_does_not_poison_the_watermark() {
    let later = Arc::new(AtomicBool::new(false));
    let l = later.clone();
    let fhir = Scripted::start(move |_: &Seen| {
        let mut rs = vec![observation("future", "1", "9999-12-31T23:59:59Z")];
        if l.load(Ordering::SeqCst) {
            rs.push(observation("later", "1", &now_instant()));
        }
        bundle(&now_instant(), rs, None)
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation"],
        "beginning",
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the future-stamped resource delivered", || {
        received_ids(&rx).contains(&"Observation/future".to_string())
    })
    .await;
    later.store(true, Ordering::SeqCst);
    wait_for(20, "a later change delivered", || {
        received_ids(&rx).contains(&"Observation/later".to_string())
    })
    .await;
    let status = bridge.status_json();
    let t = target(&status, "Observation");
    let wm = t["watermark"].as_str().unwrap_or("").to_string();
    assert!(wm.as_str() < "2100", "watermark jumped to {wm}");
    wait_for(10, "the future entry counted on status", || {
        target(&bridge.status_json(), "Observation")["entries_future"]
            .as_i64()
            .unwrap_or(0)
            > 0
    })
    .await;
    let t = target(&bridge.status_json(), "Observation");
    assert!(
        t["last_warning"]
            .as_str()
            .unwrap_or("")
            .contains("Observation/future: meta.lastUpdated 9999-12-31T23:59:59.000Z is after the server's clock"),
        "{t}"
    );
    // Each version once, the future one included.
    let ids = received_ids(&rx);
    assert_eq!(ids.iter().filter(|i| *i == "Observation/future").count(), 1);
    bridge.stop();
}

/// Item 1, second case: the server's clock reads 9999 on the first
/// `start = "now"` probe. That clock is not believed (an error on status), and
/// once the server's clock recovers the target starts and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_in_year_9999_is_not_believed() {
    let recovered = Arc::new(AtomicBool::new(false));
    let r = recovered.clone();
    let written = Arc::new(std::sync::Mutex::new(None::<String>));
    let w = written.clone();
    let fhir = Scripted::start(move |_: &Seen| {
        if !r.load(Ordering::SeqCst) {
            return bundle("9999-12-31T23:59:59Z", vec![], None);
        }
        let rs = match w.lock().unwrap().as_ref() {
            Some(at) => vec![observation("new", "1", at)],
            None => vec![],
        };
        bundle(&now_instant(), rs, None)
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation"],
        "now",
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the untrusted clock shown on status", || {
        target(&bridge.status_json(), "Observation")["last_error"]
            .as_str()
            .is_some_and(|e| {
                e.contains("clock reads 9999-12-31T23:59:59.000Z") && e.contains("not trusted")
            })
    })
    .await;
    // A warning after one failed poll, critical from the third in a row.
    wait_for(20, "status critical (exit 2)", || {
        bridge.cli(&["status"]).status.code() == Some(2)
    })
    .await;
    recovered.store(true, Ordering::SeqCst);
    wait_for(20, "the target started once the clock recovered", || {
        target(&bridge.status_json(), "Observation")["watermark"]
            .as_str()
            .is_some_and(|w| w < "2100")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    *written.lock().unwrap() = Some(now_instant());
    wait_for(20, "a change after the recovery delivered", || {
        received_ids(&rx).contains(&"Observation/new".to_string())
    })
    .await;
    bridge.stop();
}

/// Item 5: a `next` link to another origin is not followed: that host gets
/// nothing (not even the search URL), its resources are not delivered, and
/// the poll error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_links_to_another_origin_are_not_followed() {
    let evil = Scripted::start(|_: &Seen| {
        bundle(
            &now_instant(),
            vec![observation("evil", "1", &now_instant())],
            None,
        )
    })
    .await;
    let evil_next = evil.url("/fhir/Observation?page=2");
    let fhir = Scripted::start(move |_: &Seen| {
        bundle(
            &now_instant(),
            vec![observation("good", "1", &now_instant())],
            Some(&evil_next),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation"],
        "beginning",
        &rx.url("hooks/all"),
    ));
    wait_for_target(
        &bridge,
        20,
        "the poll error on status",
        ("Observation", "last_error"),
        "next link leaves the server's origin (not followed)",
    )
    .await;
    wait_for(20, "the same-origin page delivered", || {
        received_ids(&rx).contains(&"Observation/good".to_string())
    })
    .await;
    assert_eq!(evil.count(), 0, "the other host was contacted");
    assert!(!received_ids(&rx).contains(&"Observation/evil".to_string()));
    bridge.stop();
}

/// Item 5: an HTTP redirect to another origin is not followed (so no
/// `Referer` with the search URL reaches it); one on the same origin is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_another_origin_are_not_followed() {
    let evil = Scripted::start(|_: &Seen| bundle(&now_instant(), vec![], None)).await;
    let evil_base = evil.url("/fhir/Observation");
    let fhir = Scripted::start(move |s: &Seen| {
        if s.uri.starts_with("/moved/") {
            return bundle(
                &now_instant(),
                vec![observation("moved", "1", &now_instant())],
                None,
            );
        }
        if s.uri.starts_with("/fhir/Encounter") {
            let to = s.uri.replacen("/fhir/", "/moved/", 1);
            return status_with(302, &[("location", &to)]);
        }
        status_with(302, &[("location", &evil_base)])
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation", "Encounter"],
        "beginning",
        &rx.url("hooks/all"),
    ));
    wait_for_target(
        &bridge,
        20,
        "the cross-origin redirect refused on status",
        ("Observation", "last_error"),
        "HTTP 302 redirect to another origin (not followed)",
    )
    .await;
    // The same-origin redirect was followed (the scripted server answers a
    // Bundle of Observations there; the Encounter target skips them, but
    // the poll succeeds).
    wait_for(20, "the same-origin redirect followed", || {
        target(&bridge.status_json(), "Encounter")["last_outcome"] == "ok"
    })
    .await;
    assert!(fhir.seen().iter().any(|s| s.uri.starts_with("/moved/")));
    assert!(
        fhir.seen().iter().all(|s| s.header("referer").is_none()),
        "a Referer header was sent"
    );
    assert_eq!(evil.count(), 0, "the other host was contacted");
    bridge.stop();
}

/// Item 5: redirects on the same origin are followed five times per request,
/// no more: a server redirecting for ever fails the poll with an error that
/// says so (not "another origin"), and a chain of five still reads its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_redirects_are_followed_a_bounded_number_of_times() {
    let fhir = Scripted::start(move |s: &Seen| {
        let hop = |prefix: &str| {
            s.uri
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<u32>().ok())
        };
        if let Some(n) = hop("/ehop/") {
            if n == 5 {
                let enc = serde_json::json!({
                    "resourceType": "Encounter", "id": "e1",
                    "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}
                });
                return bundle(&now_instant(), vec![enc], None);
            }
            return status_with(302, &[("location", &format!("/ehop/{}", n + 1))]);
        }
        if s.uri.starts_with("/fhir/Encounter") {
            return status_with(302, &[("location", "/ehop/1")]);
        }
        let n = hop("/hop/").unwrap_or(0);
        status_with(302, &[("location", &format!("/hop/{}", n + 1))])
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation", "Encounter"],
        "beginning",
        &rx.url("hooks/all"),
    ));
    wait_for_target(
        &bridge,
        20,
        "the endless redirects refused on status",
        ("Observation", "last_error"),
        "HTTP 302 redirect past the limit of 5 per request (not followed)",
    )
    .await;
    wait_for(20, "the page five redirects away delivered", || {
        received_ids(&rx).contains(&"Encounter/e1".to_string())
    })
    .await;
    bridge.stop();
    let seen = fhir.seen();
    assert!(
        seen.iter().any(|s| s.uri == "/hop/5"),
        "five redirects followed"
    );
    assert!(
        seen.iter().all(|s| s.uri != "/hop/6"),
        "a sixth redirect was followed"
    );
}

/// `allowed_origins`: a next link or redirect to a named origin is followed,
/// with the source's credentials; one to any other origin is refused, and
/// that host never sees a request (so never the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_get_links_and_credentials_others_get_nothing() {
    const TOKEN: &str = "tok-3c9e-allowed-origins";
    let evil = Scripted::start(|_: &Seen| bundle(&now_instant(), vec![], None)).await;
    let cdn = Scripted::start(|s: &Seen| {
        if s.header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
            return status_with(401, &[]);
        }
        let mut r = observation("from-cdn", "1", &now_instant());
        if s.uri.contains("Patient") {
            r = observation("via-redirect", "1", &now_instant());
            r["resourceType"] = "Patient".into();
        }
        bundle(&now_instant(), vec![r], None)
    })
    .await;
    let (cdn_page, cdn_patient, evil_page) = (
        cdn.url("/paging/Observation?page=2"),
        cdn.url("/paging/Patient"),
        evil.url("/fhir/Encounter?page=2"),
    );
    let fhir = Scripted::start(move |s: &Seen| {
        if s.uri.starts_with("/fhir/Patient") {
            return status_with(302, &[("location", &cdn_patient)]);
        }
        let next = if s.uri.starts_with("/fhir/Encounter") {
            &evil_page
        } else {
            &cdn_page
        };
        bundle(
            &now_instant(),
            vec![observation("home", "1", &now_instant())],
            Some(next),
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cdn_origin = cdn.url("");
    let config = config(
        &fhir.url("/fhir"),
        &["Observation", "Encounter", "Patient"],
        "beginning",
        &rx.url("hooks/all"),
    )
    .replace(
        "timeout = \"2s\"\n",
        &format!(
            "timeout = \"2s\"\nallowed_origins = [\"{}\"]\n[source.auth]\ntype = \"bearer\"\ntoken = \"{TOKEN}\"\n",
            cdn_origin.trim_end_matches('/')
        ),
    );
    let mut bridge = Bridge::start(&config);
    wait_for(
        20,
        "the allowed origin's page and redirect delivered",
        || {
            let ids = received_ids(&rx);
            ids.contains(&"Observation/from-cdn".to_string())
                && ids.contains(&"Patient/via-redirect".to_string())
        },
    )
    .await;
    wait_for_target(
        &bridge,
        20,
        "the other origin refused on status",
        ("Encounter", "last_error"),
        "next link leaves the server's origin (not followed)",
    )
    .await;
    bridge.stop();
    assert_eq!(
        evil.count(),
        0,
        "a host not in allowed_origins was contacted"
    );
    assert!(
        fhir.seen()
            .iter()
            .chain(cdn.seen().iter())
            .all(|s| s.header("authorization").as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "a request went without the source's credentials"
    );
}

/// Item 7: an id carrying a newline and ANSI escapes is not forwarded and
/// not logged raw; it is counted as a skipped entry, and the rest of the page
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_fhir_ids_are_skipped_and_never_logged_raw() {
    let forged = "x\n2026-11-30T00:00:00Z  INFO fhir_bridge: FORGED admin login\u{1b}[31m";
    let fhir = Scripted::start(move |_: &Seen| {
        bundle(
            &now_instant(),
            vec![
                observation(forged, "1", "2026-01-01T00:00:00Z"),
                observation("fine", "1", "2026-01-01T00:00:01Z"),
            ],
            None,
        )
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation"],
        "beginning",
        &rx.url("hooks/all"),
    ));
    wait_for(20, "the valid entry delivered", || {
        received_ids(&rx).contains(&"Observation/fine".to_string())
    })
    .await;
    wait_for(10, "the skipped entry counted on status", || {
        target(&bridge.status_json(), "Observation")["entries_skipped"]
            .as_i64()
            .unwrap_or(0)
            > 0
    })
    .await;
    let t = target(&bridge.status_json(), "Observation");
    assert!(
        t["last_warning"]
            .as_str()
            .unwrap_or("")
            .contains("entry 0: id is not a valid FHIR id; skipped, not delivered"),
        "{t}"
    );
    let out = bridge.cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a skipped entry needs attention"
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !text.contains("FORGED") && !text.contains('\u{1b}'),
        "{text}"
    );
    assert_eq!(rx.count(), 1, "only the valid entry is delivered");
    bridge.stop();
    let logs = bridge.logs();
    assert!(!logs.contains("FORGED"), "the forged id reached the logs");
    assert!(
        !logs.contains('\u{1b}'),
        "an escape sequence reached the logs"
    );
}

/// Item 10: endless `next` links stop at `max_pages_per_poll` with a poll
/// error, and the source's other resource types keep their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_next_links_are_capped_and_other_targets_keep_their_turn() {
    let pages = Arc::new(AtomicUsize::new(0));
    let p = pages.clone();
    let fhir = Scripted::start(move |s: &Seen| {
        if s.uri.starts_with("/fhir/Encounter") {
            let enc = serde_json::json!({
                "resourceType": "Encounter", "id": "e1",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}
            });
            return bundle(&now_instant(), vec![enc], None);
        }
        let n = p.fetch_add(1, Ordering::SeqCst);
        let next = format!("/fhir/Observation?page={}", n + 1);
        bundle(&now_instant(), vec![], Some(&next))
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let cfg = config(
        &fhir.url("/fhir"),
        &["Observation", "Encounter"],
        "beginning",
        &rx.url("hooks/all"),
    )
    .replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nmax_pages_per_poll = 50",
    );
    let mut bridge = Bridge::start(&cfg);
    wait_for(20, "the other target's change delivered", || {
        received_ids(&rx).contains(&"Encounter/e1".to_string())
    })
    .await;
    wait_for_target(
        &bridge,
        20,
        "the page cap on status",
        ("Observation", "last_error"),
        "50 pages without moving the watermark (max_pages_per_poll)",
    )
    .await;
    // The capped target fails poll after poll: critical from the third.
    wait_for(20, "status critical (exit 2)", || {
        bridge.cli(&["status"]).status.code() == Some(2)
    })
    .await;
    bridge.stop();
}

/// Item 10, second case: a `next` link back to a page already read this
/// poll is a poll error at once (not a walk to `max_pages_per_poll`). The
/// pages read before it are delivered, each version once, and the source's
/// other types keep their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_back_to_an_earlier_page_is_a_poll_error() {
    let fhir = Scripted::start(move |s: &Seen| {
        if s.uri.starts_with("/fhir/Encounter") {
            let enc = serde_json::json!({
                "resourceType": "Encounter", "id": "e1",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}
            });
            return bundle(&now_instant(), vec![enc], None);
        }
        // Page 1 -> page 2 -> page 3 -> page 2 again.
        let (id, at, next) = if s.uri.contains("page=2") {
            ("o2", "2026-01-01T00:00:02Z", "/fhir/Observation?page=3")
        } else if s.uri.contains("page=3") {
            ("o3", "2026-01-01T00:00:03Z", "/fhir/Observation?page=2")
        } else {
            ("o1", "2026-01-01T00:00:01Z", "/fhir/Observation?page=2")
        };
        bundle(&now_instant(), vec![observation(id, "1", at)], Some(next))
    })
    .await;
    let rx = Receiver::start(0, None).await.unwrap();
    let mut bridge = Bridge::start(&config(
        &fhir.url("/fhir"),
        &["Observation", "Encounter"],
        "beginning",
        &rx.url("hooks/all"),
    ));
    wait_for_target(
        &bridge,
        20,
        "the loop reported on status",
        ("Observation", "last_error"),
        "Observation search page 3: next link loops back to an earlier page",
    )
    .await;
    wait_for(
        20,
        "the pages before the loop and the other type delivered",
        || {
            let ids = received_ids(&rx);
            [
                "Observation/o1",
                "Observation/o2",
                "Observation/o3",
                "Encounter/e1",
            ]
            .iter()
            .all(|want| ids.iter().any(|i| i == want))
        },
    )
    .await;
    // Failing poll after poll: critical from the third.
    wait_for(20, "status critical (exit 2)", || {
        bridge.cli(&["status"]).status.code() == Some(2)
    })
    .await;
    bridge.stop();
    // Each poll reads page 2 once: it never goes round the loop.
    let seen = fhir.seen();
    let observation_search = |s: &&Seen| s.uri.starts_with("/fhir/Observation");
    let firsts = seen
        .iter()
        .filter(observation_search)
        .filter(|s| !s.uri.contains("page="))
        .count();
    let page2 = seen
        .iter()
        .filter(observation_search)
        .filter(|s| s.uri.contains("page=2"))
        .count();
    assert!(
        page2 <= firsts,
        "page 2 read {page2} times in {firsts} polls"
    );
    // Each version once.
    let ids = received_ids(&rx);
    for want in ["Observation/o1", "Observation/o2", "Observation/o3"] {
        assert_eq!(
            ids.iter().filter(|i| *i == want).count(),
            1,
            "{want}: {ids:?}"
        );
    }
}
