//! Schema migrations, applied in order, one list per server: on SQLite `PRAGMA
//! user_version` records the last one applied, on PostgreSQL the `schema_version`
//! table. Append only: never edit a migration that has shipped. A change to the
//! schema is a migration in both lists, and `store copy` (copy.rs) copies every
//! table the two share.

use super::db::{params, Connection, Dialect};
use super::{Location, StoreError};

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
    // 3: indexes for retention and recovery. Deleting an event checks its jobs (the
    // foreign key) and the prune finds events left without jobs: both look jobs up by
    // event, which without `jobs_event` is a scan of every job per event.
    "CREATE INDEX jobs_event ON jobs (event_id);
    CREATE INDEX jobs_prunable ON jobs (updated_at)
        WHERE state IN ('succeeded', 'skipped', 'failed', 'ignored');
    CREATE INDEX attempts_running ON attempts (job_id) WHERE outcome = 'running';",
    // 4: configuration ids are never reused (AUTOINCREMENT): a new configuration must
    // not inherit a deleted one's history, cursor or jobs. SQLite cannot add
    // AUTOINCREMENT to a table, so it is rebuilt; the sequence starts above every id
    // ever seen, including ids deleted before this migration that jobs still name.
    "CREATE TABLE configurations_v4 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        plugin      TEXT NOT NULL,
        name        TEXT NOT NULL,
        disabled    INTEGER NOT NULL DEFAULT 0,
        settings    TEXT NOT NULL,
        secrets     TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        UNIQUE (plugin, name)
    );
    INSERT INTO configurations_v4 (id, plugin, name, disabled, settings, secrets, created_at, updated_at)
        SELECT id, plugin, name, disabled, settings, secrets, created_at, updated_at FROM configurations;
    DROP TABLE configurations;
    ALTER TABLE configurations_v4 RENAME TO configurations;
    DELETE FROM sqlite_sequence WHERE name = 'configurations';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'configurations', COALESCE(MAX(id), 0) FROM (
            SELECT MAX(id) AS id FROM configurations
            UNION ALL SELECT MAX(configuration_id) FROM jobs
            UNION ALL SELECT MAX(configuration_id) FROM poll_cursors
        );",
    // 5: every filter of the history served by an index (newest first within it).
    "CREATE INDEX jobs_state_history ON jobs (state, id);
    CREATE INDEX jobs_lsid_history ON jobs (lsid, id);
    CREATE INDEX jobs_received ON jobs (received_at);",
    // 6: reconciliation and backfill. `session_ends` remembers every session end a
    // configuration took, past the retention of its jobs, so that neither imports a
    // session twice; it starts from the jobs kept so far.
    "CREATE TABLE session_ends (
        configuration_id INTEGER NOT NULL,
        lsid             TEXT NOT NULL,
        PRIMARY KEY (configuration_id, lsid)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO session_ends (configuration_id, lsid)
        SELECT configuration_id, lsid FROM jobs
        WHERE event_type = 'support_conference_end' AND lsid IS NOT NULL
          AND configuration_id IS NOT NULL;
    CREATE TABLE reconcile_state (
        configuration_id INTEGER PRIMARY KEY,
        covered_until    INTEGER NOT NULL, -- Unix s: sessions that ended before it were looked at
        last_run_at      INTEGER NOT NULL, -- ms; the next run is one interval later
        last_found       INTEGER NOT NULL DEFAULT 0,
        last_queued      INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        runs             INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE backfills (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        configuration_id   INTEGER NOT NULL,
        configuration_name TEXT NOT NULL,
        since              INTEGER NOT NULL, -- Unix s, included
        until              INTEGER NOT NULL, -- Unix s, excluded
        next_from          INTEGER NOT NULL, -- Unix s: where the next listing starts
        state              TEXT NOT NULL,    -- running done failed cancelled
        found              INTEGER NOT NULL DEFAULT 0,
        already_imported   INTEGER NOT NULL DEFAULT 0,
        imported           INTEGER,          -- the counts of its jobs, kept when it ends
        skipped            INTEGER,
        failed             INTEGER,
        error              TEXT,
        created_at         INTEGER NOT NULL, -- ms
        updated_at         INTEGER NOT NULL,
        finished_at        INTEGER
    );
    CREATE INDEX backfills_configuration ON backfills (configuration_id, id);
    ALTER TABLE jobs ADD COLUMN backfill_id INTEGER;
    CREATE INDEX jobs_backfill ON jobs (backfill_id, state) WHERE backfill_id IS NOT NULL;",
    // 7: several engines on one store (the same as PostgreSQL's 2). A running job is
    // leased by the engine running it, which renews the lease while the plugin call
    // runs; `leases` holds the work one engine at a time does (a configuration's
    // polling, its reconciliation, a backfill); `engines` is each engine's heartbeat;
    // `meta` holds the key check.
    "ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
    CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
    CREATE TABLE leases (
        name   TEXT PRIMARY KEY,
        owner  TEXT NOT NULL,
        until  INTEGER NOT NULL   -- ms
    );
    CREATE TABLE engines (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        version       TEXT NOT NULL,
        admin_url     TEXT NOT NULL,
        events_url    TEXT NOT NULL,
        plugins       TEXT NOT NULL,   -- JSON array of plugin id@version
        started_at    INTEGER NOT NULL,
        heartbeat_at  INTEGER NOT NULL,
        jobs_running  INTEGER NOT NULL DEFAULT 0,
        stopped_at    INTEGER
    );
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );",
    // 8: the history filtered by event type and by source, newest first (the same as
    // PostgreSQL's 3); the audit log of changes made through the admin API.
    "CREATE INDEX jobs_type_history ON jobs (event_type, id);
    CREATE INDEX jobs_source_history ON jobs (source, id);
    CREATE TABLE audit (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        at                 INTEGER NOT NULL,  -- ms
        client             TEXT NOT NULL,     -- the client's address
        action             TEXT NOT NULL,
        configuration_id   INTEGER,
        configuration_name TEXT,
        detail             TEXT NOT NULL,     -- JSON: what changed (secrets only as changed)
        outcome            TEXT NOT NULL      -- ok, or why not
    );
    CREATE INDEX audit_configuration ON audit (configuration_id, id);",
    // 9: what the alerts sent for each open problem, per channel (the same as
    // PostgreSQL's 4), so that the engine that takes the alerts over neither sends
    // an alert again nor forgets an all-clear.
    "CREATE TABLE alert_state (
        subject     TEXT NOT NULL,     -- configuration:<id>, plugin:<folder>
        channel     TEXT NOT NULL,     -- email, webhook
        title       TEXT NOT NULL,
        since       INTEGER NOT NULL,  -- ms: when the problem began
        reasons     TEXT NOT NULL,     -- JSON array, as last sent
        sent_at     INTEGER,           -- ms: the last alert delivered
        tried_at    INTEGER,           -- ms: the last delivery tried
        last_error  TEXT,              -- why that try failed
        PRIMARY KEY (subject, channel)
    );",
];

