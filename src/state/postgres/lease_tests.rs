//! Leases against a real database: one holder, takeover after expiry in a
//! new epoch, the old holder fenced, renewals, release.

use super::*;
use crate::state::TargetKey;
use crate::state::postgres::{PgSettings, test_server};

fn store(url: &str) -> PgStore {
    PgStore::connect(&PgSettings {
        url: url.to_string(),
        pool_size: 4,
        tls: None,
    })
    .unwrap()
}

fn replica(name: &str) -> Replica {
    Replica {
        id: new_replica_id(),
        host: name.into(),
        pid: 1,
    }
}

const SHORT: Timings = Timings {
    ttl: Duration::from_millis(1_500),
    renew_every: Duration::from_secs(3_600),
    margin: Duration::from_millis(300),
};

fn held(r: Result<Result<LeaseKeeper, Holder>, StateError>) -> LeaseKeeper {
    match r.unwrap() {
        Ok(k) => k,
        Err(h) => panic!("refused: held by {h}"),
    }
}

fn refused(r: Result<Result<LeaseKeeper, Holder>, StateError>) -> Holder {
    match r.unwrap() {
        Ok(k) => panic!("granted epoch {}", k.epoch()),
        Err(h) => h,
    }
}

#[test]
fn replica_ids_are_random_uuids_and_outside_text_is_bounded() {
    let (a, b) = (new_replica_id(), new_replica_id());
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    assert_eq!(a.as_bytes()[14], b'4', "version 4: {a}");
    assert_eq!(bounded("db\n\x1b[31mx"), "db???31mx");
    assert_eq!(bounded(&"h".repeat(1000)).len(), 64);
}

/// Held: refused to another; expired: taken over in a new epoch, the old
/// holder's renewal and fenced writes refused (nothing changed); released:
/// taken at once.
#[tokio::test]
async fn a_lease_has_one_holder_and_a_takeover_fences_the_old_one() {
    let Some(url) = test_server::fresh_database().await else {
        return;
    };
    let s = store(&url);
    let (a, b, c) = (replica("a"), replica("b"), replica("c"));
    let first = held(LeaseKeeper::acquire_as(&s, "state", 0, &a, SHORT).await);
    assert_eq!(first.epoch(), 1);
    let holder = refused(LeaseKeeper::acquire_as(&s, "state", 0, &b, SHORT).await);
    assert_eq!(holder.owner, a.id);
    assert_eq!((holder.host.as_deref(), holder.pid), (Some("a"), Some(1)));
    assert!(holder.until.ends_with('Z'), "{}", holder.until);
    // Another unit is another lease.
    let other = held(LeaseKeeper::acquire_as(&s, "state", 1, &b, SHORT).await);
    assert_eq!(other.epoch(), 1);

    let key = TargetKey::population("s", "Observation");
    let mark = |w: &str| Some(w.to_string());
    s.init_target(&first.fence(), &key, mark("2026-01-01T00:00:00Z"), None)
        .await
        .unwrap();
    // The first holder stalls (no renewal: SHORT renews once an hour)
    // past the expiry; b takes over in epoch 2.
    tokio::time::sleep(SHORT.ttl + Duration::from_millis(200)).await;
    assert!(first.lost().is_cancelled(), "its own deadline passed first");
    let second = held(LeaseKeeper::acquire_as(&s, "state", 0, &b, SHORT).await);
    assert_eq!(second.epoch(), 2);
    let old_lease = first.fence.lease().unwrap();
    assert!(!s.renew_lease(old_lease, 1, SHORT.ttl).await.unwrap());
    let stale = s
        .init_target(&first.fence(), &key, mark("2025-01-01T00:00:00Z"), None)
        .await;
    assert!(matches!(stale, Err(StateError::Fenced(_))), "{stale:?}");
    let state = s.target_state(&key).await.unwrap();
    assert_eq!(state.watermark.as_deref(), Some("2026-01-01T00:00:00Z"));
    s.init_target(&second.fence(), &key, mark("2026-02-01T00:00:00Z"), None)
        .await
        .unwrap();
    // The old keeper's release (a term not its own) changes nothing.
    first.release().await;
    refused(LeaseKeeper::acquire_as(&s, "state", 0, &c, SHORT).await);
    second.release().await;
    let third = held(LeaseKeeper::acquire_as(&s, "state", 0, &c, SHORT).await);
    assert_eq!(third.epoch(), 3);
    drop(other);
}

/// A keeper renews before the expiry for as long as it runs, and reports
/// the loss when another term began.
#[tokio::test]
async fn a_kept_lease_outlives_its_ttl_and_a_loss_is_reported() {
    let Some(url) = test_server::fresh_database().await else {
        return;
    };
    let s = store(&url);
    let timings = Timings {
        ttl: Duration::from_millis(1_200),
        renew_every: Duration::from_millis(300),
        margin: Duration::from_millis(300),
    };
    let (a, b) = (replica("a"), replica("b"));
    let kept = held(LeaseKeeper::acquire_as(&s, "state", 0, &a, timings).await);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!kept.lost().is_cancelled());
    refused(LeaseKeeper::acquire_as(&s, "state", 0, &b, timings).await);
    // Someone forces a new term (an operator, a clock jump): the next
    // renewal is refused and the keeper says so.
    let c = s.client().await.unwrap();
    c.execute(
        "UPDATE lease SET owner = $1, epoch = epoch + 1 WHERE scope = 'state' AND unit = 0",
        &[&b.id],
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(3), kept.lost().cancelled())
        .await
        .expect("the loss is reported");
}

