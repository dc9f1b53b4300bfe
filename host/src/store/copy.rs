//! `middleware-engine store copy --to postgres://...`: the embedded store copied
//! into an empty PostgreSQL database, for a site that grows from one engine to
//! several. Configurations (secrets stay sealed: the engines need the same key
//! file), the history, polling cursors, reconciliation and backfill state, all in
//! one transaction: the target holds all of it or nothing.

use std::path::Path;

use super::db::{params, params_from_iter, Connection, Value};
use super::{PostgresUrl, Store, StoreError, DATABASE_FILE};

/// The tables copied, parents first, with the columns both schemas share. `engines`
/// and `leases` are not copied: they are the running engines' own.
const TABLES: &[(&str, &[&str])] = &[
    (
        "configurations",
        &[
            "id",
            "plugin",
            "name",
            "disabled",
            "settings",
            "secrets",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "events",
        &[
            "id",
            "source",
            "appliance_id",
            "event_type",
            "lsid",
            "timestamp",
            "fields",
            "received_at",
            "dedup_key",
        ],
    ),
    (
        "jobs",
        &[
            "id",
            "event_id",
            "configuration_id",
            "configuration_name",
            "source",
            "event_type",
            "lsid",
            "state",
            "attempts",
            "failures",
            "next_attempt_at",
            "last_error",
            "result",
            "received_at",
            "updated_at",
            "backfill_id",
        ],
    ),
    (
        "attempts",
        &[
            "id",
            "job_id",
            "number",
            "started_at",
            "finished_at",
            "outcome",
            "error_kind",
            "message",
        ],
    ),
    (
        "poll_cursors",
        &["configuration_id", "cursor", "last_poll_at", "last_error"],
    ),
    ("session_ends", &["configuration_id", "lsid"]),
    (
        "reconcile_state",
        &[
            "configuration_id",
            "covered_until",
            "last_run_at",
            "last_found",
            "last_queued",
            "last_error",
            "runs",
        ],
    ),
    (
        "backfills",
        &[
            "id",
            "configuration_id",
            "configuration_name",
            "since",
            "until",
            "next_from",
            "state",
            "found",
            "already_imported",
            "imported",
            "skipped",
            "failed",
            "error",
            "created_at",
            "updated_at",
            "finished_at",
        ],
    ),
    (
        "audit",
        &[
            "id",
            "at",
            "client",
            "action",
            "configuration_id",
            "configuration_name",
            "detail",
            "outcome",
        ],
    ),
    (
        "alert_state",
        &[
            "subject",
            "channel",
            "title",
            "since",
            "reasons",
            "sent_at",
            "tried_at",
            "last_error",
        ],
    ),
    ("meta", &["key", "value"]),
];

/// Tables whose ids come from a sequence the copy moves past the copied ids.
const SEQUENCED: &[&str] = &[
    "configurations",
    "events",
    "jobs",
    "attempts",
    "backfills",
    "audit",
];

/// Rows read and written at a time.
const CHUNK: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("there is no embedded store in {0}: point --data-dir at the engine's data folder")]
    NoSource(std::path::PathBuf),
    #[error("the database {target} is not empty ({what}): copy into a new, empty database")]
    NotEmpty { target: String, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was copied: rows per table.
pub type Copied = Vec<(&'static str, i64)>;

/// Copies the embedded store in `data_dir` into the empty database at `target`.
/// The engine must be stopped while it runs (its jobs running then are copied as
/// waiting: they run again).
pub fn copy(data_dir: &Path, target: &PostgresUrl) -> Result<Copied, CopyError> {
    if !data_dir.join(DATABASE_FILE).is_file() {
        return Err(CopyError::NoSource(data_dir.to_owned()));
    }
    let source = Store::open(data_dir)?;
    let target_store = Store::open_postgres(target)?;
    source.call_blocking(|from| {
        target_store.call_blocking(|to| copy_between(from, to, &target.to_string()))
    })
}

fn copy_between(from: &Connection, to: &Connection, target: &str) -> Result<Copied, CopyError> {
    let tx = to.transaction()?;
    let mut found = Vec::new();
    for table in ["configurations", "events", "jobs", "backfills"] {
        let n: i64 = tx.query_row(&format!("SELECT COUNT(*) FROM {table}"), params![], |r| {
            r.get(0)
        })?;
        if n > 0 {
            found.push(format!("{n} {table}"));
        }
    }
    if !found.is_empty() {
        return Err(CopyError::NotEmpty {
            target: target.to_owned(),
            what: found.join(", "),
        });
    }
    // The key check of the target (made when the engine opened it) gives way to the
    // copied one: the copied secrets are sealed with the source's key.
    tx.execute("DELETE FROM meta", params![])?;
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        let list = columns.join(", ");
        let insert = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            super::events::marks(0, 1..=columns.len())
        );
        // Read in rowid order, a chunk at a time (meta and the WITHOUT ROWID table
        // are small and read whole).
        let keyed = !matches!(*table, "session_ends" | "meta");
        let mut after = i64::MIN;
        let mut count = 0;
        loop {
            let rows: Vec<(i64, Vec<Value>)> = if keyed {
                from.query(
                    &format!("SELECT rowid, {list} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"),
                    params![after, CHUNK],
                    |r| {
                        let values = (1..=columns.len())
                            .map(|i| r.get(i))
                            .collect::<Result<Vec<Value>, _>>()?;
                        Ok((r.get(0)?, values))
                    },
                )?
            } else {
                from.query(&format!("SELECT {list} FROM {table}"), params![], |r| {
                    let values = (0..columns.len())
                        .map(|i| r.get(i))
                        .collect::<Result<Vec<Value>, _>>()?;
                    Ok((0, values))
                })?
            };
            for (_, mut values) in rows.iter().cloned() {
                if *table == "jobs" {
                    // A job that was running when the engine stopped runs again.
                    if let Some(state) = values.get_mut(7) {
                        if *state == Value::Text("running".into()) {
                            *state = Value::Text("pending".into());
                        }
                    }
                }
                tx.execute(&insert, &params_from_iter(&values))?;
            }
            count += rows.len() as i64;
            match rows.last() {
                Some((rowid, _)) if keyed && rows.len() as i64 == CHUNK => after = *rowid,
                _ => break,
            }
        }
        copied.push((*table, count));
    }
    tx.execute(
        "UPDATE attempts SET outcome = 'interrupted',
                message = 'the engine stopped during this attempt; it runs again'
         WHERE outcome = 'running'",
        params![],
    )?;
    for table in SEQUENCED {
        // SQLite never reuses an AUTOINCREMENT id, even a deleted row's: neither does
        // the copy.
        let used: i64 = from
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                params![table],
                |r| r.get(0),
            )
            .or_else(|e| match e {
                StoreError::NoRow => Ok(0),
                other => Err(other),
            })?;
        let highest: i64 = tx.query_row(
            &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
            params![],
            |r| r.get(0),
        )?;
        tx.execute(
            &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), ?1, false)"),
            params![highest.max(used) + 1],
        )?;
    }
    tx.commit()?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events;
    use crate::store::testing::PostgresDatabase;

    #[test]
    fn the_embedded_store_lands_whole_in_an_empty_database_and_only_an_empty_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Store::open(dir.path()).expect("store");
        source
            .call_blocking(|conn| {
                conn.execute(
                    "INSERT INTO configurations (plugin, name, settings, secrets, created_at, updated_at)
                     VALUES ('p', 'kept', '{\"a\":1}', '{\"s\":\"v1:sealed\"}', 1, 2),
                            ('p', 'deleted', '{}', '{}', 1, 2)",
                    params![],
                )?;
                conn.execute("DELETE FROM configurations WHERE name = 'deleted'", params![])?;
                let event = events::NewEvent {
                    source: events::Source::Outbound,
                    appliance_id: "Default".into(),
                    event_type: "support_conference_end".into(),
                    lsid: Some("s1".into()),
                    timestamp: 5,
                    fields: [("lsid".to_owned(), "s1".to_owned())].into(),
                    dedup_key: Some("k1".into()),
                };
                events::insert_batch(conn, &[(event, events::Routing::To(vec![(1, "kept".into())]))], 10)?;
                events::claim(conn, 1, "gone", 11, 20)?;
                conn.execute(
                    "INSERT INTO poll_cursors (configuration_id, cursor, last_poll_at) VALUES (1, '7', 12)",
                    params![],
                )?;
                Ok::<_, StoreError>(())
            })
            .expect("source rows");
        drop(source);
        let database = PostgresDatabase::create();
        let url = PostgresUrl::parse(&database.url).expect("url");
        let copied = copy(dir.path(), &url).expect("copied");
        let count = |table: &str| copied.iter().find(|(t, _)| *t == table).map(|(_, n)| *n);
        assert_eq!(count("configurations"), Some(1));
        assert_eq!(count("events"), Some(1));
        assert_eq!(count("jobs"), Some(1));
        assert_eq!(count("session_ends"), Some(1));
        let target = Store::open_postgres(&url).expect("target");
        let (job, attempts) = target
            .call_blocking(|conn| events::get(conn, 1))
            .expect("job");
        assert_eq!(
            job.state,
            events::JobState::Pending,
            "the running job runs again"
        );
        assert_eq!(attempts[0].outcome, events::AttemptOutcome::Interrupted);
        let row = target
            .call_blocking(|conn| crate::store::configurations::get(conn, 1))
            .expect("configuration");
        assert_eq!(row.secrets.get("s").map(String::as_str), Some("v1:sealed"));
        let cursor = target
            .call_blocking(|conn| events::poll_cursor(conn, 1))
            .expect("cursor");
        assert_eq!(cursor, (Some("7".into()), Some(12)));
        // The next configuration gets a new id, past the deleted one too.
        let new = target
            .call_blocking(|conn| {
                conn.query_row(
                    "INSERT INTO configurations (plugin, name, settings, secrets, created_at, updated_at)
                     VALUES ('p', 'new', '{}', '{}', 3, 3) RETURNING id",
                    params![],
                    |r| r.get::<_, i64>(0),
                )
            })
            .expect("insert");
        assert_eq!(new, 3);
        drop(target);
        let again = copy(dir.path(), &url).expect_err("not empty");
        assert!(
            again
                .to_string()
                .contains("is not empty (2 configurations, 1 events, 1 jobs)"),
            "{again}"
        );
        let missing = copy(&dir.path().join("nothing"), &url).expect_err("no source");
        assert!(
            missing
                .to_string()
                .starts_with("there is no embedded store in"),
            "{missing}"
        );
    }
}
