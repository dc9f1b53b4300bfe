//! Events, their jobs (one per configuration an event goes to), each job's attempts,
//! and polling cursors.
//!
//! The API calls a job an "event": what an admin follows is one event's fate in one
//! configuration. An event that no configuration takes is kept as one `ignored` job.

use std::collections::BTreeMap;

use super::db::{params, params_from_iter, Connection, OptionalExtension, Row, Transaction, Value};
use serde::Serialize;

pub use super::kinds::{AttemptOutcome, JobState, Source};
use super::kinds::{FINISHED_SQL, UNFINISHED_SQL, WAITING_SQL};
use super::StoreError;

/// The key under which an event is stored once: the same event delivered again (or
/// found again by a poll) has the same key. `scope` is the appliance id for outbound
/// events and the configuration id for polled ones.
pub fn dedup_key(
    source: Source,
    scope: &str,
    event_type: &str,
    lsid: Option<&str>,
    timestamp: i64,
) -> String {
    format!(
        "{source}\u{1f}{scope}\u{1f}{event_type}\u{1f}{}\u{1f}{timestamp}",
        lsid.unwrap_or("")
    )
}

/// An event as it is stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: Source,
    pub appliance_id: String,
    pub event_type: String,
    pub lsid: Option<String>,
    pub timestamp: i64,
    pub fields: BTreeMap<String, String>,
    /// Same key, same event: a redelivery is stored once.
    pub dedup_key: Option<String>,
}

