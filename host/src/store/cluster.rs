//! What several engines on one database share beyond the queue: who is there
//! (`engines`, each one's heartbeat), who does the work only one may do at a time
//! (`leases`: a configuration's polling, its reconciliation, a backfill), and the
//! key check (`meta`) that keeps an engine with the wrong key file from starting.
//!
//! Every lease has an owner and an end (ms). The owner renews its leases with each
//! heartbeat; an engine that stops heartbeating (killed, powered off, cut off from
//! the database) loses them when they end, and another engine takes the work over.

use serde::Serialize;

use super::db::{params, Connection, OptionalExtension};
use super::kinds::{AttemptOutcome, JobState};
use super::StoreError;

/// A value of the `meta` table.
pub fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
}

/// Sets a `meta` value unless one is there; returns the value kept (the first
/// engine's, when two start at once).
pub fn meta_first(conn: &Connection, key: &str, value: &str) -> Result<String, StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        params![key, value],
    )?;
    meta(conn, key)?.ok_or(StoreError::NotFound)
}

/// The database's key check (stored with `candidate` when it has none yet) and one
/// stored secret (`label`, sealed value), to try the engine's key on at start.
pub fn key_check(
    conn: &Connection,
    candidate: &str,
) -> Result<(String, Option<(String, String)>), StoreError> {
    let kept = meta_first(conn, "secret_key_check", candidate)?;
    let secrets: Option<String> = conn
        .query_row(
            "SELECT secrets FROM configurations WHERE secrets <> '{}' ORDER BY id LIMIT 1",
            params![],
            |r| r.get(0),
        )
        .optional()?;
    let sample = match secrets {
        Some(json) => {
            let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&json)
                .map_err(|source| StoreError::Corrupt {
                    what: "a configuration's secrets".into(),
                    source,
                })?;
            map.into_iter().next()
        }
        None => None,
    };
    Ok((kept, sample))
}

/// Takes the lease `name` for `owner` until `until`, or renews it when `owner` holds
/// it already. False when another owner holds it and it has not ended at `now`.
pub fn take_lease(
    conn: &Connection,
    name: &str,
    owner: &str,
    now: i64,
    until: i64,
) -> Result<bool, StoreError> {
    let holder: Option<String> = conn
        .query_row(
            "INSERT INTO leases (name, owner, until) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
             WHERE leases.owner = excluded.owner OR leases.until < ?4
             RETURNING owner",
            params![name, owner, until, now],
            |r| r.get(0),
        )
        .optional()?;
    Ok(holder.as_deref() == Some(owner))
}

/// Gives a lease back at once (the work stopped here), so another engine need not
/// wait for it to end.
pub fn release_lease(conn: &Connection, name: &str, owner: &str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM leases WHERE name = ?1 AND owner = ?2",
        params![name, owner],
    )?;
    Ok(())
}

/// Whether `owner` holds the lease `name` now.
pub fn holds_lease(
    conn: &Connection,
    name: &str,
    owner: &str,
    now: i64,
) -> Result<bool, StoreError> {
    conn.exists(
        "SELECT 1 FROM leases WHERE name = ?1 AND owner = ?2 AND until >= ?3",
        params![name, owner, now],
    )
}

/// An engine as it registers.
#[derive(Debug, Clone)]
pub struct EngineRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub admin_url: String,
    pub events_url: String,
    /// `id@version` of each plugin loaded.
    pub plugins: Vec<String>,
}

/// Registers this engine (at start). Rows of engines gone for a week are removed.
pub fn register_engine(conn: &Connection, engine: &EngineRow, now: i64) -> Result<(), StoreError> {
    let plugins = serde_json::to_string(&engine.plugins).map_err(|source| StoreError::Corrupt {
        what: "the plugin list".into(),
        source,
    })?;
    conn.execute(
        "DELETE FROM engines WHERE heartbeat_at < ?1",
        params![now - 7 * 86_400_000],
    )?;
    conn.execute(
        "INSERT INTO engines (id, name, version, admin_url, events_url, plugins, started_at, heartbeat_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            engine.id,
            engine.name,
            engine.version,
            engine.admin_url,
            engine.events_url,
            plugins,
            now
        ],
    )?;
    Ok(())
}

