//! Detected changes, stored once however many hooks take them; the outbox's
//! messages refer to them by `change_id`. The body (the resource as the
//! server sent it, PHI) lives in `change_body` and goes as soon as no pending
//! or dead message needs it (triggers of migration 7); the change's metadata
//! stays while any message refers to it (replay renders id-only from it).

use crate::state::{ChangeRecord, MessageBody};
use rusqlite::{Row, Transaction, params};

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
    NULL,
    c.id, c.source, c.owner_id, c.resource_type, c.resource_id, c.version_id,
    c.last_updated, c.event, c.detected_at,
    NULL";

/// Reads `BODY_COLUMNS` starting at column `at`.
pub(super) fn read_body(r: &Row, at: usize) -> rusqlite::Result<MessageBody> {
    if let Some(p) = r.get::<_, Option<Vec<u8>>>(at)? {
        return Ok(MessageBody::Stored(p));
    }
    let Some(id) = r.get::<_, Option<i64>>(at + 1)? else {
        return Ok(MessageBody::Missing);
    };
    Ok(MessageBody::Change(ChangeRecord {
        id,
        source: r.get(at + 2)?,
        owner_id: r.get(at + 3)?,
        resource_type: r.get(at + 4)?,
        resource_id: r.get(at + 5)?,
        version_id: r.get(at + 6)?,
        last_updated: r.get(at + 7)?,
        event: r.get(at + 8)?,
        detected_at: r.get(at + 9)?,
        body: r.get(at + 10)?,
    }))
}

/// Stores a change (and its body, if any); returns its id.
pub(super) fn insert_change(tx: &Transaction, c: &ChangeRecord) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO change (source, owner_id, resource_type, resource_id, version_id,
            last_updated, event, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        c.source,
        c.owner_id,
        c.resource_type,
        c.resource_id,
        c.version_id,
        c.last_updated,
        c.event,
        c.detected_at
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(body) = &c.body {
        tx.prepare_cached("INSERT INTO change_body (id, body) VALUES (?1, ?2)")?
            .execute(params![id, body])?;
    }
    Ok(id)
}

/// Removes a change no message refers to (every message of it was a duplicate).
pub(super) fn delete_change(tx: &Transaction, id: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM change_body WHERE id = ?1")?
        .execute(params![id])?;
    tx.prepare_cached("DELETE FROM change WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

#[cfg(test)]
#[path = "change_tests.rs"]
mod tests;