/// Where an event goes: the configurations that take it, or why none does.
#[derive(Debug, Clone)]
pub enum Routing {
    To(Vec<(i64, String)>),
    Ignored(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New { event_id: i64, jobs: usize },
    Duplicate { event_id: i64 },
}

pub(super) fn insert_one(
    tx: &Transaction<'_>,
    event: &NewEvent,
    routing: &Routing,
    now: i64,
) -> Result<Stored, StoreError> {
    let fields = serde_json::to_string(&event.fields).map_err(|source| StoreError::Corrupt {
        what: "an event's fields".into(),
        source,
    })?;
    let inserted = tx.execute(
        "INSERT INTO events (source, appliance_id, event_type, lsid, timestamp, fields, received_at, dedup_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (dedup_key) DO NOTHING",
        params![event.source, event.appliance_id, event.event_type, event.lsid, event.timestamp, fields, now, event.dedup_key],
    )?;
    if inserted == 0 {
        let event_id = tx.query_row(
            "SELECT id FROM events WHERE dedup_key = ?1",
            params![&event.dedup_key],
            |r| r.get(0),
        )?;
        return Ok(Stored::Duplicate { event_id });
    }
    let event_id = tx.last_insert_rowid()?;
    let mut job = tx.prepare_cached(
        "INSERT INTO jobs (event_id, configuration_id, configuration_name, source, event_type, lsid, state,
                           next_attempt_at, last_error, received_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8, ?8)",
    )?;
    // A configuration deleted after the event was routed but before this commit takes
    // no job: the delete and this insert are serialised (SQLite has one writer;
    // PostgreSQL's row lock below), so its jobs are either failed by the delete or
    // never written.
    // On PostgreSQL the row is taken shared until the commit: a delete (or another
    // engine's bulk run, see `bulk`) waits for this batch, or this batch for it.
    let exists_sql = format!(
        "SELECT 1 FROM configurations WHERE id = ?1{}",
        tx.dialect().for_share()
    );
    let mut exists = tx.prepare_cached(&exists_sql)?;
    // Every session end a configuration takes is remembered (see `bulk`).
    let session_end = event
        .lsid
        .as_deref()
        .filter(|_| event.event_type == super::bulk::SESSION_END);
    let mut remember = tx.prepare_cached(
        "INSERT INTO session_ends (configuration_id, lsid) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?;
    let mut jobs = 0;
    let mut deleted = Vec::new();
    if let Routing::To(targets) = routing {
        for (id, name) in targets {
            if exists.exists(params![id])? {
                job.execute(params![
                    event_id,
                    id,
                    name,
                    event.source,
                    event.event_type,
                    event.lsid,
                    JobState::Pending,
                    now,
                    None::<String>
                ])?;
                jobs += 1;
                if let Some(lsid) = session_end {
                    remember.execute(params![id, lsid])?;
                }
            } else {
                deleted.push(name.as_str());
            }
        }
    }
    if jobs == 0 {
        let reason = ignored_because(routing, &deleted);
        job.execute(params![
            event_id,
            None::<i64>,
            None::<String>,
            event.source,
            event.event_type,
            event.lsid,
            JobState::Ignored,
            now,
            reason
        ])?;
    }
    Ok(Stored::New { event_id, jobs })
}

/// Why an event took no job: no configuration takes it, or those it was routed to
/// were deleted before the commit.
fn ignored_because(routing: &Routing, deleted: &[&str]) -> String {
    match routing {
        Routing::Ignored(reason) => reason.clone(),
        Routing::To(_) => format!(
            "the configuration {} was deleted as the event arrived",
            deleted.join(", ")
        ),
    }
}

/// Stores a batch of events and their jobs in one transaction (group commit): all of
/// them are on disk when this returns, or none is.
pub fn insert_batch(
    conn: &mut Connection,
    batch: &[(NewEvent, Routing)],
    now: i64,
) -> Result<Vec<Stored>, StoreError> {
    let tx = conn.transaction()?;
    let stored = if tx.dialect() == super::db::Dialect::Postgres {
        insert_many(&tx, batch, now)?
    } else {
        let mut stored = Vec::with_capacity(batch.len());
        for (event, routing) in batch {
            stored.push(insert_one(&tx, event, routing, now)?);
        }
        stored
    };
    tx.commit()?;
    Ok(stored)
}

/// Events per multi-row statement: 9 parameters each, well under PostgreSQL's 65,535.
const MANY: usize = 500;

/// `?a, ?b, ...`: the parameters `offset + p` for each position `p` (1-based), for a
/// row of a multi-row `VALUES` or an `IN` list built at run time.
pub(super) fn marks(offset: usize, positions: impl IntoIterator<Item = usize>) -> String {
    positions
        .into_iter()
        .map(|p| format!("?{}", offset + p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// As `insert_one` for each event of a batch, in a few statements whatever its size:
/// on PostgreSQL each statement is a round trip, and a group commit of 64 events
/// would otherwise make some 130 of them. The same rules: a key already stored (or
/// earlier in the batch) is a duplicate; a configuration deleted before the commit
/// takes no job; every session end taken is remembered.
fn insert_many(
    tx: &Transaction<'_>,
    batch: &[(NewEvent, Routing)],
    now: i64,
) -> Result<Vec<Stored>, StoreError> {
    use std::collections::HashMap;
    let mut stored: Vec<Option<Stored>> = vec![None; batch.len()];
    // Events without a key cannot be matched back to their row: one at a time.
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    let mut fresh: Vec<usize> = Vec::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (i, (event, routing)) in batch.iter().enumerate() {
        match event.dedup_key.as_deref() {
            None => stored[i] = Some(insert_one(tx, event, routing, now)?),
            Some(key) => match first_with_key.get(key) {
                Some(first) => repeats.push((i, *first)),
                None => {
                    first_with_key.insert(key, i);
                    fresh.push(i);
                }
            },
        }
    }
    // 1. The events, each key once; the keys already stored come back with no row.
    let mut ids: HashMap<String, i64> = HashMap::new();
    for chunk in fresh.chunks(MANY) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 8);
        let mut rows = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let event = &batch[i].0;
            let fields =
                serde_json::to_string(&event.fields).map_err(|source| StoreError::Corrupt {
                    what: "an event's fields".into(),
                    source,
                })?;
            rows.push(format!("({})", marks(values.len(), 1..=8)));
            values.extend([
                Value::Text(event.source.as_str().to_owned()),
                Value::Text(event.appliance_id.clone()),
                Value::Text(event.event_type.clone()),
                event.lsid.clone().map_or(Value::Null, Value::Text),
                Value::Int(event.timestamp),
                Value::Text(fields),
                Value::Int(now),
                event.dedup_key.clone().map_or(Value::Null, Value::Text),
            ]);
        }
        let inserted: Vec<(i64, String)> = tx.query(
            &format!(
                "INSERT INTO events (source, appliance_id, event_type, lsid, timestamp, fields, received_at, dedup_key)
                 VALUES {} ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key",
                rows.join(", ")
            ),
            &params_from_iter(&values),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        ids.extend(inserted.into_iter().map(|(id, key)| (key, id)));
    }
    let known: Vec<Value> = fresh
        .iter()
        .filter_map(|&i| batch[i].0.dedup_key.clone())
        .filter(|key| !ids.contains_key(key))
        .map(Value::Text)
        .collect();
    let mut existing: HashMap<String, i64> = HashMap::new();
    for chunk in known.chunks(MANY) {
        let rows: Vec<(i64, String)> = tx.query(
            &format!(
                "SELECT id, dedup_key FROM events WHERE dedup_key IN ({})",
                marks(0, 1..=chunk.len())
            ),
            &params_from_iter(chunk),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        existing.extend(rows.into_iter().map(|(id, key)| (key, id)));
    }
    // 2. The configurations still there, held shared until the commit (see
    // `insert_one`), in id order so that two batches never wait on each other.
    let mut targets: Vec<i64> = fresh
        .iter()
        .filter_map(|&i| match &batch[i].1 {
            Routing::To(to) => Some(to.iter().map(|(id, _)| *id)),
            Routing::Ignored(_) => None,
        })
        .flatten()
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let mut alive: std::collections::HashSet<i64> = std::collections::HashSet::new();
    for chunk in targets.chunks(MANY) {
        let values: Vec<Value> = chunk.iter().map(|id| Value::Int(*id)).collect();
        alive.extend(tx.query(
            &format!(
                "SELECT id FROM configurations WHERE id IN ({}) ORDER BY id FOR SHARE",
                marks(0, 1..=chunk.len())
            ),
            &params_from_iter(&values),
            |r| r.get::<_, i64>(0),
        )?);
    }
    // 3. Their jobs and the session ends they take.
    let mut jobs: Vec<[Value; 9]> = Vec::new();
    let mut ends: Vec<(i64, String)> = Vec::new();
    for &i in &fresh {
        let (event, routing) = &batch[i];
        let key = event.dedup_key.as_deref().unwrap_or_default();
        let Some(&event_id) = ids.get(key) else {
            stored[i] = Some(Stored::Duplicate {
                event_id: existing.get(key).copied().ok_or(StoreError::NotFound)?,
            });
            continue;
        };
        let job = |configuration: Option<(i64, &str)>, state: JobState, error: Option<String>| {
            [
                Value::Int(event_id),
                configuration.map_or(Value::Null, |(id, _)| Value::Int(id)),
                configuration.map_or(Value::Null, |(_, name)| Value::Text(name.to_owned())),
                Value::Text(event.source.as_str().to_owned()),
                Value::Text(event.event_type.clone()),
                event.lsid.clone().map_or(Value::Null, Value::Text),
                Value::Text(state.as_str().to_owned()),
                Value::Int(now),
                error.map_or(Value::Null, Value::Text),
            ]
        };
        let session_end = event
            .lsid
            .as_deref()
            .filter(|_| event.event_type == super::bulk::SESSION_END);
        let mut taken = 0;
        let mut deleted = Vec::new();
        if let Routing::To(to) = routing {
            for (id, name) in to {
                if alive.contains(id) {
                    jobs.push(job(Some((*id, name)), JobState::Pending, None));
                    taken += 1;
                    if let Some(lsid) = session_end {
                        ends.push((*id, lsid.to_owned()));
                    }
                } else {
                    deleted.push(name.as_str());
                }
            }
        }
        if taken == 0 {
            let reason = ignored_because(routing, &deleted);
            jobs.push(job(None, JobState::Ignored, Some(reason)));
        }
        stored[i] = Some(Stored::New {
            event_id,
            jobs: taken,
        });
    }
    for chunk in jobs.chunks(MANY) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 9);
        let mut rows = Vec::with_capacity(chunk.len());
        for job in chunk {
            // next_attempt_at, received_at and updated_at are all `now` (the 8th).
            let positions = (1..=9).chain([8, 8]);
            rows.push(format!("({})", marks(values.len(), positions)));
            values.extend(job.iter().cloned());
        }
        tx.execute(
            &format!(
                "INSERT INTO jobs (event_id, configuration_id, configuration_name, source, event_type, lsid, state,
                                   next_attempt_at, last_error, received_at, updated_at)
                 VALUES {}",
                rows.join(", ")
            ),
            &params_from_iter(&values),
        )?;
    }
    for chunk in ends.chunks(MANY) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
        let mut rows = Vec::with_capacity(chunk.len());
        for (id, lsid) in chunk {
            rows.push(format!("({})", marks(values.len(), 1..=2)));
            values.extend([Value::Int(*id), Value::Text(lsid.clone())]);
        }
        tx.execute(
            &format!(
                "INSERT INTO session_ends (configuration_id, lsid) VALUES {} ON CONFLICT DO NOTHING",
                rows.join(", ")
            ),
            &params_from_iter(&values),
        )?;
    }
    for (i, first) in repeats {
        let event_id = match stored[first] {
            Some(Stored::New { event_id, .. } | Stored::Duplicate { event_id }) => event_id,
            None => return Err(StoreError::NotFound),
        };
        stored[i] = Some(Stored::Duplicate { event_id });
    }
    stored
        .into_iter()
        .map(|s| s.ok_or(StoreError::NotFound))
        .collect()
}

