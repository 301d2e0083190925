//! Fences on PostgreSQL: a fenced write's transaction first reads its lease
//! `FOR KEY SHARE` and goes on only if the lease is still the writer's, in
//! the epoch it was granted in. A replica that lost its lease (it stalled
//! past the expiry and another took over: the epoch moved) writes nothing.
//! A takeover locks the row `FOR UPDATE` (`lease.rs`), which waits until
//! the write commits, so a write is either before the takeover or refused.
//! Not `FOR SHARE`: the holder's renewals (a plain `UPDATE`) would wait for
//! every write in flight, and writes that overlap without pause (several
//! pollers and hook workers) would starve them until the lease is lost.

use crate::state::{Fence, StateError};
use tokio_postgres::GenericClient;

/// Refuses the write unless `fence`'s lease is held in its epoch. A fence
/// without a lease (a private state, tests) covers any write.
pub(super) async fn check<C: GenericClient>(tx: &C, fence: &Fence) -> Result<(), StateError> {
    let Some(lease) = fence.lease() else {
        return Ok(());
    };
    let row = tx
        .query_opt(
            "SELECT owner, epoch FROM lease WHERE scope = $1 AND unit = $2 FOR KEY SHARE",
            &[&lease.scope, &lease.unit],
        )
        .await?;
    let held = row.is_some_and(|r| {
        r.get::<_, Option<String>>(0).as_deref() == Some(lease.owner.as_str())
            && r.get::<_, i64>(1) == fence.epoch() as i64
    });
    if held {
        Ok(())
    } else {
        Err(StateError::Fenced(
            "this replica's lease was taken over by another (a newer epoch)",
        ))
    }
}
