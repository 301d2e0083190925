//! The outbox on PostgreSQL: messages in, claims, delivery outcomes.

use crate::state::{NewMessage, StateError};

/// Inserts a page's messages (each change stored once, shared by the
/// messages of its `Arc`) and numbers them per hook from `hook_seq`, inside
/// the page's transaction (see `schema.rs`: insert first, then lock each
/// hook's counter row in sorted order and number the inserted rows).
#[allow(dead_code)] // called by commit_page once ported
pub(super) async fn insert_messages(
    tx: &tokio_postgres::Transaction<'_>,
    messages: &[NewMessage],
) -> Result<(), StateError> {
    let _ = tx;
    if messages.is_empty() {
        return Ok(());
    }
    Err(StateError::Postgres(
        "insert_messages: not on PostgreSQL yet".into(),
    ))
}
