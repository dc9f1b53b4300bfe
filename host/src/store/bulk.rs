//! Reconciliation and backfill: the sessions that ended on the appliance, compared
//! with what each configuration took, and the missing ones queued.
//!
//! `session_ends` remembers every session end a configuration took (from any source),
//! longer than the jobs' retention, so that a session is never imported twice. Each
//! step (a reconciliation's window, a backfill's chunk) writes its events and its
//! progress in one transaction: after a crash it runs again from where it was.

use std::collections::BTreeMap;

use super::db::{params, Connection, OptionalExtension, Transaction};
use plugin_api::EndedSession;
use serde::Serialize;

use super::events::{dedup_key, insert_one, NewEvent, Routing, Stored};
use super::kinds::{JobState, Source, WAITING_SQL};
use super::StoreError;

/// The event a found session is queued as.
pub const SESSION_END: &str = "support_conference_end";

/// One configuration, as the jobs name it.
#[derive(Debug, Clone)]
pub struct ConfigurationRef {
    pub id: i64,
    pub name: String,
    pub appliance_id: String,
}

/// Whether this configuration has taken the session's end, and how that went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Never,
    /// Received, queued or processed (or pruned since).
    Taken,
    /// Its newest job failed: a backfill may queue it again.
    Failed,
}

fn seen(tx: &Transaction<'_>, configuration_id: i64, lsid: &str) -> Result<Seen, StoreError> {
    let known = tx
        .prepare_cached("SELECT 1 FROM session_ends WHERE configuration_id = ?1 AND lsid = ?2")?
        .exists(params![configuration_id, lsid])?;
    if !known {
        return Ok(Seen::Never);
    }
    let newest: Option<JobState> = tx
        .prepare_cached(
            "SELECT state FROM jobs WHERE configuration_id = ?1 AND lsid = ?2 AND event_type = ?3
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![configuration_id, lsid, SESSION_END], |r| r.get(0))
        .optional()?;
    Ok(if newest == Some(JobState::Failed) {
        Seen::Failed
    } else {
        Seen::Taken
    })
}

/// Holds the configuration's row until the transaction ends, so that what this one
/// finds taken or not stays so until it commits: on PostgreSQL another engine's
/// intake (which takes the row shared) or bulk run waits for it. SQLite serialises
/// its writers already.
fn lock_configuration(tx: &Transaction<'_>, configuration_id: i64) -> Result<(), StoreError> {
    if tx.dialect() == super::db::Dialect::Postgres {
        tx.query(
            "SELECT id FROM configurations WHERE id = ?1 FOR UPDATE",
            params![configuration_id],
            |r| r.get::<_, i64>(0),
        )?;
    }
    Ok(())
}

/// Queues one found session for `configuration`; `scope` keeps its key apart from
/// the same session found by another run. Returns the new event's id, if new.
fn queue(
    tx: &Transaction<'_>,
    configuration: &ConfigurationRef,
    source: Source,
    scope: &str,
    session: &EndedSession,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let fields = BTreeMap::from([
        ("event".to_owned(), SESSION_END.to_owned()),
        ("lsid".to_owned(), session.lsid.clone()),
        ("timestamp".to_owned(), session.ended_at.to_string()),
    ]);
    let event = NewEvent {
        source,
        appliance_id: configuration.appliance_id.clone(),
        event_type: SESSION_END.to_owned(),
        lsid: Some(session.lsid.clone()),
        timestamp: session.ended_at,
        fields,
        // Without the end time: a listing that reports it differently later still
        // finds the same key.
        dedup_key: Some(dedup_key(
            source,
            scope,
            SESSION_END,
            Some(&session.lsid),
            0,
        )),
    };
    let routing = Routing::To(vec![(configuration.id, configuration.name.clone())]);
    Ok(match insert_one(tx, &event, &routing, now)? {
        Stored::New { event_id, jobs } if jobs > 0 => Some(event_id),
        _ => None,
    })
}

/// A configuration's reconciliation, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileState {
    /// Unix seconds: sessions that ended before this were compared.
    pub covered_until: i64,
    /// When it last ran (ms), or when it was set up if `runs` is 0; the next run is
    /// one interval later.
    pub last_run_at: i64,
    /// Runs so far, failed ones included.
    pub runs: i64,
    /// Sessions the last run found ended, and those of them it queued.
    pub last_found: i64,
    pub last_queued: i64,
    pub last_error: Option<String>,
}

