//! Diff: is this resource version new, changed, or already seen?
//!
//! Overlapping poll windows re-read resources on purpose; this is where the
//! duplicates die. versionIds are compared for equality only (some servers use
//! UUIDs); without a versionId the content hash decides.

use crate::state::SeenRow;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Create,
    Update,
    /// Only a history entry can say so (search results never show deletes).
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
        }
    }
}

/// What the poller read for one resource.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub version_id: Option<&'a str>,
    pub last_updated: Option<DateTime<Utc>>,
    pub content_hash: &'a [u8; 32],
}

pub fn content_hash(raw: &[u8]) -> [u8; 32] {
    Sha256::digest(raw).into()
}

/// Whether a seen row records a delete (its tombstone): a delete has no
/// body, so its hash is that of nothing, which no resource has.
pub fn is_tombstone(row: &SeenRow) -> bool {
    row.is_tombstone()
}

/// True when the server reports the very version already seen: the common
/// case when overlapping polls re-read a window. Checked before hashing, which
/// would otherwise dominate the cost of every re-read. The same versionId at
/// another `lastUpdated` is not taken on trust (a server that never moves
/// its versionIds): the hash decides (`classify`).
pub fn same_version(
    prev: Option<&SeenRow>,
    version_id: Option<&str>,
    last_updated: Option<DateTime<Utc>>,
) -> bool {
    let Some(prev) = prev else {
        return false;
    };
    matches!((prev.version_id.as_deref(), version_id), (Some(p), Some(v)) if p == v)
        && !moved(prev, last_updated)
}

/// Whether `last_updated` is another time than the seen row's (both known),
/// to the millisecond the row keeps (`format_instant`).
fn moved(prev: &SeenRow, last_updated: Option<DateTime<Utc>>) -> bool {
    let prev_lu = (prev.last_updated.as_deref())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.timestamp_millis());
    matches!((prev_lu, last_updated), (Some(p), Some(c)) if p != c.timestamp_millis())
}

/// A resource the bridge has no record of (never seen, or its record was
/// pruned long after it last changed): an update when the server's versionId
/// is a number above 1, else a create.
fn first_sighting(version_id: Option<&str>) -> ChangeKind {
    match version_id.and_then(|v| v.parse::<u64>().ok()) {
        Some(n) if n > 1 => ChangeKind::Update,
        _ => ChangeKind::Create,
    }
}

