//! Counters for `/metrics`, in the OpenMetrics text format (`prometheus-client`).
//!
//! The engine-wide families keep their names and labels (`mwe_events_received_total
//! {outcome}`, `mwe_jobs{state}`, `mwe_retries_total`, `mwe_polls_total{result}`, ...);
//! the `mwe_configuration_*` families split the same counts per configuration (label
//! `configuration`, the configuration's name), and `mwe_build_info{version, store}`
//! says what runs.

use crate::store::events::JobState;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::time::Duration;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

impl Received {
    const ALL: [Received; 5] = [
        Received::Stored,
        Received::Ignored,
        Received::Duplicate,
        Received::Rejected,
        Received::Unavailable,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            Received::Stored => "stored",
            Received::Ignored => "ignored",
            Received::Duplicate => "duplicate",
            Received::Rejected => "rejected",
            Received::Unavailable => "unavailable",
        }
    }
}

/// Upper bounds (seconds) of the plugin call latency buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn call_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigurationLabels {
    configuration: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigurationStateLabels {
    configuration: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    store: &'static str,
}

/// Which store the engine runs on, for `mwe_build_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    /// `Postgres` when the store is shared (`Store::is_shared`).
    pub fn of(shared: bool) -> Self {
        if shared {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The queue as the store counts it when `/metrics` is read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Queue<'a> {
    /// Jobs per state (`events::counts_by_state`).
    pub by_state: &'a [(JobState, i64)],
    /// Jobs per configuration name and state (`metrics_queries::counts_per_configuration`).
    pub by_configuration: &'a [(String, JobState, i64)],
}

/// The engine's counters. Cheap to update from any thread; `render` reads them all.
pub struct Metrics {
    registry: Registry,
    received: Family<OutcomeLabels, Counter>,
    retries: Counter,
    configuration_retries: Family<ConfigurationLabels, Counter>,
    polls: Family<ResultLabels, Counter>,
    reconciliations: Family<ResultLabels, Counter>,
    sessions_queued: Family<SourceLabels, Counter>,
    jobs_taken_over: Counter,
    plugin_calls: Histogram,
    configuration_plugin_calls: Family<ConfigurationLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const OK: ResultLabels = ResultLabels { result: "ok" };
const ERROR: ResultLabels = ResultLabels { result: "error" };
const RECONCILE: SourceLabels = SourceLabels {
    source: "reconcile",
};
const BACKFILL: SourceLabels = SourceLabels { source: "backfill" };

impl Metrics {
    pub fn new() -> Self {
        // Each fixed label value is created now, so that its line shows at 0.
        let received = Family::<OutcomeLabels, Counter>::default();
        for what in Received::ALL {
            let _ = received.get_or_create(&OutcomeLabels {
                outcome: what.as_str(),
            });
        }
        let polls = Family::<ResultLabels, Counter>::default();
        let reconciliations = Family::<ResultLabels, Counter>::default();
        for result in [&OK, &ERROR] {
            let _ = polls.get_or_create(result);
            let _ = reconciliations.get_or_create(result);
        }
        let sessions_queued = Family::<SourceLabels, Counter>::default();
        let _ = sessions_queued.get_or_create(&RECONCILE);
        let _ = sessions_queued.get_or_create(&BACKFILL);
        let metrics = Self {
            registry: Registry::default(),
            received,
            retries: Counter::default(),
            configuration_retries: Family::default(),
            polls,
            reconciliations,
            sessions_queued,
            jobs_taken_over: Counter::default(),
            plugin_calls: call_histogram(),
            configuration_plugin_calls: Family::new_with_constructor(call_histogram),
        };
        metrics.registered()
    }

    /// Registers every family (the registry holds clones sharing the same values).
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "mwe_events_received",
            "Requests to the event address, by outcome",
            self.received.clone(),
        );
        r.register(
            "mwe_retries",
            "Retries scheduled after a failed attempt",
            self.retries.clone(),
        );
        r.register(
            "mwe_configuration_retries",
            "Retries scheduled after a failed attempt, per configuration",
            self.configuration_retries.clone(),
        );
        r.register(
            "mwe_polls",
            "Polls of the appliance, by result",
            self.polls.clone(),
        );
        r.register(
            "mwe_reconciliations",
            "Reconciliation runs, by result",
            self.reconciliations.clone(),
        );
        r.register(
            "mwe_sessions_queued",
            "Ended sessions queued because no event had brought them, by source",
            self.sessions_queued.clone(),
        );
        r.register(
            "mwe_jobs_taken_over",
            "Running jobs of engines that stopped answering, queued again by this engine",
            self.jobs_taken_over.clone(),
        );
        r.register_with_unit(
            "mwe_plugin_call_duration",
            "Time plugins took to handle events",
            Unit::Seconds,
            self.plugin_calls.clone(),
        );
        r.register_with_unit(
            "mwe_configuration_plugin_call_duration",
            "Time plugins took to handle events, per configuration",
            Unit::Seconds,
            self.configuration_plugin_calls.clone(),
        );
        self
    }

    pub fn received(&self, what: Received) {
        self.received
            .get_or_create(&OutcomeLabels {
                outcome: what.as_str(),
            })
            .inc();
    }

    /// A failed attempt of one of `configuration`'s jobs will be tried again.
    pub fn retry_scheduled(&self, configuration: &str) {
        self.retries.inc();
        self.configuration_retries
            .get_or_create(&ConfigurationLabels {
                configuration: configuration.to_owned(),
            })
            .inc();
    }

    pub fn polled(&self, ok: bool) {
        self.polls
            .get_or_create(if ok { &OK } else { &ERROR })
            .inc();
    }

    /// Jobs of an engine that stopped answering, put back in the queue by this one.
    pub fn taken_over(&self, jobs: usize) {
        self.jobs_taken_over
            .inc_by(u64::try_from(jobs).unwrap_or(u64::MAX));
    }

    pub fn reconciled(&self, queued: Option<usize>) {
        match queued {
            Some(n) => {
                self.reconciliations.get_or_create(&OK).inc();
                self.sessions_queued
                    .get_or_create(&RECONCILE)
                    .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            }
            None => {
                self.reconciliations.get_or_create(&ERROR).inc();
            }
        }
    }

    pub fn backfilled(&self, queued: usize) {
        self.sessions_queued
            .get_or_create(&BACKFILL)
            .inc_by(u64::try_from(queued).unwrap_or(u64::MAX));
    }

    /// One plugin call of `configuration` (one event, or one batch) took `took`.
    pub fn plugin_call(&self, configuration: &str, took: Duration) {
        let seconds = took.as_secs_f64();
        self.plugin_calls.observe(seconds);
        self.configuration_plugin_calls
            .get_or_create(&ConfigurationLabels {
                configuration: configuration.to_owned(),
            })
            .observe(seconds);
    }

    /// The exposition text ([`CONTENT_TYPE`]): the counters, then the queue (`mwe_jobs`,
    /// `mwe_configuration_jobs`) and `mwe_build_info`, then `# EOF`.
    pub fn render(&self, queue: Queue<'_>, store: StoreKind) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        // The queue is a snapshot of the store: a registry of its own for each read, so
        // that a configuration whose jobs are all gone leaves no stale line behind.
        encode_registry(&mut out, &snapshot(queue, store))?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// The gauges of one `/metrics` read.
fn snapshot(queue: Queue<'_>, store: StoreKind) -> Registry {
    let mut registry = Registry::default();
    let jobs = Family::<StateLabels, Gauge>::default();
    for state in JobState::ALL {
        let n = queue
            .by_state
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        jobs.get_or_create(&StateLabels {
            state: state.as_str(),
        })
        .set(n);
    }
    registry.register("mwe_jobs", "Events per configuration, by state", jobs);

    // Every state of each configuration that has jobs, zeros included, so that a
    // series appears before its first failure.
    let mut per_configuration: BTreeMap<&str, Vec<(JobState, i64)>> = BTreeMap::new();
    for (name, state, n) in queue.by_configuration {
        per_configuration
            .entry(name.as_str())
            .or_default()
            .push((*state, *n));
    }
    let configuration_jobs = Family::<ConfigurationStateLabels, Gauge>::default();
    for (name, counts) in &per_configuration {
        for state in JobState::ALL {
            let n = counts
                .iter()
                .filter(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .sum();
            configuration_jobs
                .get_or_create(&ConfigurationStateLabels {
                    configuration: (*name).to_owned(),
                    state: state.as_str(),
                })
                .set(n);
        }
    }
    registry.register(
        "mwe_configuration_jobs",
        "Events of each configuration (the name each was queued under), by state",
        configuration_jobs,
    );

    // An info gauge (always 1), as `prometheus_build_info`: parsed alike by every
    // Prometheus text parser, which the OpenMetrics `info` type is not.
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            store: store.as_str(),
        })
        .set(1);
    registry.register(
        "mwe_build_info",
        "The engine's version and store (always 1)",
        build,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn renders_counters_queue_and_histogram() {
        let m = Metrics::default();
        m.received(Received::Stored);
        m.received(Received::Stored);
        m.received(Received::Rejected);
        m.plugin_call("crm", Duration::from_millis(30));
        let queue = Queue {
            by_state: &[(JobState::Pending, 4)],
            by_configuration: &[],
        };
        let text = m.render(queue, StoreKind::Sqlite).expect("render");
        assert!(text.contains("mwe_events_received_total{outcome=\"stored\"} 2\n"));
        assert!(text.contains("mwe_events_received_total{outcome=\"rejected\"} 1\n"));
        assert!(text.contains("mwe_jobs{state=\"pending\"} 4\n"));
        assert!(text.contains("mwe_jobs{state=\"failed\"} 0\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("mwe_plugin_call_duration_seconds_count 1\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The lines the end-to-end tests and the packaged alert rules and dashboard rely on.
    #[test]
    fn every_family_keeps_its_name_and_labels() {
        let m = Metrics::default();
        m.received(Received::Stored);
        m.received(Received::Duplicate);
        m.received(Received::Ignored);
        m.received(Received::Unavailable);
        m.polled(true);
        m.polled(false);
        m.polled(false);
        m.reconciled(Some(1));
        m.reconciled(None);
        m.backfilled(3);
        m.taken_over(2);
        m.retry_scheduled("crm");
        m.retry_scheduled("crm");
        m.retry_scheduled("ticketing \"eu\"");
        m.plugin_call("crm", Duration::from_millis(3));
        m.plugin_call("crm", Duration::from_millis(700));
        m.plugin_call("ticketing \"eu\"", Duration::from_secs(40));
        let by_state = [(JobState::Succeeded, 3000), (JobState::Ignored, 1)];
        let by_configuration = [
            ("crm".to_owned(), JobState::Failed, 2),
            ("crm".to_owned(), JobState::Succeeded, 2990),
            ("ticketing \"eu\"".to_owned(), JobState::Succeeded, 10),
        ];
        let queue = Queue {
            by_state: &by_state,
            by_configuration: &by_configuration,
        };
        let text = m.render(queue, StoreKind::Postgres).expect("render");
        let lines = lines(&text);
        for expected in [
            "mwe_events_received_total{outcome=\"stored\"} 1",
            "mwe_events_received_total{outcome=\"duplicate\"} 1",
            "mwe_events_received_total{outcome=\"ignored\"} 1",
            "mwe_events_received_total{outcome=\"rejected\"} 0",
            "mwe_events_received_total{outcome=\"unavailable\"} 1",
            "mwe_jobs{state=\"succeeded\"} 3000",
            "mwe_jobs{state=\"ignored\"} 1",
            "mwe_jobs{state=\"pending\"} 0",
            "mwe_retries_total 3",
            "mwe_polls_total{result=\"ok\"} 1",
            "mwe_polls_total{result=\"error\"} 2",
            "mwe_reconciliations_total{result=\"ok\"} 1",
            "mwe_reconciliations_total{result=\"error\"} 1",
            "mwe_sessions_queued_total{source=\"reconcile\"} 1",
            "mwe_sessions_queued_total{source=\"backfill\"} 3",
            "mwe_jobs_taken_over_total 2",
            "mwe_plugin_call_duration_seconds_count 3",
            "mwe_plugin_call_duration_seconds_bucket{le=\"0.005\"} 1",
            "mwe_plugin_call_duration_seconds_bucket{le=\"30.0\"} 2",
            "mwe_plugin_call_duration_seconds_bucket{le=\"+Inf\"} 3",
            // Per configuration; a label value is escaped.
            "mwe_configuration_retries_total{configuration=\"crm\"} 2",
            "mwe_configuration_retries_total{configuration=\"ticketing \\\"eu\\\"\"} 1",
            "mwe_configuration_plugin_call_duration_seconds_count{configuration=\"crm\"} 2",
            "mwe_configuration_plugin_call_duration_seconds_bucket{le=\"1.0\",configuration=\"crm\"} 2",
            "mwe_configuration_plugin_call_duration_seconds_bucket{le=\"0.5\",configuration=\"crm\"} 1",
            "mwe_configuration_plugin_call_duration_seconds_bucket{le=\"+Inf\",configuration=\"ticketing \\\"eu\\\"\"} 1",
            "mwe_configuration_jobs{configuration=\"crm\",state=\"failed\"} 2",
            "mwe_configuration_jobs{configuration=\"crm\",state=\"succeeded\"} 2990",
            "mwe_configuration_jobs{configuration=\"crm\",state=\"pending\"} 0",
            "mwe_configuration_jobs{configuration=\"ticketing \\\"eu\\\"\",state=\"succeeded\"} 10",
            "mwe_configuration_jobs{configuration=\"ticketing \\\"eu\\\"\",state=\"failed\"} 0",
            concat!(
                "mwe_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\",store=\"postgres\"} 1"
            ),
            "# TYPE mwe_build_info gauge",
            "# TYPE mwe_jobs gauge",
            "# TYPE mwe_events_received counter",
            "# TYPE mwe_plugin_call_duration_seconds histogram",
            "# UNIT mwe_plugin_call_duration_seconds seconds",
        ] {
            assert!(lines.contains(&expected), "no line {expected:?} in\n{text}");
        }
        // Every configuration has a line per state, and no other configuration shows.
        let configuration_jobs = lines
            .iter()
            .filter(|l| l.starts_with("mwe_configuration_jobs{"))
            .count();
        assert_eq!(configuration_jobs, 2 * JobState::ALL.len(), "{text}");
        // One family per name, and one `# EOF`, last: what an OpenMetrics parser requires.
        let mut types: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let families = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), families, "{text}");
        assert_eq!(lines.iter().filter(|l| **l == "# EOF").count(), 1);
        assert_eq!(lines.last(), Some(&"# EOF"));
    }

    #[test]
    fn the_store_kind_follows_whether_the_store_is_shared() {
        let text = Metrics::default()
            .render(Queue::default(), StoreKind::of(false))
            .expect("render");
        assert!(text.contains("\",store=\"sqlite\"} 1\n"), "{text}");
        assert!(!text.contains("mwe_configuration_jobs{"), "{text}");
    }
}
