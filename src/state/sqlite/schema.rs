//! Schema migrations, tracked with `PRAGMA user_version`.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE poll_target (
        source               TEXT NOT NULL,
        resource_type        TEXT NOT NULL,
        initialized          INTEGER NOT NULL DEFAULT 0,
        watermark            TEXT,        -- server lastUpdated instant, RFC 3339 (UTC, ms)
        floor                TEXT,        -- nothing last updated before this is emitted
        last_poll_at         INTEGER,     -- our clock, ms
        last_ok_at           INTEGER,
        last_outcome         TEXT,        -- 'ok' | 'error'
        last_error           TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        changes_seen         INTEGER NOT NULL DEFAULT 0,
        resources_read       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (source, resource_type)
    ) WITHOUT ROWID;

    CREATE TABLE seen (
        source        TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_id   TEXT NOT NULL,
        version_id    TEXT,
        last_updated  TEXT,
        content_hash  BLOB NOT NULL,
        PRIMARY KEY (source, resource_type, resource_id)
    ) WITHOUT ROWID;

    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        hook            TEXT NOT NULL,
        message_id      TEXT NOT NULL,
        source          TEXT NOT NULL,
        resource_type   TEXT NOT NULL,
        resource_id     TEXT NOT NULL,
        version_id      TEXT,
        event           TEXT NOT NULL,
        payload         BLOB,              -- NULL once delivered
        state           TEXT NOT NULL,     -- 'pending' | 'delivered' | 'dead'
        attempts        INTEGER NOT NULL DEFAULT 0,
        created_at      INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        done_at         INTEGER,
        last_status     INTEGER,
        last_error      TEXT,
        UNIQUE (hook, message_id)
    );
    CREATE INDEX outbox_by_state ON outbox (hook, state, id);
    CREATE INDEX outbox_due ON outbox (hook, state, next_attempt_at);
    -- Per-resource ordering: is an older version of this resource still pending?
    CREATE INDEX outbox_resource_pending ON outbox (hook, resource_type, resource_id, id)
        WHERE state = 'pending';

    CREATE TABLE hook_stats (
        hook            TEXT PRIMARY KEY,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        filter_errors   INTEGER NOT NULL DEFAULT 0,
        last_success_at INTEGER,
        last_error      TEXT,
        last_error_at   INTEGER
    ) WITHOUT ROWID;
    "#,
    // 2: a receiver answering 410 Gone disables its hook until an operator re-enables it.
    r#"
    ALTER TABLE hook_stats ADD COLUMN disabled_at INTEGER;
    ALTER TABLE hook_stats ADD COLUMN disabled_reason TEXT;
    "#,
    // 3: payloads in their own table, deleted on delivery. Setting a payload
    // column to NULL left the outbox's pages sparse but never freed them, so
    // the file kept a backlog's peak size; deleted rows free whole pages.
    r#"
    CREATE TABLE outbox_payload (
        id      INTEGER PRIMARY KEY,   -- outbox.id
        payload BLOB NOT NULL
    );
    INSERT INTO outbox_payload (id, payload)
        SELECT id, payload FROM outbox WHERE payload IS NOT NULL AND state != 'delivered';
    ALTER TABLE outbox DROP COLUMN payload;
    -- A message deleted for any reason (pruned, purged) takes its payload along.
    CREATE TRIGGER outbox_payload_follows AFTER DELETE ON outbox
    BEGIN
        DELETE FROM outbox_payload WHERE id = old.id;
    END;
    "#,
    // 4: per-entry problems of a target's polls: entries skipped (not
    // delivered: an invalid id) and entries stamped in the future (delivered,
    // but they cannot move the watermark), with the last such note.
    r#"
    ALTER TABLE poll_target ADD COLUMN entries_skipped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE poll_target ADD COLUMN entries_future INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE poll_target ADD COLUMN last_skip_at INTEGER;
    ALTER TABLE poll_target ADD COLUMN last_warning TEXT;
    ALTER TABLE poll_target ADD COLUMN last_warning_at INTEGER;
    "#,
    // 5: the daemon's heartbeat, one row: which process runs (or ran) on this
    // state, since when, and when it last said so. `status` reads it.
    r#"
    CREATE TABLE daemon (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        pid          INTEGER NOT NULL,
        started_at   INTEGER NOT NULL,   -- our clock, ms
        last_seen_at INTEGER NOT NULL,
        version      TEXT NOT NULL
    );
    "#,
    // 6: backfill jobs (`fhir-bridge backfill`), one per source and resource
    // type: the range asked for, and how far it got (to resume after an
    // interruption). Its pages write seen versions and messages like a poll,
    // never the poll target's watermark.
    r#"
    CREATE TABLE backfill (
        source        TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        since         TEXT NOT NULL,
        until         TEXT NOT NULL,
        cursor        TEXT,              -- resume from here (minus overlap)
        done          INTEGER NOT NULL DEFAULT 0,
        pages         INTEGER NOT NULL DEFAULT 0,
        resources     INTEGER NOT NULL DEFAULT 0,
        changes       INTEGER NOT NULL DEFAULT 0,
        started_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        PRIMARY KEY (source, resource_type)
    );
    "#,
    // 7: each detected change stored once, its messages (one per matching
    // hook) refer to it, and the body is rendered for the hook at send time
    // instead of stored per hook. Rows from before keep their stored payload
    // (sent as is). The body has its own table for the reason payloads got
    // theirs (3): deleted rows free whole pages, NULLed columns do not.
    r#"
    CREATE TABLE change (
        id            INTEGER PRIMARY KEY,
        source        TEXT NOT NULL,
        owner_id      TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_id   TEXT NOT NULL,
        version_id    TEXT,
        last_updated  TEXT,              -- as the server wrote it
        event         TEXT NOT NULL,     -- 'create' | 'update'
        detected_at   TEXT NOT NULL      -- the payload's `time`
    );
    CREATE TABLE change_body (
        id   INTEGER PRIMARY KEY,        -- change.id
        body BLOB NOT NULL               -- the resource exactly as the server sent it
    );
    ALTER TABLE outbox ADD COLUMN change_id INTEGER;  -- change.id; NULL: a stored payload
    CREATE INDEX outbox_by_change ON outbox (change_id) WHERE change_id IS NOT NULL;
    -- PHI stays no longer than a pending or dead message needs it.
    CREATE TRIGGER change_body_after_delivery AFTER UPDATE OF state ON outbox
    WHEN new.change_id IS NOT NULL AND new.state = 'delivered'
    BEGIN
        DELETE FROM change_body WHERE id = new.change_id AND NOT EXISTS
            (SELECT 1 FROM outbox WHERE change_id = new.change_id AND state != 'delivered');
    END;
    -- A message deleted (pruned, purged, a duplicate moved) takes along the
    -- body no other undelivered message needs, and the change no message refers to.
    CREATE TRIGGER change_follows_messages AFTER DELETE ON outbox
    WHEN old.change_id IS NOT NULL
    BEGIN
        DELETE FROM change_body WHERE id = old.change_id AND NOT EXISTS
            (SELECT 1 FROM outbox WHERE change_id = old.change_id AND state != 'delivered');
        DELETE FROM change WHERE id = old.change_id AND NOT EXISTS
            (SELECT 1 FROM outbox WHERE change_id = old.change_id);
    END;
    "#,
    // 8: FHIR-native notifications. Each message gets its hook's next event
    // number when it is inserted (gap-free per hook, never reused: the counter
    // lives in hook_stats and only grows); the hook's subscription status
    // (handshake); and the last body of resources whose hooks' filters read
    // `$previous`.
    r#"
    ALTER TABLE outbox ADD COLUMN event_number INTEGER;   -- NULL: a message from before
    CREATE UNIQUE INDEX outbox_event_number ON outbox (hook, event_number)
        WHERE event_number IS NOT NULL;
    ALTER TABLE hook_stats ADD COLUMN events INTEGER NOT NULL DEFAULT 0;  -- last number given
    ALTER TABLE hook_stats ADD COLUMN subscription_status TEXT;  -- 'requested' | 'active' | 'error'
    ALTER TABLE hook_stats ADD COLUMN subscription_status_at INTEGER;
    ALTER TABLE hook_stats ADD COLUMN subscription_error TEXT;
    CREATE TABLE seen_body (
        source        TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_id   TEXT NOT NULL,
        body          BLOB NOT NULL,     -- the last version read, as the server sent it
        PRIMARY KEY (source, resource_type, resource_id)
    );
    -- Messages from before get their numbers in the order they were detected.
    UPDATE outbox SET event_number = (
        SELECT n FROM (SELECT id, row_number() OVER (PARTITION BY hook ORDER BY id) AS n
                       FROM outbox) r
        WHERE r.id = outbox.id);
    INSERT INTO hook_stats (hook, events)
        SELECT hook, max(event_number) FROM outbox WHERE true GROUP BY hook
        ON CONFLICT (hook) DO UPDATE SET events = excluded.events;
    "#,
    // 9: a poll target's key can carry a patient (per-patient polling): the
    // table is rebuilt with `patient` in its primary key ('' for a target
    // that polls the whole population, as every target before did).
    r#"
    CREATE TABLE poll_target_9 (
        source               TEXT NOT NULL,
        resource_type        TEXT NOT NULL,
        patient              TEXT NOT NULL DEFAULT '',
        initialized          INTEGER NOT NULL DEFAULT 0,
        watermark            TEXT,
        floor                TEXT,
        last_poll_at         INTEGER,
        last_ok_at           INTEGER,
        last_outcome         TEXT,
        last_error           TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        changes_seen         INTEGER NOT NULL DEFAULT 0,
        resources_read       INTEGER NOT NULL DEFAULT 0,
        entries_skipped      INTEGER NOT NULL DEFAULT 0,
        entries_future       INTEGER NOT NULL DEFAULT 0,
        last_skip_at         INTEGER,
        last_warning         TEXT,
        last_warning_at      INTEGER,
        PRIMARY KEY (source, resource_type, patient)
    ) WITHOUT ROWID;
    INSERT INTO poll_target_9 (source, resource_type, initialized, watermark, floor,
        last_poll_at, last_ok_at, last_outcome, last_error, consecutive_failures,
        changes_seen, resources_read, entries_skipped, entries_future, last_skip_at,
        last_warning, last_warning_at)
    SELECT source, resource_type, initialized, watermark, floor,
        last_poll_at, last_ok_at, last_outcome, last_error, consecutive_failures,
        changes_seen, resources_read, entries_skipped, entries_future, last_skip_at,
        last_warning, last_warning_at
    FROM poll_target;
    DROP TABLE poll_target;
    ALTER TABLE poll_target_9 RENAME TO poll_target;
    "#,
    // 10: a `last-updated` target's reconciliation (`reconcile`): when the
    // last complete one ended, and how many changes it found.
    r#"
    ALTER TABLE poll_target ADD COLUMN last_reconcile_at INTEGER;       -- our clock, ms
    ALTER TABLE poll_target ADD COLUMN last_reconcile_changes INTEGER;
    "#,
    // 11: a `bulk-export` source's job in flight: its status URL (kept before
    // it is first polled, so a restart resumes it) and how far its files
    // were read (written with each chunk's seen rows and messages).
    r#"
    CREATE TABLE export_job (
        source           TEXT PRIMARY KEY,
        job_url          TEXT NOT NULL,
        since            TEXT,                -- the export's _since; NULL: everything
        kicked_off_at    INTEGER NOT NULL,    -- our clock, ms
        transaction_time TEXT,                -- the manifest's, once seen
        files_done       INTEGER NOT NULL DEFAULT 0,  -- output files read to the end
        lines_done       INTEGER NOT NULL DEFAULT 0   -- lines of the next file committed
    ) WITHOUT ROWID;
    "#,
    // 12: what a job asked for (its kick-off URL without `_since`: base,
    // group and types), so that a job saved before the source's config
    // changed is cancelled rather than resumed. NULL: saved before this.
    r#"
    ALTER TABLE export_job ADD COLUMN request TEXT;
    "#,
    // 13: a batched notification's identity. Before a notification that
    // carries several messages is first POSTed, its webhook-id is written to
    // each of them; until delivered they go only together, as that same
    // notification (same id, same events, same order), across restarts. A
    // batch that must be split (a member redriven or purged apart, a smaller
    // `max_events_per_bundle`) goes as new notifications whose ids are
    // written in turn. NULL: never sent in a batch (or delivered).
    r#"
    ALTER TABLE outbox ADD COLUMN batch_id TEXT;
    CREATE INDEX outbox_by_batch ON outbox (batch_id) WHERE batch_id IS NOT NULL;
    "#,
    // 14: a per-patient target whose patient left the roster is kept (its
    // watermark, for a patient who comes back) until `roster_grace` after
    // this; NULL: the patient is on the roster.
    r#"
    ALTER TABLE poll_target ADD COLUMN left_roster_at INTEGER;          -- our clock, ms
    "#,
    // 15: the fingerprint of the bulk export manifest a job's progress
    // (files and lines done, by position) was counted on: a resumed job
    // whose status now gives another manifest reads it from the start.
    r#"
    ALTER TABLE export_job ADD COLUMN manifest TEXT;
    "#,
];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    migrate_to(conn, MIGRATIONS.len())
}

