//! Reconciliation and backfill: the engine asks a configuration's plugin which
//! sessions ended in a window (one listing call), and queues those the configuration
//! never took. Reconciliation runs every `reconcile_interval_minutes`; a backfill runs
//! once over a range an admin asked for, a chunk at a time, and survives restarts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use plugin_api::{EndedSessionsRequest, ErrorKind};

use super::Engine;
use crate::configurations::Target;
use crate::store::bulk::{self, BackfillView, ConfigurationRef};
use crate::store::{now_ms, StoreError};

/// How far back each reconciliation looks before where the last one stopped, for
/// sessions the appliance reports late.
const RECONCILE_OVERLAP_S: i64 = 600;
/// How often the loops look for work.
const BULK_TICK: Duration = Duration::from_secs(1);
/// A backfill lists its range this much at a time.
const BACKFILL_CHUNK_S: i64 = 86_400;
/// A backfill lists no further while this many of its events wait: the queue stays
/// small and a cancel stops most of the work.
const BACKFILL_QUEUE_CAP: i64 = 1_000;
/// After a listing failed for a passing reason, a backfill waits this long.
const BACKFILL_RETRY: Duration = Duration::from_secs(30);

fn configuration_ref(target: &Target) -> ConfigurationRef {
    ConfigurationRef {
        id: target.id,
        name: target.name.clone(),
        appliance_id: target.policy.appliance_id.clone(),
    }
}

/// Why a backfill cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("no configuration has the id {0}")]
    NoConfiguration(i64),
    #[error("the configuration {0:?} is disabled or not running: enable it first")]
    NotRunning(String),
    #[error("the plugin of {0:?} cannot list ended sessions, which a backfill needs")]
    Unsupported(String),
    #[error("the range is empty: since must be before until")]
    EmptyRange,
    #[error("the range starts in the future")]
    Future,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reconciliation asked for now did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// As for a backfill: no such configuration, not running, not supported.
    #[error(transparent)]
    Cannot(BackfillError),
    /// The plugin's listing or the store failed; the message says which.
    #[error("the reconciliation failed: {0}")]
    Failed(String),
}

impl Engine {
    /// Starts a backfill of the sessions that ended at or after `since` and before
    /// `until` (Unix seconds); the backfill loop does the work.
    pub async fn start_backfill(
        &self,
        configuration_id: i64,
        since: i64,
        until: i64,
    ) -> Result<i64, BackfillError> {
        let now = now_ms();
        if since >= until {
            return Err(BackfillError::EmptyRange);
        }
        if since > now / 1000 {
            return Err(BackfillError::Future);
        }
        let target = self.listing_target(configuration_id).await?;
        let configuration = configuration_ref(&target);
        // Up to this moment, the current second included.
        let until = until.min(now / 1000 + 1);
        let id = self
            .store
            .call(move |conn| bulk::create_backfill(conn, &configuration, since, until, now))
            .await?;
        tracing::info!(configuration = %target.name, backfill = id, since, until, "backfill started");
        self.bulk_wakeup.notify_one();
        Ok(id)
    }

    /// The running configuration whose plugin lists ended sessions, or why not:
    /// what a backfill and a reconciliation asked for now both need.
    async fn listing_target(&self, configuration_id: i64) -> Result<Target, BackfillError> {
        let Some(target) = self.configurations.live().target(configuration_id).await else {
            return Err(match self.configurations.get(configuration_id).await {
                Ok(configuration) => BackfillError::NotRunning(configuration.name),
                Err(_) => BackfillError::NoConfiguration(configuration_id),
            });
        };
        match &target.runner {
            None => Err(BackfillError::NotRunning(target.name)),
            Some(runner) if !runner.lists_ended_sessions() => {
                Err(BackfillError::Unsupported(target.name))
            }
            Some(_) => Ok(target),
        }
    }

    pub async fn backfill(&self, id: i64) -> Result<BackfillView, StoreError> {
        self.store
            .read(move |conn| bulk::backfill(conn, id, now_ms()))
            .await
    }