pub fn reconcile_state(
    conn: &Connection,
    configuration_id: i64,
) -> Result<Option<ReconcileState>, StoreError> {
    conn.query_row(
        "SELECT covered_until, last_run_at, last_found, last_queued, last_error, runs
             FROM reconcile_state WHERE configuration_id = ?1",
        params![configuration_id],
        |r| {
            Ok(ReconcileState {
                covered_until: r.get(0)?,
                last_run_at: r.get(1)?,
                last_found: r.get(2)?,
                last_queued: r.get(3)?,
                last_error: r.get(4)?,
                runs: r.get(5)?,
            })
        },
    )
    .optional()
}

/// The state of a configuration seen for the first time: nothing compared before
/// `covered_until`, the first run one interval after `now`.
pub fn start_reconciling(
    conn: &Connection,
    configuration_id: i64,
    covered_until: i64,
    now: i64,
) -> Result<ReconcileState, StoreError> {
    conn.execute(
        "INSERT INTO reconcile_state (configuration_id, covered_until, last_run_at)
         VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![configuration_id, covered_until, now],
    )?;
    reconcile_state(conn, configuration_id)?.ok_or(StoreError::NotFound)
}

/// Records one reconciliation: the sessions ended up to `until` (Unix s), the unseen
/// ones queued with source `reconcile`, and the new state, in one transaction.
/// Returns how many were queued.
pub fn record_reconciliation(
    conn: &mut Connection,
    configuration: &ConfigurationRef,
    sessions: &[EndedSession],
    until: i64,
    now: i64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    lock_configuration(&tx, configuration.id)?;
    let scope = configuration.id.to_string();
    let mut queued = 0;
    for session in sessions {
        if seen(&tx, configuration.id, &session.lsid)? == Seen::Never
            && queue(&tx, configuration, Source::Reconcile, &scope, session, now)?.is_some()
        {
            queued += 1;
        }
    }
    tx.execute(
        "UPDATE reconcile_state SET covered_until = CASE WHEN covered_until > ?2 THEN covered_until ELSE ?2 END, last_run_at = ?3,
                last_found = ?4, last_queued = ?5, last_error = NULL, runs = runs + 1
         WHERE configuration_id = ?1",
        params![
            configuration.id,
            until,
            now,
            sessions.len() as i64,
            queued as i64
        ],
    )?;
    tx.commit()?;
    Ok(queued)
}

/// A run that failed: it is tried again one interval later, from the same point.
pub fn reconciliation_failed(
    conn: &Connection,
    configuration_id: i64,
    error: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE reconcile_state SET last_run_at = ?2, last_error = ?3, runs = runs + 1
         WHERE configuration_id = ?1",
        params![configuration_id, now, error],
    )?;
    Ok(())
}

/// What becomes of a backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl BackfillState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(StoreError::Column {
                    index: 6,
                    message: format!("{other:?} is not a backfill state"),
                })
            }
        })
    }
}

/// A backfill as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackfillView {
    pub id: i64,
    pub configuration_id: i64,
    pub configuration_name: String,
    /// Unix seconds: sessions that ended at or after `since` and before `until`.
    pub since: i64,
    pub until: i64,
    pub state: BackfillState,
    /// Sessions the appliance listed in the range so far.
    pub found: i64,
    /// Sessions queued and processed: written, skipped by the import rules, failed.
    pub imported: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Sessions this configuration had already taken: not written again.
    pub already_imported: i64,
    /// Queued and not finished yet.
    pub queued: i64,
    /// How far the listing of the range has come, 0 to 1.
    pub listed: f64,
    /// Seconds left, estimated from the pace so far, while it runs.
    pub eta_seconds: Option<u64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    #[serde(skip)]
    pub next_from: i64,
}

impl BackfillView {
    pub fn is_listed(&self) -> bool {
        self.next_from >= self.until
    }
}

const BACKFILL_COLUMNS: &str =
    "id, configuration_id, configuration_name, since, until, next_from, state,
    found, already_imported, imported, skipped, failed, error, created_at, finished_at";