/// Stores what a poll found for one configuration, with its new cursor, atomically.
pub fn insert_polled(
    conn: &mut Connection,
    configuration: (i64, &str),
    events: &[NewEvent],
    cursor: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let routing = Routing::To(vec![(configuration.0, configuration.1.to_owned())]);
    let mut new = 0;
    for event in events {
        if let Stored::New { .. } = insert_one(&tx, event, &routing, now)? {
            new += 1;
        }
    }
    tx.execute(
        "INSERT INTO poll_cursors (configuration_id, cursor, last_poll_at, last_error) VALUES (?1, ?2, ?3, NULL)
         ON CONFLICT (configuration_id) DO UPDATE SET cursor = ?2, last_poll_at = ?3, last_error = NULL",
        params![configuration.0, cursor, now],
    )?;
    tx.commit()?;
    Ok(new)
}

/// A configuration's polling cursor and when it last polled.
pub fn poll_cursor(
    conn: &Connection,
    configuration_id: i64,
) -> Result<(Option<String>, Option<i64>), StoreError> {
    Ok(conn
        .query_row(
            "SELECT cursor, last_poll_at FROM poll_cursors WHERE configuration_id = ?1",
            params![configuration_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((None, None)))
}

pub fn poll_failed(
    conn: &Connection,
    configuration_id: i64,
    error: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO poll_cursors (configuration_id, cursor, last_poll_at, last_error) VALUES (?1, NULL, ?2, ?3)
         ON CONFLICT (configuration_id) DO UPDATE SET last_poll_at = ?2, last_error = ?3",
        params![configuration_id, now, error],
    )?;
    Ok(())
}

/// A job that may run now: due, and with no earlier unfinished job of the same
/// session in the same configuration (so one session's events run in order).
#[derive(Debug, Clone, Copy)]
pub struct Due {
    pub job_id: i64,
    pub configuration_id: i64,
    /// Reconciled or backfilled: may go to the plugin in a batch, after live events.
    pub bulk: bool,
}

pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<Due>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT j.id, j.configuration_id, j.source IN ('reconcile', 'backfill') AS bulk FROM jobs j
         WHERE j.state IN {WAITING_SQL} AND j.next_attempt_at <= ?1 AND j.configuration_id IS NOT NULL
           AND (j.lsid IS NULL OR NOT EXISTS (
                SELECT 1 FROM jobs k
                WHERE k.configuration_id = j.configuration_id AND k.lsid = j.lsid AND k.id < j.id
                  AND k.state IN {UNFINISHED_SQL}))
         ORDER BY bulk, j.id LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![now, limit as i64], |r| {
            Ok(Due {
                job_id: r.get(0)?,
                configuration_id: r.get(1)?,
                bulk: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// When the next waiting job falls due (ms), if any.
pub fn next_due_at(conn: &Connection) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        &format!("SELECT MIN(next_attempt_at) FROM jobs WHERE state IN {WAITING_SQL} AND configuration_id IS NOT NULL"),
        params![],
        |r| r.get(0),
    )
}

/// A job taken to run, with its event.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job_id: i64,
    /// The engine whose lease it runs under.
    pub owner: String,
    pub attempt_id: i64,
    pub attempt: u32,
    pub failures: u32,
    pub event_id: i64,
    pub source: Source,
    pub appliance_id: String,
    pub event_type: String,
    pub lsid: Option<String>,
    pub timestamp: i64,
    pub fields: BTreeMap<String, String>,
}

/// Marks a due job running, leased by `owner` until `lease_until` (ms), and opens its
/// attempt; `None` if another worker (or engine) got it, or if its stored event cannot
/// be read (the job then fails, saying why).
pub fn claim(
    conn: &mut Connection,
    job_id: i64,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<Claimed>, StoreError> {
    let tx = conn.transaction()?;
    // A job another engine is taking this instant is passed over, not waited for.
    let changed = tx.execute(
        &format!(
            "UPDATE jobs SET state = ?3, attempts = attempts + 1, updated_at = ?2,
                    lease_owner = ?4, lease_until = ?5
             WHERE id = (SELECT id FROM jobs WHERE id = ?1 AND state IN {WAITING_SQL}{})",
            tx.dialect().skip_locked()
        ),
        params![job_id, now, JobState::Running, owner, lease_until],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let (mut claimed, fields) = tx.query_row(
        "SELECT j.id, j.attempts, j.failures, e.id, e.source, e.appliance_id, e.event_type, e.lsid, e.timestamp, e.fields
         FROM jobs j JOIN events e ON e.id = j.event_id WHERE j.id = ?1",
        params![job_id],
        |r| {
            Ok((
                Claimed {
                    job_id: r.get(0)?,
                    owner: owner.to_owned(),
                    attempt_id: 0,
                    attempt: r.get(1)?,
                    failures: r.get(2)?,
                    event_id: r.get(3)?,
                    source: r.get(4)?,
                    appliance_id: r.get(5)?,
                    event_type: r.get(6)?,
                    lsid: r.get(7)?,
                    timestamp: r.get(8)?,
                    fields: BTreeMap::new(),
                },
                r.get::<_, String>(9)?,
            ))
        },
    )?;
    match serde_json::from_str(&fields) {
        Ok(fields) => claimed.fields = fields,
        Err(e) => {
            // Never hand a plugin an event emptied by a damaged row: fail it visibly.
            let reason = format!("the stored event cannot be read (its fields are not valid JSON: {e}); it was not processed");
            tracing::error!(job = job_id, "{reason}");
            tx.execute(
                "UPDATE jobs SET state = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
                params![job_id, JobState::Failed, reason, now],
            )?;
            tx.commit()?;
            return Ok(None);
        }
    }
    tx.execute(
        "INSERT INTO attempts (job_id, number, started_at, outcome) VALUES (?1, ?2, ?3, ?4)",
        params![job_id, claimed.attempt, now, AttemptOutcome::Running],
    )?;
    claimed.attempt_id = tx.last_insert_rowid()?;
    tx.commit()?;
    Ok(Some(claimed))
}

/// An attempt's error as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// The plugin's error kind (`retryable`, `permanent`, `throttled`, ...).
    pub kind: String,
    pub message: String,
}

/// What becomes of a job after an attempt (see `engine::retry::decide`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Succeeded {
        detail: String,
    },
    Skipped {
        reason: String,
    },
    /// Runs again at `at` (ms); the attempt counts against the retry limit.
    Retry {
        at: i64,
        error: JobError,
    },
    /// The remote asked to slow down: the configuration's queue pauses until `until`
    /// (ms) and the attempt counts neither as a run nor as a failure.
    Throttled {
        until: i64,
        error: JobError,
    },
    /// Done trying; `error.message` says why.
    Failed {
        error: JobError,
    },
}

