//! One outbox message as the operator's commands see it (`dlq list`, `dlq
//! show`, `replay`): one record type, read by one column list and one row
//! reader for every query that returns messages. Listing reads no content:
//! only the sizes of what is stored to send. The body (PHI) is read only by
//! the queries that ask for it (`dlq show --payload`).

use super::change::{BODY_COLUMNS, read_body};
use crate::state::{MessageRecord, MessageState, StoredBody, WithBody};
use rusqlite::Row;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};

impl FromSql for MessageState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "pending" => Ok(MessageState::Pending),
            "delivered" => Ok(MessageState::Delivered),
            "dead" => Ok(MessageState::Dead),
            other => Err(FromSqlError::Other(
                format!("unknown message state `{other}`").into(),
            )),
        }
    }
}

/// The columns `read_message` expects, in order, for an outbox row `o`.
const MESSAGE_COLUMNS: &str = "
    o.id, o.hook, o.message_id, o.event_number, o.state, o.attempts, o.created_at,
    o.next_attempt_at, o.done_at, o.last_status, o.last_error, o.resource_type,
    o.resource_id, o.version_id, o.event, o.source,
    (SELECT length(b.payload) FROM outbox_payload b WHERE b.id = o.id),
    o.change_id,
    (SELECT length(cb.body) FROM change_body cb WHERE cb.id = o.change_id)";

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

/// Reads a row of a `select_messages` query made with the same `body`.
pub(super) fn read_message(r: &Row, body: WithBody) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        id: r.get(0)?,
        hook: r.get(1)?,
        message_id: r.get(2)?,
        event_number: r.get(3)?,
        state: r.get(4)?,
        attempts: r.get(5)?,
        created_at_ms: r.get(6)?,
        next_attempt_at_ms: r.get(7)?,
        done_at_ms: r.get(8)?,
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        resource_type: r.get(11)?,
        resource_id: r.get(12)?,
        version_id: r.get(13)?,
        event: r.get(14)?,
        source: r.get(15)?,
        stored: StoredBody {
            payload_bytes: r.get(16)?,
            change_id: r.get(17)?,
            resource_bytes: r.get(18)?,
        },
        body: match body {
            WithBody::No => None,
            WithBody::Yes => Some(read_body(r, MESSAGE_COLUMN_COUNT)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::test_util::temp_store;

    /// The row reader and the column list agree, with and without a body.
    #[tokio::test]
    async fn the_column_list_has_what_the_reader_reads() {
        let (_d, store) = temp_store();
        let counts = store
            .call(|c| {
                let count = |body| {
                    c.prepare(&select_messages("", body))
                        .map(|s| s.column_count())
                };
                Ok((count(WithBody::No)?, count(WithBody::Yes)?))
            })
            .await
            .unwrap();
        assert_eq!(counts, (MESSAGE_COLUMN_COUNT, MESSAGE_COLUMN_COUNT + 11));
    }

    #[test]
    fn states_read_as_stored_and_print_as_stored() {
        for s in [
            MessageState::Pending,
            MessageState::Delivered,
            MessageState::Dead,
        ] {
            let read = MessageState::column_result(ValueRef::Text(s.as_str().as_bytes()));
            assert_eq!(read.unwrap(), s);
            assert_eq!(format!("{s:<9}|"), format!("{:<9}|", s.as_str()));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!(MessageState::column_result(ValueRef::Text(b"sent")).is_err());
    }
}
