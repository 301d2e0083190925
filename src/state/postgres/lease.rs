//! Leases: a unit of work (`scope`, `unit`) held by one replica until an
//! expiry on the database's clock. Granting bumps the lease's `epoch`; every
//! fenced write checks (owner, epoch) in its own transaction (`fence.rs`),
//! so a replica that stalled past its expiry, while another took over,
//! writes nothing more.
//!
//! Timings (`TIMINGS`): a lease lasts 15 s from its last renewal (database
//! clock), is renewed every 5 s, and its holder trusts it only until the
//! start of its last successful renewal + 15 s − 3 s on its own monotonic
//! clock (`Instant`): 3 s of margin for the time the renewal's answer took
//! and for clock rates. Past that trust deadline the keeper reports the
//! lease lost, before anyone else can have it.
//!
//! A replica is a random id per process (a UUID, version 4), with its host
//! and pid in `replica` for messages.

use super::PgStore;
use crate::state::{Fence, LeaseId, StateError};
use deadpool_postgres::Object;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a lease lasts, how often it is renewed, and the margin its
/// holder keeps before its expiry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    pub ttl: Duration,
    pub renew_every: Duration,
    pub margin: Duration,
}

pub(crate) const TIMINGS: Timings = Timings {
    ttl: Duration::from_secs(15),
    renew_every: Duration::from_secs(5),
    margin: Duration::from_secs(3),
};

impl Timings {
    /// Until when a renewal that started at `start` lets its holder act.
    fn trusted_until(&self, start: Instant) -> Instant {
        start + self.ttl.saturating_sub(self.margin)
    }
}

/// This process as a replica of the cluster.
#[derive(Debug)]
pub(crate) struct Replica {
    /// Random per process: a restarted replica is a new one.
    pub id: String,
    pub host: String,
    pub pid: u32,
}

/// This process's replica identity (made once).
pub(crate) fn this_replica() -> &'static Replica {
    static REPLICA: OnceLock<Replica> = OnceLock::new();
    REPLICA.get_or_init(|| Replica {
        id: new_replica_id(),
        host: host_name(),
        pid: std::process::id(),
    })
}

/// A version 4 UUID from the system's random source.
pub(crate) fn new_replica_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No random source: the time and pid still tell processes apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos ^ ((std::process::id() as u128) << 96)).to_le_bytes();
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    bounded(&String::from_utf8_lossy(&buf[..end]))
}

/// Another replica's text (from the database) as we show it: at most 64
/// characters of `[A-Za-z0-9.:_-]`, anything else a `?`.
fn bounded(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | ':' | '_' | '-' => c,
            _ => '?',
        })
        .collect()
}

