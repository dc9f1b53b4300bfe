//! The appliance simulator against the documented behaviour, error paths included.

use std::time::Duration;

use simulators::appliance::model::{ChatLine, SessionSpec, SurveyAnswer};
use simulators::appliance::{Appliance, ApplianceOptions};
use simulators::common::{Fault, FaultRule};

struct Sim {
    appliance: Appliance,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(options: ApplianceOptions) -> Sim {
    let dir = tempfile::tempdir().expect("tempdir");
    let appliance = Appliance::start(options, dir.path()).await.expect("starts");
    let mut builder = reqwest::Client::builder();
    if let Some(cert) = &appliance.cert_path {
        let pem = std::fs::read(cert).expect("cert");
        builder = builder.tls_certs_merge([reqwest::Certificate::from_pem(&pem).expect("pem")]);
    }
    Sim {
        appliance,
        http: builder.build().expect("client"),
        _dir: dir,
    }
}

impl Sim {
    async fn token_with(&self, id: &str, secret: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/oauth2/token", self.appliance.base_url))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("answer");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn token(&self) -> String {
        let (status, body) = self
            .token_with(&self.appliance.client_id, &self.appliance.client_secret())
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("token").to_owned()
    }

    async fn report(&self, token: &str, query: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}/api/reporting?{query}", self.appliance.base_url))
            .bearer_auth(token)
            .send()
            .await
            .expect("answer");
        (r.status().as_u16(), r.text().await.expect("text"))
    }
}

fn ended(sim: &Sim, spec: SessionSpec, end: i64) -> String {
    let lsid = sim.appliance.create_session(spec);
    sim.appliance.end_session(&lsid, Some(end)).expect("ends");
    lsid
}

#[tokio::test]
async fn oauth_issues_tokens_and_refuses_wrong_credentials_and_grants() {
    let sim = start(ApplianceOptions::default()).await;
    let (status, body) = sim
        .token_with(&sim.appliance.client_id, &sim.appliance.client_secret())
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["token_type"].as_str(), body["expires_in"].as_u64()),
        (Some("Bearer"), Some(3600))
    );
    let (status, body) = sim.token_with(&sim.appliance.client_id, "wrong").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let r = sim
        .http
        .post(format!("{}/oauth2/token", sim.appliance.base_url))
        .basic_auth(
            &sim.appliance.client_id,
            Some(sim.appliance.client_secret()),
        )
        .form(&[("grant_type", "password")])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 400);
    let r = sim
        .http
        .post(format!("{}/oauth2/token", sim.appliance.base_url))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 401, "no Basic credentials");
}

