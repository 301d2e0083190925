//! PostgreSQL's errors as `StateError`s. A server error keeps its SQLSTATE
//! and message, never its DETAIL or WHERE: those quote row values (ids,
//! payload bytes), which must not reach a log or `status`. The message is
//! the server's text: escaped and bounded as any outside text.

use crate::state::StateError;

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> StateError {
        StateError::Postgres(match e.as_db_error() {
            Some(db) => format!(
                "{} ({})",
                crate::logsafe::escape(db.message()),
                crate::logsafe::escape(db.code().code())
            ),
            None => crate::logsafe::escape(&with_causes(&e)),
        })
    }
}

/// A client-side error with what caused it ("error performing TLS
/// handshake: invalid peer certificate: UnknownIssuer"): tokio-postgres
/// shows only its kind. Causes are I/O, TLS and protocol errors, never the
/// connection string (its parse errors are never shown).
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl From<deadpool_postgres::PoolError> for StateError {
    fn from(e: deadpool_postgres::PoolError) -> StateError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StateError::Postgres(format!("connection pool: {other}")),
        }
    }
}

/// Whether a transaction failed only because it met another (a deadlock or
/// a serialization failure): it is safe to run again.
pub(super) fn is_transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

#[cfg(test)]
mod tests {
    use crate::state::StateError;
    use crate::state::postgres::test_util::fresh_store;

    /// The database's error text is outside text: a server (or whatever
    /// answers in its place) cannot forge a log line with a newline, colour
    /// a terminal or flood a log with a long message.
    #[tokio::test]
    async fn a_database_message_is_escaped_and_bounded() {
        let Some(store) = fresh_store().await else {
            return;
        };
        let c = store.client().await.unwrap();
        let e = c
            .batch_execute(
                "DO $$ BEGIN RAISE EXCEPTION '%', E'bad\\n2026-01-01 INFO forged\\x1b[31m'
                    || repeat('x', 100000); END $$",
            )
            .await
            .unwrap_err();
        let StateError::Postgres(text) = StateError::from(e) else {
            panic!("not a database error");
        };
        assert!(!text.contains('\n') && !text.contains('\u{1b}'));
        assert!(text.len() < 1000, "{} characters", text.len());
        assert!(text.contains("(P0001)"), "the SQLSTATE stays: {text}");
    }
}