/// Who holds a lease we were refused, for the message (no secrets: a
/// replica's id, host and pid, and the expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub owner: String,
    pub host: Option<String>,
    pub pid: Option<i64>,
    /// The expiry, UTC, to the second.
    pub until: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "replica {}", self.owner)?;
        match (&self.host, self.pid) {
            (Some(host), Some(pid)) => write!(f, " on {host}, pid {pid}"),
            _ => Ok(()),
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgStore {
    /// Takes the lease `scope`/`unit` for `me` unless another holds it
    /// unexpired: `Ok((epoch, sent))`, the new term and when the statement
    /// that granted it was sent (the expiry is later: what the holder's
    /// trust counts from), or `Err(holder)`. Creates the lease row the
    /// first time.
    pub(crate) async fn acquire_lease(
        &self,
        scope: &str,
        unit: i32,
        me: &Replica,
        ttl: Duration,
    ) -> Result<Result<(i64, Instant), Holder>, StateError> {
        // Not counted: waiting for a connection, or for the migration
        // (another replica's, under its lock), before the grant.
        let c = self.client().await?;
        c.execute(
            "INSERT INTO lease (scope, unit) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&scope, &unit],
        )
        .await?;
        let sent = Instant::now();
        // The row locked `FOR UPDATE` first (only when it is free to
        // take): that waits for the fenced writes in flight, which hold it
        // `FOR KEY SHARE` (`fence.rs`), where the `UPDATE`'s own lock would
        // not.
        let granted = c
            .query_opt(
                "WITH free AS (
                    SELECT scope, unit FROM lease
                    WHERE scope = $1 AND unit = $2
                      AND (owner IS NULL OR expires_at IS NULL OR expires_at < clock_timestamp())
                    FOR UPDATE)
                 UPDATE lease l SET owner = $3, epoch = l.epoch + 1,
                    expires_at = clock_timestamp() + make_interval(secs => $4)
                 FROM free WHERE l.scope = free.scope AND l.unit = free.unit
                 RETURNING l.epoch",
                &[&scope, &unit, &me.id, &seconds(ttl)],
            )
            .await?;
        if let Some(row) = granted {
            // Named in `replica` for the messages of those it refuses
            // (a standby's tries leave no row).
            register(&c, me).await?;
            return Ok(Ok((row.get(0), sent)));
        }
        let row = c
            .query_opt(
                "SELECT l.owner,
                        to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        r.host, r.pid
                 FROM lease l LEFT JOIN replica r ON r.id = l.owner
                 WHERE l.scope = $1 AND l.unit = $2",
                &[&scope, &unit],
            )
            .await?;
        let holder = match row {
            Some(r) => Holder {
                owner: bounded(&r.get::<_, Option<String>>(0).unwrap_or_default()),
                until: bounded(&r.get::<_, Option<String>>(1).unwrap_or_default()),
                host: r.get::<_, Option<String>>(2).map(|h| bounded(&h)),
                pid: r.get(3),
            },
            // Released between the two statements: say so rather than retry.
            None => Holder {
                owner: "(released just now)".into(),
                host: None,
                pid: None,
                until: "now".into(),
            },
        };
        Ok(Err(holder))
    }

    /// Extends the lease by `ttl` from now (database clock) if it is still
    /// `lease.owner`'s in `epoch`: `false` when another term began. (The
    /// keeper renews on a connection of its own.)
    #[cfg(test)]
    pub(crate) async fn renew_lease(
        &self,
        lease: &LeaseId,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let c = self.client().await?;
        renew(&c, lease, epoch, ttl).await
    }

    /// Gives the lease up (if still ours in `epoch`): another replica may
    /// take it at once.
    pub(crate) async fn release_lease(
        &self,
        lease: &LeaseId,
        epoch: i64,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE lease SET owner = NULL, expires_at = NULL
             WHERE scope = $1 AND unit = $2 AND owner = $3 AND epoch = $4",
            &[&lease.scope, &lease.unit, &lease.owner, &epoch],
        )
        .await?;
        // Its `replica` row stays: `status` tells a stopped daemon from
        // one that never ran by it.
        Ok(())
    }
}

impl PgStore {
    /// Whether `scope`/`unit` is held unexpired (database clock), and by
    /// which pid (as a replica's row says), without taking it.
    pub(crate) async fn probe_lease(&self, scope: &str, unit: i32) -> crate::state::LockProbe {
        use crate::state::LockProbe;
        let probe = async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT r.pid FROM lease l LEFT JOIN replica r ON r.id = l.owner
                     WHERE l.scope = $1 AND l.unit = $2 AND l.owner IS NOT NULL
                       AND l.expires_at > clock_timestamp()",
                    &[&scope, &unit],
                )
                .await?;
            Ok::<_, StateError>(row.map(|r| r.get::<_, Option<i64>>(0)))
        };
        match probe.await {
            Ok(Some(pid)) => LockProbe::Held(pid.and_then(|p| u32::try_from(p).ok())),
            Ok(None) => LockProbe::Free,
            Err(_) => LockProbe::Unknown,
        }
    }
}

/// Records this replica in `replica` (once: its heartbeat and renewals
/// keep it fresh, not a standby's tries).
async fn register(c: &Object, me: &Replica) -> Result<(), StateError> {
    let now = crate::state::now_ms();
    c.execute(
        "INSERT INTO replica (id, host, pid, version, started_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT (id) DO NOTHING",
        &[
            &me.id,
            &me.host,
            &(me.pid as i64),
            &env!("CARGO_PKG_VERSION"),
            &now,
        ],
    )
    .await?;
    Ok(())
}

async fn renew(c: &Object, lease: &LeaseId, epoch: i64, ttl: Duration) -> Result<bool, StateError> {
    let n = c
        .execute(
            "UPDATE lease SET expires_at = clock_timestamp() + make_interval(secs => $5)
             WHERE scope = $1 AND unit = $2 AND owner = $3 AND epoch = $4",
            &[
                &lease.scope,
                &lease.unit,
                &lease.owner,
                &epoch,
                &seconds(ttl),
            ],
        )
        .await?;
    if n == 1 {
        c.execute(
            "UPDATE replica SET last_seen_at = $2, heartbeat_at = clock_timestamp() WHERE id = $1",
            &[&lease.owner, &crate::state::now_ms()],
        )
        .await?;
    }
    Ok(n == 1)
}

