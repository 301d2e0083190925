//! A FHIR-format hook's subscription channel on PostgreSQL (as
//! `sqlite/channel.rs`): its status, and the events retained for `$events`.
//! The hook's last event number is its `hook_seq` row.

use super::PgStore;
use super::change::{BODY_COLUMNS, BODY_COLUMNS_WITHOUT_BYTES, read_body};
use crate::state::{ChannelState, MAX_EVENTS_PER_QUERY, RetainedEvent, StateError, now_ms};

impl PgStore {
    pub async fn channel_state(&self, hook: &str) -> Result<ChannelState, StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT COALESCE((SELECT last FROM hook_seq WHERE hook = $1), 0),
                    (SELECT subscription_status FROM hook_stats WHERE hook = $1),
                    (SELECT subscription_error FROM hook_stats WHERE hook = $1)",
            )
            .await?;
        let r = client.query_one(&stmt, &[&hook]).await?;
        Ok(ChannelState {
            events: r.try_get(0)?,
            status: r.try_get(1)?,
            error: r.try_get(2)?,
        })
    }

    pub async fn set_channel_status(
        &self,
        hook: &str,
        status: &str,
        error: Option<String>,
    ) -> Result<(), StateError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO hook_stats (hook, subscription_status, subscription_status_at,
                    subscription_error)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (hook) DO UPDATE SET subscription_status = EXCLUDED.subscription_status,
                    subscription_status_at = EXCLUDED.subscription_status_at,
                    subscription_error = EXCLUDED.subscription_error",
            )
            .await?;
        client
            .execute(&stmt, &[&hook, &status, &now_ms(), &error])
            .await?;
        Ok(())
    }

    /// Numbers commit in order (`hook_seq`), so a reader that sees event N
    /// sees every event before it that is still kept.
    pub async fn retained_events(
        &self,
        hook: &str,
        since: i64,
        until: i64,
        with_bodies: bool,
    ) -> Result<Vec<RetainedEvent>, StateError> {
        // Without bodies, none is read (a query of 1,000 ids must not read
        // 1,000 bodies).
        let columns = if with_bodies {
            BODY_COLUMNS
        } else {
            BODY_COLUMNS_WITHOUT_BYTES
        };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT o.event_number, o.resource_type, o.resource_id, {columns}
                 FROM outbox o LEFT JOIN change c ON c.id = o.change_id
                 WHERE o.hook = $1 AND o.event_number BETWEEN $2 AND $3
                 ORDER BY o.event_number LIMIT $4"
            ))
            .await?;
        let rows = client
            .query(&stmt, &[&hook, &since, &until, &MAX_EVENTS_PER_QUERY])
            .await?;
        rows.iter()
            .map(|r| {
                let mut body = read_body(r, 3)?;
                if !with_bodies {
                    body.forget_resource();
                }
                Ok(RetainedEvent {
                    number: r.try_get(0)?,
                    resource_type: r.try_get(1)?,
                    resource_id: r.try_get(2)?,
                    body,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::state::postgres::test_util::fresh_store;
    use crate::state::{Fence, MessageBody, NewMessage, PageCommit};

    /// `sqlite/channel.rs`'s first test, on PostgreSQL.
    #[tokio::test]
    async fn status_starts_requested_and_events_are_read_by_number() {
        let Some(store) = fresh_store().await else {
            return;
        };
        let s = store.channel_state("h").await.unwrap();
        assert!(s.needs_handshake());
        assert_eq!((s.events, s.status()), (0, "requested"));
        let messages = (0..5)
            .map(|i| NewMessage::test("h", &format!("m{i}"), "Observation", &format!("o{i}")))
            .collect();
        let page = PageCommit {
            source: "s".into(),
            resource_type: "Observation".into(),
            messages,
            ..Default::default()
        };
        store.commit_page(&Fence::private(), page).await.unwrap();
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
        // An outcome moves a FHIR channel's status between active and error.
        let id = store.claim_due("h", vec![], 1).await.unwrap()[0].id;
        let failed = crate::state::DeliveryRecord::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
            retry_at_ms: Some(0),
        };
        let f = Fence::private();
        store
            .record_deliveries(&f, "h", vec![(id, failed)], true)
            .await
            .unwrap();
        let s = store.channel_state("h").await.unwrap();
        assert_eq!(
            (s.status(), s.error.as_deref()),
            ("error", Some("HTTP 500"))
        );
    }
}