fn backfill_row(
    conn: &Connection,
    row: &super::db::Row<'_>,
    now: i64,
) -> Result<BackfillView, StoreError> {
    let id: i64 = row.get(0)?;
    let state = BackfillState::parse(&row.get::<_, String>(6)?)?;
    let frozen: (Option<i64>, Option<i64>, Option<i64>) = (row.get(9)?, row.get(10)?, row.get(11)?);
    let (imported, skipped, failed, queued) = match frozen {
        (Some(i), Some(s), Some(f)) if state != BackfillState::Running => (i, s, f, 0),
        _ => job_counts(conn, id)?,
    };
    let (since, until, next_from): (i64, i64, i64) = (row.get(3)?, row.get(4)?, row.get(5)?);
    let found: i64 = row.get(7)?;
    let already_imported: i64 = row.get(8)?;
    let created_at: i64 = row.get(13)?;
    let listed = if until > since {
        ((next_from.min(until) - since) as f64 / (until - since) as f64).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let eta_seconds = (state == BackfillState::Running)
        .then(|| {
            eta(
                now - created_at,
                listed,
                imported + skipped + failed,
                queued,
            )
        })
        .flatten();
    Ok(BackfillView {
        id,
        configuration_id: row.get(1)?,
        configuration_name: row.get(2)?,
        since,
        until,
        state,
        found,
        imported,
        skipped,
        failed,
        already_imported,
        queued,
        listed,
        eta_seconds,
        error: row.get(12)?,
        created_at,
        finished_at: row.get(14)?,
        next_from,
    })
}

/// Seconds left: the listing's pace for what is left of the range, and the jobs'
/// pace for what is queued; `None` until there is a pace to go by.
fn eta(elapsed_ms: i64, listed: f64, finished: i64, queued: i64) -> Option<u64> {
    // No pace yet: nothing listed, or events waiting and none finished.
    if elapsed_ms <= 0 || (finished == 0 && (listed <= 0.0 || queued > 0)) {
        return None;
    }
    let elapsed = elapsed_ms as f64 / 1000.0;
    let listing_left = if listed > 0.0 {
        elapsed * (1.0 - listed) / listed
    } else {
        0.0
    };
    let jobs_left = if finished > 0 {
        elapsed * queued as f64 / finished as f64
    } else {
        0.0
    };
    Some(listing_left.max(jobs_left).ceil() as u64)
}

/// Its jobs by outcome: written, skipped, failed, not finished.
fn job_counts(conn: &Connection, backfill_id: i64) -> Result<(i64, i64, i64, i64), StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE backfill_id = ?1 GROUP BY state")?;
    let mut counts = (0, 0, 0, 0);
    let rows = stmt.query_map(params![backfill_id], |r| {
        Ok((r.get::<_, JobState>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (state, n) = row?;
        match state {
            JobState::Succeeded => counts.0 += n,
            JobState::Skipped | JobState::Ignored => counts.1 += n,
            JobState::Failed => counts.2 += n,
            JobState::Pending | JobState::Running | JobState::Retrying => counts.3 += n,
        }
    }
    Ok(counts)
}

pub fn create_backfill(
    conn: &Connection,
    configuration: &ConfigurationRef,
    since: i64,
    until: i64,
    now: i64,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO backfills (configuration_id, configuration_name, since, until, next_from, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?3, ?5, ?6, ?6)",
        params![configuration.id, configuration.name, since, until, BackfillState::Running.as_str(), now],
    )?;
    conn.last_insert_rowid()
}

pub fn backfill(conn: &Connection, id: i64, now: i64) -> Result<BackfillView, StoreError> {
    conn.query_row(
        &format!("SELECT {BACKFILL_COLUMNS} FROM backfills WHERE id = ?1"),
        params![id],
        |r| backfill_row(conn, r, now),
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

/// A configuration's backfills, newest first.
pub fn backfills_of(
    conn: &Connection,
    configuration_id: i64,
    now: i64,
) -> Result<Vec<BackfillView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BACKFILL_COLUMNS} FROM backfills WHERE configuration_id = ?1 ORDER BY id DESC LIMIT 100"
    ))?;
    let rows = stmt
        .query_map(params![configuration_id], |r| backfill_row(conn, r, now))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The backfills still running, oldest first.
pub fn running_backfills(conn: &Connection, now: i64) -> Result<Vec<BackfillView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BACKFILL_COLUMNS} FROM backfills WHERE state = 'running' ORDER BY id"
    ))?;
    let rows = stmt
        .query_map(params![], |r| backfill_row(conn, r, now))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Records one chunk of a backfill, listed up to `chunk_end`: the sessions this
