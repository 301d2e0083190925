//! Durable state. `Store` is the one handle every layer uses; behind it sits a
//! backend (today only SQLite, in `sqlite/`, the only place that speaks SQL).
//!
//! Durability: WAL with `synchronous=NORMAL`. A commit survives a process crash
//! (`kill -9`). A power loss can roll back the last commits, but watermark,
//! seen-versions and outbox rows always roll back *together*, so the next poll
//! reads the same changes again: nothing is lost, at worst re-sent.

mod backfill_lock;
mod deliveries;
mod files;
mod lock;
mod open;
mod operator;
mod sqlite;
mod targets;

pub use backfill_lock::BackfillLock;
pub use deliveries::{
    ChangeRecord, ChannelState, Claimed, DeliveryRecord, DeliveryStore, MAX_EVENTS_PER_QUERY,
    MessageBody, NewMessage, RetainedEvent,
};
pub use lock::{LockError, LockProbe, StateLock};
pub use open::{Access, Backfill, Exclusive, OpenError, ReadOnly, ReadWrite, SourceRename, open};
pub use operator::{
    DlqSelection, GaugeSnapshot, Heartbeat, HookDepth, HookReport, MessageFilter, MessageKey,
    MessageRecord, MessageState, Moved, OperatorStore, OrphanedHook, Rename, Requeue, StoredBody,
    Summary, TargetMark, TargetReport, WithBody,
};
pub use targets::{
    BackfillJob, BackfillProgress, ExportJob, ExportProgress, PageCommit, PollOutcome, RosterSync,
    SeenRow, TargetKey, TargetState, TargetStore,
};

use sqlite::SqliteStore;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {message}")]
    Open { path: String, message: String },
    /// Still SQLite's error type: a second backend adds its own variant.
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database task failed: {0}")]
    Task(String),
}

/// A handle on the state, cheap to clone. Every method dispatches to the
/// backend it was opened on.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// The backends a `Store` can sit on (an enum, not `dyn`: identical
/// signatures, native `async fn`, no boxing).
#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
}

/// Milliseconds since the Unix epoch, our clock (never the EHR's).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Declares one role of the state: its trait (the contract every backend
/// implements), the SQLite backend's implementation (its inherent methods of
/// the same names, in `sqlite/`), and `Store`'s methods of the same names,
/// which dispatch to the backend the store was opened on. Callers use
/// `Store`'s methods and import no trait; a second backend adds its arm here.
macro_rules! role {
    (
        $(#[$tmeta:meta])*
        pub trait $role:ident {
            $(
                $(#[$meta:meta])*
                async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
        $(blocking {
            $(
                $(#[$smeta:meta])*
                fn $sname:ident(&self $(, $sarg:ident: $sty:ty)* $(,)?) -> $sret:ty;
            )*
        })?
    ) => {
        $(#[$tmeta])*
        // Only ever called on a concrete backend (enum dispatch), so whether
        // a future is `Send` is known at each call: no bound needed here.
        #[allow(async_fn_in_trait)]
        pub trait $role {
            $( $(#[$meta])* async fn $name(&self $(, $arg: $ty)*) -> $ret; )*
            $($( $(#[$smeta])* fn $sname(&self $(, $sarg: $sty)*) -> $sret; )*)?
        }

        // Inherent methods come first in path resolution: these call the
        // SQL, not themselves.
        impl $role for $crate::state::sqlite::SqliteStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    $crate::state::sqlite::SqliteStore::$name(self $(, $arg)*).await
                }
            )*
            $($(
                fn $sname(&self $(, $sarg: $sty)*) -> $sret {
                    $crate::state::sqlite::SqliteStore::$sname(self $(, $sarg)*)
                }
            )*)?
        }

        impl $crate::state::Store {
            $(
                $(#[$meta])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        $crate::state::Backend::Sqlite(b) => $role::$name(b $(, $arg)*).await,
                    }
                }
            )*
            $($(
                $(#[$smeta])*
                pub fn $sname(&self $(, $sarg: $sty)*) -> $sret {
                    match &self.backend {
                        $crate::state::Backend::Sqlite(b) => $role::$sname(b $(, $sarg)*),
                    }
                }
            )*)?
        }
    };
}
pub(crate) use role;

impl Store {
    /// Opens (creating and migrating if needed) the SQLite database at
    /// `path`: for tests and a dry run's scratch state. The configured state
    /// opens through [`open`](crate::state::open()).
    pub fn open(path: &Path) -> Result<Store, StateError> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open(path)?),
        })
    }

    /// Opens an existing SQLite database for reading only, safe while the
    /// daemon writes. `Ok(None)` when there is no database yet.
    fn open_read_only(path: &Path) -> Result<Option<Store>, StateError> {
        Ok(SqliteStore::open_read_only(path)?.map(|s| Store {
            backend: Backend::Sqlite(s),
        }))
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::{Backend, Store};

    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("bridge.db")).unwrap();
        (dir, store)
    }

    /// Makes a hook's messages look `ms` older than they are.
    pub async fn backdate(store: &Store, hook: &str, ms: i64) {
        match &store.backend {
            Backend::Sqlite(b) => super::sqlite::test_util::backdate(b, hook, ms).await,
        }
    }
}
