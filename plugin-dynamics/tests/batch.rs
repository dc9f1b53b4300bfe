//! Reconciliation and backfill against the simulators, in process: `ended_sessions`
//! lists a window with one appliance call; `handle_batch` writes many sessions with
//! a few calls each side, the same rows as one event at a time, a failing session
//! failing alone, a throttled batch throttling every event.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use plugin_api::{
    EndedSessionsRequest, ErrorKind, Event, EventSource, Logger, OpenContext, Outcome, Plugin,
    PluginError, PollRequest, Settings,
};
use plugin_dynamics::bulk::{REPORTS_PER_CALL, SESSIONS_PER_BATCH};
use plugin_dynamics::Dynamics365;
use serde_json::{json, Map, Value};
use simulators::appliance::model::{ChatLine, SessionSpec, SurveyAnswer};
use simulators::appliance::Appliance;
use simulators::dataverse::{Dataverse, Limits, WriteFault};

/// A window in the past, so that "now" never matters.
const BASE: i64 = 1_760_000_000;

struct Env {
    appliance: Appliance,
    dataverse: Dataverse,
    /// Case ids to ticket numbers, to compare rows across environments.
    cases: HashMap<String, String>,
    ca_bundle: std::path::PathBuf,
    // Serves the simulators while the plugin's own runtime makes the calls.
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (appliance, dataverse) = runtime.block_on(async {
            (
                Appliance::start(Default::default(), dir.path())
                    .await
                    .expect("appliance"),
                Dataverse::start(Default::default(), dir.path())
                    .await
                    .expect("dataverse"),
            )
        });
        let mut bundle = std::fs::read_to_string(&dataverse.cert_path).expect("cert");
        if let Some(cert) = &appliance.cert_path {
            bundle.push_str(&std::fs::read_to_string(cert).expect("cert"));
        }
        let ca_bundle = dir.path().join("trusted.pem");
        std::fs::write(&ca_bundle, bundle).expect("bundle");
        Self {
            appliance,
            dataverse,
            cases: HashMap::new(),
            ca_bundle,
            _runtime: runtime,
            _dir: dir,
        }
    }

    /// Another Dataverse for the same appliance (to write the same sessions twice).
    fn with_second_dataverse(&self) -> (Dataverse, std::path::PathBuf) {
        let dataverse = self
            ._runtime
            .block_on(Dataverse::start(Default::default(), self._dir.path()))
            .expect("dataverse");
        let mut bundle = std::fs::read_to_string(&dataverse.cert_path).expect("cert");
        if let Some(cert) = &self.appliance.cert_path {
            bundle.push_str(&std::fs::read_to_string(cert).expect("cert"));
        }
        let path = self._dir.path().join("trusted-second.pem");
        std::fs::write(&path, bundle).expect("bundle");
        (dataverse, path)
    }

    fn plugin_for(&self, dataverse: &Dataverse, ca: &std::path::Path, all: bool) -> Dynamics365 {
        let mut settings = Settings::default();
        for (key, value) in [
            ("bt_hostname", json!(self.appliance.host)),
            ("bt_client_id", json!(self.appliance.client_id)),
            ("bt_client_secret", json!(self.appliance.client_secret())),
            ("ca_certificate_file", json!(ca.to_str().expect("utf-8"))),
            ("dynamics_url", json!(dataverse.url)),
            ("azure_tenant_id", json!(dataverse.tenant_id)),
            ("azure_client_id", json!(dataverse.client_id)),
            ("azure_client_secret", json!(dataverse.client_secret())),
            ("azure_cloud", json!(dataverse.authority)),
            ("import_timestamps_as_utc", json!(true)),
            ("update_all_sessions", json!(all)),
        ] {
            settings.set(key, value);
        }
        Dynamics365::open(OpenContext {
            configuration_name: "Batch".into(),
            settings,
            log: Logger::discard(),
        })
        .unwrap_or_else(|e| panic!("opens: {e}"))
    }

    fn plugin(&self, all: bool) -> Dynamics365 {
        self.plugin_for(&self.dataverse, &self.ca_bundle, all)
    }

    fn add_case(&mut self, ticket: &str) {
        let id = self.dataverse.add_case(ticket, "Printer");
        self.cases.insert(id, ticket.to_owned());
    }

    /// A session that ended at `end`; returns its lsid.
    fn ended(&self, spec: SessionSpec, end: i64) -> String {
        let lsid = self.appliance.create_session(SessionSpec {
            start_time: Some(end - 300),
            ..spec
        });
        self.appliance.end_session(&lsid, Some(end)).expect("ends");
        lsid
    }
}