impl Verdict {
    /// The job's state after this verdict.
    pub fn state(&self) -> JobState {
        match self {
            Self::Succeeded { .. } => JobState::Succeeded,
            Self::Skipped { .. } => JobState::Skipped,
            Self::Retry { .. } | Self::Throttled { .. } => JobState::Retrying,
            Self::Failed { .. } => JobState::Failed,
        }
    }

    pub fn error(&self) -> Option<&JobError> {
        match self {
            Self::Retry { error, .. } | Self::Throttled { error, .. } | Self::Failed { error } => {
                Some(error)
            }
            Self::Succeeded { .. } | Self::Skipped { .. } => None,
        }
    }
}

/// Records how an attempt ended and what becomes of its job. False, and nothing
/// written, when the job is no longer this run's: its lease ended (the engine was cut
/// off) and another engine took it over.
pub fn finish(
    conn: &mut Connection,
    claimed: &Claimed,
    verdict: &Verdict,
    now: i64,
) -> Result<bool, StoreError> {
    let (outcome, result, next_attempt_at, failure, uncount) = match verdict {
        Verdict::Succeeded { detail } => (AttemptOutcome::Succeeded, Some(detail), now, 0, 0),
        Verdict::Skipped { reason } => (AttemptOutcome::Skipped, Some(reason), now, 0, 0),
        Verdict::Retry { at, .. } => (AttemptOutcome::Error, None, *at, 1, 0),
        Verdict::Throttled { until, .. } => (AttemptOutcome::Error, None, *until, 0, 1),
        Verdict::Failed { .. } => (AttemptOutcome::Error, None, now, 1, 0),
    };
    let error = verdict.error();
    let tx = conn.transaction()?;
    let changed = tx.execute(
        "UPDATE jobs SET state = ?2, next_attempt_at = ?3, result = ?4, last_error = ?5,
                failures = failures + ?6, attempts = attempts - ?7, updated_at = ?8,
                lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND state = 'running' AND lease_owner = ?9",
        params![
            claimed.job_id,
            verdict.state(),
            next_attempt_at,
            result,
            error.map(|e| &e.message),
            failure,
            uncount,
            now,
            claimed.owner
        ],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    tx.execute(
        "UPDATE attempts SET finished_at = ?2, outcome = ?3, error_kind = ?4, message = COALESCE(?5, ?6) WHERE id = ?1",
        params![
            claimed.attempt_id,
            now,
            outcome,
            error.map(|e| &e.kind),
            error.map(|e| &e.message),
            result
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

/// After a crash or restart: jobs that were running run again.
pub fn recover(conn: &mut Connection, now: i64) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE attempts SET outcome = ?2, finished_at = ?1,
                message = 'the engine stopped during this attempt; it runs again'
         WHERE outcome = 'running'",
        params![now, AttemptOutcome::Interrupted],
    )?;
    let jobs = tx.execute(
        "UPDATE jobs SET state = ?2, next_attempt_at = ?1, updated_at = ?1, lease_owner = NULL, lease_until = NULL
         WHERE state = ?3",
        params![now, JobState::Pending, JobState::Running],
    )?;
    tx.commit()?;
    Ok(jobs)
}

/// Deletes a configuration and, in the same transaction, fails its waiting jobs
/// (visibly, with `reason`) and drops its poll cursor. Jobs running now finish and
/// record their outcome. Returns the jobs failed.
pub fn delete_configuration(
    conn: &mut Connection,
    configuration_id: i64,
    reason: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    if tx.execute(
        "DELETE FROM configurations WHERE id = ?1",
        params![configuration_id],
    )? == 0
    {
        return Err(StoreError::NotFound);
    }
    let failed = tx.execute(
        &format!(
            "UPDATE jobs SET state = ?4, last_error = ?2, updated_at = ?3
             WHERE configuration_id = ?1 AND state IN {WAITING_SQL}"
        ),
        params![configuration_id, reason, now, JobState::Failed],
    )?;
    tx.execute(
        "DELETE FROM poll_cursors WHERE configuration_id = ?1",
        params![configuration_id],
    )?;
    super::bulk::forget_configuration(&tx, configuration_id, now)?;
    tx.commit()?;
    Ok(failed)
}

/// One row of the history.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: i64,
    pub event_id: i64,
    pub configuration_id: Option<i64>,
    pub configuration_name: Option<String>,
    pub source: Source,
    pub appliance_id: String,
    pub event_type: String,
    pub lsid: Option<String>,
    pub state: JobState,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub received_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub number: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: AttemptOutcome,
    pub error_kind: Option<String>,
    pub message: Option<String>,
}

const VIEW_COLUMNS: &str = "j.id, j.event_id, j.configuration_id, j.configuration_name, j.source, e.appliance_id,
    j.event_type, j.lsid, j.state, j.attempts, j.last_error, j.result, j.next_attempt_at, j.received_at, j.updated_at";

fn view(r: &Row<'_>) -> Result<JobView, StoreError> {
    let state: JobState = r.get(8)?;
    let next: i64 = r.get(12)?;
    Ok(JobView {
        id: r.get(0)?,
        event_id: r.get(1)?,
        configuration_id: r.get(2)?,
        configuration_name: r.get(3)?,
        source: r.get(4)?,
        appliance_id: r.get(5)?,
        event_type: r.get(6)?,
        lsid: r.get(7)?,
        next_attempt_at: state.is_waiting().then_some(next),
        state,
        attempts: r.get(9)?,
        last_error: r.get(10)?,
        result: r.get(11)?,
        received_at: r.get(13)?,
        updated_at: r.get(14)?,
    })
}

/// History filters; every one optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub configuration_id: Option<i64>,
    pub state: Option<JobState>,
    pub lsid: Option<String>,
    pub event_type: Option<String>,
    pub source: Option<Source>,
    /// Received at or after (ms).
    pub since: Option<i64>,
    /// Received before (ms).
    pub until: Option<i64>,
    /// Keyset paging: only events older than this one (smaller ids), so that every
    /// event is reached page by page, none twice, however the history grows meanwhile.
    pub before: Option<i64>,
    pub limit: usize,
}

