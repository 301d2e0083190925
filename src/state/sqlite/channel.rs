//! A FHIR-format hook's subscription channel: its status (`requested` until a
//! handshake gets a 2xx, then `active`, `error` after a failed attempt) and
//! the events still retained for `$events`.

use super::change::{BODY_COLUMNS, BODY_COLUMNS_WITHOUT_BYTES, read_body};
use super::event_number::events_since_start;
use super::{SqliteStore, StateError, now_ms};
use crate::state::{ChannelState, MAX_EVENTS_PER_QUERY, RetainedEvent};
use rusqlite::{OptionalExtension, params};

impl SqliteStore {
    pub async fn channel_state(&self, hook: &str) -> Result<ChannelState, StateError> {
        let hook = hook.to_string();
        self.call(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT events, subscription_status, subscription_error
                     FROM hook_stats WHERE hook = ?1",
                )?
                .query_row(params![hook], |r| {
                    Ok(ChannelState {
                        events: r.get(0)?,
                        status: r.get(1)?,
                        error: r.get(2)?,
                    })
                })
                .optional()?;
            Ok(row.unwrap_or(ChannelState {
                events: events_since_start(c, &hook)?,
                status: None,
                error: None,
            }))
        })
        .await
    }

    pub async fn set_channel_status(
        &self,
        hook: &str,
        status: &str,
        error: Option<String>,
    ) -> Result<(), StateError> {
        let (hook, status) = (hook.to_string(), status.to_string());
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO hook_stats (hook, subscription_status, subscription_status_at,
                    subscription_error)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (hook) DO UPDATE SET subscription_status = ?2,
                    subscription_status_at = ?3, subscription_error = ?4",
            )?
            .execute(params![hook, status, now_ms(), error])?;
            Ok(())
        })
        .await
    }

    pub async fn retained_events(
        &self,
        hook: &str,
        since: i64,
        until: i64,
        with_bodies: bool,
    ) -> Result<Vec<RetainedEvent>, StateError> {
        let hook = hook.to_string();
        // Without bodies, none is read (a query of 1,000 ids must not read
        // 1,000 bodies on the one connection the pipeline needs too).
        let columns = if with_bodies {
            BODY_COLUMNS
        } else {
            BODY_COLUMNS_WITHOUT_BYTES
        };
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT o.event_number, o.resource_type, o.resource_id, {columns}
                 FROM outbox o LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.hook = ?1 AND o.event_number BETWEEN ?2 AND ?3
                 ORDER BY o.event_number LIMIT ?4"
            ))?;
            let rows = stmt.query_map(params![hook, since, until, MAX_EVENTS_PER_QUERY], |r| {
                let mut body = read_body(r, 3)?;
                if !with_bodies {
                    body.forget_resource();
                }
                Ok(RetainedEvent {
                    number: r.get(0)?,
                    resource_type: r.get(1)?,
                    resource_id: r.get(2)?,
                    body,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::state::sqlite::test_util::temp_store;
    use crate::state::{MessageBody, NewMessage, PageCommit};

    #[tokio::test]
    async fn status_starts_requested_and_events_are_read_by_number() {
        let (_d, store) = temp_store();
        let s = store.channel_state("h").await.unwrap();
        assert!(s.needs_handshake());
        assert_eq!((s.events, s.status()), (0, "requested"));
        let messages = (0..5)
            .map(|i| NewMessage::test("h", &format!("m{i}"), "Observation", &format!("o{i}")))
            .collect();
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    messages,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        store.set_channel_status("h", "active", None).await.unwrap();
        let s = store.channel_state("h").await.unwrap();
        assert!(!s.needs_handshake());
        assert_eq!((s.events, s.status()), (5, "active"));
        let got = store.retained_events("h", 2, 4, false).await.unwrap();
        let numbers: Vec<_> = got
            .iter()
            .map(|e| (e.number, e.resource_id.as_str()))
            .collect();
        assert_eq!(numbers, [(2, "o1"), (3, "o2"), (4, "o3")]);
        assert!(matches!(&got[0].body, MessageBody::Change(c) if c.body.is_none()));
        let with = store.retained_events("h", 5, 5, true).await.unwrap();
        assert!(matches!(&with[0].body, MessageBody::Change(c) if c.body.is_some()));
    }

    /// Without bodies no body is read at all: an anonymous `$events` (ids
    /// only, up to 1,000 events) must not make the one database connection
    /// read every resource body, and hold the pipeline off meanwhile. Seen
    /// here as a body the store could not read not failing the query.
    #[tokio::test]
    async fn events_without_bodies_read_none() {
        let (_d, store) = temp_store();
        let messages = (0..3)
            .map(|i| NewMessage::test("h", &format!("m{i}"), "Observation", &format!("o{i}")))
            .collect();
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Observation".into(),
                    messages,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        store
            .call(|c| c.execute("UPDATE change_body SET body = 42", []))
            .await
            .unwrap();
        assert!(store.retained_events("h", 1, 3, true).await.is_err());
        let got = store.retained_events("h", 1, 3, false).await.unwrap();
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0].body, MessageBody::Change(c) if c.body.is_none()));
    }
}