/// `migrate`, up to schema version `target` (tests build older databases).
pub(super) fn migrate_to(conn: &mut Connection, target: usize) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(newer_schema(version));
    }
    if version >= target as i64 {
        return Ok(());
    }
    // All pending steps in one transaction: a reader (status, dlq list) sees
    // the schema before or after the upgrade, never half of it.
    let tx = conn.transaction()?;
    for sql in MIGRATIONS.iter().take(target).skip(version as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", target as i64)?;
    tx.commit()
}

/// For readers: `Ok(false)` when the database is not initialised yet (the
/// daemon may be creating it right now); an error when it is older than this
/// binary (the daemon upgrades it when it starts) or newer.
pub fn check_version(conn: &Connection) -> rusqlite::Result<bool> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(newer_schema(version));
    }
    if version > 0 && version < MIGRATIONS.len() as i64 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "schema version {version} is older than this fhir-bridge's ({}): \
                 the daemon upgrades it when it starts",
                MIGRATIONS.len()
            )),
        ));
    }
    Ok(version > 0)
}

fn newer_schema(version: i64) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
        Some(format!(
            "schema version {version} is newer than this fhir-bridge understands ({})",
            MIGRATIONS.len()
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::SqliteStore;

    /// A database from before migration 3 keeps its pending payloads.
    #[tokio::test]
    async fn pending_payloads_survive_the_move_to_their_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            for (i, state) in ["pending", "delivered", "dead"].iter().enumerate() {
                c.execute(
                    "INSERT INTO outbox (hook, message_id, source, resource_type, resource_id,
                        event, payload, state, created_at, next_attempt_at)
                     VALUES ('h', ?1, 's', 'Observation', ?1, 'create', ?2, ?3, 0, 0)",
                    rusqlite::params![
                        format!("m{i}"),
                        format!("{{\"n\":{i}}}").into_bytes(),
                        state
                    ],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let claimed = store.claim_due("h", vec![], 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].body.raw(), b"{\"n\":0}");
        let sel = crate::state::DlqSelection {
            configured: vec!["h".into()],
            ..Default::default()
        };
        assert_eq!(store.redrive(sel).await.unwrap(), 1);
        let again = store.claim_due("h", vec![claimed[0].id], 10).await.unwrap();
        assert_eq!(again[0].body.raw(), b"{\"n\":2}");
    }

    /// A reader never sees half a schema: an old database is an error that
    /// says who upgrades it, a fresh one is "not there yet".
    #[test]
    fn readers_wait_for_the_whole_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.db");
        let mut c = Connection::open(&path).unwrap();
        assert!(!check_version(&c).unwrap());
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        let e = check_version(&c).unwrap_err().to_string();
        assert!(e.contains("upgrades it when it starts"), "{e}");
        migrate(&mut c).unwrap();
        assert!(check_version(&c).unwrap());
    }
}