fn list_query(filter: &Filter) -> (String, Vec<Value>) {
    let mut sql =
        format!("SELECT {VIEW_COLUMNS} FROM jobs j JOIN events e ON e.id = j.event_id WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(id) = filter.configuration_id {
        args.push(id.into());
        sql.push_str(&format!(" AND j.configuration_id = ?{}", args.len()));
    }
    if let Some(state) = filter.state {
        args.push(state.as_str().to_owned().into());
        sql.push_str(&format!(" AND j.state = ?{}", args.len()));
    }
    if let Some(lsid) = &filter.lsid {
        args.push(lsid.clone().into());
        sql.push_str(&format!(" AND j.lsid = ?{}", args.len()));
    }
    if let Some(event_type) = &filter.event_type {
        args.push(event_type.clone().into());
        sql.push_str(&format!(" AND j.event_type = ?{}", args.len()));
    }
    if let Some(source) = filter.source {
        args.push(source.as_str().to_owned().into());
        sql.push_str(&format!(" AND j.source = ?{}", args.len()));
    }
    if let Some(before) = filter.before {
        args.push(before.into());
        sql.push_str(&format!(" AND j.id < ?{}", args.len()));
    }
    if let Some(until) = filter.until {
        args.push(until.into());
        sql.push_str(&format!(" AND j.received_at < ?{}", args.len()));
    }
    if let Some(since) = filter.since {
        args.push(since.into());
        // The id bound is exact (the smallest id of any job received since then) and
        // lets the newest-first walk stop there instead of scanning all the history.
        let n = args.len();
        sql.push_str(&format!(
            " AND j.received_at >= ?{n} AND j.id >= (SELECT MIN(id) FROM jobs WHERE received_at >= ?{n})"
        ));
    }
    args.push((filter.limit as i64).into());
    sql.push_str(&format!(" ORDER BY j.id DESC LIMIT ?{}", args.len()));
    (sql, args)
}

