//! Narrowing a set of outbox messages by source, resource and time, for the
//! operator's `dlq` and `replay` commands (as `sqlite/filter.rs`).

use crate::state::MessageFilter;
use tokio_postgres::types::ToSql;

/// A statement parameter.
pub(super) type Param<'a> = &'a (dyn ToSql + Sync);

/// The SQL condition for a `MessageFilter`, on the columns of `outbox o`
/// (qualified: a query may join the message's change, which has the same
/// names), numbered from parameter `${first}` on (`first`..`first + 4`).
/// Typed casts: PostgreSQL must know a parameter's type where it is only
/// compared with NULL.
pub(super) fn condition(first: usize) -> String {
    let p = |i: usize| first + i;
    format!(
        "(${0}::text IS NULL OR o.source = ${0}::text)
         AND (${1}::text IS NULL OR o.resource_type = ${1}::text)
         AND (${2}::text IS NULL OR o.resource_id = ${2}::text)
         AND (${3}::bigint IS NULL OR COALESCE(o.done_at, o.created_at) >= ${3}::bigint)
         AND (${4}::bigint IS NULL OR COALESCE(o.done_at, o.created_at) < ${4}::bigint)",
        p(0),
        p(1),
        p(2),
        p(3),
        p(4)
    )
}

/// The values for `condition`, in its order.
pub(super) fn params(filter: &MessageFilter) -> [Param<'_>; 5] {
    [
        &filter.source,
        &filter.resource_type,
        &filter.resource_id,
        &filter.since_ms,
        &filter.until_ms,
    ]
}