fn keyed(key: &str) -> SessionSpec {
    SessionSpec {
        external_key: Some(key.into()),
        ..SessionSpec::default()
    }
}

fn end_event(id: i64, lsid: &str, source: EventSource) -> Event {
    Event {
        id,
        source,
        event_type: "support_conference_end".into(),
        appliance_id: "Default".into(),
        timestamp: BASE,
        lsid: Some(lsid.to_owned()),
        fields: BTreeMap::new(),
        attempt: 1,
    }
}

/// Rows by lsid with what differs between environments made comparable: the row
/// id dropped, the case id named by its ticket number.
fn rows(
    dataverse: &Dataverse,
    cases: &HashMap<String, String>,
) -> BTreeMap<String, Map<String, Value>> {
    dataverse
        .snapshot()
        .rows
        .into_iter()
        .map(|mut row| {
            row.remove("bt_sessionid");
            if let Some(id) = row.get("_bt_caseid_value").and_then(Value::as_str) {
                let ticket = cases
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("unknown {id}"));
                row.insert("_bt_caseid_value".into(), json!(ticket));
            }
            let lsid = row["bt_lsid"].as_str().unwrap_or_default().to_owned();
            (lsid, row)
        })
        .collect()
}

/// Notes by lsid of their row, with the row id dropped.
fn notes(dataverse: &Dataverse) -> BTreeMap<String, Value> {
    let snapshot = dataverse.snapshot();
    snapshot
        .annotations
        .iter()
        .map(|n| {
            let lsid = snapshot
                .rows
                .iter()
                .find(|r| r["bt_sessionid"] == n.object_id.as_str())
                .and_then(|r| r["bt_lsid"].as_str())
                .unwrap_or("no row")
                .to_owned();
            let mut note = serde_json::to_value(n).expect("json");
            if let Some(o) = note.as_object_mut() {
                o.remove("object_id");
            }
            (lsid, note)
        })
        .collect()
}

fn done(result: &Result<Outcome, PluginError>) -> &str {
    match result {
        Ok(Outcome::Done { detail }) => detail,
        other => panic!("not done: {other:?}"),
    }
}

#[test]
fn ended_sessions_lists_each_window_with_one_call() {
    let env = Env::start();
    let plugin = env.plugin(true);
    let at = |offset: i64| env.ended(SessionSpec::default(), BASE + offset);
    let _before = at(-1);
    let first = at(0);
    let middle = at(1800);
    let last = at(3599);
    let boundary = at(3600);
    let later = at(5000);
    let running = env.appliance.create_session(SessionSpec {
        start_time: Some(BASE + 10),
        ..SessionSpec::default()
    });

    let listed = plugin
        .ended_sessions(&EndedSessionsRequest {
            since: BASE,
            until: BASE + 3600,
        })
        .expect("lists");
    let mut lsids: Vec<&str> = listed.sessions.iter().map(|s| s.lsid.as_str()).collect();
    lsids.sort_unstable();
    let mut expected = vec![first.as_str(), middle.as_str(), last.as_str()];
    expected.sort_unstable();
    assert_eq!(lsids, expected);
    assert!(
        listed.sessions.iter().all(|s| s.ended_at == BASE),
        "a listing has no end times: the window's start stands for them"
    );
    assert_eq!(env.appliance.count("reporting:SupportSessionListing"), 1);
    assert_eq!(env.appliance.count("reporting"), 1, "no other report call");
    let params = env.appliance.last_reporting_params();
    assert_eq!(
        (params["end_time"].as_str(), params["duration"].as_str()),
        (BASE.to_string().as_str(), "3600")
    );

    let next = plugin
        .ended_sessions(&EndedSessionsRequest {
            since: BASE + 3600,
            until: BASE + 7200,
        })
        .expect("lists");
    let mut lsids: Vec<&str> = next.sessions.iter().map(|s| s.lsid.as_str()).collect();
    lsids.sort_unstable();
    let mut expected = vec![boundary.as_str(), later.as_str()];
    expected.sort_unstable();
    assert_eq!(lsids, expected);
    assert!(!lsids.contains(&running.as_str()), "only ended sessions");
    assert_eq!(env.appliance.count("reporting:SupportSessionListing"), 2);

    // An empty window asks nothing; an empty answer is no error.
    let none = plugin
        .ended_sessions(&EndedSessionsRequest {
            since: BASE,
            until: BASE,
        })
        .expect("empty");
    assert!(none.sessions.is_empty());
    assert_eq!(env.appliance.count("reporting:SupportSessionListing"), 2);
    let quiet = plugin
        .ended_sessions(&EndedSessionsRequest {
            since: BASE - 100_000,
            until: BASE - 90_000,
        })
        .expect("nothing ended then");
    assert!(quiet.sessions.is_empty());
    assert_eq!(env.appliance.count("reporting:SupportSessionListing"), 3);
}