/// A held lease, kept alive by a task that renews it, and given up when
/// released (or dropped). Its fence is what the holder's writes show.
#[derive(Debug)]
pub(crate) struct LeaseKeeper {
    fence: Fence,
    #[cfg_attr(not(test), allow(dead_code))]
    epoch: i64,
    /// Cancelled when the lease can no longer be trusted (a renewal refused,
    /// or none succeeded before the trust deadline).
    lost: CancellationToken,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Takes `scope`/`unit` for this process's replica and starts renewing
    /// it; `Ok(Err(holder))` while another replica holds it.
    pub(crate) async fn acquire(
        store: &PgStore,
        scope: &str,
        unit: i32,
        timings: Timings,
    ) -> Result<Result<LeaseKeeper, Holder>, StateError> {
        Self::acquire_as(store, scope, unit, this_replica(), timings).await
    }

    /// `acquire` for a given replica (tests act as several).
    pub(crate) async fn acquire_as(
        store: &PgStore,
        scope: &str,
        unit: i32,
        me: &Replica,
        timings: Timings,
    ) -> Result<Result<LeaseKeeper, Holder>, StateError> {
        let (epoch, start) = match store.acquire_lease(scope, unit, me, timings.ttl).await? {
            Ok(granted) => granted,
            Err(holder) => return Ok(Err(holder)),
        };
        let lease = LeaseId {
            scope: scope.to_string(),
            unit,
            owner: me.id.clone(),
        };
        let fence = Fence::leased(lease, epoch as u64);
        let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(keep(
            store.clone(),
            fence.clone(),
            epoch,
            timings,
            timings.trusted_until(start),
            lost.clone(),
            stop.clone(),
        ));
        Ok(Ok(LeaseKeeper {
            fence,
            epoch,
            lost,
            stop,
            task: Some(task),
        }))
    }

    pub(crate) fn fence(&self) -> Fence {
        self.fence.clone()
    }

    #[cfg(test)]
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Cancelled once the lease is lost.
    pub(crate) fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and gives the lease up; returns when it is released
    /// (or the release failed: then it simply expires).
    pub(crate) async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseKeeper {
    /// The keeper task releases the lease when it sees this (if the runtime
    /// still runs; otherwise the lease expires after its TTL).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Renews the lease every `renew_every` until `stop` (then releases it), or
/// until it is lost: refused, or not renewed before the trust deadline.
async fn keep(
    store: PgStore,
    fence: Fence,
    epoch: i64,
    timings: Timings,
    mut deadline: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let Some(lease) = fence.lease() else { return };
    let mut next = Instant::now() + timings.renew_every;
    // One connection kept for renewals: a pool busy with long statements
    // must not make the lease wait. Taken again after an error.
    let mut conn: Option<Object> = None;
    let mut warned = false;
    let lose = |why: &str| {
        tracing::error!(
            scope = %lease.scope,
            unit = lease.unit,
            epoch,
            "lease lost: {why}; this replica stops writing"
        );
        lost.cancel();
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next.min(deadline)) => {}
        }
        if Instant::now() >= deadline {
            lose("not renewed in time");
            return;
        }
        let began = Instant::now();
        let attempt = async {
            if conn.is_none() {
                conn = Some(store.client().await?);
            }
            match &conn {
                Some(c) => renew(c, lease, epoch, timings.ttl).await,
                None => Ok(false),
            }
        };
        let renewed = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                lose("not renewed in time");
                return;
            }
            r = attempt => r,
        };
        match renewed {
            Ok(true) => {
                deadline = timings.trusted_until(began);
                next = began + timings.renew_every;
                warned = false;
            }
            Ok(false) => {
                lose("another replica holds it now");
                return;
            }
            Err(e) => {
                conn = None;
                if !warned {
                    tracing::warn!(error = %e, scope = %lease.scope, "cannot renew the lease; retrying");
                    warned = true;
                }
                next = Instant::now() + Duration::from_millis(500).min(timings.renew_every);
            }
        }
    }
    if let Err(e) = store.release_lease(lease, epoch).await {
        tracing::warn!(error = %e, scope = %lease.scope, "cannot release the lease; it expires on its own");
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
