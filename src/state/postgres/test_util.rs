//! Test helpers that reach into the PostgreSQL backend's tables.

use super::{PgSettings, PgStore};

/// A store on a fresh database of the test server; `None` without one.
pub(crate) async fn fresh_store() -> Option<PgStore> {
    let url = super::test_server::fresh_database().await?;
    let settings = PgSettings {
        url,
        pool_size: 12,
        tls: None,
    };
    Some(PgStore::connect(&settings).unwrap())
}

/// Makes a hook's messages look `ms` older than they are.
pub(crate) async fn backdate(store: &PgStore, hook: &str, ms: i64) {
    let client = store.client().await.unwrap();
    client
        .execute(
            "UPDATE outbox SET created_at = created_at - $2 WHERE hook = $1",
            &[&hook, &ms],
        )
        .await
        .unwrap();
}

/// Runs `sql` (test set-up), panicking on failure.
pub(crate) async fn exec(store: &PgStore, sql: &str) {
    store
        .client()
        .await
        .unwrap()
        .batch_execute(sql)
        .await
        .unwrap();
}
