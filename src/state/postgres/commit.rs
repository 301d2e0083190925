//! The page commit on PostgreSQL: seen versions (and kept bodies), the
//! outbox's messages, and the watermark, backfill or export progress of the
//! page, in one fenced transaction (as `sqlite/poll.rs`'s `commit_page`).
//! Its helpers live where SQLite keeps them (`backfill::record_page`,
//! `export::record_chunk`, `seen_body::write`).
//!
//! Order inside the transaction: the fence first; the counter rows of the
//! hooks (`hook_seq`, in `insert_messages`) last, since they are held until
//! the commit and every enqueuer of the hook waits for them.

use super::outbox::insert_messages;
use super::{PgStore, backfill, errors, export, fence, seen_body};
use crate::state::{Fence, PageCommit, StateError};
use deadpool_postgres::Transaction;

/// How often a page is tried when its transaction only met another (a
/// deadlock between two replicas upserting the same seen rows or message
/// ids in different orders): PostgreSQL aborted one, which is safe to run
/// again. SQLite never sees this (one writer).
const ATTEMPTS: usize = 5;

/// Why a page's transaction failed: the database (maybe a conflict worth
/// retrying), or anything else (the fence's refusal, a helper's error).
enum Failure {
    Db(tokio_postgres::Error),
    Other(StateError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl PgStore {
    pub async fn commit_page(&self, fence: &Fence, page: PageCommit) -> Result<(), StateError> {
        fence.check_page(&page)?;
        let mut client = self.client().await?;
        let mut attempt = 1;
        loop {
            let tx = client.transaction().await?;
            let done = match write_page(&tx, fence, &page).await {
                Ok(()) => tx.commit().await.map_err(Failure::Db),
                Err(e) => {
                    // The connection goes back to the pool clean.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match done {
                Ok(()) => return Ok(()),
                Err(Failure::Db(e)) if errors::is_transient(&e) && attempt < ATTEMPTS => {
                    attempt += 1;
                }
                Err(Failure::Db(e)) => return Err(e.into()),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }
}

/// Everything `page` changes, in `tx`.
async fn write_page(tx: &Transaction<'_>, fence: &Fence, page: &PageCommit) -> Result<(), Failure> {
    fence::check(&**tx, fence).await.map_err(Failure::Other)?;
    let upsert = tx
        .prepare_cached(
            "INSERT INTO seen (source, resource_type, resource_id, version_id, last_updated, content_hash)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (source, resource_type, resource_id) DO UPDATE SET
                version_id = EXCLUDED.version_id,
                last_updated = EXCLUDED.last_updated,
                content_hash = EXCLUDED.content_hash
             -- Never back to an older version: a backfill and the daemon
             -- may commit the same resource in either order. Byte order
             -- (COLLATE \"C\"), as SQLite compares, whatever the database's.
             WHERE seen.last_updated IS NULL OR EXCLUDED.last_updated IS NULL
                OR EXCLUDED.last_updated COLLATE \"C\" >= seen.last_updated COLLATE \"C\"",
        )
        .await?;
    for (id, row) in &page.seen {
        let hash: &[u8] = &row.content_hash;
        let moved = tx
            .execute(
                &upsert,
                &[
                    &page.source,
                    &page.resource_type,
                    id,
                    &row.version_id,
                    &row.last_updated,
                    &hash,
                ],
            )
            .await?;
        // The body follows its seen row, older-version guard included.
        if page.keep_bodies && moved > 0 {
            let body = row.body.as_deref();
            seen_body::write(tx, &page.source, &page.resource_type, id, body)
                .await
                .map_err(Failure::Other)?;
        }
    }
    match &page.backfill {
        Some(progress) => backfill::record_page(tx, page, progress)
            .await
            .map_err(Failure::Other)?,
        None => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark)
                     VALUES ($1, $2, $6, true, $3)
                     ON CONFLICT (source, resource_type, patient) DO UPDATE SET
                        watermark = COALESCE($3, poll_target.watermark),
                        changes_seen = poll_target.changes_seen + $4,
                        resources_read = poll_target.resources_read + $5",
                )
                .await?;
            let patient = page.patient.as_deref().unwrap_or("");
            let (changes, read) = (page.changes as i64, page.resources_read as i64);
            tx.execute(
                &stmt,
                &[
                    &page.source,
                    &page.resource_type,
                    &page.watermark,
                    &changes,
                    &read,
                    &patient,
                ],
            )
            .await?;
        }
    }
    if let Some(progress) = &page.export {
        export::record_chunk(tx, &page.source, progress)
            .await
            .map_err(Failure::Other)?;
    }
    // Sorted: two pages counting errors of the same hooks lock their rows
    // in the same order.
    let mut errs: Vec<(&String, &u64)> = page.filter_errors.iter().collect();
    errs.sort();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO hook_stats (hook, filter_errors) VALUES ($1, $2)
             ON CONFLICT (hook) DO UPDATE SET
                filter_errors = hook_stats.filter_errors + EXCLUDED.filter_errors",
        )
        .await?;
    for (hook, n) in errs {
        tx.execute(&stmt, &[hook, &(*n as i64)]).await?;
    }
    insert_messages(tx, &page.messages).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::state::postgres::PgStore;
    use crate::state::postgres::test_util::fresh_store;
    use crate::state::{Fence, PageCommit, SeenRow};

    fn row(lu: &str, body: Option<&str>) -> SeenRow {
        SeenRow {
            version_id: None,
            last_updated: Some(lu.into()),
            content_hash: [1; 32],
            body: body.map(|b| b.as_bytes().to_vec()),
        }
    }

    async fn commit(store: &PgStore, keep_bodies: bool, seen: Vec<(&str, SeenRow)>) {
        let seen = seen.into_iter().map(|(id, r)| (id.to_string(), r));
        let page = PageCommit {
            source: "s".into(),
            resource_type: "Encounter".into(),
            seen: seen.collect(),
            keep_bodies,
            ..Default::default()
        };
        store.commit_page(&Fence::private(), page).await.unwrap();
    }

    async fn get(store: &PgStore, id: &str) -> Option<SeenRow> {
        let ids = vec![id.to_string()];
        let mut rows = store
            .load_seen_for_page("s", "Encounter", ids, true)
            .await
            .unwrap();
        rows.remove(id)
    }

    async fn body(store: &PgStore, id: &str) -> Option<String> {
        let body = get(store, id).await.and_then(|r| r.body)?;
        Some(String::from_utf8(body).unwrap())
    }

    /// `sqlite/seen_body.rs`'s test: a body follows its seen row, the
    /// older-version guard included; and the guard compares instants byte
    /// by byte whatever the database's collation.
    #[tokio::test]
    async fn a_body_follows_its_seen_row_and_never_goes_back() {
        let Some(store) = fresh_store().await else {
            return;
        };
        commit(&store, true, vec![("a", row("2026-01-02", Some("v2")))]).await;
        assert_eq!(body(&store, "a").await.as_deref(), Some("v2"));
        // An older version (a backfill behind the daemon) moves neither.
        commit(&store, true, vec![("a", row("2026-01-01", Some("v1")))]).await;
        assert_eq!(body(&store, "a").await.as_deref(), Some("v2"));
        let lu = get(&store, "a").await.unwrap().last_updated;
        assert_eq!(lu.as_deref(), Some("2026-01-02"));
        // A version too large to keep forgets the older body.
        commit(&store, true, vec![("a", row("2026-01-03", None))]).await;
        assert_eq!(body(&store, "a").await, None);
        // A type that keeps no bodies writes none.
        commit(&store, false, vec![("b", row("2026-01-03", Some("x")))]).await;
        assert_eq!(body(&store, "b").await, None);
        // Byte order: 'Z' (0x5a) sorts before 'z' and after '.'; a
        // linguistic collation could say otherwise.
        commit(
            &store,
            false,
            vec![("c", row("2026-01-03T00:00:00.5Z", None))],
        )
        .await;
        commit(
            &store,
            false,
            vec![("c", row("2026-01-03T00:00:00Z", None))],
        )
        .await;
        let lu = get(&store, "c").await.unwrap().last_updated;
        assert_eq!(lu.as_deref(), Some("2026-01-03T00:00:00Z"));
    }
}