#[tokio::test]
async fn the_31st_token_invalidates_the_oldest_and_rotation_invalidates_all() {
    let sim = start(ApplianceOptions::default()).await;
    let first = sim.token().await;
    let mut last = String::new();
    for _ in 0..30 {
        last = sim.token().await;
    }
    assert_eq!(sim.appliance.valid_tokens(), 30);
    let (status, body) = sim
        .report(&first, "generate_report=SupportSession&lsid=x")
        .await;
    assert_eq!(status, 401);
    assert!(
        body.contains(
            "<error xmlns=\"http://www.beyondtrust.com/sra/namespaces/API/reporting\">Login failed"
        ),
        "{body}"
    );
    let (status, _) = sim
        .report(&last, "generate_report=SupportSession&lsid=x")
        .await;
    assert_eq!(status, 200);

    let old_secret = sim.appliance.client_secret();
    sim.appliance.rotate_secret("new-secret-value");
    assert_eq!(
        sim.report(&last, "generate_report=SupportSession&lsid=x")
            .await
            .0,
        401
    );
    assert_eq!(
        sim.token_with(&sim.appliance.client_id, &old_secret)
            .await
            .0,
        401
    );
    assert_eq!(
        sim.token_with(&sim.appliance.client_id, "new-secret-value")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let sim = start(ApplianceOptions::default()).await;
    sim.appliance.set_token_lifetime(Duration::ZERO);
    let token = sim.token().await;
    assert_eq!(
        sim.report(&token, "generate_report=SupportSession&lsid=x")
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_session_report_has_the_reference_elements() {
    let sim = start(ApplianceOptions::default()).await;
    let token = sim.token().await;
    let spec = SessionSpec {
        external_key: Some("CAS-01234 & <Co>".into()),
        start_time: Some(1_764_230_400),
        chat: vec![ChatLine {
            from: "rep".into(),
            text: "Hello, how can I help? ü".into(),
            offset_seconds: 60,
        }],
        file_transfer_count: 2,
        ..SessionSpec::default()
    };
    let lsid = ended(&sim, spec, 1_764_231_302);
    sim.appliance
        .submit_customer_survey(
            &lsid,
            vec![SurveyAnswer {
                name: "rating".into(),
                label: "How did we do?".into(),
                answer: "5".into(),
            }],
        )
        .expect("survey");
    let (status, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportSession&lsid={lsid}&locale=de-de"),
        )
        .await;
    assert_eq!(status, 200);
    for expected in [
        "<session_list xmlns=\"http://www.beyondtrust.com/sra/namespaces/API/reporting\"",
        &format!("<session lsid=\"{lsid}\">"),
        "<session_type>support</session_type>",
        "<start_time timestamp=\"1764230400\">2025-11-27T08:00:00+00:00</start_time>",
        "<end_time timestamp=\"1764231302\">2025-11-27T08:15:02+00:00</end_time>",
        "<duration>00:15:02</duration>",
        "<external_key>CAS-01234 &amp; &lt;Co&gt;</external_key>",
        "<file_transfer_count>2</file_transfer_count>",
        "<primary_customer gsnumber=\"3\">Ana Müller</primary_customer>",
        "<primary_rep gsnumber=\"2\" id=\"7\">Sam Rep</primary_rep>",
        "<hostname>ANA-LAPTOP</hostname>",
        "<display_name>Sam Rep</display_name>",
        "event_type=\"Chat Message\"",
        "<body>Hello, how can I help? ü</body>",
        "<session_chat_view_url>",
        "<cust_exit_survey gsnumber=\"3\"><value name=\"rating\" value=\"5\" /></cust_exit_survey>",
    ] {
        assert!(xml.contains(expected), "missing {expected:?} in\n{xml}");
    }
    assert_eq!(
        sim.appliance
            .last_reporting_params()
            .get("locale")
            .map(String::as_str),
        Some("de-de")
    );
}

#[tokio::test]
async fn time_range_selectors_follow_the_documented_rules() {
    let sim = start(ApplianceOptions::default()).await;
    let token = sim.token().await;
    let early = ended(
        &sim,
        SessionSpec {
            start_time: Some(1000),
            ..Default::default()
        },
        2000,
    );
    let tie_a = ended(
        &sim,
        SessionSpec {
            start_time: Some(1500),
            ..Default::default()
        },
        3000,
    );
    let tie_b = ended(
        &sim,
        SessionSpec {
            start_time: Some(1600),
            ..Default::default()
        },
        3000,
    );
    let running = sim.appliance.create_session(SessionSpec {
        start_time: Some(2500),
        ..Default::default()
    });
    let lsids = |xml: &str| -> Vec<String> {
        xml.split("<session lsid=\"")
            .skip(1)
            .filter_map(|p| p.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    // end_time: ended sessions only, from the cursor on (ties included); 0 = until now.
    let (_, xml) = sim
        .report(
            &token,
            "generate_report=SupportSession&end_time=3000&duration=0",
        )
        .await;
    assert_eq!(lsids(&xml), vec![tie_a.clone(), tie_b.clone()]);
    let (_, xml) = sim
        .report(
            &token,
            "generate_report=SupportSession&end_time=1000&duration=1500",
        )
        .await;
    assert_eq!(lsids(&xml), vec![early.clone()]);
    // start_time includes running sessions.
    let (_, xml) = sim
        .report(
            &token,
            "generate_report=SupportSession&start_time=2000&duration=0",
        )
        .await;
    assert_eq!(lsids(&xml), vec![running.clone()]);
    let (_, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportSession&lsids={early},{tie_b}"),
        )
        .await;
    assert_eq!(lsids(&xml).len(), 2);
    let (_, xml) = sim
        .report(
            &token,
            "generate_report=SupportSession&start_date=1970-01-01&duration=1",
        )
        .await;
    assert_eq!(lsids(&xml).len(), 4);
    let (_, xml) = sim
        .report(
            &token,
            "generate_report=SupportSessionListing&end_time=0&duration=0",
        )
        .await;
    assert!(
        xml.contains("<session_summary_list") && xml.matches("<session_summary lsid=").count() == 3,
        "{xml}"
    );
    let (_, xml) = sim
        .report(
            &token,
            "generate_report=SupportSession&end_time=0&duration=0&limit=1",
        )
        .await;
    assert_eq!(lsids(&xml).len(), 1);
}

#[tokio::test]
async fn errors_come_as_an_error_root() {
    let sim = start(ApplianceOptions::default()).await;
    let token = sim.token().await;
    let cases = [
        (
            "generate_report=SupportSession&lsid=nope",
            "No Support report information matching your chosen criteria is available.",
        ),
        (
            "generate_report=SupportSession",
            "Specify lsid, lsids, start_time, end_time, start_date or end_date.",
        ),
        (
            "generate_report=SupportSession&end_time=10",
            "The duration parameter is required with a start or end time.",
        ),
        (
            "generate_report=SupportSession&end_time=soon&duration=0",
            "Invalid timestamp: soon.",
        ),
        (
            "generate_report=Everything&lsid=x",
            "Invalid report type: Everything",
        ),
        ("lsid=x", "The generate_report parameter is required."),
    ];
    for (query, message) in cases {
        let (status, xml) = sim.report(&token, query).await;
        assert_eq!(status, 200, "{query}");
        assert!(
            xml.contains(&format!(">{message}</error>")),
            "{query}: {xml}"
        );
    }
    sim.appliance.set_reporting_allowed(false);
    let (_, xml) = sim
        .report(&token, "generate_report=SupportSession&lsid=x")
        .await;
    assert!(
        xml.contains("You do not have permission to access support session reports."),
        "{xml}"
    );
}

#[tokio::test]
async fn reports_lag_the_end_event_when_asked_and_use_the_old_namespace_when_asked() {
    let sim = start(ApplianceOptions {
        old_namespace: true,
        ..Default::default()
    })
    .await;
    let token = sim.token().await;
    let lsid = ended(
        &sim,
        SessionSpec {
            report_delay_seconds: 3600.0,
            ..Default::default()
        },
        5000,
    );
    let (_, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportSession&lsid={lsid}"),
        )
        .await;
    assert!(
        xml.contains(
            "<error xmlns=\"http://www.bomgar.com/namespaces/API/reporting\">No Support report"
        ),
        "{xml}"
    );
    let shown = ended(&sim, SessionSpec::default(), 5000);
    let (_, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportSession&lsid={shown}"),
        )
        .await;
    assert!(
        xml.contains("<session_list xmlns=\"http://www.bomgar.com/namespaces/API/reporting\""),
        "{xml}"
    );
}

#[tokio::test]
async fn exit_survey_reports_and_api_info() {
    let sim = start(ApplianceOptions::default()).await;
    let token = sim.token().await;
    let lsid = ended(&sim, SessionSpec::default(), 5000);
    sim.appliance
        .submit_rep_survey(
            &lsid,
            vec![SurveyAnswer {
                name: "resolved".into(),
                label: "Resolved?".into(),
                answer: "Yes".into(),
            }],
        )
        .expect("survey");
    let (_, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportRepExitSurvey&lsid={lsid}&report_type=rep&id=all"),
        )
        .await;
    assert!(
        xml.contains(&format!("<exit_survey lsid=\"{lsid}\"")),
        "{xml}"
    );
    assert!(
        xml.contains("label=\"Resolved?\" name=\"resolved\""),
        "{xml}"
    );
    assert!(
        xml.contains("<answer_list><answer>Yes</answer></answer_list>"),
        "{xml}"
    );
    let (_, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportCustExitSurvey&lsid={lsid}"),
        )
        .await;
    assert!(
        xml.contains("No Support report information"),
        "no customer survey yet: {xml}"
    );
    let r = sim
        .http
        .get(format!(
            "{}/api/command?action=get_api_info",
            sim.appliance.base_url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    let xml = r.text().await.expect("text");
    assert!(
        xml.contains("<api_information")
            && xml.contains("<permission name=\"perm_reporting_support\">1</permission>"),
        "{xml}"
    );
}

#[tokio::test]
async fn faults_are_injected_and_calls_counted() {
    let sim = start(ApplianceOptions::default()).await;
    let token = sim.token().await;
    let arm = |fault: Fault| {
        sim.appliance.arm(FaultRule {
            fault,
            count: 1,
            endpoint: Some("reporting".into()),
        })
    };
    arm(Fault::Status { status: 503 });
    assert_eq!(
        sim.report(&token, "generate_report=SupportSession&lsid=x")
            .await
            .0,
        503
    );
    arm(Fault::Error {
        message: "Database busy".into(),
    });
    let (status, xml) = sim
        .report(&token, "generate_report=SupportSession&lsid=x")
        .await;
    assert!(
        status == 200 && xml.contains(">Database busy</error>"),
        "{xml}"
    );
    arm(Fault::Reset);
    let r = sim
        .http
        .get(format!(
            "{}/api/reporting?generate_report=SupportSession&lsid=x",
            sim.appliance.base_url
        ))
        .bearer_auth(&token)
        .send()
        .await;
    let broken = match r {
        Err(_) => true,
        Ok(r) => r.text().await.is_err(),
    };
    assert!(broken, "the connection breaks");
    arm(Fault::Slow { millis: 300 });
    let started = std::time::Instant::now();
    sim.report(&token, "generate_report=SupportSession&lsid=x")
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let counts = sim.appliance.counts();
    assert_eq!(
        (counts.get("token"), counts.get("reporting")),
        (Some(&1), Some(&4))
    );
}

#[tokio::test]
async fn outbound_events_are_sent_in_order_and_the_head_resent_until_200() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let refusals = Arc::new(std::sync::atomic::AtomicU32::new(2));
    let app = {
        let (received, refusals) = (Arc::clone(&received), Arc::clone(&refusals));
        axum::Router::new().route(
            "/ERSPost",
            axum::routing::post(move |body: String| {
                let (received, refusals) = (Arc::clone(&received), Arc::clone(&refusals));
                async move {
                    received.lock().expect("lock").push(body);
                    if refusals.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                        refusals.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    axum::http::StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = start(ApplianceOptions {
        retry_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    sim.appliance
        .add_recipient(&format!("http://127.0.0.1:{port}/ERSPost?appliance=West"));
    let first = ended(
        &sim,
        SessionSpec {
            external_key: Some("CAS-1".into()),
            start_time: Some(50),
            ..Default::default()
        },
        100,
    );
    sim.appliance
        .submit_customer_survey(&first, vec![])
        .expect("survey");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim.appliance.deliveries()[0].delivered < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {:?}",
            sim.appliance.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = received.lock().expect("lock").clone();
    assert_eq!(
        got.len(),
        4,
        "two refusals of the head, then both events: {got:?}"
    );
    assert!(
        got[..3]
            .iter()
            .all(|b| b.contains("event=support_conference_end")),
        "the head is resent before anything else"
    );
    assert!(
        got[0].contains(&format!("lsid={first}"))
            && got[0].contains("external_key=CAS-1")
            && got[0].contains("version=")
            && got[0].contains("timestamp=100")
    );
    assert!(got[3].contains("event=support_conference_customer_exit_survey_completed"));
    assert_eq!(sim.appliance.deliveries()[0].attempts, 4);
}

#[tokio::test]
async fn the_control_api_drives_sessions_over_http() {
    let sim = start(ApplianceOptions::default()).await;
    let base = &sim.appliance.base_url;
    let created: serde_json::Value = sim
        .http
        .post(format!("{base}/control/sessions"))
        .json(&serde_json::json!({"external_key": "INC-7", "customer": {"name": "李雷"}}))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    let lsid = created["lsid"].as_str().expect("lsid").to_owned();
    let r = sim
        .http
        .post(format!("{base}/control/sessions/{lsid}/end"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 200);
    let r = sim
        .http
        .post(format!("{base}/control/sessions/{lsid}/customer-survey"))
        .json(&serde_json::json!([{"name": "rating", "label": "Rating", "answer": "4"}]))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 200);
    assert!(sim
        .appliance
        .session(&lsid)
        .is_some_and(|s| s.end_time.is_some() && s.customer_survey.is_some()));
    let r = sim
        .http
        .post(format!("{base}/control/sessions/nope/end"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 404);
    let counts: serde_json::Value = sim
        .http
        .get(format!("{base}/control/counts"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(counts, serde_json::json!({}));
}

#[tokio::test]
async fn plain_http_refuses_oauth() {
    let sim = start(ApplianceOptions {
        tls: false,
        ..Default::default()
    })
    .await;
    assert!(sim.appliance.base_url.starts_with("http://"));
    let (status, body) = sim
        .token_with(&sim.appliance.client_id, &sim.appliance.client_secret())
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (400, Some("OAuth requires HTTPS."))
    );
}

#[tokio::test]
async fn listings_select_ended_sessions_by_end_time_window_and_calls_are_counted_per_report() {
    let sim = start(ApplianceOptions::default()).await;
    let token = sim.token().await;
    let base = 1_760_000_000;
    let at = |offset: i64| {
        ended(
            &sim,
            SessionSpec {
                start_time: Some(base + offset - 60),
                external_key: Some(format!("CAS-{offset}")),
                ..Default::default()
            },
            base + offset,
        )
    };
    let (_early, first, last, boundary) = (at(-1), at(0), at(99), at(100));
    let running = sim.appliance.create_session(SessionSpec {
        start_time: Some(base + 50),
        ..Default::default()
    });
    let (status, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportSessionListing&end_time={base}&duration=100"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(xml.contains("<session_summary_list"), "{xml}");
    for lsid in [&first, &last] {
        assert!(
            xml.contains(&format!("<session_summary lsid=\"{lsid}\"")),
            "{xml}"
        );
    }
    for lsid in [&boundary, &running] {
        assert!(!xml.contains(lsid.as_str()), "{xml}");
    }
    assert!(xml.contains("external_key=\"CAS-0\""), "{xml}");
    // Nothing in the window: the no-data error, as a real appliance answers.
    let (_, xml) = sim
        .report(
            &token,
            &format!(
                "generate_report=SupportSessionListing&end_time={}&duration=10",
                base - 1000
            ),
        )
        .await;
    assert!(xml.contains("No Support report information"), "{xml}");
    let (_, xml) = sim
        .report(
            &token,
            &format!("generate_report=SupportSession&lsids={first},{last}"),
        )
        .await;
    assert_eq!(xml.matches("<session lsid=").count(), 2);
    let counts = sim.appliance.counts();
    assert_eq!(counts.get("reporting:SupportSessionListing"), Some(&2));
    assert_eq!(counts.get("reporting:SupportSession"), Some(&1));
    assert_eq!(counts.get("reporting"), Some(&3));
    assert_eq!(sim.appliance.count("reporting:SupportCustExitSurvey"), 0);

    // A fault can target one report type; the control API shows and resets counts.
    sim.appliance.arm(FaultRule {
        fault: Fault::Status { status: 503 },
        count: 1,
        endpoint: Some("reporting:SupportSession".into()),
    });
    let (listing, _) = sim
        .report(
            &token,
            &format!("generate_report=SupportSessionListing&end_time={base}&duration=1"),
        )
        .await;
    let (report, _) = sim
        .report(
            &token,
            &format!("generate_report=SupportSession&lsid={first}"),
        )
        .await;
    assert_eq!((listing, report), (200, 503));
    let control = |path: &str| format!("{}/control/{path}", sim.appliance.base_url);
    let shown: serde_json::Value = sim
        .http
        .get(control("counts"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["reporting:SupportSession"], 2);
    sim.http
        .post(control("counts/reset"))
        .send()
        .await
        .expect("answer");
    assert!(sim.appliance.counts().is_empty());
}
