//! `fhir-bridge source rename OLD NEW`: every row that names a source (its
//! targets with their watermarks, seen versions and bodies, changes, outbox
//! messages with their message_ids, backfill and export jobs) moves to the
//! new name in one transaction, so the source goes on where it stopped:
//! nothing re-sent, nothing skipped. The tables are found by their `source`
//! column, so one added later moves too.

use super::{SqliteStore, StateError};
use crate::state::Rename;
use rusqlite::{Connection, params};

impl SqliteStore {
    pub async fn rename_source(&self, old: &str, new: &str) -> Result<Rename, StateError> {
        let (old, new) = (old.to_string(), new.to_string());
        self.call(move |c| rename(c, &old, &new)).await
    }
}

impl SqliteStore {
    pub async fn sources_with_state(&self) -> Result<Vec<String>, StateError> {
        self.call(|c| {
            c.prepare("SELECT DISTINCT source FROM poll_target ORDER BY source")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect()
        })
        .await
    }
}

fn rename(c: &mut Connection, old: &str, new: &str) -> rusqlite::Result<Rename> {
    let tx = c.transaction()?;
    let tables = tables_with_source(&tx)?;
    let count = |table: &str, name: &str| -> rusqlite::Result<usize> {
        tx.query_row(
            &format!("SELECT count(*) FROM \"{table}\" WHERE source = ?1"),
            params![name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as usize)
    };
    let mut taken = Vec::new();
    let mut moving = Vec::new();
    for table in &tables {
        if count(table, new)? > 0 {
            taken.push(table.clone());
        }
        let n = count(table, old)?;
        if n > 0 {
            moving.push((table.clone(), n));
        }
    }
    if moving.is_empty() {
        return Ok(Rename::NoState);
    }
    if !taken.is_empty() {
        return Ok(Rename::TargetHasState(taken));
    }
    for (table, _) in &moving {
        tx.execute(
            &format!("UPDATE \"{table}\" SET source = ?2 WHERE source = ?1"),
            params![old, new],
        )?;
    }
    tx.commit()?;
    Ok(Rename::Done(moving))
}

/// Every table with a `source` column (names are ours: plain identifiers).
fn tables_with_source(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare(
        "SELECT m.name FROM sqlite_master m
         WHERE m.type = 'table'
           AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) p WHERE p.name = 'source')
         ORDER BY m.name",
    )?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names
        .into_iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::test_util::temp_store;

    async fn rows(store: &SqliteStore, source: &str) -> Vec<(String, usize)> {
        let source = source.to_string();
        store
            .call(move |c| {
                let mut out = Vec::new();
                for t in tables_with_source(c)? {
                    let n: i64 = c.query_row(
                        &format!("SELECT count(*) FROM \"{t}\" WHERE source = ?1"),
                        params![source],
                        |r| r.get(0),
                    )?;
                    if n > 0 {
                        out.push((t, n as usize));
                    }
                }
                Ok(out)
            })
            .await
            .unwrap()
    }

    async fn seed(store: &SqliteStore, source: &str) {
        let source = source.to_string();
        store
            .call(move |c| {
                c.execute(
                    "INSERT INTO poll_target (source, resource_type, patient, initialized, watermark)
                     VALUES (?1, 'Observation', '', 1, '2026-01-01T00:00:00Z')",
                    params![source],
                )?;
                c.execute(
                    "INSERT INTO seen (source, resource_type, resource_id, version_id, last_updated, content_hash)
                     VALUES (?1, 'Observation', 'o1', '1', '2026-01-01T00:00:00Z', x'00')",
                    params![source],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn every_row_of_the_source_moves_in_one_go() {
        let (_dir, store) = temp_store();
        seed(&store, "old").await;
        seed(&store, "other").await;
        let before = rows(&store, "old").await;
        assert!(before.iter().any(|(t, _)| t == "poll_target"), "{before:?}");
        assert!(before.iter().any(|(t, _)| t == "seen"), "{before:?}");
        let tables = store.call(|c| tables_with_source(c)).await.unwrap();
        for t in [
            "backfill",
            "change",
            "export_job",
            "outbox",
            "poll_target",
            "seen",
            "seen_body",
        ] {
            assert!(tables.iter().any(|x| x == t), "{t} not in {tables:?}");
        }
        assert_eq!(
            store.rename_source("old", "new").await.unwrap(),
            Rename::Done(before.clone())
        );
        assert_eq!(rows(&store, "old").await, vec![]);
        assert_eq!(rows(&store, "new").await, before);
        assert_eq!(rows(&store, "other").await.len(), 2);
        // Again: nothing left under the old name; the new one is taken.
        assert_eq!(
            store.rename_source("old", "new").await.unwrap(),
            Rename::NoState
        );
        assert_eq!(
            store.rename_source("other", "new").await.unwrap(),
            Rename::TargetHasState(vec!["poll_target".into(), "seen".into()])
        );
        assert_eq!(rows(&store, "other").await.len(), 2);
        assert_eq!(store.sources_with_state().await.unwrap(), ["new", "other"]);
    }
}