#[test]
fn a_batch_writes_what_one_event_at_a_time_writes_with_few_calls() {
    let mut env = Env::start();
    let (single_dv, single_ca) = env.with_second_dataverse();
    let mut single_cases = HashMap::new();
    let count: usize = 25;
    let mut lsids = Vec::new();
    for i in 0..count {
        let ticket = format!("CAS-{i:03}");
        env.add_case(&ticket);
        single_cases.insert(single_dv.add_case(&ticket, "Printer"), ticket.clone());
        let mut spec = keyed(&ticket);
        spec.chat = vec![ChatLine {
            from: "customer".into(),
            text: format!("Hello from session {i}"),
            offset_seconds: 5,
        }];
        if i == 3 {
            // Longer than the transcript column: the whole text goes to a note.
            spec.chat[0].text = "x".repeat(1_048_600);
        }
        let lsid = env.ended(spec, BASE + i as i64);
        if i % 5 == 0 {
            env.appliance
                .submit_customer_survey(
                    &lsid,
                    vec![SurveyAnswer {
                        name: "rating".into(),
                        label: "How satisfied?".into(),
                        answer: format!("{}", i % 5 + 1),
                    }],
                )
                .expect("survey");
        }
        lsids.push(lsid);
    }
    // One without a case, which the import rules skip.
    let orphan = env.ended(keyed("CAS-999"), BASE + 100);
    let mut events: Vec<Event> = lsids
        .iter()
        .enumerate()
        .map(|(i, l)| end_event(i as i64, l, EventSource::Backfill))
        .collect();
    events.push(end_event(99, &orphan, EventSource::Reconcile));

    // One event at a time, into its own Dataverse.
    let single = env.plugin_for(&single_dv, &single_ca, false);
    let one_by_one: Vec<_> = events.iter().map(|e| single.handle_event(e)).collect();
    env.appliance.reset_counts();

    let plugin = env.plugin(false);
    let batched = plugin.handle_batch(&events);
    assert_eq!(batched.len(), events.len(), "one result per event");
    assert_eq!(
        batched, one_by_one,
        "the same outcomes, in the events' order"
    );
    assert_eq!(
        done(&batched[3]),
        format!(
            "session {} written, linked to Case CAS-003; the full transcript is in a note",
            lsids[3]
        )
    );
    assert!(
        matches!(&batched[count], Ok(Outcome::Skipped { reason }) if reason.contains("CAS-999"))
    );

    // Appliance: one report call per REPORTS_PER_CALL sessions, one survey call.
    let report_calls = env.appliance.count("reporting:SupportSession");
    assert_eq!(
        report_calls,
        (count as u64 + 1).div_ceil(REPORTS_PER_CALL as u64)
    );
    assert_eq!(env.appliance.count("reporting:SupportCustExitSurvey"), 1);
    assert_eq!(env.appliance.count("reporting:SupportRepExitSurvey"), 0);
    // Dataverse: one $batch of lookups, then one per SESSIONS_PER_BATCH sessions.
    let write_batches = (count as u64).div_ceil(SESSIONS_PER_BATCH as u64);
    assert_eq!(env.dataverse.api_count("$batch"), 1 + write_batches);
    assert_eq!(
        env.dataverse.api_count("$batch/incidents"),
        count as u64 + 1
    );
    assert_eq!(env.dataverse.api_count("$batch/bt_sessions"), count as u64);
    assert_eq!(env.dataverse.api_count("$batch/annotations"), 1);
    for direct in ["incidents", "bt_sessions", "annotations"] {
        assert_eq!(
            env.dataverse.api_count(direct),
            0,
            "{direct}: nothing outside a batch"
        );
    }
    println!(
        "{count} sessions: {report_calls} report call(s), {} Dataverse request(s) ({:.2} per session)",
        1 + write_batches,
        (1 + write_batches) as f64 / count as f64
    );

    let written = rows(&env.dataverse, &env.cases);
    assert_eq!(written.len(), count);
    assert_eq!(written, rows(&single_dv, &single_cases), "the same rows");
    assert_eq!(notes(&env.dataverse), notes(&single_dv), "the same note");
    assert_eq!(written[&lsids[0]]["bt_customersurvey"], "How satisfied?: 1");
    assert_eq!(written[&lsids[7]]["_bt_caseid_value"], "CAS-007");

    // Again: the same rows, upserted in place.
    let ids: Vec<Value> = env
        .dataverse
        .snapshot()
        .rows
        .iter()
        .map(|r| r["bt_sessionid"].clone())
        .collect();
    let again = plugin.handle_batch(&events);
    assert_eq!(again, batched);
    assert_eq!(rows(&env.dataverse, &env.cases), written);
    let ids_again: Vec<Value> = env
        .dataverse
        .snapshot()
        .rows
        .iter()
        .map(|r| r["bt_sessionid"].clone())
        .collect();
    assert_eq!(ids_again, ids, "no row added or replaced");
    assert_eq!(env.dataverse.snapshot().annotations.len(), 1);
}