/// One heartbeat: the engine's row, and every lease it holds (its running jobs' and
/// its work's) renewed until `until`. Returns the names of the work leases it still
/// holds (one it lost while cut off is gone from the list).
pub fn heartbeat(
    conn: &mut Connection,
    engine_id: &str,
    jobs_running: usize,
    now: i64,
    until: i64,
) -> Result<Vec<String>, StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE engines SET heartbeat_at = ?2, jobs_running = ?3, stopped_at = NULL WHERE id = ?1",
        params![engine_id, now, jobs_running],
    )?;
    tx.execute(
        "UPDATE jobs SET lease_until = ?2 WHERE lease_owner = ?1 AND state = ?3",
        params![engine_id, until, JobState::Running],
    )?;
    tx.execute(
        "UPDATE leases SET until = ?2 WHERE owner = ?1",
        params![engine_id, until],
    )?;
    let held = tx.query(
        "SELECT name FROM leases WHERE owner = ?1 ORDER BY name",
        params![engine_id],
        |r| r.get(0),
    )?;
    tx.commit()?;
    Ok(held)
}

/// A clean stop: the engine's work leases are given back and its row says stopped.
/// (Its running jobs were drained or are taken over when their leases end.)
pub fn engine_stopped(conn: &mut Connection, engine_id: &str, now: i64) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM leases WHERE owner = ?1", params![engine_id])?;
    tx.execute(
        "UPDATE engines SET stopped_at = ?2, jobs_running = 0 WHERE id = ?1",
        params![engine_id, now],
    )?;
    tx.commit()
}

/// Running jobs whose lease ended (their engine died or was cut off) go back to the
/// queue, their attempt marked interrupted. Returns how many.
pub fn take_over_expired(conn: &mut Connection, now: i64) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let expired = format!(
        "SELECT id FROM jobs WHERE state = 'running' AND COALESCE(lease_until, 0) < ?1{}",
        tx.dialect().skip_locked()
    );
    let ids: Vec<i64> = tx.query(&expired, params![now], |r| r.get(0))?;
    for id in &ids {
        requeue(
            &tx,
            *id,
            now,
            "the engine running this attempt stopped answering; another engine runs it again",
        )?;
    }
    tx.commit()?;
    Ok(ids.len())
}

/// A running job back in the queue, its open attempt marked interrupted (`why`).
fn requeue(tx: &Connection, job_id: i64, now: i64, why: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE attempts SET outcome = ?3, finished_at = ?2, message = ?4
         WHERE job_id = ?1 AND outcome = 'running'",
        params![job_id, now, AttemptOutcome::Interrupted, why],
    )?;
    tx.execute(
        "UPDATE jobs SET state = ?3, next_attempt_at = ?2, updated_at = ?2,
                lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND state = 'running'",
        params![job_id, now, JobState::Pending],
    )?;
    Ok(())
}

/// Running jobs leased by earlier runs of the engine named `name` (it restarted:
/// they cannot be running any more) go back to the queue at once.
pub fn take_back_own(
    conn: &mut Connection,
    name: &str,
    engine_id: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let ids: Vec<i64> = tx.query(
        "SELECT j.id FROM jobs j JOIN engines e ON e.id = j.lease_owner
         WHERE j.state = 'running' AND e.name = ?1 AND e.id <> ?2",
        params![name, engine_id],
        |r| r.get(0),
    )?;
    for id in &ids {
        requeue(
            &tx,
            *id,
            now,
            "the engine stopped during this attempt; it runs again",
        )?;
    }
    tx.execute(
        "DELETE FROM leases WHERE owner IN (SELECT id FROM engines WHERE name = ?1 AND id <> ?2)",
        params![name, engine_id],
    )?;
    tx.commit()?;
    Ok(ids.len())
}

/// An engine on the database, as `GET /api/engines` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EngineView {
    pub id: String,
    pub name: String,
    pub version: String,
    pub admin_url: String,
    pub events_url: String,
    pub plugins: Vec<String>,
    pub started_at: i64,
    pub last_heartbeat_at: i64,
    pub jobs_running: i64,
    /// Heartbeating within the lease time, and not stopped.
    pub alive: bool,
    pub stopped_at: Option<i64>,
}

