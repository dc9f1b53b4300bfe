//! The Dynamics 365 plugin through the real host process and cdylib, against the
//! appliance and Dataverse simulators: sessions end on the appliance, its outbound
//! events reach the host, rows land in the simulated Dataverse.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use simulators::appliance::model::{ChatLine, SessionSpec, SurveyAnswer};
use simulators::appliance::{Appliance, ApplianceOptions};
use simulators::common::{Fault, FaultRule};
use simulators::dataverse::{Dataverse, DataverseOptions, Limits};

use crate::helpers::{PluginsDir, TestHost};

pub(crate) struct Env {
    pub(crate) appliance: Appliance,
    pub(crate) dataverse: Dataverse,
    pub(crate) host: TestHost,
    /// Both simulators' certificates, for `ca_certificate_file`.
    ca_bundle: PathBuf,
    _plugins: PluginsDir,
    _dir: tempfile::TempDir,
}

impl Env {
    pub(crate) async fn start(appliance: ApplianceOptions, dataverse: DataverseOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let appliance = Appliance::start(appliance, dir.path())
            .await
            .expect("appliance");
        let dataverse = Dataverse::start(dataverse, dir.path())
            .await
            .expect("dataverse");
        let mut bundle = std::fs::read_to_string(&dataverse.cert_path).expect("cert");
        if let Some(cert) = &appliance.cert_path {
            bundle.push_str(&std::fs::read_to_string(cert).expect("cert"));
        }
        let ca_bundle = dir.path().join("trusted.pem");
        std::fs::write(&ca_bundle, bundle).expect("bundle");
        let plugins = PluginsDir::new();
        plugins.add("dynamics365", "plugin_dynamics");
        let host = TestHost::start(&plugins);
        appliance.add_recipient(&format!("{}/ERSPost", host.events));
        Self {
            appliance,
            dataverse,
            host,
            ca_bundle,
            _plugins: plugins,
            _dir: dir,
        }
    }

    /// An environment without the table: the first configuration provisions it
    /// through the plugin's action, as an admin would.
    async fn default() -> Self {
        Self::start(ApplianceOptions::default(), unprovisioned()).await
    }

    pub(crate) fn settings(&self, overrides: Value) -> Value {
        settings_for(&self.appliance, &self.dataverse, &self.ca_bundle, overrides)
    }

    async fn configure(&self, name: &str, overrides: Value) -> i64 {
        let body =
            json!({"plugin": "dynamics365", "name": name, "settings": self.settings(overrides)});
        let (status, created) = self.host.post("/api/configurations", &body).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_i64().expect("id");
        if self.dataverse.table("bt_session").is_none() {
            let (status, report) = self
                .host
                .post_empty(&format!("/api/configurations/{id}/actions/provision"))
                .await;
            assert_eq!(
                (status, report["ok"].as_bool()),
                (200, Some(true)),
                "{report}"
            );
        }
        id
    }

    /// Creates a session that ends now (its outbound event follows).
    pub(crate) fn end_session(&self, spec: SessionSpec) -> String {
        let lsid = self.appliance.create_session(spec);
        self.appliance.end_session(&lsid, None).expect("ends");
        lsid
    }

    fn row(&self, lsid: &str) -> Map<String, Value> {
        self.dataverse
            .row(lsid)
            .unwrap_or_else(|| panic!("no row for {lsid}: {:?}", self.dataverse.snapshot()))
    }

    async fn history(&self, lsid: &str) -> Vec<Value> {
        self.host.events(&format!("lsid={lsid}")).await
    }
}

fn settings_for(
    appliance: &Appliance,
    dataverse: &Dataverse,
    ca_bundle: &std::path::Path,
    overrides: Value,
) -> Value {
    let mut settings = json!({
        "bt_hostname": appliance.host,
        "bt_client_id": appliance.client_id,
        "bt_client_secret": appliance.client_secret(),
        "ca_certificate_file": ca_bundle.to_str().expect("utf-8"),
        "outbound_event_types": ["support_conference_end", "support_conference_customer_exit_survey_completed", "support_conference_rep_exit_survey_completed"],
        "retry_outbound_event_types": ["support_conference_end", "support_conference_customer_exit_survey_completed", "support_conference_rep_exit_survey_completed"],
        "retry_attempt_limit": 5,
        "dynamics_url": dataverse.url,
        "azure_tenant_id": dataverse.tenant_id,
        "azure_client_id": dataverse.client_id,
        "azure_client_secret": dataverse.client_secret(),
        "azure_cloud": dataverse.authority,
        "import_timestamps_as_utc": true,
    });
    if let (Some(s), Some(o)) = (settings.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            s.insert(k.clone(), v.clone());
        }
    }
    settings
}

