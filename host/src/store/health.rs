//! A configuration's health, read from its jobs and its polling cursor: what an
//! admin checks first (and what alerts will watch). Every lookup is bounded: the
//! newest success and failure walk the configuration's history index from its end;
//! the counts and the oldest waiting event look only at unfinished and failed jobs.

use serde::Serialize;

use super::db::{params, Connection, OptionalExtension};
use super::kinds::JobState;
use super::StoreError;

/// As stored; the engine adds what only it knows (a throttle pause).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StoredHealth {
    /// ms
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub last_failure_error: Option<String>,
    pub pending: i64,
    pub running: i64,
    pub retrying: i64,
    pub failed: i64,
    /// When the oldest event still waiting (pending, running or retrying) arrived (ms).
    pub oldest_waiting_at: Option<i64>,
    pub last_poll_at: Option<i64>,
    pub last_poll_error: Option<String>,
}

pub fn of(conn: &Connection, configuration_id: i64) -> Result<StoredHealth, StoreError> {
    let newest = |state: JobState| -> Result<Option<(i64, Option<String>)>, StoreError> {
        conn.query_row(
            "SELECT updated_at, last_error FROM jobs WHERE configuration_id = ?1 AND state = ?2
             ORDER BY id DESC LIMIT 1",
            params![configuration_id, state],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    };
    let success = newest(JobState::Succeeded)?;
    let failure = newest(JobState::Failed)?;
    let mut health = StoredHealth {
        last_success_at: success.map(|(at, _)| at),
        last_failure_at: failure.as_ref().map(|(at, _)| *at),
        last_failure_error: failure.and_then(|(_, e)| e),
        ..StoredHealth::default()
    };
    let counts: Vec<(JobState, i64)> = conn.query(
        "SELECT state, COUNT(*) FROM jobs
         WHERE configuration_id = ?1 AND state IN ('pending', 'running', 'retrying', 'failed')
         GROUP BY state",
        params![configuration_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (state, n) in counts {
        match state {
            JobState::Pending => health.pending = n,
            JobState::Running => health.running = n,
            JobState::Retrying => health.retrying = n,
            JobState::Failed => health.failed = n,
            _ => {}
        }
    }
    health.oldest_waiting_at = conn
        .query_row(
            "SELECT MIN(received_at) FROM jobs
             WHERE configuration_id = ?1 AND state IN ('pending', 'running', 'retrying')",
            params![configuration_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    if let Some((at, error)) = conn
        .query_row(
            "SELECT last_poll_at, last_error FROM poll_cursors WHERE configuration_id = ?1",
            params![configuration_id],
            |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<String>>(1)?)),
        )
        .optional()?
    {
        health.last_poll_at = at;
        health.last_poll_error = error;
    }
    Ok(health)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{self, NewEvent, Routing, Source, Verdict};

    crate::store::on_both_stores! {
        fn health_counts_the_waiting_and_failed_and_names_the_last_of_each(conn) {
            assert_eq!(of(&conn, 1).expect("empty"), StoredHealth::default());
            let event = |lsid: &str| NewEvent {
                source: Source::Outbound,
                appliance_id: "Default".into(),
                event_type: "support_conference_end".into(),
                lsid: Some(lsid.into()),
                timestamp: 1,
                fields: Default::default(),
                dedup_key: Some(lsid.into()),
            };
            let to = || Routing::To(vec![(1, "c1".into())]);
            events::insert_batch(&mut conn, &[(event("a"), to()), (event("b"), to()), (event("c"), to())], 100)
                .expect("insert");
            let a = events::claim(&mut conn, 1, "e", 110, i64::MAX).expect("claim").expect("a");
            events::finish(&mut conn, &a, &Verdict::Succeeded { detail: "ok".into() }, 120).expect("finish");
            let b = events::claim(&mut conn, 2, "e", 130, i64::MAX).expect("claim").expect("b");
            let error = events::JobError { kind: "permanent".into(), message: "no such case".into() };
            events::finish(&mut conn, &b, &Verdict::Failed { error }, 140).expect("finish");
            events::poll_failed(&conn, 1, "the appliance did not answer", 150).expect("poll");
            let health = of(&conn, 1).expect("health");
            assert_eq!(
                health,
                StoredHealth {
                    last_success_at: Some(120),
                    last_failure_at: Some(140),
                    last_failure_error: Some("no such case".into()),
                    pending: 1,
                    running: 0,
                    retrying: 0,
                    failed: 1,
                    oldest_waiting_at: Some(100),
                    last_poll_at: Some(150),
                    last_poll_error: Some("the appliance did not answer".into()),
                }
            );
            assert_eq!(of(&conn, 2).expect("another").pending, 0);
        }
    }
}
