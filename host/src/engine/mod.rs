//! The engine: hands queued jobs to plugin instances (one session's jobs in order,
//! different sessions in parallel, bounded per configuration), applies each
//! configuration's retry policy, pauses a throttled configuration's queue, polls
//! appliances, and prunes old history.

pub mod bulk;
pub mod cluster;
pub mod health;
mod polling;
pub mod retry;
mod wakeup;

pub use wakeup::Wakeup;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugin_api::{ErrorKind, Event, PluginError};
use tokio::sync::Notify;

use crate::configurations::Configurations;
use crate::metrics::Metrics;
use crate::settings::HostSettings;
use crate::store::events::{self, Claimed, Verdict};
use crate::store::{now_ms, Store};
use retry::Backoff;

/// Jobs looked at per dispatch round.
const DUE_BATCH: usize = 256;
/// The dispatcher looks again at least this often, whatever wakes it.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often finished history past the retention is removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The pause between two prune steps, which leaves the database to intake.
const PRUNE_PAUSE: Duration = Duration::from_millis(20);
/// Reconciled and backfilled events go to the plugin this many at a time.
const BULK_BATCH: usize = 20;

pub struct Engine {
    store: Store,
    configurations: Arc<Configurations>,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    concurrency: usize,
    retention: Duration,
    wakeup: Arc<Wakeup>,
    state: Mutex<DispatchState>,
    in_flight: AtomicUsize,
    idle: Notify,
    stopping: AtomicBool,
    /// Wakes the backfill loop when a backfill starts.
    bulk_wakeup: Notify,
    /// This engine on the database: its id, its leases.
    identity: cluster::Identity,
}

#[derive(Default)]
struct DispatchState {
    /// Jobs running per configuration.
    running: HashMap<i64, usize>,
    /// Throttled configurations and until when (ms).
    paused_until: HashMap<i64, i64>,
    /// Configurations being polled right now.
    polling: HashSet<i64>,
    /// When each configuration last polled (ms), this run.
    last_poll: HashMap<i64, i64>,
}

impl Engine {
    pub fn new(
        store: Store,
        configurations: Arc<Configurations>,
        metrics: Arc<Metrics>,
        wakeup: Arc<Wakeup>,
        settings: &HostSettings,
    ) -> Arc<Self> {
        let store_shared = store.is_shared();
        Arc::new(Self {
            store,
            configurations,
            metrics,
            backoff: Backoff {
                min: settings.retry_backoff_min,
                max: settings.retry_backoff_max,
            },
            concurrency: settings.plugin_concurrency,
            retention: settings.retention,
            wakeup,
            state: Mutex::new(DispatchState::default()),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            stopping: AtomicBool::new(false),
            bulk_wakeup: Notify::new(),
            identity: cluster::Identity::new(settings.lease, store_shared),
        })
    }

    /// Whether the engine is stopping (its loops end).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Something may be due now: look again.
    pub fn wake(&self) {
        self.wakeup.work_arrived();
    }

    /// Lets configurations changed since the last look poll at once (a new or
    /// changed configuration need not wait an interval).
    fn forget_polls_of_changed(&self) {
        let changed = self.wakeup.take_changed();
        if !changed.is_empty() {
            let mut state = self.lock();
            for id in changed {
                state.last_poll.remove(&id);
            }
        }
    }

    /// Puts jobs that were running when the engine last stopped back in the queue,
    /// then starts dispatching, polling and pruning. On a shared store the jobs left
    /// running belong to other engines (or to this one's last run, see `register`):
    /// they come back when their leases end.
    pub async fn start(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        let recovered = if self.identity.shared {
            0
        } else {
            self.store
                .call(|conn| events::recover(conn, now_ms()))
                .await?
        };
        if recovered > 0 {
            tracing::warn!(
                jobs = recovered,
                "resuming jobs interrupted by the last stop"
            );
        }
        tokio::spawn(Arc::clone(self).dispatch_loop());
        tokio::spawn(Arc::clone(self).poll_loop());
        tokio::spawn(Arc::clone(self).prune_loop());
        tokio::spawn(Arc::clone(self).reconcile_loop());
        tokio::spawn(Arc::clone(self).backfill_loop());
        Ok(())
    }