    pub async fn backfills_of(
        &self,
        configuration_id: i64,
    ) -> Result<Vec<BackfillView>, StoreError> {
        self.store
            .read(move |conn| bulk::backfills_of(conn, configuration_id, now_ms()))
            .await
    }

    /// Cancels a running backfill; false when it had already ended.
    pub async fn cancel_backfill(&self, id: i64) -> Result<bool, StoreError> {
        let cancelled = self
            .store
            .call(move |conn| bulk::cancel_backfill(conn, id, now_ms()))
            .await?;
        if cancelled {
            tracing::info!(backfill = id, "backfill cancelled");
        }
        Ok(cancelled)
    }

    pub async fn reconcile_state(
        &self,
        configuration_id: i64,
    ) -> Result<Option<bulk::ReconcileState>, StoreError> {
        self.store
            .read(move |conn| bulk::reconcile_state(conn, configuration_id))
            .await
    }

    /// Runs each reconciling configuration once per interval: the first run one
    /// interval after it is created or enabled, and after a restart one interval after
    /// its last run (never at start-up).
    pub(super) async fn reconcile_loop(self: Arc<Self>) {
        let mut next_run: HashMap<i64, i64> = HashMap::new();
        let mut first_pass = true;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let targets = self.configurations.live().reconcilers().await;
            // A configuration disabled (or deleted) is forgotten: enabled again, it
            // waits an interval.
            next_run.retain(|id, _| targets.iter().any(|t| t.id == *id));
            for lease in self.held_of("reconcile:") {
                if !targets.iter().any(|t| reconcile_lease(t.id) == lease) {
                    self.let_go(&lease).await;
                }
            }
            for target in targets {
                let Some(interval) = target.policy.reconcile_interval else {
                    continue;
                };
                let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
                let now = now_ms();
                let next = match next_run.get(&target.id) {
                    Some(next) => *next,
                    None => {
                        let id = target.id;
                        let covered =
                            (target.created_at / 1000).max(now / 1000 - interval_ms / 1000);
                        let state = match self
                            .store
                            .call(move |conn| bulk::start_reconciling(conn, id, covered, now))
                            .await
                        {
                            Ok(state) => state,
                            Err(e) => {
                                tracing::error!(configuration = %target.name, "cannot read the reconciliation state: {e}");
                                continue;
                            }
                        };
                        let next = first_run(state.last_run_at, interval_ms, now, first_pass);
                        next_run.insert(target.id, next);
                        next
                    }
                };
                if next <= now {
                    // One engine reconciles a configuration at a time, and a run another
                    // engine made counts: the next is one interval after it.
                    if !self.hold(reconcile_lease(target.id)).await {
                        continue;
                    }
                    let id = target.id;
                    if let Ok(Some(state)) = self
                        .store
                        .read(move |conn| bulk::reconcile_state(conn, id))
                        .await
                    {
                        if state.runs > 0 && state.last_run_at.saturating_add(interval_ms) > now {
                            next_run
                                .insert(target.id, state.last_run_at.saturating_add(interval_ms));
                            continue;
                        }
                    }
                    let _ = self.reconcile(&target).await;
                    next_run.insert(target.id, now_ms().saturating_add(interval_ms));
                }
            }
            first_pass = false;
            tokio::time::sleep(BULK_TICK).await;
        }
    }

    /// Reconciles one configuration now (the admin's "run now"); its next scheduled
    /// run stays where it was. Returns the sessions found ended and those queued.
    pub async fn reconcile_now(
        &self,
        configuration_id: i64,
    ) -> Result<(usize, usize), ReconcileError> {
        let target = self
            .listing_target(configuration_id)
            .await
            .map_err(ReconcileError::Cannot)?;
        let (id, now) = (target.id, now_ms());
        let covered = target.created_at / 1000;
        self.store
            .call(move |conn| bulk::start_reconciling(conn, id, covered, now))
            .await
            .map_err(|e| ReconcileError::Cannot(e.into()))?;
        self.reconcile(&target)
            .await
            .map_err(ReconcileError::Failed)
    }

    /// One reconciliation of one configuration: (found, queued), or why it failed.
    async fn reconcile(&self, target: &Target) -> Result<(usize, usize), String> {
        let runner = target
            .runner
            .clone()
            .ok_or_else(|| format!("the configuration {:?} is not running", target.name))?;
        let id = target.id;
        let state = self
            .store
            .read(move |conn| bulk::reconcile_state(conn, id))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no reconciliation state".to_owned())?;
        // Up to this moment: the current second included.
        let until = now_ms() / 1000 + 1;
        let since = (state.covered_until - RECONCILE_OVERLAP_S).max(target.created_at / 1000);
        let result = runner
            .ended_sessions(EndedSessionsRequest { since, until })
            .await;
        let configuration = configuration_ref(target);
        let outcome = match result {
            Ok(found) => {
                let sessions = found.sessions;
                let count = sessions.len();
                self.store
                    .call(move |conn| {
                        bulk::record_reconciliation(
                            conn,
                            &configuration,
                            &sessions,
                            until,
                            now_ms(),
                        )
                    })
                    .await
                    .map(|queued| (count, queued))
                    .map_err(|e| format!("cannot record the reconciliation: {e}"))
            }
            Err(e) => {
                let message = e.message;
                let _ = self
                    .store
                    .call({
                        let message = message.clone();
                        move |conn| bulk::reconciliation_failed(conn, id, &message, now_ms())
                    })
                    .await;
                Err(message)
            }
        };
        match &outcome {
            Ok((found, queued)) => {
                self.metrics.reconciled(Some(*queued));
                tracing::info!(configuration = %target.name, since, until, found, queued, "reconciled");
                if *queued > 0 {
                    self.wake();
                }
            }
            Err(e) => {
                self.metrics.reconciled(None);
                tracing::warn!(configuration = %target.name, "reconciliation failed (tried again one interval later): {e}");
            }
        }
        outcome
    }

    /// Moves every running backfill on by a chunk, and ends those that are done.
    pub(super) async fn backfill_loop(self: Arc<Self>) {
        let mut not_before: HashMap<i64, std::time::Instant> = HashMap::new();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let running = self
                .store
                .read(|conn| bulk::running_backfills(conn, now_ms()))
                .await;
            let mut busy = false;
            match running {
                Ok(running) => {
                    for lease in self.held_of("backfill:") {
                        if !running.iter().any(|b| backfill_lease(b.id) == lease) {
                            self.let_go(&lease).await;
                        }
                    }
                    for backfill in running {
                        // Each backfill moves on one engine at a time.
                        if !self.hold(backfill_lease(backfill.id)).await {
                            continue;
                        }
                        if not_before
                            .get(&backfill.id)
                            .is_some_and(|at| std::time::Instant::now() < *at)
                        {
                            continue;
                        }
                        match self.backfill_step(&backfill).await {
                            Step::Listed => busy = true,
                            Step::Wait => {}
                            Step::RetryLater => {
                                not_before.insert(
                                    backfill.id,
                                    std::time::Instant::now() + BACKFILL_RETRY,
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::error!("cannot read the running backfills: {e}"),
            }
            if !busy {
                let _ = tokio::time::timeout(BULK_TICK, self.bulk_wakeup.notified()).await;
            }
        }
    }

    async fn backfill_step(&self, backfill: &BackfillView) -> Step {
        let id = backfill.id;
        if backfill.is_listed() {
            match self
                .store
                .call(move |conn| bulk::finish_backfill_if_done(conn, id, now_ms()))
                .await
            {
                Ok(true) => {
                    tracing::info!(backfill = id, configuration = %backfill.configuration_name, "backfill done")
                }
                Ok(false) => {}
                Err(e) => tracing::error!(backfill = id, "cannot end the backfill: {e}"),
            }
            return Step::Wait;
        }
        if backfill.queued >= BACKFILL_QUEUE_CAP {
            return Step::Wait;
        }
        // Disabled: the backfill waits until its configuration is enabled again.
        let Some(target) = self
            .configurations
            .live()
            .target(backfill.configuration_id)
            .await
        else {
            return Step::Wait;
        };
        let Some(runner) = target.runner.clone() else {
            return Step::Wait;
        };
        if !runner.lists_ended_sessions() {
            let _ = self
                .store
                .call(move |conn| {
                    bulk::fail_backfill(conn, id, "the plugin cannot list ended sessions", now_ms())
                })
                .await;
            return Step::Wait;
        }
        let since = backfill.next_from;
        let until = (since + BACKFILL_CHUNK_S).min(backfill.until);
        match runner
            .ended_sessions(EndedSessionsRequest { since, until })
            .await
        {
            Ok(found) => {
                let configuration = configuration_ref(&target);
                let sessions = found.sessions;
                let recorded = self
                    .store
                    .call(move |conn| {
                        bulk::record_backfill_chunk(
                            conn,
                            id,
                            &configuration,
                            &sessions,
                            until,
                            now_ms(),
                        )
                    })
                    .await;
                match recorded {
                    Ok((queued, already)) => {
                        self.metrics.backfilled(queued);
                        tracing::info!(backfill = id, configuration = %target.name, since, until, queued, already_imported = already, "backfill listed a chunk");
                        if queued > 0 {
                            self.wake();
                        }
                        Step::Listed
                    }
                    Err(e) => {
                        tracing::error!(backfill = id, "cannot record a backfill chunk: {e}");
                        Step::RetryLater
                    }
                }
            }
            Err(e) if e.kind.is_transient() || e.kind == ErrorKind::Panicked => {
                tracing::warn!(backfill = id, configuration = %target.name, "backfill listing failed (tried again in {} s): {e}", BACKFILL_RETRY.as_secs());
                Step::RetryLater
            }
            Err(e) => {
                tracing::error!(backfill = id, configuration = %target.name, "backfill failed: {e}");
                let message = e.message;
                let _ = self
                    .store
                    .call(move |conn| bulk::fail_backfill(conn, id, &message, now_ms()))
                    .await;
                Step::Wait
            }
        }
    }
}

/// The lease of a configuration's reconciliation.
fn reconcile_lease(configuration_id: i64) -> String {
    format!("reconcile:{configuration_id}")
}

/// The lease of one backfill.
fn backfill_lease(backfill_id: i64) -> String {
    format!("backfill:{backfill_id}")
}

/// When a configuration first seen by the loop reconciles (ms): one interval after
/// its last run when the engine has just started and that is still ahead (never at
/// start-up), else one interval from now (just created, enabled, or long stopped).
fn first_run(last_run_at: i64, interval_ms: i64, now: i64, at_start: bool) -> i64 {
    let after_last = last_run_at.saturating_add(interval_ms);
    if at_start && after_last > now {
        after_last
    } else {
        now.saturating_add(interval_ms)
    }
}

/// What a backfill step did.
enum Step {
    /// Listed a chunk: look again at once.
    Listed,
    /// Nothing to do now.
    Wait,
    /// A passing failure: wait a while.
    RetryLater,
}

#[cfg(test)]
mod tests {
    use super::first_run;

    #[test]
    fn the_first_run_is_an_interval_away_and_never_at_start_up() {
        let hour = 3_600_000;
        let now = 100 * hour;
        // (last run, at start-up) -> next run
        let cases = [
            // Restarted ten minutes after the last run: one interval after it.
            (now - hour / 6, true, now - hour / 6 + hour),
            // Stopped for three hours: not at start-up, one interval from now.
            (now - 3 * hour, true, now + hour),
            // Just created (its state was made now): one interval from now.
            (now, false, now + hour),
            // Enabled again after a short while disabled: one interval from now.
            (now - hour / 6, false, now + hour),
        ];
        for (last, at_start, expected) in cases {
            assert_eq!(
                first_run(last, hour, now, at_start),
                expected,
                "{last} {at_start}"
            );
        }
    }
}
