//! `fhir-bridge source rename OLD NEW` on PostgreSQL (as `sqlite/rename.rs`):
//! every row that names the source moves in one transaction. The tables
//! are found by their `source` column, so one added later moves too.

use super::PgStore;
use crate::state::{Rename, StateError};

impl PgStore {
    pub async fn rename_source(&self, old: &str, new: &str) -> Result<Rename, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let tables = tables_with_source(&tx).await?;
        let mut taken = Vec::new();
        let mut moving = Vec::new();
        for table in &tables {
            let count = format!("SELECT count(*) FROM \"{table}\" WHERE source = $1");
            let n_new: i64 = tx.query_one(&count, &[&new]).await?.try_get(0)?;
            if n_new > 0 {
                taken.push(table.clone());
            }
            let n: i64 = tx.query_one(&count, &[&old]).await?.try_get(0)?;
            if n > 0 {
                moving.push((table.clone(), n as usize));
            }
        }
        if moving.is_empty() {
            return Ok(Rename::NoState);
        }
        if !taken.is_empty() {
            return Ok(Rename::TargetHasState(taken));
        }
        for (table, _) in &moving {
            let sql = format!("UPDATE \"{table}\" SET source = $2 WHERE source = $1");
            tx.execute(&sql, &[&old, &new]).await?;
        }
        tx.commit().await?;
        Ok(Rename::Done(moving))
    }
}

/// Every table of ours (one a migration creates: the database may be
/// shared with other applications) with a `source` column, in name order.
async fn tables_with_source(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<Vec<String>, StateError> {
    let rows = tx
        .query(
            "SELECT c.table_name::text FROM information_schema.columns c
             JOIN information_schema.tables t
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name
             WHERE c.table_schema = current_schema() AND c.column_name = 'source'
               AND t.table_type = 'BASE TABLE'
             ORDER BY c.table_name::text COLLATE \"C\"",
            &[],
        )
        .await?;
    let names = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names
        .into_iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .filter(|n| super::schema::creates_table(n))
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::state::postgres::test_util::fresh_store;

    /// A database shared with another application: its table with a
    /// `source` column is not ours, and a rename never touches it.
    #[tokio::test]
    async fn another_applications_table_is_never_renamed() {
        let Some(store) = fresh_store().await else {
            return;
        };
        let c = store.client().await.unwrap();
        c.batch_execute(
            "CREATE TABLE audit_log (source TEXT NOT NULL);
             INSERT INTO audit_log VALUES ('ehr');
             INSERT INTO poll_target (source, resource_type, patient) VALUES ('ehr', 'Observation', '')",
        )
        .await
        .unwrap();
        let done = store.rename_source("ehr", "ehr2").await.unwrap();
        assert!(matches!(done, crate::state::Rename::Done(_)), "{done:?}");
        let theirs: String = c
            .query_one("SELECT source FROM audit_log", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(theirs, "ehr");
    }

    /// Every table that names a source is found, so every one moves.
    #[tokio::test]
    async fn every_table_with_a_source_is_found() {
        let Some(store) = fresh_store().await else {
            return;
        };
        let mut client = store.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let tables = super::tables_with_source(&tx).await.unwrap();
        assert_eq!(
            tables,
            [
                "backfill",
                "change",
                "export_job",
                "outbox",
                "poll_target",
                "seen",
                "seen_body"
            ]
        );
    }
}
