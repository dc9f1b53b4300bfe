//! Schema migrations, applied in order; `PRAGMA user_version` records the last one.
//! Append only: never edit a migration that has shipped.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: configurations
    "CREATE TABLE configurations (
        id          INTEGER PRIMARY KEY,
        plugin      TEXT NOT NULL,
        name        TEXT NOT NULL,
        disabled    INTEGER NOT NULL DEFAULT 0,
        settings    TEXT NOT NULL,   -- JSON object, secrets left out
        secrets     TEXT NOT NULL,   -- JSON object: key -> sealed value (see secrets.rs)
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        UNIQUE (plugin, name)
    );",
    // 2: events, their jobs (one per configuration, or one 'ignored'), attempts, polling cursors
    "CREATE TABLE events (
        id            INTEGER PRIMARY KEY,
        source        TEXT NOT NULL,      -- outbound | polling
        appliance_id  TEXT NOT NULL,
        event_type    TEXT NOT NULL,
        lsid          TEXT,
        timestamp     INTEGER NOT NULL,   -- Unix seconds, as the appliance sent it
        fields        TEXT NOT NULL,      -- JSON object of every form field
        received_at   INTEGER NOT NULL,   -- ms
        dedup_key     TEXT UNIQUE
    );
    CREATE TABLE jobs (
        id                 INTEGER PRIMARY KEY,
        event_id           INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        configuration_id   INTEGER,       -- NULL for an ignored event
        configuration_name TEXT,
        source             TEXT NOT NULL,
        event_type         TEXT NOT NULL,
        lsid               TEXT,
        state              TEXT NOT NULL, -- pending running succeeded skipped retrying failed ignored
        attempts           INTEGER NOT NULL DEFAULT 0,  -- runs started
        failures           INTEGER NOT NULL DEFAULT 0,  -- runs that failed (counted against the retry limit)
        next_attempt_at    INTEGER NOT NULL,
        last_error         TEXT,
        result             TEXT,
        received_at        INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL
    );
    CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
    CREATE INDEX jobs_session ON jobs (configuration_id, lsid, id);
    CREATE INDEX jobs_history ON jobs (configuration_id, id);
    CREATE TABLE attempts (
        id           INTEGER PRIMARY KEY,
        job_id       INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        number       INTEGER NOT NULL,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        outcome      TEXT NOT NULL,       -- succeeded skipped error interrupted
        error_kind   TEXT,
        message      TEXT
    );
    CREATE INDEX attempts_job ON attempts (job_id, number);
    CREATE TABLE poll_cursors (
        configuration_id INTEGER PRIMARY KEY,
        cursor           TEXT,
        last_poll_at     INTEGER,
        last_error       TEXT
    );",
];

pub(super) fn apply(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path()).expect("fresh store");
        drop(store);
        let path = dir.path().join(crate::store::DATABASE_FILE);
        let conn = Connection::open(&path).expect("open");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", 999).expect("bump");
        drop(conn);
        let err = crate::store::Store::open(dir.path())
            .err()
            .expect("newer schema refused");
        assert!(
            err.to_string().contains(&format!(
                "has schema version 999, newer than this engine knows ({})",
                MIGRATIONS.len()
            )),
            "{err}"
        );
    }
}