/// configuration never took are queued with source `backfill`, and the backfill's
/// progress moves on, in one transaction.
pub fn record_backfill_chunk(
    conn: &mut Connection,
    backfill_id: i64,
    configuration: &ConfigurationRef,
    sessions: &[EndedSession],
    chunk_end: i64,
    now: i64,
) -> Result<(usize, usize), StoreError> {
    let tx = conn.transaction()?;
    let running: bool = tx
        .query_row(
            "SELECT state = 'running' FROM backfills WHERE id = ?1",
            params![backfill_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    if !running {
        return Ok((0, 0)); // cancelled meanwhile
    }
    lock_configuration(&tx, configuration.id)?;
    let scope = format!("{}:{backfill_id}", configuration.id);
    let (mut queued, mut already) = (0, 0);
    for session in sessions {
        match seen(&tx, configuration.id, &session.lsid)? {
            Seen::Taken => already += 1,
            Seen::Never | Seen::Failed => {
                if let Some(event_id) =
                    queue(&tx, configuration, Source::Backfill, &scope, session, now)?
                {
                    tx.execute(
                        "UPDATE jobs SET backfill_id = ?1 WHERE event_id = ?2",
                        params![backfill_id, event_id],
                    )?;
                    queued += 1;
                }
            }
        }
    }
    tx.execute(
        "UPDATE backfills SET next_from = ?2, found = found + ?3, already_imported = already_imported + ?4,
                updated_at = ?5
         WHERE id = ?1",
        params![backfill_id, chunk_end, sessions.len() as i64, already as i64, now],
    )?;
    tx.commit()?;
    Ok((queued, already))
}

/// Ends a backfill whose range is listed and whose jobs are all finished, keeping
/// their counts (the jobs themselves are pruned with the history). True if it ended.
pub fn finish_backfill_if_done(
    conn: &mut Connection,
    id: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let listed: bool = tx
        .query_row(
            "SELECT next_from >= until FROM backfills WHERE id = ?1 AND state = 'running'",
            params![id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    if !listed {
        return Ok(false);
    }
    let (imported, skipped, failed, unfinished) = job_counts(&tx, id)?;
    if unfinished > 0 {
        return Ok(false);
    }
    tx.execute(
        "UPDATE backfills SET state = 'done', imported = ?2, skipped = ?3, failed = ?4,
                updated_at = ?5, finished_at = ?5 WHERE id = ?1",
        params![id, imported, skipped, failed, now],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Ends a backfill that cannot go on (its configuration is gone, the plugin cannot
/// list sessions, a listing failed for good).
pub fn fail_backfill(
    conn: &mut Connection,
    id: i64,
    error: &str,
    now: i64,
) -> Result<(), StoreError> {
    end_backfill(conn, id, BackfillState::Failed, Some(error), now).map(|_| ())
}

/// Cancels a running backfill: nothing more is listed, and its events not yet
/// processed are failed, saying so (each can still be retried from the history).
/// False when it had already ended.
pub fn cancel_backfill(conn: &mut Connection, id: i64, now: i64) -> Result<bool, StoreError> {
    end_backfill(conn, id, BackfillState::Cancelled, None, now)
}

fn end_backfill(
    conn: &mut Connection,
    id: i64,
    state: BackfillState,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM backfills WHERE id = ?1")?
        .exists(params![id])?;
    if !exists {
        return Err(StoreError::NotFound);
    }
    let reason = match state {
        BackfillState::Cancelled => "not processed: its backfill was cancelled".to_owned(),
        _ => format!(
            "not processed: its backfill failed: {}",
            error.unwrap_or("")
        ),
    };
    tx.execute(
        &format!(
            "UPDATE jobs SET state = ?2, last_error = ?3, updated_at = ?4
             WHERE backfill_id = ?1 AND state IN {WAITING_SQL}"
        ),
        params![id, JobState::Failed, reason, now],
    )?;
    let (imported, skipped, failed, _) = job_counts(&tx, id)?;
    let changed = tx.execute(
        "UPDATE backfills SET state = ?2, error = ?3, imported = ?4, skipped = ?5, failed = ?6,
                updated_at = ?7, finished_at = ?7
         WHERE id = ?1 AND state = 'running'",
        params![id, state.as_str(), error, imported, skipped, failed, now],
    )?;
    tx.commit()?;
    Ok(changed > 0)
}

/// A deleted configuration's reconciliation and memory of sessions go with it; its
/// running backfills are cancelled (inside the delete's transaction).
pub(super) fn forget_configuration(
    tx: &Transaction<'_>,
    configuration_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM reconcile_state WHERE configuration_id = ?1",
        params![configuration_id],
    )?;
    tx.execute(
        "DELETE FROM session_ends WHERE configuration_id = ?1",
        params![configuration_id],
    )?;
    tx.execute(
        "UPDATE backfills SET state = 'cancelled', error = 'its configuration was deleted',
                updated_at = ?2, finished_at = ?2
         WHERE configuration_id = ?1 AND state = 'running'",
        params![configuration_id, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{insert_batch, Routing};

    fn c1() -> ConfigurationRef {
        ConfigurationRef {
            id: 1,
            name: "c1".into(),
            appliance_id: "Default".into(),
        }
    }

    fn ended(lsid: &str) -> EndedSession {
        EndedSession {
            lsid: lsid.into(),
            ended_at: 100,
        }
    }

    fn states(conn: &Connection) -> Vec<(String, Source, JobState)> {
        let mut stmt = conn
            .prepare("SELECT lsid, source, state FROM jobs ORDER BY id")
            .expect("prepare");
        stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    crate::store::on_both_stores! {
        fn reconciliation_queues_only_the_sessions_never_taken_and_only_once(conn) {
            let delivered = crate::store::events::NewEvent {
                source: Source::Outbound,
                appliance_id: "Default".into(),
                event_type: SESSION_END.into(),
                lsid: Some("a".into()),
                timestamp: 100,
                fields: BTreeMap::new(),
                dedup_key: Some("a".into()),
            };
            insert_batch(
                &mut conn,
                &[(delivered, Routing::To(vec![(1, "c1".into())]))],
                0,
            )
            .expect("insert");
            start_reconciling(&conn, 1, 50, 0).expect("state");
            let found = [ended("a"), ended("b")];
            assert_eq!(
                record_reconciliation(&mut conn, &c1(), &found, 200, 1).expect("run"),
                1
            );
            assert_eq!(
                record_reconciliation(&mut conn, &c1(), &found, 300, 2).expect("run"),
                0
            );
            assert_eq!(
                states(&conn),
                vec![
                    ("a".into(), Source::Outbound, JobState::Pending),
                    ("b".into(), Source::Reconcile, JobState::Pending)
                ]
            );
            let state = reconcile_state(&conn, 1).expect("read").expect("state");
            assert_eq!(
                (
                    state.covered_until,
                    state.runs,
                    state.last_found,
                    state.last_queued
                ),
                (300, 2, 2, 0)
            );
        }
    }

    crate::store::on_both_stores! {
        fn a_backfill_counts_what_was_taken_and_a_cancel_fails_its_waiting_events(conn) {
            start_reconciling(&conn, 1, 0, 0).expect("state");
            record_reconciliation(&mut conn, &c1(), &[ended("old")], 10, 0).expect("run");
            let id = create_backfill(&conn, &c1(), 0, 1_000, 0).expect("create");
            let chunk = [ended("old"), ended("new1"), ended("new2")];
            assert_eq!(
                record_backfill_chunk(&mut conn, id, &c1(), &chunk, 500, 1).expect("chunk"),
                (2, 1)
            );
            let view = backfill(&conn, id, 2).expect("view");
            assert_eq!((view.found, view.already_imported, view.queued), (3, 1, 2));
            assert!(!view.is_listed());
            assert!(
                !finish_backfill_if_done(&mut conn, id, 3).expect("finish"),
                "not listed yet"
            );
            assert!(cancel_backfill(&mut conn, id, 4).expect("cancel"));
            assert!(
                !cancel_backfill(&mut conn, id, 5).expect("cancel"),
                "already ended"
            );
            let view = backfill(&conn, id, 6).expect("view");
            assert_eq!(view.state, BackfillState::Cancelled);
            assert_eq!((view.failed, view.queued), (2, 0));
            // A chunk arriving after the cancel writes nothing.
            assert_eq!(
                record_backfill_chunk(&mut conn, id, &c1(), &[ended("late")], 1_000, 7).expect("chunk"),
                (0, 0)
            );
            // A later backfill queues the failed ones again, not the one taken.
            let again = create_backfill(&conn, &c1(), 0, 1_000, 8).expect("create");
            assert_eq!(
                record_backfill_chunk(&mut conn, again, &c1(), &chunk, 1_000, 9).expect("chunk"),
                (2, 1)
            );
        }
    }
}