    /// Stops taking new jobs and waits up to `grace` for those in flight.
    pub async fn drain(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake();
        let deadline = Instant::now() + grace;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), idle)
                .await
                .is_err()
            {
                tracing::warn!(
                    jobs = self.in_flight.load(Ordering::SeqCst),
                    "jobs still running at shutdown; they run again at the next start"
                );
                break;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DispatchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn dispatch_loop(self: Arc<Self>) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let wait = match self.dispatch_round().await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::error!("dispatch failed: {e}");
                    IDLE_TICK
                }
            };
            self.wakeup.wait(wait).await;
        }
    }

    /// Starts every job that may run now; returns how long to wait before looking again.
    async fn dispatch_round(self: &Arc<Self>) -> Result<Duration, crate::store::StoreError> {
        let now = now_ms();
        let due = self
            .store
            .read(move |conn| events::due(conn, now, DUE_BATCH))
            .await?;
        // Live events come first (`due` orders them so); bulk ones (reconciled,
        // backfilled) are gathered per configuration into batches.
        let mut batches: HashMap<i64, Vec<i64>> = HashMap::new();
        for job in due {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            if job.bulk {
                let batch = batches.entry(job.configuration_id).or_default();
                if batch.len() < BULK_BATCH {
                    batch.push(job.job_id);
                }
                continue;
            }
            let Some(target) = self.slot_for(job.configuration_id, now, false).await else {
                continue;
            };
            let (owner, lease_until) = (
                self.identity.id.clone(),
                self.identity.lease_until(now_ms()),
            );
            let claimed = self
                .store
                .call(move |conn| events::claim(conn, job.job_id, &owner, now_ms(), lease_until))
                .await;
            match claimed {
                Ok(Some(claimed)) => {
                    self.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(Arc::clone(self).run(target, claimed));
                }
                other => {
                    self.release(job.configuration_id);
                    other?;
                }
            }
        }
        for (configuration_id, job_ids) in batches {
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Some(target) = self.slot_for(configuration_id, now, true).await else {
                continue;
            };
            let (owner, lease_until) = (
                self.identity.id.clone(),
                self.identity.lease_until(now_ms()),
            );
            let claimed = self
                .store
                .call(move |conn| {
                    let mut claimed = Vec::with_capacity(job_ids.len());
                    for id in job_ids {
                        if let Some(job) = events::claim(conn, id, &owner, now_ms(), lease_until)? {
                            claimed.push(job);
                        }
                    }
                    Ok(claimed)
                })
                .await;
            match claimed {
                Ok(claimed) if !claimed.is_empty() => {
                    self.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(Arc::clone(self).run_batch(target, claimed));
                }
                other => {
                    self.release(configuration_id);
                    other?;
                }
            }
        }
        let next = self.store.read(events::next_due_at).await?;
        let pause_end = self
            .lock()
            .paused_until
            .values()
            .copied()
            .filter(|t| *t > now)
            .min();
        let soonest = [next, pause_end].into_iter().flatten().min();
        Ok(match soonest {
            Some(at) if at > now => {
                Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(IDLE_TICK)
            }
            Some(_) => Duration::from_millis(50).min(IDLE_TICK),
            None => IDLE_TICK,
        })
    }

    /// Takes one of the configuration's call slots, when it is enabled, not paused
    /// and not at its concurrency. Bulk work never takes the last slot (when there is
    /// more than one), so live events are never starved by a backfill.
    async fn slot_for(
        &self,
        configuration_id: i64,
        now: i64,
        bulk: bool,
    ) -> Option<crate::configurations::Target> {
        // Disabled: its jobs wait until it is enabled again.
        let target = self.configurations.live().target(configuration_id).await?;
        let mut state = self.lock();
        if state
            .paused_until
            .get(&configuration_id)
            .is_some_and(|until| *until > now)
        {
            return None;
        }
        let limit = if bulk && self.concurrency > 1 {
            self.concurrency - 1
        } else {
            self.concurrency
        };
        let running = state.running.entry(configuration_id).or_default();
        if *running >= limit {
            return None;
        }
        *running += 1;
        Some(target)
    }

    fn release(&self, configuration_id: i64) {
        let mut state = self.lock();
        if let Some(running) = state.running.get_mut(&configuration_id) {
            *running = running.saturating_sub(1);
        }
    }

    async fn run(self: Arc<Self>, target: crate::configurations::Target, job: Claimed) {
        let event = plugin_event(&job);
        let started = Instant::now();
        let result = match &target.runner {
            Some(runner) => runner.handle_event(event).await,
            None => Err(not_running(&target)),
        };
        self.metrics.plugin_call(&target.name, started.elapsed());
        self.settle(&target, job, result).await;
        self.done(target.id);
    }

    /// Runs bulk jobs of one configuration in one plugin call; each job's result is
    /// settled on its own, as if it had run alone.
    async fn run_batch(self: Arc<Self>, target: crate::configurations::Target, jobs: Vec<Claimed>) {
        let events: Vec<Event> = jobs.iter().map(plugin_event).collect();
        let started = Instant::now();
        let results = match &target.runner {
            Some(runner) => runner.handle_batch(events).await,
            None => jobs.iter().map(|_| Err(not_running(&target))).collect(),
        };
        self.metrics.plugin_call(&target.name, started.elapsed());
        for (job, result) in jobs.into_iter().zip(results) {
            self.settle(&target, job, result).await;
        }
        self.done(target.id);
    }

    /// One call finished: its slot is free, and the dispatcher looks again.
    fn done(&self, configuration_id: i64) {
        self.release(configuration_id);
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
        self.wake();
    }

    /// Applies the retry policy to one job's result and records it.
    async fn settle(
        &self,
        target: &crate::configurations::Target,
        job: Claimed,
        result: Result<plugin_api::Outcome, PluginError>,
    ) {
        let source = job.source.to_plugin();
        let attempt = retry::Attempt {
            source,
            event_type: &job.event_type,
            failures_before: job.failures,
            now: now_ms(),
        };
        let verdict = retry::decide(
            &result,
            &target.policy,
            &attempt,
            &self.backoff,
            random_unit(),
        );
        match &verdict {
            Verdict::Throttled { until, .. } => {
                tracing::warn!(configuration = %target.name, "throttled: pausing this configuration's queue for {} ms", until - now_ms());
                self.lock().paused_until.insert(target.id, *until);
            }
            Verdict::Retry { .. } => self.metrics.retry_scheduled(&target.name),
            _ => {}
        }
        let state = verdict.state();
        match &verdict {
            Verdict::Succeeded { detail: text } | Verdict::Skipped { reason: text } => {
                tracing::info!(
                    configuration = %target.name, event = %job.event_type, lsid = ?job.lsid,
                    %state, "{text}"
                )
            }
            Verdict::Retry { error, .. }
            | Verdict::Throttled { error, .. }
            | Verdict::Failed { error } => tracing::warn!(
                configuration = %target.name, event = %job.event_type, lsid = ?job.lsid,
                attempt = job.attempt, %state, "{}: {}", error.kind, error.message
            ),
        }
        let job_id = job.job_id;
        let saved = self
            .store
            .call(move |conn| events::finish(conn, &job, &verdict, now_ms()))
            .await;
        match saved {
            Ok(true) => {}
            // Cut off past the lease: another engine took the job over and its run is
            // the one recorded (this call was in flight at the takeover).
            Ok(false) => tracing::warn!(
                configuration = %target.name, job = job_id,
                "this outcome is not recorded: the job's lease ended and another engine took it over"
            ),
            // The job stays 'running' in the store and runs again at the next start
            // (or, on a shared store, when its lease ends).
            Err(e) => {
                tracing::error!(configuration = %target.name, "cannot record the job's outcome: {e}")
            }
        }
    }

    /// Removes finished history past the retention, in small steps with a pause
    /// between them, so that intake and the dispatcher (which share the database)
    /// wait at most one step, however long the history.
    async fn prune_loop(self: Arc<Self>) {
        loop {
            let before = now_ms() - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
            let mut pruned = 0;
            loop {
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let step = self
                    .store
                    .call(move |conn| events::prune_step(conn, before, events::PRUNE_BATCH))
                    .await;
                match step {
                    Ok(n) => {
                        pruned += n;
                        if n < events::PRUNE_BATCH {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!("pruning failed: {e}");
                        break;
                    }
                }
                tokio::time::sleep(PRUNE_PAUSE).await;
            }
            if pruned > 0 {
                tracing::info!(jobs = pruned, "pruned finished events past the retention");
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    }
}

/// The event as the plugin gets it.
fn plugin_event(job: &Claimed) -> Event {
    Event {
        id: job.event_id,
        source: job.source.to_plugin(),
        event_type: job.event_type.clone(),
        appliance_id: job.appliance_id.clone(),
        timestamp: job.timestamp,
        lsid: job.lsid.clone(),
        fields: job.fields.clone(),
        attempt: job.attempt,
    }
}

fn not_running(target: &crate::configurations::Target) -> PluginError {
    PluginError::new(
        ErrorKind::Configuration,
        format!(
            "the configuration {:?} is not running: {}",
            target.name,
            describe(&target.status)
        ),
    )
}

fn describe(status: &crate::configurations::Status) -> String {
    use crate::configurations::Status;
    match status {
        Status::Running => "running".into(),
        Status::Disabled => "disabled".into(),
        Status::PluginNotLoaded(why) | Status::Failed(why) => why.clone(),
    }
}

/// A number in [0, 1) for jitter.
fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}
