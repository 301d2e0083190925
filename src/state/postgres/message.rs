//! One outbox message as the operator's commands see it (as
//! `sqlite/message.rs`): one column list and one row reader for every query
//! that returns messages; the body (PHI) only when a query asks for it.

use super::change::{BODY_COLUMNS, read_body};
use crate::state::{MessageRecord, MessageState, StateError, StoredBody, WithBody};
use tokio_postgres::Row;

/// The columns `read_message` expects, in order, for an outbox row `o`.
const MESSAGE_COLUMNS: &str = "
    o.id, o.hook, o.message_id, o.event_number, o.state, o.attempts, o.created_at,
    o.next_attempt_at, o.done_at, o.last_status, o.last_error, o.resource_type,
    o.resource_id, o.version_id, o.event, o.source,
    (SELECT octet_length(b.payload)::bigint FROM outbox_payload b WHERE b.id = o.id),
    o.change_id,
    (SELECT octet_length(cb.body)::bigint FROM change_body cb WHERE cb.id = o.change_id)";

/// How many columns `MESSAGE_COLUMNS` has: the body's start after them.
const MESSAGE_COLUMN_COUNT: usize = 19;

/// A query of messages from `outbox o`: `rest` is its WHERE and ORDER BY,
/// on `o`'s columns (with a body, `c` is the message's change: qualify).
pub(super) fn select_messages(rest: &str, body: WithBody) -> String {
    match body {
        WithBody::No => format!("SELECT {MESSAGE_COLUMNS} FROM outbox o {rest}"),
        WithBody::Yes => format!(
            "SELECT {MESSAGE_COLUMNS}, {BODY_COLUMNS}
             FROM outbox o LEFT JOIN change c ON c.id = o.change_id {rest}"
        ),
    }
}

/// A message state as stored in `outbox.state`.
pub(super) fn parse_state(s: &str) -> Result<MessageState, StateError> {
    match s {
        "pending" => Ok(MessageState::Pending),
        "delivered" => Ok(MessageState::Delivered),
        "dead" => Ok(MessageState::Dead),
        _ => Err(StateError::Postgres(
            "unknown message state in outbox".into(),
        )),
    }
}

/// Reads a row of a `select_messages` query made with the same `body`.
pub(super) fn read_message(r: &Row, body: WithBody) -> Result<MessageRecord, StateError> {
    Ok(MessageRecord {
        id: r.try_get(0)?,
        hook: r.try_get(1)?,
        message_id: r.try_get(2)?,
        event_number: r.try_get(3)?,
        state: parse_state(r.try_get(4)?)?,
        attempts: r.try_get::<_, i32>(5)?.into(),
        created_at_ms: r.try_get(6)?,
        next_attempt_at_ms: r.try_get(7)?,
        done_at_ms: r.try_get(8)?,
        last_status: r.try_get::<_, Option<i32>>(9)?.map(i64::from),
        last_error: r.try_get(10)?,
        resource_type: r.try_get(11)?,
        resource_id: r.try_get(12)?,
        version_id: r.try_get(13)?,
        event: r.try_get(14)?,
        source: r.try_get(15)?,
        stored: StoredBody {
            payload_bytes: r.try_get(16)?,
            change_id: r.try_get(17)?,
            resource_bytes: r.try_get(18)?,
        },
        body: match body {
            WithBody::No => None,
            WithBody::Yes => Some(read_body(r, MESSAGE_COLUMN_COUNT)?),
        },
    })
}

/// Reads every row of a `select_messages` query.
pub(super) fn read_messages(
    rows: &[Row],
    body: WithBody,
) -> Result<Vec<MessageRecord>, StateError> {
    rows.iter().map(|r| read_message(r, body)).collect()
}
