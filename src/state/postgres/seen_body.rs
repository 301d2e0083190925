//! `seen_body` on PostgreSQL: the last body read of each resource, kept only
//! for the resource types whose hooks read `$previous`. A row lives and dies
//! with its `seen` row: written in the same page transaction, pruned with it.

use crate::state::StateError;
use deadpool_postgres::Transaction;

/// Stores `body` as the resource's last one; `None` (over the size bound)
/// forgets the older body, so `$previous` is null rather than stale.
pub(super) async fn write(
    tx: &Transaction<'_>,
    source: &str,
    resource_type: &str,
    id: &str,
    body: Option<&[u8]>,
) -> Result<(), StateError> {
    match body {
        Some(body) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO seen_body (source, resource_type, resource_id, body)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (source, resource_type, resource_id) DO UPDATE SET body = excluded.body",
                )
                .await?;
            tx.execute(&stmt, &[&source, &resource_type, &id, &body])
                .await?;
        }
        None => {
            forget(tx, source, resource_type, id).await?;
        }
    }
    Ok(())
}

/// Forgets one resource's body.
pub(super) async fn forget(
    tx: &Transaction<'_>,
    source: &str,
    resource_type: &str,
    id: &str,
) -> Result<u64, StateError> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM seen_body WHERE source = $1 AND resource_type = $2 AND resource_id = $3",
        )
        .await?;
    Ok(tx.execute(&stmt, &[&source, &resource_type, &id]).await?)
}
