//! Narrowing a set of outbox messages by source, resource and time, for the
//! operator's `dlq` and `replay` commands. Applied in SQL, beside the
//! (hook, state, id) index that drives those queries.

use crate::state::MessageFilter;
use rusqlite::ToSql;

/// The SQL condition for a `MessageFilter`, on the columns of `outbox o`
/// (qualified: a query may join the message's change, which has the same
/// names), numbered from parameter `?{first}` on (`first`..`first + 4`).
pub(super) fn condition(first: usize) -> String {
    let p = |i: usize| first + i;
    format!(
        "(?{} IS NULL OR o.source = ?{0}) AND (?{} IS NULL OR o.resource_type = ?{1})
         AND (?{} IS NULL OR o.resource_id = ?{2})
         AND (?{} IS NULL OR COALESCE(o.done_at, o.created_at) >= ?{3})
         AND (?{} IS NULL OR COALESCE(o.done_at, o.created_at) < ?{4})",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4)
    )
}

impl MessageFilter {
    /// The values for `condition`, in its order.
    pub(super) fn params(&self) -> [&dyn ToSql; 5] {
        [
            &self.source,
            &self.resource_type,
            &self.resource_id,
            &self.since_ms,
            &self.until_ms,
        ]
    }
}