/// The engines seen within the last day, newest first; `alive` against `lease_ms`.
pub fn engines(conn: &Connection, now: i64, lease_ms: i64) -> Result<Vec<EngineView>, StoreError> {
    conn.query(
        "SELECT id, name, version, admin_url, events_url, plugins, started_at, heartbeat_at,
                jobs_running, stopped_at
         FROM engines WHERE heartbeat_at >= ?1 OR stopped_at IS NULL
         ORDER BY started_at DESC, id",
        params![now - 86_400_000],
        |r| {
            let plugins: String = r.get(5)?;
            let heartbeat: i64 = r.get(7)?;
            let stopped_at: Option<i64> = r.get(9)?;
            Ok(EngineView {
                id: r.get(0)?,
                name: r.get(1)?,
                version: r.get(2)?,
                admin_url: r.get(3)?,
                events_url: r.get(4)?,
                plugins: serde_json::from_str(&plugins).map_err(|source| StoreError::Corrupt {
                    what: "an engine's plugin list".into(),
                    source,
                })?,
                started_at: r.get(6)?,
                last_heartbeat_at: heartbeat,
                jobs_running: r.get(8)?,
                alive: stopped_at.is_none() && now - heartbeat <= lease_ms,
                stopped_at,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{self, NewEvent, Routing, Source};

    fn engine(id: &str, name: &str) -> EngineRow {
        EngineRow {
            id: id.into(),
            name: name.into(),
            version: "0.1.0".into(),
            admin_url: "http://127.0.0.1:1".into(),
            events_url: "http://127.0.0.1:2".into(),
            plugins: vec!["dynamics365@0.1.0".into()],
        }
    }

    fn one_job(conn: &mut Connection) {
        let event = NewEvent {
            source: Source::Outbound,
            appliance_id: "Default".into(),
            event_type: "support_conference_end".into(),
            lsid: Some("s".into()),
            timestamp: 1,
            fields: Default::default(),
            dedup_key: Some("s".into()),
        };
        events::insert_batch(conn, &[(event, Routing::To(vec![(1, "c1".into())]))], 0)
            .expect("insert");
    }

    crate::store::on_both_stores! {
        fn a_lease_is_held_by_one_owner_until_it_ends(conn) {
            assert!(take_lease(&conn, "poll:1", "a", 0, 100).expect("take"));
            assert!(!take_lease(&conn, "poll:1", "b", 50, 150).expect("held by a"));
            assert!(take_lease(&conn, "poll:1", "a", 60, 160).expect("renewed by a"));
            assert!(holds_lease(&conn, "poll:1", "a", 100).expect("holds"));
            assert!(take_lease(&conn, "poll:1", "b", 161, 261).expect("ended: b takes it"));
            assert!(!holds_lease(&conn, "poll:1", "a", 170).expect("a lost it"));
            release_lease(&conn, "poll:1", "a").expect("not a's: no effect");
            assert!(holds_lease(&conn, "poll:1", "b", 170).expect("still b's"));
            release_lease(&conn, "poll:1", "b").expect("release");
            assert!(take_lease(&conn, "poll:1", "a", 171, 271).expect("free again"));
        }

        fn a_dead_engines_job_is_taken_over_when_its_lease_ends(conn) {
            register_engine(&conn, &engine("e1", "one"), 0).expect("register");
            one_job(&mut conn);
            let claimed = events::claim(&mut conn, 1, "e1", 10, 1_000)
                .expect("claim")
                .expect("claimed");
            assert_eq!(heartbeat(&mut conn, "e1", 1, 500, 1_500).expect("beat"), Vec::<String>::new());
            assert_eq!(take_over_expired(&mut conn, 1_400).expect("none yet"), 0, "renewed to 1500");
            assert_eq!(take_over_expired(&mut conn, 1_501).expect("taken"), 1);
            let (job, attempts) = events::get(&conn, 1).expect("job");
            assert_eq!(job.state, JobState::Pending);
            assert_eq!(attempts[0].outcome, AttemptOutcome::Interrupted);
            // The dead engine's late answer is not recorded over the new run's.
            let done = events::Verdict::Succeeded { detail: "late".into() };
            assert!(!events::finish(&mut conn, &claimed, &done, 1_600).expect("finish"));
            let again = events::claim(&mut conn, 1, "e2", 1_700, 2_700)
                .expect("claim")
                .expect("claimed by e2");
            assert!(events::finish(&mut conn, &again, &done, 1_800).expect("finish"));
            assert_eq!(events::get(&conn, 1).expect("job").0.state, JobState::Succeeded);
        }

        fn a_restarted_engine_takes_back_its_own_jobs_at_once(conn) {
            register_engine(&conn, &engine("old", "one"), 0).expect("register");
            one_job(&mut conn);
            events::claim(&mut conn, 1, "old", 10, 100_000).expect("claim").expect("claimed");
            take_lease(&conn, "poll:1", "old", 10, 100_000).expect("lease");
            register_engine(&conn, &engine("new", "one"), 20).expect("register");
            assert_eq!(take_back_own(&mut conn, "one", "new", 30).expect("taken"), 1);
            assert!(take_lease(&conn, "poll:1", "new", 31, 1_000).expect("the lease is free"));
            let views = engines(&conn, 40, 30_000).expect("engines");
            assert_eq!(views.len(), 2);
            assert_eq!(views[0].id, "new");
            assert_eq!(views[0].plugins, vec!["dynamics365@0.1.0".to_owned()]);
        }

        fn the_first_key_check_is_kept(conn) {
            assert_eq!(meta(&conn, "key_check").expect("read"), None);
            assert_eq!(meta_first(&conn, "key_check", "a").expect("first"), "a");
            assert_eq!(meta_first(&conn, "key_check", "b").expect("second"), "a");
        }
    }
}