pub fn list(conn: &Connection, filter: &Filter) -> Result<Vec<JobView>, StoreError> {
    let (sql, args) = list_query(filter);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(&params_from_iter(&args), view)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, id: i64) -> Result<(JobView, Vec<AttemptView>), StoreError> {
    let job = conn
        .query_row(
            &format!("SELECT {VIEW_COLUMNS} FROM jobs j JOIN events e ON e.id = j.event_id WHERE j.id = ?1"),
            params![id],
            view,
        )
        .optional()?
        .ok_or(StoreError::NotFound)?;
    let mut stmt = conn.prepare_cached(
        "SELECT number, started_at, finished_at, outcome, error_kind, message FROM attempts WHERE job_id = ?1 ORDER BY id",
    )?;
    let attempts = stmt
        .query_map(params![id], |r| {
            Ok(AttemptView {
                number: r.get(0)?,
                started_at: r.get(1)?,
                finished_at: r.get(2)?,
                outcome: r.get(3)?,
                error_kind: r.get(4)?,
                message: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((job, attempts))
}

/// The event's form fields, as received.
pub fn event_fields(
    conn: &Connection,
    event_id: i64,
) -> Result<BTreeMap<String, String>, StoreError> {
    let fields: String = conn.query_row(
        "SELECT fields FROM events WHERE id = ?1",
        params![event_id],
        |r| r.get(0),
    )?;
    serde_json::from_str(&fields).map_err(|source| StoreError::Corrupt {
        what: format!("the fields of event {event_id}"),
        source,
    })
}

/// Why a job cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRetried {
    /// Only failed jobs are retried; this is its state.
    NotFailed(JobState),
    /// Its configuration was deleted (or it was never routed to one).
    NoConfiguration,
}

/// Puts a failed job back in the queue, with a fresh retry budget.
pub fn retry(conn: &Connection, id: i64, now: i64) -> Result<Result<(), NotRetried>, StoreError> {
    let job: Option<(JobState, bool)> = conn
        .query_row(
            "SELECT j.state, EXISTS (SELECT 1 FROM configurations c WHERE c.id = j.configuration_id)
             FROM jobs j WHERE j.id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match job {
        None => Err(StoreError::NotFound),
        Some((state, _)) if state != JobState::Failed => Ok(Err(NotRetried::NotFailed(state))),
        Some((_, false)) => Ok(Err(NotRetried::NoConfiguration)),
        Some(_) => {
            conn.execute(
                "UPDATE jobs SET state = ?3, failures = 0, next_attempt_at = ?2, updated_at = ?2 WHERE id = ?1",
                params![id, now, JobState::Pending],
            )?;
            Ok(Ok(()))
        }
    }
}

/// Jobs removed per prune step: one step holds the database for milliseconds, so
/// intake between steps is never held up by a long history.
pub const PRUNE_BATCH: usize = 500;

/// Removes up to `limit` finished jobs last changed before `before` (ms), with their
/// attempts and the events they leave without jobs. Every lookup is indexed
/// (`jobs_prunable`, `attempts_job`, `jobs_event`), so a step costs the same with ten
/// events stored or ten million. Returns the jobs removed: fewer than `limit` means
/// nothing more is due.
pub fn prune_step(conn: &mut Connection, before: i64, limit: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let due: Vec<(i64, i64)> = {
        // INDEXED BY: fail loudly rather than fall back to a scan if the index went.
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT id, event_id FROM jobs INDEXED BY jobs_prunable
             WHERE state IN {FINISHED_SQL} AND updated_at < ?1
             ORDER BY updated_at LIMIT ?2"
        ))?;

        stmt.query_map(params![before, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?
    };
    {
        let mut delete_job = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
        let mut delete_event = tx.prepare_cached(
            "DELETE FROM events WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM jobs WHERE event_id = ?1)",
        )?;
        for (job_id, _) in &due {
            delete_job.execute(params![job_id])?;
        }
        let mut events: Vec<i64> = due.iter().map(|(_, event)| *event).collect();
        events.sort_unstable();
        events.dedup();
        for event_id in events {
            delete_event.execute(params![event_id])?;
        }
    }
    tx.commit()?;
    Ok(due.len())
}

/// Puts every failed job of a configuration back in the queue, each with a fresh
/// retry budget (the page's "retry all failed"). Returns how many.
pub fn retry_failed(
    conn: &Connection,
    configuration_id: i64,
    now: i64,
) -> Result<usize, StoreError> {
    if !conn.exists(
        "SELECT 1 FROM configurations WHERE id = ?1",
        params![configuration_id],
    )? {
        return Err(StoreError::NotFound);
    }
    conn.execute(
        "UPDATE jobs SET state = ?3, failures = 0, next_attempt_at = ?2, updated_at = ?2
         WHERE configuration_id = ?1 AND state = 'failed'",
        params![configuration_id, now, JobState::Pending],
    )
}

/// Jobs per state of one configuration (or of all), for the history's counts.
pub fn counts_of(
    conn: &Connection,
    configuration_id: Option<i64>,
) -> Result<Vec<(JobState, i64)>, StoreError> {
    let Some(id) = configuration_id else {
        return counts_by_state(conn);
    };
    let mut rows: Vec<(JobState, i64)> = conn.query(
        "SELECT state, COUNT(*) FROM jobs WHERE configuration_id = ?1 GROUP BY state",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    rows.sort();
    Ok(rows)
}

/// Jobs per state, for the metrics.
pub fn counts_by_state(conn: &Connection) -> Result<Vec<(JobState, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    let mut rows = stmt
        .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (crate::store::testing::Guard, Connection) {
        crate::store::testing::connection(crate::store::testing::Backend::Sqlite, &[1, 2])
    }

    fn event(lsid: &str, ts: i64) -> NewEvent {
        NewEvent {
            source: Source::Outbound,
            appliance_id: "Default".into(),
            event_type: "support_conference_end".into(),
            lsid: Some(lsid.into()),
            timestamp: ts,
            fields: BTreeMap::new(),
            dedup_key: Some(format!("{lsid}:{ts}")),
        }
    }

    fn to(config: i64) -> Routing {
        Routing::To(vec![(config, format!("c{config}"))])
    }

    crate::store::on_both_stores! {
        fn a_mixed_batch_is_stored_alike_on_both_servers(conn) {
            let earlier = insert_batch(&mut conn, &[(event("x", 1), to(1))], 5).expect("earlier");
            let Stored::New { event_id: x, .. } = earlier[0] else { panic!("{earlier:?}") };
            let stored = insert_batch(
                &mut conn,
                &[
                    (event("a", 1), Routing::To(vec![(1, "c1".into()), (2, "c2".into())])),
                    (event("b", 1), Routing::Ignored("no configuration takes it".into())),
                    (event("a", 1), to(1)),
                    (event("c", 1), Routing::To(vec![(3, "c3".into())])),
                    (event("x", 1), to(1)),
                ],
                10,
            )
            .expect("stored");
            let Stored::New { event_id: a, jobs: 2 } = stored[0] else { panic!("{stored:?}") };
            assert!(matches!(stored[1], Stored::New { jobs: 0, .. }), "{stored:?}");
            assert_eq!(stored[2], Stored::Duplicate { event_id: a });
            assert!(matches!(stored[3], Stored::New { jobs: 0, .. }), "{stored:?}");
            assert_eq!(stored[4], Stored::Duplicate { event_id: x });
            let jobs: Vec<(Option<i64>, JobState, Option<String>)> = conn
                .query(
                    "SELECT configuration_id, state, last_error FROM jobs WHERE received_at = 10 ORDER BY id",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .expect("jobs");
            assert_eq!(
                jobs,
                vec![
                    (Some(1), JobState::Pending, None),
                    (Some(2), JobState::Pending, None),
                    (None, JobState::Ignored, Some("no configuration takes it".into())),
                    (
                        None,
                        JobState::Ignored,
                        Some("the configuration c3 was deleted as the event arrived".into())
                    ),
                ]
            );
            let ends: Vec<(i64, String)> = conn
                .query(
                    "SELECT configuration_id, lsid FROM session_ends ORDER BY configuration_id, lsid",
                    params![],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("ends");
            assert_eq!(ends, vec![(1, "a".into()), (1, "x".into()), (2, "a".into())]);
        }

        fn a_batch_is_stored_with_its_jobs_and_a_redelivery_once(conn) {
            let stored = insert_batch(
                &mut conn,
                &[
                    (event("a", 1), to(1)),
                    (event("a", 1), to(1)),
                    (event("b", 1), Routing::Ignored("none".into())),
                ],
                10,
            )
            .expect("stored");
            assert_eq!(
                stored[0],
                Stored::New {
                    event_id: 1,
                    jobs: 1
                }
            );
            assert_eq!(stored[1], Stored::Duplicate { event_id: 1 });
            // PostgreSQL spends an id on the refused duplicate; SQLite does not.
            assert!(
                matches!(stored[2], Stored::New { event_id, jobs: 0 } if event_id > 1),
                "{:?}",
                stored[2]
            );
            let counts = counts_by_state(&conn).expect("counts");
            assert_eq!(counts, vec![(JobState::Pending, 1), (JobState::Ignored, 1)]);
        }
    }

    crate::store::on_both_stores! {
        fn a_sessions_later_job_waits_for_the_earlier_one(conn) {
            insert_batch(
                &mut conn,
                &[
                    (event("s", 1), to(1)),
                    (event("s", 2), to(1)),
                    (event("t", 1), to(1)),
                    (event("s", 3), to(2)),
                ],
                10,
            )
            .expect("stored");
            let ids = |due: Vec<Due>| due.iter().map(|d| d.job_id).collect::<Vec<_>>();
            assert_eq!(
                ids(due(&conn, 10, 10).expect("due")),
                vec![1, 3, 4],
                "job 2 waits for job 1; another configuration does not"
            );
            let claimed = claim(&mut conn, 1, "e", 11, i64::MAX).expect("claim").expect("claimed");
            assert_eq!(
                ids(due(&conn, 11, 10).expect("due")),
                vec![3, 4],
                "still waiting while job 1 runs"
            );
            let done = Verdict::Succeeded {
                detail: "ok".into(),
            };
            finish(&mut conn, &claimed, &done, 12).expect("finish");
            assert_eq!(ids(due(&conn, 12, 10).expect("due")), vec![2, 3, 4]);
        }
    }

    crate::store::on_both_stores! {
        fn running_jobs_resume_after_a_crash_and_old_finished_ones_are_pruned(conn) {
            insert_batch(
                &mut conn,
                &[(event("a", 1), to(1)), (event("b", 1), to(1))],
                10,
            )
            .expect("stored");
            let claimed = claim(&mut conn, 1, "e", 11, i64::MAX).expect("claim").expect("claimed");
            assert_eq!(claimed.attempt, 1);
            claim(&mut conn, 2, "e", 11, i64::MAX).expect("claim");
            // Job 2 finishes; the engine dies while job 1 runs.
            let claimed2 = Claimed {
                job_id: 2,
                attempt_id: 2,
                ..claimed.clone()
            };
            let done = Verdict::Succeeded {
                detail: String::new(),
            };
            finish(&mut conn, &claimed2, &done, 12).expect("finish");
            assert_eq!(recover(&mut conn, 20).expect("recover"), 1);
            let (job, attempts) = get(&conn, 1).expect("job");
            assert_eq!(job.state, JobState::Pending);
            assert_eq!(attempts[0].outcome, AttemptOutcome::Interrupted);
            assert_eq!(
                prune_step(&mut conn, 13, PRUNE_BATCH).expect("prune"),
                1,
                "only the finished job"
            );
            assert!(matches!(get(&conn, 2), Err(StoreError::NotFound)));
            assert_eq!(
                conn.query_row("SELECT COUNT(*) FROM events", params![], |r| r.get::<_, i64>(0))
                    .expect("count"),
                1
            );
        }
    }

    crate::store::on_both_stores! {
        fn an_event_routed_to_a_configuration_deleted_before_its_commit_takes_no_job(conn) {
            insert_batch(&mut conn, &[(event("a", 1), to(1))], 10).expect("stored");
            assert_eq!(
                delete_configuration(&mut conn, 1, "the configuration was deleted", 11)
                    .expect("deleted"),
                1,
                "its waiting job fails in the delete's transaction"
            );
            // Intake routed this event while configuration 1 still existed.
            let stored = insert_batch(
                &mut conn,
                &[(
                    event("b", 1),
                    Routing::To(vec![(1, "c1".into()), (2, "c2".into())]),
                )],
                12,
            )
            .expect("stored");
            assert_eq!(
                stored[0],
                Stored::New {
                    event_id: 2,
                    jobs: 1
                }
            );
            let late = insert_batch(&mut conn, &[(event("c", 1), to(1))], 13).expect("stored");
            assert_eq!(
                late[0],
                Stored::New {
                    event_id: 3,
                    jobs: 0
                }
            );
            let jobs: Vec<(Option<i64>, JobState, Option<String>)> = conn
                .prepare("SELECT configuration_id, state, last_error FROM jobs ORDER BY id")
                .expect("prepare")
                .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            assert_eq!(
                jobs,
                vec![
                    (
                        Some(1),
                        JobState::Failed,
                        Some("the configuration was deleted".to_owned())
                    ),
                    (Some(2), JobState::Pending, None),
                    (
                        None,
                        JobState::Ignored,
                        Some("the configuration c1 was deleted as the event arrived".to_owned())
                    ),
                ]
            );
            assert_eq!(
                retry(&conn, 1, 14).expect("retry"),
                Err(NotRetried::NoConfiguration),
                "a deleted configuration's failed event cannot run through another"
            );
        }
    }

    #[test]
    fn pruning_goes_in_bounded_indexed_steps() {
        let (_dir, mut conn) = store();
        let batch: Vec<_> = (0..1_200)
            .map(|i| (event(&format!("s{i}"), i), to(1)))
            .collect();
        insert_batch(&mut conn, &batch, 10).expect("stored");
        conn.execute("UPDATE jobs SET state = 'succeeded'", params![])
            .expect("finish all");
        assert_eq!(prune_step(&mut conn, 11, 500).expect("step"), 500);
        assert_eq!(prune_step(&mut conn, 11, 500).expect("step"), 500);
        assert_eq!(prune_step(&mut conn, 11, 500).expect("step"), 200);
        assert_eq!(prune_step(&mut conn, 11, 500).expect("step"), 0);
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", params![], |r| r.get(0))
            .expect("count");
        assert_eq!(left, 0, "events left without jobs go with them");
        // Every lookup a step makes is served by an index, never a scan of jobs.
        for sql in [
            "SELECT id, event_id FROM jobs INDEXED BY jobs_prunable
             WHERE state IN ('succeeded', 'skipped', 'failed', 'ignored') AND updated_at < 1
             ORDER BY updated_at LIMIT 10",
            "SELECT 1 FROM jobs WHERE event_id = 1",
            "SELECT 1 FROM attempts WHERE job_id = 1",
            "SELECT 1 FROM attempts WHERE outcome = 'running'",
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map(params![], |r| r.get::<_, String>(3))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            // A scan is fine only of a partial index, which holds just the rows wanted.
            let partial = ["INDEX jobs_prunable", "INDEX attempts_running"];
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN")
                    || partial.iter().any(|index| step.contains(index))),
                "{sql}: {plan:?}"
            );
        }
    }

    #[test]
    fn every_history_filter_is_served_by_an_index() {
        let (_dir, conn) = store();
        let filters = [
            Filter {
                configuration_id: Some(1),
                ..Filter::default()
            },
            Filter {
                state: Some(JobState::Failed),
                ..Filter::default()
            },
            Filter {
                lsid: Some("s".into()),
                ..Filter::default()
            },
            Filter {
                since: Some(5),
                ..Filter::default()
            },
            Filter {
                event_type: Some("support_conference_end".into()),
                ..Filter::default()
            },
            Filter {
                source: Some(Source::Backfill),
                ..Filter::default()
            },
            Filter {
                before: Some(100),
                ..Filter::default()
            },
        ];
        for filter in filters {
            let (sql, args) = list_query(&Filter {
                limit: 10,
                ..filter.clone()
            });
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map(&params_from_iter(&args), |r| r.get::<_, String>(3))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            let jobs_step = plan
                .iter()
                .find(|step| step.contains(" j "))
                .cloned()
                .unwrap_or_default();
            assert!(
                jobs_step.starts_with("SEARCH j USING"),
                "{filter:?}: {plan:?}"
            );
        }
    }
}