/// PostgreSQL's schema. Its first migration is SQLite's first six in one, with the
/// same tables and columns (integers are BIGINT, ids identities).
const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1: as SQLite's 1 to 6
    "CREATE TABLE configurations (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        plugin      TEXT NOT NULL,
        name        TEXT NOT NULL,
        disabled    BIGINT NOT NULL DEFAULT 0,
        settings    TEXT NOT NULL,
        secrets     TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL,
        UNIQUE (plugin, name)
    );
    CREATE TABLE events (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        source        TEXT NOT NULL,
        appliance_id  TEXT NOT NULL,
        event_type    TEXT NOT NULL,
        lsid          TEXT,
        timestamp     BIGINT NOT NULL,
        fields        TEXT NOT NULL,
        received_at   BIGINT NOT NULL,
        dedup_key     TEXT UNIQUE
    );
    CREATE TABLE jobs (
        id                 BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        event_id           BIGINT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        configuration_id   BIGINT,
        configuration_name TEXT,
        source             TEXT NOT NULL,
        event_type         TEXT NOT NULL,
        lsid               TEXT,
        state              TEXT NOT NULL,
        attempts           BIGINT NOT NULL DEFAULT 0,
        failures           BIGINT NOT NULL DEFAULT 0,
        next_attempt_at    BIGINT NOT NULL,
        last_error         TEXT,
        result             TEXT,
        received_at        BIGINT NOT NULL,
        updated_at         BIGINT NOT NULL,
        backfill_id        BIGINT
    );
    CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
    CREATE INDEX jobs_session ON jobs (configuration_id, lsid, id);
    CREATE INDEX jobs_history ON jobs (configuration_id, id);
    CREATE INDEX jobs_event ON jobs (event_id);
    CREATE INDEX jobs_prunable ON jobs (updated_at)
        WHERE state IN ('succeeded', 'skipped', 'failed', 'ignored');
    CREATE INDEX jobs_state_history ON jobs (state, id);
    CREATE INDEX jobs_lsid_history ON jobs (lsid, id);
    CREATE INDEX jobs_received ON jobs (received_at);
    CREATE INDEX jobs_backfill ON jobs (backfill_id, state) WHERE backfill_id IS NOT NULL;
    CREATE TABLE attempts (
        id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        job_id       BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        number       BIGINT NOT NULL,
        started_at   BIGINT NOT NULL,
        finished_at  BIGINT,
        outcome      TEXT NOT NULL,
        error_kind   TEXT,
        message      TEXT
    );
    CREATE INDEX attempts_job ON attempts (job_id, number);
    CREATE INDEX attempts_running ON attempts (job_id) WHERE outcome = 'running';
    CREATE TABLE poll_cursors (
        configuration_id BIGINT PRIMARY KEY,
        cursor           TEXT,
        last_poll_at     BIGINT,
        last_error       TEXT
    );
    CREATE TABLE session_ends (
        configuration_id BIGINT NOT NULL,
        lsid             TEXT NOT NULL,
        PRIMARY KEY (configuration_id, lsid)
    );
    CREATE TABLE reconcile_state (
        configuration_id BIGINT PRIMARY KEY,
        covered_until    BIGINT NOT NULL,
        last_run_at      BIGINT NOT NULL,
        last_found       BIGINT NOT NULL DEFAULT 0,
        last_queued      BIGINT NOT NULL DEFAULT 0,
        last_error       TEXT,
        runs             BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE backfills (
        id                 BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        configuration_id   BIGINT NOT NULL,
        configuration_name TEXT NOT NULL,
        since              BIGINT NOT NULL,
        until              BIGINT NOT NULL,
        next_from          BIGINT NOT NULL,
        state              TEXT NOT NULL,
        found              BIGINT NOT NULL DEFAULT 0,
        already_imported   BIGINT NOT NULL DEFAULT 0,
        imported           BIGINT,
        skipped            BIGINT,
        failed             BIGINT,
        error              TEXT,
        created_at         BIGINT NOT NULL,
        updated_at         BIGINT NOT NULL,
        finished_at        BIGINT
    );
    CREATE INDEX backfills_configuration ON backfills (configuration_id, id);",
    // 2: as SQLite's 7
    "ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
    CREATE INDEX jobs_running ON jobs (lease_until) WHERE state = 'running';
    CREATE TABLE leases (
        name   TEXT PRIMARY KEY,
        owner  TEXT NOT NULL,
        until  BIGINT NOT NULL
    );
    CREATE TABLE engines (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        version       TEXT NOT NULL,
        admin_url     TEXT NOT NULL,
        events_url    TEXT NOT NULL,
        plugins       TEXT NOT NULL,
        started_at    BIGINT NOT NULL,
        heartbeat_at  BIGINT NOT NULL,
        jobs_running  BIGINT NOT NULL DEFAULT 0,
        stopped_at    BIGINT
    );
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );",
    // 3: as SQLite's 8
    "CREATE INDEX jobs_type_history ON jobs (event_type, id);
    CREATE INDEX jobs_source_history ON jobs (source, id);
    CREATE TABLE audit (
        id                 BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at                 BIGINT NOT NULL,
        client             TEXT NOT NULL,
        action             TEXT NOT NULL,
        configuration_id   BIGINT,
        configuration_name TEXT,
        detail             TEXT NOT NULL,
        outcome            TEXT NOT NULL
    );
    CREATE INDEX audit_configuration ON audit (configuration_id, id);",
    // 4: as SQLite's 9
    "CREATE TABLE alert_state (
        subject     TEXT NOT NULL,
        channel     TEXT NOT NULL,
        title       TEXT NOT NULL,
        since       BIGINT NOT NULL,
        reasons     TEXT NOT NULL,
        sent_at     BIGINT,
        tried_at    BIGINT,
        last_error  TEXT,
        PRIMARY KEY (subject, channel)
    );",
];