fn unprovisioned() -> DataverseOptions {
    DataverseOptions {
        provisioned: false,
        ..DataverseOptions::default()
    }
}

fn keyed(key: &str) -> SessionSpec {
    SessionSpec {
        external_key: Some(key.into()),
        ..SessionSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lands_linked_to_its_case_at_the_documented_request_cost() {
    let env = Env::default().await;
    let case = env.dataverse.add_case("CAS-100", "Printer");
    env.configure("Main", json!({})).await;
    let spec = SessionSpec {
        external_key: Some("CAS-100".into()),
        start_time: Some(chrono_now() - 600),
        chat: vec![ChatLine {
            from: "customer".into(),
            text: "Grüße — 打印机 🙂".into(),
            offset_seconds: 30,
        }],
        file_transfer_count: 3,
        ..SessionSpec::default()
    };
    let lsid = env.end_session(spec);
    env.host.wait_for_state("succeeded", 1).await;
    let row = env.row(&lsid);
    assert_eq!(row["_bt_caseid_value"], case);
    assert_eq!(row["bt_externalkey"], "CAS-100");
    assert_eq!(row["bt_primarycustomer"], "Ana Müller");
    assert_eq!(row["bt_primaryrep"], "Sam Rep");
    assert_eq!(row["bt_customerhostname"], "ANA-LAPTOP");
    assert_eq!(row["bt_filetransfercount"], 3);
    assert_eq!(row["bt_durationseconds"], 600);
    assert!(
        row["bt_transcript"]
            .as_str()
            .is_some_and(|t| t.contains("Grüße — 打印机 🙂")),
        "{row:?}"
    );
    assert!(row["bt_starttime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let history = env.history(&lsid).await;
    assert_eq!(
        history[0]["result"],
        format!("session {lsid} written, linked to Case CAS-100")
    );

    // Steady state: one report call and two Dataverse requests per session; tokens reused.
    let reports = env
        .appliance
        .counts()
        .get("reporting")
        .copied()
        .unwrap_or(0);
    let api_before: u64 = env.dataverse.api_counts().values().sum();
    let tokens = (
        env.appliance.counts().get("token").copied(),
        env.dataverse.token_requests(),
    );
    let second = env.end_session(keyed("CAS-100"));
    env.host.wait_for_state("succeeded", 2).await;
    assert!(env.dataverse.row(&second).is_some());
    assert_eq!(
        env.appliance
            .counts()
            .get("reporting")
            .copied()
            .unwrap_or(0)
            - reports,
        1
    );
    assert_eq!(
        env.dataverse.api_counts().values().sum::<u64>() - api_before,
        2
    );
    assert_eq!(
        (
            env.appliance.counts().get("token").copied(),
            env.dataverse.token_requests()
        ),
        tokens,
        "no new token"
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sessions_of_existing_cases_with_allowed_prefixes_are_imported() {
    let env = Env::default().await;
    env.dataverse.add_case("CAS-1", "One");
    env.dataverse.add_case("INC-1", "Other prefix");
    env.configure(
        "Cases only",
        json!({"update_all_sessions": false, "allowed_prefixes": "cas, ABC"}),
    )
    .await;
    let imported = env.end_session(keyed("CAS-1"));
    let wrong_prefix = env.end_session(keyed("INC-1"));
    let no_case = env.end_session(keyed("CAS-404"));
    let no_key = env.end_session(SessionSpec::default());
    env.host.wait_for_state("succeeded", 1).await;
    let skipped = env.host.wait_for_state("skipped", 3).await;
    assert!(env.dataverse.row(&imported).is_some());
    assert_eq!(env.dataverse.snapshot().rows.len(), 1);
    let reason = |lsid: &str| {
        skipped
            .iter()
            .find(|e| e["lsid"] == lsid)
            .and_then(|e| e["result"].as_str())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        reason(&wrong_prefix),
        "the external key \"INC-1\" starts with none of the allowed prefixes (cas, ABC)"
    );
    assert_eq!(
        reason(&no_case),
        "no Case has the ticket number \"CAS-404\" (the session's external key)"
    );
    assert_eq!(
        reason(&no_key),
        "the session has no external key, and only sessions of existing cases are imported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_all_sessions_on_every_session_lands_and_prefixes_are_ignored() {
    let env = Env::default().await;
    let case = env.dataverse.add_case("INC-7", "Seven");
    env.configure(
        "Everything",
        json!({"update_all_sessions": true, "allowed_prefixes": "CAS"}),
    )
    .await;
    let linked = env.end_session(keyed("INC-7"));
    let unlinked = env.end_session(keyed("ZZZ-1"));
    let keyless = env.end_session(SessionSpec::default());
    env.host.wait_for_state("succeeded", 3).await;
    assert_eq!(env.row(&linked)["_bt_caseid_value"], case);
    assert!(!env.row(&unlinked).contains_key("_bt_caseid_value"));
    assert_eq!(
        env.row(&keyless)["bt_name"]
            .as_str()
            .map(|n| n.starts_with("BeyondTrust session ")),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survey_events_fill_their_columns_and_replays_change_nothing() {
    let env = Env::default().await;
    env.dataverse.add_case("CAS-5", "Five");
    env.configure("Main", json!({})).await;
    let lsid = env.end_session(keyed("CAS-5"));
    env.host.wait_for_state("succeeded", 1).await;
    env.appliance
        .submit_customer_survey(
            &lsid,
            vec![
                SurveyAnswer {
                    name: "rating".into(),
                    label: "How satisfied were you?".into(),
                    answer: "5".into(),
                },
                SurveyAnswer {
                    name: "comments".into(),
                    label: "Comments".into(),
                    answer: "Très bien".into(),
                },
            ],
        )
        .expect("survey");
    env.appliance
        .submit_rep_survey(
            &lsid,
            vec![SurveyAnswer {
                name: "resolved".into(),
                label: "Resolved?".into(),
                answer: "Yes".into(),
            }],
        )
        .expect("survey");
    env.host.wait_for_state("succeeded", 3).await;
    let row = env.row(&lsid);
    assert_eq!(
        row["bt_customersurvey"],
        "How satisfied were you?: 5\nComments: Très bien"
    );
    assert_eq!(row["bt_repsurvey"], "Resolved?: Yes");

    // The appliance sends the end event again later: the same row, no duplicate, nothing lost.
    let session = env.appliance.session(&lsid).expect("session");
    let end = session.end_time.expect("ended").to_string();
    let form = [
        ("event", "support_conference_end"),
        ("version", "3"),
        ("timestamp", end.as_str()),
        ("lsid", lsid.as_str()),
        ("external_key", "CAS-5"),
    ];
    let (status, answer) = env.host.post_event(None, &form).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    let later = (end.parse::<i64>().expect("ts") + 60).to_string();
    let replay = [
        ("event", "support_conference_end"),
        ("version", "3"),
        ("timestamp", later.as_str()),
        ("lsid", lsid.as_str()),
    ];
    env.host.post_event(None, &replay).await;
    env.host.wait_for_state("succeeded", 4).await;
    assert_eq!(env.dataverse.snapshot().rows.len(), 1);
    assert_eq!(env.row(&lsid), row, "a replay leaves the row as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_times_follow_the_zone_across_a_daylight_saving_change() {
    let env = Env::default().await;
    env.configure("Berlin", json!({"update_all_sessions": true, "import_timestamps_as_utc": false, "time_zone": "Europe/Berlin"})).await;
    // Starts 2025-03-30 00:30 UTC (01:30 CET), ends 01:30 UTC (03:30 CEST).
    let lsid = env.appliance.create_session(SessionSpec {
        start_time: Some(1_743_294_600),
        chat: vec![ChatLine {
            from: "rep".into(),
            text: "after the change".into(),
            offset_seconds: 3600,
        }],
        ..SessionSpec::default()
    });
    env.appliance
        .end_session(&lsid, Some(1_743_298_200))
        .expect("ends");
    env.host.wait_for_state("succeeded", 1).await;
    let row = env.row(&lsid);
    assert_eq!(
        (row["bt_starttime"].as_str(), row["bt_endtime"].as_str()),
        (Some("2025-03-30T01:30:00"), Some("2025-03-30T03:30:00"))
    );
    assert_eq!(
        row["bt_durationseconds"], 3600,
        "the duration is real time, not wall-clock difference"
    );
    assert!(
        row["bt_transcript"]
            .as_str()
            .is_some_and(|t| t.contains("2025-03-30T03:30:00 Chat Message")),
        "{row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_over_the_column_limit_goes_whole_into_a_note() {
    let env = Env::default().await;
    env.configure("Main", json!({"update_all_sessions": true}))
        .await;
    let chunk = "é".repeat(400_000);
    let chat = (0..3)
        .map(|i| ChatLine {
            from: "customer".into(),
            text: format!("{i}{chunk}"),
            offset_seconds: i,
        })
        .collect();
    let lsid = env.end_session(SessionSpec {
        chat,
        ..SessionSpec::default()
    });
    env.host.wait_for_state("succeeded", 1).await;
    let row = env.row(&lsid);
    let column = row["bt_transcript"].as_str().unwrap_or_default();
    assert_eq!(column.chars().count(), 1_048_576);
    assert!(column.ends_with("attached to this session]"));
    let notes = env.dataverse.snapshot().annotations;
    assert_eq!(notes.len(), 1);
    let document = notes[0].document.as_deref().unwrap_or_default();
    assert!(document.chars().count() > 1_200_000 && document.contains("2é"));
    assert_eq!(
        notes[0].object_id,
        row["bt_sessionid"].as_str().unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_namespace_report_is_read_the_same() {
    let env = Env::start(
        ApplianceOptions {
            old_namespace: true,
            ..Default::default()
        },
        DataverseOptions::default(),
    )
    .await;
    env.dataverse.add_case("CAS-9", "Nine");
    env.configure("Old appliance", json!({})).await;
    let lsid = env.end_session(keyed("CAS-9"));
    env.host.wait_for_state("succeeded", 1).await;
    assert_eq!(env.row(&lsid)["bt_externalkey"], "CAS-9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_tokens_are_renewed_on_both_sides() {
    let env = Env::default().await;
    env.configure("Main", json!({"update_all_sessions": true}))
        .await;
    env.appliance.set_token_lifetime(Duration::from_secs(2));
    let first = env.end_session(SessionSpec::default());
    env.host.wait_for_state("succeeded", 1).await;
    // Wait until the appliance token has expired, then another session.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.appliance.valid_tokens() > 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = env.end_session(SessionSpec::default());
    env.host.wait_for_state("succeeded", 2).await;
    assert_eq!(
        env.appliance.counts().get("token"),
        Some(&2),
        "a new token once the old one expired"
    );
    // Revoked on both sides: one 401 each, a new token each, the same event succeeds.
    env.appliance.set_token_lifetime(Duration::from_secs(3600));
    env.appliance.revoke_tokens();
    env.dataverse.revoke_tokens();
    let tokens_before = env.dataverse.token_requests();
    let third = env.end_session(SessionSpec::default());
    env.host.wait_for_state("succeeded", 3).await;
    for lsid in [&first, &second, &third] {
        assert!(env.dataverse.row(lsid).is_some());
    }
    assert_eq!(
        env.history(&third).await[0]["attempts"],
        1,
        "renewed within the attempt"
    );
    assert_eq!(env.dataverse.token_requests(), tokens_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_honoured_5xx_retried_and_permanent_errors_fail_with_the_message() {
    let env = Env::start(
        ApplianceOptions::default(),
        DataverseOptions {
            limits: Limits {
                requests: Some(2),
                window_seconds: 2,
                concurrent: None,
            },
            ..Default::default()
        },
    )
    .await;
    env.configure("Main", json!({"update_all_sessions": true}))
        .await;
    let sessions: Vec<String> = (0..3)
        .map(|_| env.end_session(SessionSpec::default()))
        .collect();
    env.host.wait_for_state("succeeded", 3).await;
    let (early, throttled) = env.dataverse.throttle_report();
    assert!(throttled >= 1, "the limit was reached");
    assert_eq!(early, 0, "no request came before Retry-After ended");
    for lsid in &sessions {
        assert!(env.dataverse.row(lsid).is_some());
    }
    env.dataverse.set_limits(Limits::default());

    env.dataverse.arm(FaultRule {
        fault: Fault::Status { status: 503 },
        count: 1,
        endpoint: Some("bt_sessions".into()),
    });
    let retried = env.end_session(SessionSpec::default());
    env.host.wait_for_state("succeeded", 4).await;
    assert_eq!(env.history(&retried).await[0]["attempts"], 2);

    env.dataverse.revoke_privilege("prvCreatebt_session");
    let refused = env.end_session(SessionSpec::default());
    let failed = env.host.wait_for_state("failed", 1).await;
    assert_eq!(failed[0]["lsid"], refused.as_str());
    assert_eq!(failed[0]["attempts"], 1, "a permanent error is not retried");
    let error = failed[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("Dataverse answered HTTP 403 to the session upsert: Principal user"),
        "{error}"
    );
    assert!(
        error.contains("is missing prvCreatebt_session privilege"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_takes_each_session_once_with_ties_at_the_cursor() {
    let env = Env::default().await;
    let id = env
        .configure("Poller", json!({"update_all_sessions": true, "outbound_event_types": [], "retry_outbound_event_types": [],
            "polling_event_types": ["support_conference_end"], "polling_interval_seconds": 30}))
        .await;
    env.host
        .post_empty(&format!("/api/configurations/{id}/disable"))
        .await;
    let now = chrono_now();
    let end = |at: i64| {
        let lsid = env.appliance.create_session(SessionSpec {
            start_time: Some(at - 60),
            ..SessionSpec::default()
        });
        env.appliance.end_session(&lsid, Some(at)).expect("ends");
        lsid
    };
    let (a, b) = (end(now + 5), end(now + 5));
    let reports_before = env
        .appliance
        .counts()
        .get("reporting")
        .copied()
        .unwrap_or(0);
    env.host
        .post_empty(&format!("/api/configurations/{id}/enable"))
        .await;
    env.host.wait_for_state("succeeded", 2).await;
    assert_eq!(
        env.appliance
            .counts()
            .get("reporting")
            .copied()
            .unwrap_or(0)
            - reports_before,
        1,
        "one report call for the poll, none per session"
    );
    // Another session ends in the same second as the cursor, one later.
    let (c, d) = (end(now + 5), end(now + 6));
    env.host
        .post_empty(&format!("/api/configurations/{id}/disable"))
        .await;
    env.host
        .post_empty(&format!("/api/configurations/{id}/enable"))
        .await;
    let done = env.host.wait_for_state("succeeded", 4).await;
    let mut polled: Vec<String> = done
        .iter()
        .filter_map(|e| e["lsid"].as_str().map(str::to_owned))
        .collect();
    polled.sort();
    let mut expected = vec![a, b, c, d];
    expected.sort();
    assert_eq!(polled, expected, "each once");
    assert!(done.iter().all(|e| e["source"] == "polling"));
    assert_eq!(env.dataverse.snapshot().rows.len(), 4);
}

async fn test_report(env: &Env, name: &str, overrides: Value) -> Value {
    // Created directly: these configurations must not provision anything.
    let body = json!({"plugin": "dynamics365", "name": name, "settings": env.settings(overrides)});
    let (status, created) = env.host.post("/api/configurations", &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    let (status, report) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(status, 200);
    report
}

fn check<'a>(report: &'a Value, name: &str) -> (bool, &'a str) {
    let c = report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name));
    c.map(|c| {
        (
            c["ok"].as_bool().unwrap_or(false),
            c["detail"].as_str().unwrap_or(""),
        )
    })
    .unwrap_or((false, "no such check"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_test_check_fails_with_its_own_message_when_its_piece_is_broken() {
    let env = Env::start(ApplianceOptions::default(), DataverseOptions::default()).await;
    let all = test_report(&env, "Good", json!({})).await;
    assert_eq!(all["ok"], true, "{all}");
    let names: Vec<&str> = all["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "B Series appliance reachable",
            "B Series OAuth",
            "B Series reporting permission",
            "Entra ID token",
            "Dataverse reachable (WhoAmI)",
            "BeyondTrust Session table",
            "Case read permission"
        ]
    );

    let unreachable = test_report(&env, "Unreachable", json!({"bt_hostname": "127.0.0.1:9"})).await;
    let (ok, detail) = check(&unreachable, "B Series appliance reachable");
    assert!(!ok && detail.contains("cannot connect"), "{detail}");

    let only_dataverse_cert = env._dir.path().join("dataverse-only.pem");
    std::fs::copy(&env.dataverse.cert_path, &only_dataverse_cert).expect("copy");
    let untrusted = test_report(
        &env,
        "Untrusted",
        json!({"ca_certificate_file": only_dataverse_cert.to_str()}),
    )
    .await;
    let (ok, detail) = check(&untrusted, "B Series appliance reachable");
    assert!(
        !ok && detail.contains("certificate is not trusted"),
        "{detail}"
    );

    let bad_secret = test_report(&env, "Bad BT secret", json!({"bt_client_secret": "wrong"})).await;
    let (ok, detail) = check(&bad_secret, "B Series OAuth");
    assert!(
        !ok && detail.contains("refused the OAuth client ID and secret"),
        "{detail}"
    );

    let bad_azure = test_report(
        &env,
        "Bad Azure secret",
        json!({"azure_client_secret": "wrong"}),
    )
    .await;
    let (ok, detail) = check(&bad_azure, "Entra ID token");
    assert!(
        !ok && detail.starts_with(
            "Entra ID refused the credentials: AADSTS7000215: Invalid client secret provided."
        ),
        "{detail}"
    );

    env.appliance.set_reporting_allowed(false);
    env.dataverse.arm(FaultRule {
        fault: Fault::Status { status: 503 },
        count: 1,
        endpoint: Some("WhoAmI".into()),
    });
    let broken = test_report(&env, "Broken pieces", json!({})).await;
    let (ok, detail) = check(&broken, "B Series reporting permission");
    assert!(
        !ok && detail.contains("Allow Access to Support Session Reports and Recordings"),
        "{detail}"
    );
    let (ok, detail) = check(&broken, "Dataverse reachable (WhoAmI)");
    assert!(!ok && detail.contains("HTTP 503"), "{detail}");

    env.dataverse.revoke_privilege("prvReadIncident");
    env.dataverse.drop_table("bt_session");
    let no_table = test_report(&env, "No table", json!({})).await;
    let (ok, detail) = check(&no_table, "BeyondTrust Session table");
    assert!(
        !ok && detail.contains("does not exist in this environment: run the \"provision\" action"),
        "{detail}"
    );
    let (ok, detail) = check(&no_table, "Case read permission");
    assert!(
        !ok && detail.contains("missing prvReadIncident"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_an_empty_environment_creates_exactly_the_definition_once() {
    let env = Env::start(ApplianceOptions::default(), unprovisioned()).await;
    let body =
        json!({"plugin": "dynamics365", "name": "Fresh", "settings": env.settings(json!({}))});
    let (_, created) = env.host.post("/api/configurations", &body).await;
    let id = created["id"].as_i64().expect("id");
    let (status, actions) = env
        .host
        .get(&format!("/api/configurations/{id}/actions"))
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = actions
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, vec!["provision", "check-schema"]);

    let (_, before) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/check-schema"))
        .await;
    assert_eq!(before["ok"], false);
    assert_eq!(
        before["checks"][0],
        json!({"name": "table bt_session", "ok": false, "detail": "missing: run the \"provision\" action"})
    );

    let (status, report) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/provision"))
        .await;
    assert_eq!(
        (status, report["ok"].as_bool()),
        (200, Some(true)),
        "{report}"
    );
    let progress: Vec<&str> = report["progress"]
        .as_array()
        .expect("progress")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for line in [
        "creating table bt_session",
        "alternate key index: Pending",
        "alternate key index: InProgress",
        "alternate key index: Active",
        "publishing the customizations",
    ] {
        assert!(
            progress.contains(&line),
            "no progress line {line:?} in {progress:?}"
        );
    }
    // Exactly the definition: what the simulator would have been seeded with.
    let made = env.dataverse.table("bt_session").expect("created");
    let defined = simulators::dataverse::model::TableMeta::from_definition(
        simulators::dataverse::model::BT_SESSION_DEFINITION,
    )
    .expect("definition");
    let shape = |t: &simulators::dataverse::model::TableMeta| {
        // Each column as (logical name, type, length, behavior, lookup target), sorted.
        let mut columns: Vec<String> = t
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {:?} {:?} {:?} {:?}",
                    c.logical_name, c.kind, c.max_length, c.behavior, c.target
                )
            })
            .collect();
        columns.sort();
        let keys: Vec<(Vec<String>, String)> = t
            .keys
            .iter()
            .map(|k| (k.columns.clone(), k.schema_name.clone()))
            .collect();
        (
            t.schema_name.clone(),
            t.entity_set.clone(),
            t.primary_id.clone(),
            t.primary_name.clone(),
            t.has_notes,
            columns,
            keys,
        )
    };
    assert_eq!(shape(&made), shape(&defined));
    let made_here = env.dataverse.customizations();
    let (publishers, solutions, published, components) = (
        made_here.publishers,
        made_here.solutions,
        made_here.publish_calls,
        made_here.components,
    );
    assert!(publishers.contains(&("beyondtrustmiddleware".to_owned(), "bt".to_owned())));
    assert!(solutions.contains(&"BeyondTrustMiddlewareEngine".to_owned()));
    assert_eq!(published, 1);
    assert!(
        components
            .iter()
            .all(|(solution, _)| solution == "BeyondTrustMiddlewareEngine"),
        "{components:?}"
    );
    assert_eq!(
        components.len(),
        1 + 21 + 1 + 1,
        "the table, 21 more columns, the lookup, the key"
    );

    let (_, again) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/provision"))
        .await;
    assert_eq!(
        again["checks"],
        json!([{"name": "Provisioning", "ok": true, "detail": "nothing to do: bt_session already matches the definition"}])
    );
    assert_eq!(
        env.dataverse.customizations().publish_calls,
        1,
        "nothing published again"
    );
    let (_, after) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/check-schema"))
        .await;
    assert_eq!(after["ok"], true, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_column_is_reported_and_left_alone() {
    let env = Env::start(ApplianceOptions::default(), DataverseOptions::default()).await;
    env.dataverse
        .alter_column("bt_session", "bt_name", |c| c.max_length = Some(100));
    let id = env.configure("Drifted", json!({})).await;
    let (_, report) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/provision"))
        .await;
    assert_eq!(report["ok"], false);
    let drift = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "column bt_name"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        drift["detail"],
        "has length 100, the definition says 200; not changed: fix it in Dynamics"
    );
    assert_eq!(
        env.dataverse
            .table("bt_session")
            .and_then(|t| t.column("bt_name").and_then(|c| c.max_length)),
        Some(100)
    );
    let (_, test) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    let table = test["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "BeyondTrust Session table"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(table["ok"], false);
    assert_eq!(table["detail"], "column bt_name has length 100, the definition says 200; run the \"check schema\" action for details");

    // The same from the command line, on the engine's data folder.
    let output = env.host.cli(&["action", "Drifted", "check-schema"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("check-schema on \"Drifted\" (dynamics365):"),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED  column bt_name: has length 100, the definition says 200; not changed by provisioning: fix it in Dynamics"), "{stdout}");
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_stop_provisioning_with_dataverses_message() {
    let env = Env::start(ApplianceOptions::default(), unprovisioned()).await;
    env.dataverse.revoke_privilege("prvCreateEntity");
    let body = json!({"plugin": "dynamics365", "name": "Unprivileged", "settings": env.settings(json!({}))});
    let (_, created) = env.host.post("/api/configurations", &body).await;
    let id = created["id"].as_i64().expect("id");
    let (_, report) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/provision"))
        .await;
    assert_eq!(report["ok"], false);
    let last = report["checks"]
        .as_array()
        .and_then(|c| c.last())
        .cloned()
        .unwrap_or_default();
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(
            "Dataverse answered HTTP 403 to creating table bt_session: Principal user"
        ),
        "{detail}"
    );
    assert!(
        detail.contains("is missing prvCreateEntity privilege"),
        "{detail}"
    );
    assert!(env.dataverse.table("bt_session").is_none());
    let (status, body) = env
        .host
        .post_empty(&format!("/api/configurations/{id}/actions/explode"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("the plugin offers no action \"explode\""))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_remotes_delay_events_but_every_one_completes() {
    let env = Env::default().await;
    env.configure("Main", json!({"update_all_sessions": true}))
        .await;
    let rule = |fault: Fault, count: u32, endpoint: &str| FaultRule {
        fault,
        count,
        endpoint: Some(endpoint.into()),
    };
    // Resets and 5xx from the appliance, slow and failing Dataverse, revoked tokens.
    env.appliance.arm(rule(Fault::Reset, 2, "reporting"));
    env.appliance
        .arm(rule(Fault::Status { status: 500 }, 2, "reporting"));
    env.dataverse
        .arm(rule(Fault::Slow { millis: 1500 }, 2, "bt_sessions"));
    env.dataverse
        .arm(rule(Fault::Status { status: 502 }, 2, "incidents"));
    env.dataverse.arm(rule(Fault::Reset, 1, "bt_sessions"));
    let sessions: Vec<String> = (0..6)
        .map(|_| env.end_session(SessionSpec::default()))
        .collect();
    env.appliance.revoke_tokens();
    env.dataverse.revoke_tokens();
    env.host.wait_for_state("succeeded", 6).await;
    for lsid in &sessions {
        assert!(env.dataverse.row(lsid).is_some(), "{lsid} landed");
    }
    assert!(
        env.host.events("state=failed").await.is_empty(),
        "nothing failed that a retry could save"
    );
    let retried: i64 = env
        .host
        .events("")
        .await
        .iter()
        .filter_map(|e| e["attempts"].as_i64())
        .map(|a| a - 1)
        .sum();
    assert!(retried >= 3, "the faults cost retries ({retried})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_of_session_ends_loses_no_row_and_doubles_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ApplianceOptions {
        retry_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let appliance = Appliance::start(options, dir.path())
        .await
        .expect("appliance");
    let dataverse = Dataverse::start(DataverseOptions::default(), dir.path())
        .await
        .expect("dataverse");
    let mut bundle = std::fs::read_to_string(&dataverse.cert_path).expect("cert");
    bundle.push_str(
        &std::fs::read_to_string(appliance.cert_path.as_ref().expect("tls")).expect("cert"),
    );
    let ca_bundle = dir.path().join("trusted.pem");
    std::fs::write(&ca_bundle, bundle).expect("bundle");
    let plugins = PluginsDir::new();
    plugins.add("dynamics365", "plugin_dynamics");
    // A fixed event port, so that the appliance finds the engine again after the restart.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let listen = format!("127.0.0.1:{port}");
    let mut host = TestHost::start_with_env(&plugins, &[("MWE_EVENT_LISTEN", listen.as_str())]);
    let settings = settings_for(
        &appliance,
        &dataverse,
        &ca_bundle,
        json!({"update_all_sessions": true}),
    );
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "dynamics365", "name": "Burst", "settings": settings}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    appliance.add_recipient(&format!("http://{listen}/ERSPost"));

    const TOTAL: usize = 300;
    let lsids: Vec<String> = (0..TOTAL)
        .map(|_| {
            let lsid = appliance.create_session(SessionSpec::default());
            appliance.end_session(&lsid, None).expect("ends");
            lsid
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dataverse.snapshot().rows.len() < TOTAL / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill();
    assert!(
        dataverse.snapshot().rows.len() < TOTAL,
        "the engine died during the burst"
    );
    // The appliance keeps re-sending its head event until the engine answers again.
    let host = host.start_again();
    host.wait_for_state("succeeded", TOTAL).await;
    let rows = dataverse.snapshot().rows;
    assert_eq!(rows.len(), TOTAL, "one row per session, none twice");
    for lsid in &lsids {
        assert!(
            rows.iter().any(|r| r["bt_lsid"] == lsid.as_str()),
            "{lsid} has a row"
        );
    }
    assert_eq!(
        host.events("limit=1000").await.len(),
        TOTAL,
        "each accepted event stored once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_writes_in_batches_and_a_failing_session_fails_alone() {
    let env = Env::default().await;
    for n in 0..6 {
        env.dataverse.add_case(&format!("CAS-{n}"), "Printer");
    }
    // Outbound events are not taken: the sessions reach Dynamics only by the backfill.
    let id = env
        .configure(
            "Bulk",
            json!({"outbound_event_types": [], "retry_outbound_event_types": []}),
        )
        .await;
    let ended = chrono_now() - 600;
    let lsids: Vec<String> = (0..6)
        .map(|n| {
            let lsid = env.appliance.create_session(SessionSpec {
                external_key: Some(format!("CAS-{n}")),
                start_time: Some(ended - 300),
                ..SessionSpec::default()
            });
            env.appliance.end_session(&lsid, Some(ended)).expect("ends");
            lsid
        })
        .collect();
    let refused = lsids[2].clone();
    env.dataverse
        .fail_writes(simulators::dataverse::WriteFault::new(&refused));
    env.dataverse.reset_counts();

    let (status, started) = env
        .host
        .post(
            &format!("/api/configurations/{id}/backfill"),
            &json!({"since": ended - 60}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let backfill = started["id"].as_i64().expect("id");
    let done = crate::bulk::wait_backfill(&env.host, backfill).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (
            done["found"].as_i64(),
            done["imported"].as_i64(),
            done["failed"].as_i64()
        ),
        (Some(6), Some(5), Some(1)),
        "{done}"
    );
    for lsid in &lsids {
        if *lsid == refused {
            assert!(
                env.dataverse.row(lsid).is_none(),
                "the refused session has no row"
            );
        } else {
            assert!(env.dataverse.row(lsid).is_some(), "{lsid} landed");
        }
    }
    // Its outbound event was ignored (no configuration takes them); the backfill's failed.
    let history: Vec<Value> = env
        .history(&refused)
        .await
        .into_iter()
        .filter(|e| e["source"] == "backfill")
        .collect();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["state"], "failed", "{history:?}");
    assert!(
        history[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("0x80040265")),
        "Dataverse's message is in the history: {history:?}"
    );
    // Six sessions, written through $batch: far fewer requests than two per session.
    assert!(env.dataverse.api_count("$batch") >= 1);
    // (Operations inside a batch are counted apart, as `$batch/<endpoint>`.)
    let requests: u64 = env
        .dataverse
        .api_counts()
        .iter()
        .filter(|(endpoint, _)| !endpoint.starts_with("$batch/"))
        .map(|(_, n)| n)
        .sum();
    assert!(requests < 6, "{:?}", env.dataverse.api_counts());
}
