//! PostgreSQL's errors as `StateError`s. A server error keeps its SQLSTATE
//! and message, never its DETAIL or WHERE: those quote row values (ids,
//! payload bytes), which must not reach a log or `status`.

use crate::state::StateError;

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> StateError {
        StateError::Postgres(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
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