pub(super) fn apply(conn: &mut Connection, location: &Location) -> Result<(), StoreError> {
    match conn.dialect() {
        Dialect::Sqlite => apply_sqlite(conn, location),
        Dialect::Postgres => apply_postgres(conn, location),
    }
}

fn too_new(location: &Location, found: i64, known: i64) -> Result<(), StoreError> {
    if found > known {
        return Err(StoreError::SchemaTooNew {
            location: location.to_string(),
            found,
            known,
        });
    }
    Ok(())
}

fn apply_sqlite(conn: &mut Connection, location: &Location) -> Result<(), StoreError> {
    let sqlite = conn
        .as_sqlite()
        .ok_or_else(|| StoreError::Worker("not an SQLite connection".into()))?;
    let found: i64 = sqlite.pragma_query_value(None, "user_version", |row| row.get(0))?;
    too_new(location, found, MIGRATIONS.len() as i64)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if let Some(sqlite) = tx.as_sqlite() {
            sqlite.pragma_update(None, "user_version", index as i64 + 1)?;
        }
        tx.commit()?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    Ok(())
}

/// Engines starting together on one database take turns: the first migrates, the
/// others wait for its lock and find the schema current.
const MIGRATION_LOCK: i64 = 0x6d77_655f_7363_6800;

