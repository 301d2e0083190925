//! Detected changes on PostgreSQL, stored once however many hooks take them
//! (as `sqlite/change.rs`): the body in `change_body` goes as soon as no
//! pending or dead message needs it (the triggers of `schema.rs`).

use crate::state::{ChangeRecord, MessageBody};
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

/// The columns `read_body` expects, in order, for an outbox row `o` (and
/// its change `c`, left-joined): stored payload, then the change.
pub(super) const BODY_COLUMNS: &str = "
    (SELECT b.payload FROM outbox_payload b WHERE b.id = o.id),
    c.id, c.source, c.owner_id, c.resource_type, c.resource_id, c.version_id,
    c.last_updated, c.event, c.detected_at,
    (SELECT cb.body FROM change_body cb WHERE cb.id = c.id)";

/// `BODY_COLUMNS` without the bytes: no stored payload and no resource body
/// is read (`read_body` gives what `MessageBody::forget_resource` leaves).
pub(super) const BODY_COLUMNS_WITHOUT_BYTES: &str = "
    NULL::bytea,
    c.id, c.source, c.owner_id, c.resource_type, c.resource_id, c.version_id,
    c.last_updated, c.event, c.detected_at,
    NULL::bytea";

/// Reads `BODY_COLUMNS` starting at column `at`.
pub(super) fn read_body(r: &Row, at: usize) -> Result<MessageBody, tokio_postgres::Error> {
    if let Some(p) = r.try_get::<_, Option<Vec<u8>>>(at)? {
        return Ok(MessageBody::Stored(p));
    }
    let Some(id) = r.try_get::<_, Option<i64>>(at + 1)? else {
        return Ok(MessageBody::Missing);
    };
    Ok(MessageBody::Change(ChangeRecord {
        id,
        source: r.try_get(at + 2)?,
        owner_id: r.try_get(at + 3)?,
        resource_type: r.try_get(at + 4)?,
        resource_id: r.try_get(at + 5)?,
        version_id: r.try_get(at + 6)?,
        last_updated: r.try_get(at + 7)?,
        event: r.try_get(at + 8)?,
        detected_at: r.try_get(at + 9)?,
        body: r.try_get(at + 10)?,
    }))
}

/// Stores a change (and its body, if any); returns its id.
pub(super) async fn insert_change(
    tx: &Transaction<'_>,
    c: &ChangeRecord,
) -> Result<i64, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO change (source, owner_id, resource_type, resource_id, version_id,
                last_updated, event, detected_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .await?;
    let id: i64 = tx
        .query_one(
            &stmt,
            &[
                &c.source,
                &c.owner_id,
                &c.resource_type,
                &c.resource_id,
                &c.version_id,
                &c.last_updated,
                &c.event,
                &c.detected_at,
            ],
        )
        .await?
        .try_get(0)?;
    if let Some(body) = &c.body {
        let stmt = tx
            .prepare_cached("INSERT INTO change_body (id, body) VALUES ($1, $2)")
            .await?;
        tx.execute(&stmt, &[&id, body]).await?;
    }
    Ok(id)
}

/// Removes a change no message refers to (every message of it was a duplicate).
pub(super) async fn delete_change(
    tx: &Transaction<'_>,
    id: i64,
) -> Result<(), tokio_postgres::Error> {
    let body = tx
        .prepare_cached("DELETE FROM change_body WHERE id = $1")
        .await?;
    tx.execute(&body, &[&id]).await?;
    let change = tx
        .prepare_cached("DELETE FROM change WHERE id = $1")
        .await?;
    tx.execute(&change, &[&id]).await?;
    Ok(())
}
