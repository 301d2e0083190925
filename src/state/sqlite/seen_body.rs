//! `seen_body`: the last body read of each resource, kept only for the
//! resource types whose hooks read `$previous`. A row lives and dies with
//! its `seen` row: written in the same page transaction, pruned with it.

use rusqlite::{Connection, params};

/// Stores `body` as the resource's last one; `None` (over the size bound)
/// forgets the older body, so `$previous` is null rather than stale.
pub(super) fn write(
    c: &Connection,
    source: &str,
    resource_type: &str,
    id: &str,
    body: Option<&[u8]>,
) -> rusqlite::Result<()> {
    match body {
        Some(body) => c
            .prepare_cached(
                "INSERT INTO seen_body (source, resource_type, resource_id, body)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source, resource_type, resource_id) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![source, resource_type, id, body])?,
        None => forget(c, source, resource_type, id)?,
    };
    Ok(())
}

/// Forgets one resource's body.
pub(super) fn forget(
    c: &Connection,
    source: &str,
    resource_type: &str,
    id: &str,
) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "DELETE FROM seen_body WHERE source = ?1 AND resource_type = ?2 AND resource_id = ?3",
    )?
    .execute(params![source, resource_type, id])
}

/// Whether any body is kept for this target (most targets keep none).
pub(super) fn any(c: &Connection, source: &str, resource_type: &str) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM seen_body WHERE source = ?1 AND resource_type = ?2)",
    )?
    .query_row(params![source, resource_type], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use crate::state::sqlite::SqliteStore;
    use crate::state::sqlite::test_util::temp_store;
    use crate::state::{PageCommit, SeenRow};

    fn row(lu: &str, body: Option<&str>) -> SeenRow {
        SeenRow {
            version_id: None,
            last_updated: Some(lu.into()),
            content_hash: [1; 32],
            body: body.map(|b| b.as_bytes().to_vec()),
        }
    }

    async fn commit(store: &SqliteStore, keep_bodies: bool, seen: Vec<(&str, SeenRow)>) {
        store
            .commit_page(
                &crate::state::Fence::private(),
                PageCommit {
                    source: "s".into(),
                    resource_type: "Encounter".into(),
                    seen: seen
                        .into_iter()
                        .map(|(id, r)| (id.to_string(), r))
                        .collect(),
                    keep_bodies,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    fn body(store: &SqliteStore, id: &str) -> Option<String> {
        let rows = store
            .read_seen("s", "Encounter", vec![id.into()], true)
            .unwrap();
        rows.get(id)
            .and_then(|r| r.body.clone())
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[tokio::test]
    async fn a_body_follows_its_seen_row() {
        let (_d, store) = temp_store();
        commit(&store, true, vec![("a", row("2026-01-02", Some("v2")))]).await;
        assert_eq!(body(&store, "a").as_deref(), Some("v2"));
        // Loaded only when asked for.
        let plain = store
            .load_seen("s", "Encounter", vec!["a".into()])
            .await
            .unwrap();
        assert_eq!(plain["a"].body, None);
        // An older version (a backfill behind the daemon) moves neither.
        commit(&store, true, vec![("a", row("2026-01-01", Some("v1")))]).await;
        assert_eq!(body(&store, "a").as_deref(), Some("v2"));
        // A version too large to keep forgets the older body.
        commit(&store, true, vec![("a", row("2026-01-03", None))]).await;
        assert_eq!(body(&store, "a"), None);
        // A type that keeps no bodies writes none.
        commit(&store, false, vec![("b", row("2026-01-03", Some("x")))]).await;
        assert_eq!(body(&store, "b"), None);
    }

    #[tokio::test]
    async fn bodies_are_pruned_with_their_seen_rows() {
        let (_d, store) = temp_store();
        commit(
            &store,
            true,
            vec![
                ("old", row("2026-01-01", Some("o"))),
                ("new", row("2026-03-01", Some("n"))),
            ],
        )
        .await;
        let n = store
            .prune_seen("s", "Encounter", "2026-02-01".into())
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(body(&store, "new").as_deref(), Some("n"));
        let left: i64 = store
            .call(|c| c.query_row("SELECT count(*) FROM seen_body", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(left, 1, "the pruned row's body went with it");
    }
}
