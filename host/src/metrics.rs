//! Counters for `/metrics`, in the Prometheus text format.

use crate::store::events::JobState;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What became of a request to the event address.
#[derive(Debug, Clone, Copy)]
pub enum Received {
    /// Stored, with at least one job.
    Stored,
    /// Stored, but no configuration takes it.
    Ignored,
    /// Already stored (a redelivery).
    Duplicate,
    /// Refused: malformed, too large, forbidden.
    Rejected,
    /// Could not be stored (503): the appliance keeps it.
    Unavailable,
}

const RECEIVED: [(Received, &str); 5] = [
    (Received::Stored, "stored"),
    (Received::Ignored, "ignored"),
    (Received::Duplicate, "duplicate"),
    (Received::Rejected, "rejected"),
    (Received::Unavailable, "unavailable"),
];

/// Upper bounds (seconds) of the plugin call latency buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    received: [AtomicU64; 5],
    retries: AtomicU64,
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    call_buckets: [AtomicU64; BUCKETS.len()],
    call_count: AtomicU64,
    call_sum_micros: AtomicU64,
    reconciliations_ok: AtomicU64,
    reconciliations_failed: AtomicU64,
    reconciled_sessions: AtomicU64,
    backfilled_sessions: AtomicU64,
    jobs_taken_over: AtomicU64,
}

impl Metrics {
    pub fn received(&self, what: Received) {
        self.received[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retry_scheduled(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn polled(&self, ok: bool) {
        let counter = if ok {
            &self.polls_ok
        } else {
            &self.polls_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Jobs of an engine that stopped answering, put back in the queue by this one.
    pub fn taken_over(&self, jobs: usize) {
        self.jobs_taken_over
            .fetch_add(jobs as u64, Ordering::Relaxed);
    }

    pub fn reconciled(&self, queued: Option<usize>) {
        match queued {
            Some(n) => {
                self.reconciliations_ok.fetch_add(1, Ordering::Relaxed);
                self.reconciled_sessions
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            None => {
                self.reconciliations_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn backfilled(&self, queued: usize) {
        self.backfilled_sessions
            .fetch_add(queued as u64, Ordering::Relaxed);
    }

    pub fn plugin_call(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bucket, bound) in self.call_buckets.iter().zip(BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.call_count.fetch_add(1, Ordering::Relaxed);
        self.call_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The exposition text; `queue` is the number of jobs per state.
    pub fn render(&self, queue: &[(JobState, i64)]) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP mwe_events_received_total Requests to the event address, by outcome."
        );
        let _ = writeln!(out, "# TYPE mwe_events_received_total counter");
        for (what, label) in RECEIVED {
            let _ = writeln!(
                out,
                "mwe_events_received_total{{outcome=\"{label}\"}} {}",
                load(&self.received[what as usize])
            );
        }
        let _ = writeln!(out, "# HELP mwe_jobs Events per configuration, by state.");
        let _ = writeln!(out, "# TYPE mwe_jobs gauge");
        for state in JobState::ALL {
            let n = queue
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "mwe_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP mwe_retries_total Retries scheduled after a failed attempt."
        );
        let _ = writeln!(out, "# TYPE mwe_retries_total counter");
        let _ = writeln!(out, "mwe_retries_total {}", load(&self.retries));
        let _ = writeln!(
            out,
            "# HELP mwe_polls_total Polls of the appliance, by result."
        );
        let _ = writeln!(out, "# TYPE mwe_polls_total counter");
        let _ = writeln!(
            out,
            "mwe_polls_total{{result=\"ok\"}} {}",
            load(&self.polls_ok)
        );
        let _ = writeln!(
            out,
            "mwe_polls_total{{result=\"error\"}} {}",
            load(&self.polls_failed)
        );
        let _ = writeln!(
            out,
            "# HELP mwe_reconciliations_total Reconciliation runs, by result."
        );
        let _ = writeln!(out, "# TYPE mwe_reconciliations_total counter");
        let _ = writeln!(
            out,
            "mwe_reconciliations_total{{result=\"ok\"}} {}",
            load(&self.reconciliations_ok)
        );
        let _ = writeln!(
            out,
            "mwe_reconciliations_total{{result=\"error\"}} {}",
            load(&self.reconciliations_failed)
        );
        let _ = writeln!(
            out,
            "# HELP mwe_sessions_queued_total Ended sessions queued because no event had brought them, by source."
        );
        let _ = writeln!(out, "# TYPE mwe_sessions_queued_total counter");
        let _ = writeln!(
            out,
            "mwe_sessions_queued_total{{source=\"reconcile\"}} {}",
            load(&self.reconciled_sessions)
        );
        let _ = writeln!(
            out,
            "mwe_sessions_queued_total{{source=\"backfill\"}} {}",
            load(&self.backfilled_sessions)
        );
        let _ = writeln!(
            out,
            "# HELP mwe_jobs_taken_over_total Running jobs of engines that stopped answering, queued again by this engine."
        );
        let _ = writeln!(out, "# TYPE mwe_jobs_taken_over_total counter");
        let _ = writeln!(
            out,
            "mwe_jobs_taken_over_total {}",
            load(&self.jobs_taken_over)
        );
        let _ = writeln!(
            out,
            "# HELP mwe_plugin_call_duration_seconds Time plugins took to handle events."
        );
        let _ = writeln!(out, "# TYPE mwe_plugin_call_duration_seconds histogram");
        for (bucket, bound) in self.call_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "mwe_plugin_call_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let count = load(&self.call_count);
        let _ = writeln!(
            out,
            "mwe_plugin_call_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "mwe_plugin_call_duration_seconds_sum {}",
            load(&self.call_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "mwe_plugin_call_duration_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_queue_and_histogram() {
        let m = Metrics::default();
        m.received(Received::Stored);
        m.received(Received::Stored);
        m.received(Received::Rejected);
        m.plugin_call(Duration::from_millis(30));
        let text = m.render(&[(JobState::Pending, 4)]);
        assert!(text.contains("mwe_events_received_total{outcome=\"stored\"} 2\n"));
        assert!(text.contains("mwe_events_received_total{outcome=\"rejected\"} 1\n"));
        assert!(text.contains("mwe_jobs{state=\"pending\"} 4\n"));
        assert!(text.contains("mwe_jobs{state=\"failed\"} 0\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_count 1\n"));
    }
}