/// A renewal that cannot finish (the row locked by another session, as a
/// database that stopped answering) makes the keeper report the loss at its
/// trust deadline, before the lease's expiry.
#[tokio::test]
async fn a_renewal_that_hangs_is_a_loss_at_the_trust_deadline() {
    let Some(url) = test_server::fresh_database().await else {
        return;
    };
    let s = store(&url);
    let timings = Timings {
        ttl: Duration::from_millis(2_000),
        renew_every: Duration::from_millis(300),
        margin: Duration::from_millis(500),
    };
    let start = Instant::now();
    let kept = held(LeaseKeeper::acquire_as(&s, "state", 0, &replica("a"), timings).await);
    let mut blocker = s.client().await.unwrap();
    let tx = blocker.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM lease WHERE scope = 'state' FOR UPDATE", &[])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), kept.lost().cancelled())
        .await
        .expect("the loss is reported");
    let after = start.elapsed();
    // Trusted until a renewal's start + 1.5 s: the last one began at most
    // 0.3 s after the lock was taken, so the loss comes before 2 s.
    assert!(after < Duration::from_millis(2_000), "{after:?}");
    tx.rollback().await.unwrap();
}

/// The first statement of a process migrates the schema, waiting for
/// another replica's migration (or a pool's free connection): time before
/// the lease was granted. A grant that waited longer than its trust does
/// not count that wait against it (it was not lost the moment it came).
#[tokio::test]
async fn a_grant_that_waited_for_the_migration_is_not_lost_at_once() {
    let Some(url) = test_server::fresh_database().await else {
        return;
    };
    let timings = Timings {
        ttl: Duration::from_millis(2_000),
        renew_every: Duration::from_millis(300),
        margin: Duration::from_millis(500),
    };
    // Another replica migrating: its lock held for longer than the trust.
    let other = store(&url);
    let c = other.client().await.unwrap();
    c.execute(
        "SELECT pg_advisory_lock($1)",
        &[&super::super::schema::MIGRATION_LOCK],
    )
    .await
    .unwrap();
    let fresh = store(&url);
    let waiting = tokio::spawn(async move {
        let kept = held(LeaseKeeper::acquire_as(&fresh, "state", 0, &replica("a"), timings).await);
        (fresh, kept)
    });
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    c.execute(
        "SELECT pg_advisory_unlock($1)",
        &[&super::super::schema::MIGRATION_LOCK],
    )
    .await
    .unwrap();
    let (_fresh, kept) = waiting.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!kept.lost().is_cancelled(), "lost right after its grant");
    kept.release().await;
}

/// Fenced writes of the holder overlap without pause (several pollers and
/// hook workers, each transaction holding the lease row shared): the
/// renewals still go through; the holder's own writes never starve its
/// lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_fenced_writes_do_not_starve_the_renewals() {
    let Some(url) = test_server::fresh_database().await else {
        return;
    };
    let s = store(&url);
    let timings = Timings {
        ttl: Duration::from_millis(2_000),
        renew_every: Duration::from_millis(300),
        margin: Duration::from_millis(500),
    };
    let kept = held(LeaseKeeper::acquire_as(&s, "state", 0, &replica("a"), timings).await);
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    for n in 0..3u64 {
        let (s, fence, stop) = (s.clone(), kept.fence(), stop.clone());
        writers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40 * n)).await;
            let mut c = s.client().await.unwrap();
            while !stop.is_cancelled() {
                let tx = c.transaction().await.unwrap();
                crate::state::postgres::fence::check(&*tx, &fence)
                    .await
                    .unwrap();
                tx.execute("SELECT pg_sleep(0.12)", &[]).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let lost = kept.lost().is_cancelled();
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    assert!(!lost, "the lease was lost under its holder's own writes");
    kept.release().await;
}

/// A takeover waits for the old holder's fenced write in flight (its
/// transaction checked the fence before the expiry): the write commits
/// before the new term begins, never after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_a_fenced_write_in_flight() {
    let Some(url) = test_server::fresh_database().await else {
        return;
    };
    let s = store(&url);
    let first = held(LeaseKeeper::acquire_as(&s, "state", 0, &replica("a"), SHORT).await);
    let mut c = s.client().await.unwrap();
    let tx = c.transaction().await.unwrap();
    crate::state::postgres::fence::check(&*tx, &first.fence())
        .await
        .unwrap();
    tokio::time::sleep(SHORT.ttl + Duration::from_millis(200)).await;
    let s2 = s.clone();
    let takeover = tokio::spawn(async move {
        held(LeaseKeeper::acquire_as(&s2, "state", 0, &replica("b"), SHORT).await)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!takeover.is_finished(), "the takeover waits for the write");
    tx.commit().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), takeover)
        .await
        .expect("granted once the write committed")
        .unwrap();
    assert_eq!(second.epoch(), 2);
    drop(first);
}