/// `None` when the resource is the version already seen (or an older one).
pub fn classify(prev: Option<&SeenRow>, cur: &Observed) -> Option<ChangeKind> {
    let Some(prev) = prev else {
        return Some(first_sighting(cur.version_id));
    };
    // A lagging replica or a drifting page can serve an older version than one
    // already delivered: never step backwards.
    let prev_lu = prev
        .last_updated
        .as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.to_utc());
    if let (Some(p), Some(c)) = (prev_lu, cur.last_updated)
        && c < p
    {
        return None;
    }
    // At one instant (or with no time), numeric versionIds tell the older
    // one: a re-read of history from before a delete in the same millisecond
    // must not bring the resource back. Time decides when it differs (a
    // server may count again from 1 after a delete).
    let tie = match (prev_lu, cur.last_updated) {
        (Some(p), Some(c)) => p == c,
        _ => true,
    };
    let numeric = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    if tie
        && let (Some(p), Some(c)) = (numeric(prev.version_id.as_deref()), numeric(cur.version_id))
        && c < p
    {
        return None;
    }
    let changed = match (prev.version_id.as_deref(), cur.version_id) {
        (Some(p), Some(c)) if p != c || !moved(prev, cur.last_updated) => p != c,
        _ => &prev.content_hash != cur.content_hash,
    };
    changed.then_some(ChangeKind::Update)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(v: Option<&str>, lu: &str, h: u8) -> SeenRow {
        SeenRow {
            body: None,
            version_id: v.map(String::from),
            last_updated: Some(lu.into()),
            content_hash: [h; 32],
        }
    }
    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(s.parse().unwrap())
    }

    /// The state spells the tombstone's hash out (it does no hashing): it
    /// must be the content hash of an empty body.
    #[test]
    fn the_states_tombstone_is_the_hash_of_nothing() {
        assert_eq!(content_hash(b""), SeenRow::TOMBSTONE_HASH);
    }

    #[test]
    fn first_sighting_is_a_create() {
        let h = [1; 32];
        let cur = Observed {
            version_id: Some("1"),
            last_updated: at("2026-01-01T00:00:00Z"),
            content_hash: &h,
        };
        assert_eq!(classify(None, &cur), Some(ChangeKind::Create));
    }

    #[test]
    fn same_version_is_dropped_and_a_new_one_is_an_update() {
        let h = [1; 32];
        let prev = seen(Some("a6f0-uuid"), "2026-01-01T00:00:00Z", 1);
        let same = Observed {
            version_id: Some("a6f0-uuid"),
            last_updated: at("2026-01-01T00:00:00Z"),
            content_hash: &h,
        };
        assert_eq!(classify(Some(&prev), &same), None);
        let h2 = [2; 32];
        let newer = Observed {
            version_id: Some("0b1c-uuid"),
            last_updated: at("2026-01-01T00:00:01Z"),
            content_hash: &h2,
        };
        assert_eq!(classify(Some(&prev), &newer), Some(ChangeKind::Update));
    }

    /// A server that never moves `meta.versionId` (always "1") but does move
    /// `meta.lastUpdated`: a later time with other content is an update, not
    /// the version already seen.
    #[test]
    fn a_reused_version_id_with_a_later_time_and_other_content_is_an_update() {
        let prev = seen(Some("1"), "2026-01-01T00:00:00Z", 1);
        let lu = at("2026-01-01T00:05:00Z");
        assert!(!same_version(Some(&prev), Some("1"), lu));
        let other = [2; 32];
        let later = Observed {
            version_id: Some("1"),
            last_updated: lu,
            content_hash: &other,
        };
        assert_eq!(classify(Some(&prev), &later), Some(ChangeKind::Update));
        // The same content at a later time (a touch): nothing new.
        let same = [1; 32];
        let touched = Observed {
            content_hash: &same,
            ..later
        };
        assert_eq!(classify(Some(&prev), &touched), None);
        // The very version re-read: no hash needed.
        assert!(same_version(
            Some(&prev),
            Some("1"),
            at("2026-01-01T00:00:00Z")
        ));
        assert!(same_version(Some(&prev), Some("1"), None));
        // Kept to the millisecond: a server's microseconds are the same time.
        assert!(same_version(
            Some(&prev),
            Some("1"),
            at("2026-01-01T00:00:00.000400Z")
        ));
    }

    #[test]
    fn same_version_needs_no_hash() {
        let prev = seen(Some("7"), "2026-01-01T00:00:00Z", 1);
        let t = at("2026-01-01T00:00:00Z");
        assert!(same_version(Some(&prev), Some("7"), t));
        assert!(!same_version(Some(&prev), Some("8"), t));
        assert!(!same_version(Some(&prev), None, t));
        assert!(!same_version(None, Some("7"), t));
    }

    #[test]
    fn without_version_ids_the_hash_decides() {
        let prev = seen(None, "2026-01-01T00:00:00Z", 1);
        let h1 = [1; 32];
        let h2 = [2; 32];
        let unchanged = Observed {
            version_id: None,
            last_updated: at("2026-01-01T00:00:05Z"),
            content_hash: &h1,
        };
        let changed = Observed {
            version_id: None,
            last_updated: at("2026-01-01T00:00:05Z"),
            content_hash: &h2,
        };
        assert_eq!(classify(Some(&prev), &unchanged), None);
        assert_eq!(classify(Some(&prev), &changed), Some(ChangeKind::Update));
    }

    #[test]
    fn an_older_version_never_comes_back() {
        let prev = seen(Some("2"), "2026-01-01T00:00:10Z", 2);
        let h = [1; 32];
        let stale = Observed {
            version_id: Some("1"),
            last_updated: at("2026-01-01T00:00:00Z"),
            content_hash: &h,
        };
        assert_eq!(classify(Some(&prev), &stale), None);
    }

    #[test]
    fn at_one_instant_a_lower_numeric_version_is_older() {
        let prev = seen(Some("3"), "2026-01-01T00:00:10Z", 3);
        let h = [1; 32];
        let obs = |v: &'static str, lu: &str| Observed {
            version_id: Some(v),
            last_updated: at(lu),
            content_hash: &h,
        };
        let same_ms = obs("2", "2026-01-01T00:00:10Z");
        assert_eq!(classify(Some(&prev), &same_ms), None);
        let higher = obs("4", "2026-01-01T00:00:10Z");
        assert_eq!(classify(Some(&prev), &higher), Some(ChangeKind::Update));
        // Later in time, counted from 1 again: time decides.
        let recounted = obs("1", "2026-01-01T00:00:11Z");
        assert_eq!(classify(Some(&prev), &recounted), Some(ChangeKind::Update));
    }

    #[test]
    fn a_first_sighting_is_a_create_unless_the_version_says_otherwise() {
        let obs = |v| Observed {
            version_id: v,
            last_updated: None,
            content_hash: &[0; 32],
        };
        assert_eq!(classify(None, &obs(None)), Some(ChangeKind::Create));
        assert_eq!(classify(None, &obs(Some("1"))), Some(ChangeKind::Create));
        assert_eq!(classify(None, &obs(Some("7"))), Some(ChangeKind::Update));
        assert_eq!(
            classify(None, &obs(Some("W/\"a1b2\""))),
            Some(ChangeKind::Create)
        );
    }
}