#[test]
fn a_session_that_fails_in_a_batch_fails_alone_with_dataverses_error() {
    let env = Env::start();
    let lsids: Vec<String> = (0..12)
        .map(|i| env.ended(SessionSpec::default(), BASE + i))
        .collect();
    let refused = &lsids[4];
    env.dataverse.fail_writes(WriteFault {
        message: "Sessions of this customer are kept elsewhere.".into(),
        ..WriteFault::new(refused)
    });
    let events: Vec<Event> = lsids
        .iter()
        .enumerate()
        .map(|(i, l)| end_event(i as i64, l, EventSource::Reconcile))
        .collect();
    let results = env.plugin(true).handle_batch(&events);
    for (i, result) in results.iter().enumerate() {
        if i == 4 {
            let e = result.as_ref().expect_err("refused");
            assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
            assert_eq!(
                e.message,
                "Dataverse answered HTTP 400 to the session upsert: Sessions of this customer are kept elsewhere. (error 0x80040265)"
            );
        } else {
            assert_eq!(
                done(result),
                format!("session {} written (no Case linked)", lsids[i])
            );
        }
    }
    assert!(env.dataverse.row(refused).is_none());
    assert_eq!(env.dataverse.snapshot().rows.len(), 11);
    assert_eq!(env.dataverse.api_count("$batch"), 2);
}

#[test]
fn a_change_set_is_all_or_nothing() {
    let env = Env::start();
    let long = SessionSpec {
        chat: vec![ChatLine {
            from: "rep".into(),
            text: "y".repeat(1_048_600),
            offset_seconds: 1,
        }],
        ..SessionSpec::default()
    };
    let lsid = env.ended(long, BASE);
    let other = env.ended(SessionSpec::default(), BASE + 1);
    // The note's write fails (its file name names the session): the row goes too.
    env.dataverse
        .fail_writes(WriteFault::new(&format!("transcript-{lsid}.txt")));
    let results = env.plugin(true).handle_batch(&[
        end_event(1, &lsid, EventSource::Backfill),
        end_event(2, &other, EventSource::Backfill),
    ]);
    let e = results[0].as_ref().expect_err("the note failed");
    assert!(
        e.message
            .starts_with("Dataverse answered HTTP 400 to the transcript note:"),
        "{e:?}"
    );
    assert!(
        env.dataverse.row(&lsid).is_none(),
        "the row was rolled back"
    );
    assert!(env.dataverse.snapshot().annotations.is_empty());
    assert_eq!(
        done(&results[1]),
        format!("session {other} written (no Case linked)")
    );
    // Once the fault is gone, the same event writes both.
    env.dataverse.clear_write_faults();
    let results = env
        .plugin(true)
        .handle_batch(&[end_event(1, &lsid, EventSource::Backfill)]);
    assert!(done(&results[0]).ends_with("the full transcript is in a note"));
    assert!(env.dataverse.row(&lsid).is_some());
    assert_eq!(env.dataverse.snapshot().annotations.len(), 1);
}