fn apply_postgres(conn: &mut Connection, location: &Location) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(?1)", params![MIGRATION_LOCK])?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let found: i64 = tx
        .query_row("SELECT MAX(version) FROM schema_version", params![], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0);
    too_new(location, found, POSTGRES_MIGRATIONS.len() as i64)?;
    for (index, sql) in POSTGRES_MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM schema_version", params![])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![index as i64 + 1],
        )?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    tx.commit()
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
        let conn = rusqlite::Connection::open(&path).expect("open");
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

    #[test]
    fn engines_starting_together_on_postgres_migrate_once_and_a_newer_schema_is_refused() {
        use crate::store::{PostgresUrl, Store};
        let database = crate::store::testing::PostgresDatabase::create();
        let url = PostgresUrl::parse(&database.url).expect("url");
        // Four engines starting at once on an empty database: one migrates, the others
        // wait for its lock and find the schema current.
        std::thread::scope(|s| {
            let starts: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Store::open_postgres(&url)))
                .collect();
            for start in starts {
                start.join().expect("thread").expect("opened");
            }
        });
        let mut client = url.config().connect(postgres::NoTls).expect("connect");
        let versions: Vec<i64> = client
            .query("SELECT version FROM schema_version", &[])
            .expect("versions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, vec![POSTGRES_MIGRATIONS.len() as i64]);
        client
            .batch_execute("UPDATE schema_version SET version = 999")
            .expect("bump");
        let err = Store::open_postgres(&url)
            .err()
            .expect("newer schema refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "has schema version 999, newer than this engine knows ({})",
                POSTGRES_MIGRATIONS.len()
            )),
            "{text}"
        );
        let user = url.config().get_user().unwrap_or_default();
        assert!(text.contains(&format!("postgres://{user}@")), "{text}");
        if let Some(password) = url.config().get_password() {
            let password = String::from_utf8_lossy(password);
            assert!(
                !text.contains(&format!(":{password}@")),
                "no password in the message: {text}"
            );
        }
    }

    #[test]
    fn ids_deleted_before_the_upgrade_are_not_reused_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::store::DATABASE_FILE);
        let conn = rusqlite::Connection::open(&path).expect("open");
        // A database of schema 2, whose configuration 7 was deleted but has history.
        for (index, sql) in MIGRATIONS.iter().take(2).enumerate() {
            conn.execute_batch(sql).expect("old schema");
            conn.pragma_update(None, "user_version", index as i64 + 1)
                .expect("version");
        }
        conn.execute_batch(
            "INSERT INTO configurations (id, plugin, name, settings, secrets, created_at, updated_at)
                 VALUES (3, 'p', 'kept', '{}', '{}', 0, 0);
             INSERT INTO events (id, source, appliance_id, event_type, timestamp, fields, received_at)
                 VALUES (1, 'outbound', 'Default', 'support_conference_end', 1, '{}', 0);
             INSERT INTO jobs (event_id, configuration_id, configuration_name, source, event_type, state,
                               next_attempt_at, received_at, updated_at)
                 VALUES (1, 7, 'deleted', 'outbound', 'support_conference_end', 'failed', 0, 0, 0);",
        )
        .expect("rows");
        let mut conn = Connection::sqlite(conn);
        apply(&mut conn, &Location::Sqlite(path.clone())).expect("migrated");
        let conn = conn.as_sqlite().expect("sqlite");
        conn.execute(
            "INSERT INTO configurations (plugin, name, settings, secrets, created_at, updated_at)
             VALUES ('p', 'new', '{}', '{}', 0, 0)",
            [],
        )
        .expect("insert");
        assert_eq!(conn.last_insert_rowid(), 8, "above the deleted 7");
        conn.execute("DELETE FROM configurations WHERE id = 8", [])
            .expect("delete");
        conn.execute(
            "INSERT INTO configurations (plugin, name, settings, secrets, created_at, updated_at)
             VALUES ('p', 'newer', '{}', '{}', 0, 0)",
            [],
        )
        .expect("insert");
        assert_eq!(conn.last_insert_rowid(), 9, "8 is not reused either");
        let kept: String = conn
            .query_row("SELECT name FROM configurations WHERE id = 3", [], |r| {
                r.get(0)
            })
            .expect("kept");
        assert_eq!(kept, "kept");
    }

    #[cfg(unix)]
    #[test]
    fn the_data_folder_and_database_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let store = crate::store::Store::open(&data).expect("store");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "an existing folder is tightened");
        for name in ["engine.sqlite3", "engine.sqlite3-wal", "engine.sqlite3-shm"] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
        drop(store);
        let fresh = dir.path().join("a").join("b");
        drop(crate::store::Store::open(&fresh).expect("store"));
        assert_eq!(mode(&fresh), 0o700);
    }
}