#[test]
fn a_throttled_batch_throttles_every_event_and_nothing_is_sent_before_retry_after() {
    let env = Env::start();
    let lsids: Vec<String> = (0..25)
        .map(|i| env.ended(SessionSpec::default(), BASE + i))
        .collect();
    let events: Vec<Event> = lsids
        .iter()
        .enumerate()
        .map(|(i, l)| end_event(i as i64, l, EventSource::Backfill))
        .collect();
    env.dataverse.set_limits(Limits {
        requests: Some(0),
        window_seconds: 120,
        concurrent: None,
    });
    let plugin = env.plugin(true);
    let results = plugin.handle_batch(&events);
    assert_eq!(results.len(), 25);
    for r in &results {
        let e = r.as_ref().expect_err("throttled");
        assert_eq!(e.kind, ErrorKind::Throttled, "{e:?}");
        assert!(
            e.retry_after.is_some_and(|d| d >= Duration::from_secs(119)),
            "{e:?}"
        );
    }
    assert_eq!(
        env.dataverse.api_count("$batch"),
        1,
        "the later batches were not sent"
    );
    let (early, throttled) = env.dataverse.throttle_report();
    assert_eq!((early, throttled), (0, 1));
    // Still waiting: the next batch is not sent either.
    let again = plugin.handle_batch(&events[..3]);
    assert!(again
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.kind == ErrorKind::Throttled)));
    assert_eq!(env.dataverse.api_count("$batch"), 1);
    assert!(env.dataverse.snapshot().rows.is_empty());
}

#[test]
fn a_batch_reads_polled_reports_and_fails_missing_ones_as_not_yet() {
    let env = Env::start();
    let plugin = env.plugin(true);
    let present = env.ended(SessionSpec::default(), BASE);
    let polled = env.ended(SessionSpec::default(), BASE + 10);
    let found = plugin
        .poll(&PollRequest {
            cursor: None,
            since: BASE + 5,
            event_types: vec!["support_conference_end".into()],
        })
        .expect("polls");
    assert_eq!(found.events.len(), 1);
    let from_poll = Event {
        fields: found.events[0].fields.clone(),
        ..end_event(5, &polled, EventSource::Polling)
    };
    env.appliance.reset_counts();
    assert!(plugin.handle_batch(&[]).is_empty());
    assert!(env.appliance.counts().is_empty() && env.dataverse.api_counts().is_empty());
    let events = vec![
        end_event(1, &present, EventSource::Reconcile),
        end_event(
            2,
            "0123456789abcdef0123456789abcdef",
            EventSource::Reconcile,
        ),
        Event {
            lsid: None,
            ..end_event(3, "", EventSource::Reconcile)
        },
        Event {
            event_type: "support_conference_begin".into(),
            ..end_event(4, &present, EventSource::Reconcile)
        },
        from_poll,
    ];
    let results = plugin.handle_batch(&events);
    assert_eq!(
        done(&results[0]),
        format!("session {present} written (no Case linked)")
    );
    let missing = results[1].as_ref().expect_err("no report");
    assert_eq!(missing.kind, ErrorKind::Retryable);
    assert!(
        missing.message.contains("has no report for session"),
        "{missing:?}"
    );
    assert!(
        matches!(&results[2], Ok(Outcome::Skipped { reason }) if reason.contains("no session"))
    );
    assert!(
        matches!(&results[3], Ok(Outcome::Skipped { reason }) if reason.contains("support_conference_begin"))
    );
    assert_eq!(
        done(&results[4]),
        format!("session {polled} written (no Case linked)")
    );
    assert_eq!(
        env.appliance.count("reporting:SupportSession"),
        1,
        "one call for the two reports not in their events"
    );
    assert_eq!(
        env.appliance
            .last_reporting_params()
            .get("lsids")
            .map(String::as_str),
        Some(format!("{present},0123456789abcdef0123456789abcdef").as_str())
    );
}
