//! Alerts through the real binary, to the SMTP and webhook sinks: a failing
//! configuration gets one e-mail and one webhook call once the delay has passed,
//! a reminder after the repeat time and an all-clear when it recovers; the test
//! alert; the settings' secrets kept out of every answer and of the audit log.

use std::time::Duration;

use serde_json::{json, Value};
use simulators::smtp::{SmtpFault, SmtpOptions, SmtpSink, SmtpTls};
use simulators::webhook::{WebhookOptions, WebhookReply, WebhookSink};

use crate::helpers::{PluginsDir, TestHost};

const SMTP_PASSWORD: &str = "smtp-password-never-shown";
const WEBHOOK_TOKEN: &str = "webhook-token-never-shown";
/// Generous: a loaded CI machine may be slow, never wrong.
const WAIT: Duration = Duration::from_secs(60);

struct Sinks {
    smtp: SmtpSink,
    webhook: WebhookSink,
}

async fn sinks(tls: SmtpTls) -> Sinks {
    let smtp = SmtpSink::start(SmtpOptions {
        tls,
        credentials: Some(("alerts".into(), SMTP_PASSWORD.into())),
        ..SmtpOptions::default()
    })
    .await
    .expect("smtp sink");
    let webhook = WebhookSink::start(WebhookOptions {
        tls: true,
        ..WebhookOptions::default()
    })
    .await
    .expect("webhook sink");
    Sinks { smtp, webhook }
}

/// The alert settings pointing at the sinks, both CAs in one extra trusted file.
fn alert_settings(host: &TestHost, sinks: &Sinks, tls: &str, after: f64, repeat: f64) -> Value {
    let ca = host.data.path().join("alert-ca.pem");
    let bundle = format!(
        "{}\n{}",
        sinks.smtp.ca_pem().expect("smtp ca"),
        sinks.webhook.ca_pem().expect("webhook ca")
    );
    std::fs::write(&ca, bundle).expect("write the CA bundle");
    json!({
        "alert_after_minutes": after,
        "alert_repeat_minutes": repeat,
        "smtp_host": "127.0.0.1",
        "smtp_port": sinks.smtp.port(),
        "smtp_tls": tls,
        "smtp_user": "alerts",
        "smtp_password": SMTP_PASSWORD,
        "mail_from": "Middleware engine <engine@example.com>",
        "mail_to": "desk@example.com, admin@example.com",
        "webhook_url": sinks.webhook.url(&format!("/hooks/{WEBHOOK_TOKEN}")),
        "ca_file": ca.to_str().expect("utf-8"),
    })
}

/// A configuration of the scripted fixture whose failed events are not retried.
async fn scripted(host: &TestHost, name: &str) -> i64 {
    host.scripted_configuration(name, json!({"retry_outbound_event_types": []}))
        .await
}

fn time_ms(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_millis()
}

async fn wait_until_no_open_alert(host: &TestHost) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, alerts) = host.get("/api/alerts").await;
        if alerts["open"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alerts stayed open: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_configuration_alerts_after_the_delay_reminds_and_clears_on_recovery() {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = TestHost::start(&plugins);
    let sinks = sinks(SmtpTls::StartTls).await;
    // 1.2 s delay, 3 s repeat.
    let (status, saved) = host
        .put(
            "/api/alerts",
            &alert_settings(&host, &sinks, "starttls", 0.02, 0.05),
        )
        .await;
    assert_eq!(status, 200, "{saved}");
    let id = scripted(&host, "Dynamics prod").await;

    // Fails at its first attempt and is not retried (its type is not in the retry
    // list); a retry from the API succeeds (fail_until:2).
    host.post_script("alert-1", "fail_until:2").await;
    let failed = host.wait_for_state("failed", 1).await;
    let received = time_ms(&failed[0]["received_at"]);

    let mails = sinks.smtp.wait_for(1, WAIT).await;
    let calls = sinks.webhook.wait_for(1, WAIT).await;
    let (mail, call) = (&mails[0], &calls[0]);
    let subject = mail.subject().expect("subject");
    assert!(
        subject.contains("Dynamics prod") && subject.contains("1 event failed"),
        "{subject}"
    );
    assert_eq!(mail.authenticated_as.as_deref(), Some("alerts"));
    assert!(mail.tls, "STARTTLS was used");
    assert_eq!(mail.to, ["desk@example.com", "admin@example.com"]);
    assert!(
        mail.body_text().contains("  - 1 event failed"),
        "{}",
        mail.body_text()
    );
    let alert = call.json.clone().expect("a JSON body");
    assert_eq!(call.method, "POST");
    assert_eq!(alert["kind"], "alert", "{alert}");
    assert_eq!(alert["subject"], format!("configuration:{id}"), "{alert}");
    assert_eq!(alert["reasons"], json!(["1 event failed"]), "{alert}");
    assert!(
        time_ms(&alert["sent_at"]) >= received + 1_200,
        "not before the delay: {alert}, received {received}"
    );

    // Still failing: one reminder on each channel after the repeat time.
    let mails = sinks.smtp.wait_for(2, WAIT).await;
    let calls = sinks.webhook.wait_for(2, WAIT).await;
    let reminder = calls[1].json.clone().expect("json");
    assert_eq!(reminder["kind"], "reminder", "{reminder}");
    assert!(
        time_ms(&reminder["sent_at"]) >= time_ms(&alert["sent_at"]) + 3_000,
        "not before the repeat time: {reminder}"
    );
    assert!(
        mails[1]
            .subject()
            .is_some_and(|s| s.contains("still") && s.contains("Dynamics prod")),
        "{:?}",
        mails[1].subject()
    );
    let (_, open) = host.get("/api/alerts").await;
    assert_eq!(open["open"].as_array().map(Vec::len), Some(2), "{open}");

    // Recovery: the event is retried and lands; an all-clear follows on each channel.
    let event = failed[0]["id"].as_i64().expect("event id");
    let (status, body) = host.post_empty(&format!("/api/events/{event}/retry")).await;
    assert!(status < 300, "{status} {body}");
    host.wait_for_state("succeeded", 1).await;
    let calls = loop_until_kind(&sinks.webhook, "all_clear").await;
    let clear = calls.last().and_then(|c| c.json.clone()).expect("json");
    assert_eq!(clear["subject"], format!("configuration:{id}"), "{clear}");
    let mails = sinks.smtp.wait_for(calls.len(), WAIT).await;
    assert!(
        mails
            .last()
            .and_then(|m| m.subject())
            .is_some_and(|s| s.contains("all clear") && s.contains("Dynamics prod")),
        "{:?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    wait_until_no_open_alert(&host).await;
    let kinds: Vec<Value> = sinks
        .webhook
        .requests()
        .iter()
        .filter_map(|r| r.json.as_ref().map(|j| j["kind"].clone()))
        .collect();
    assert_eq!(kinds.first(), Some(&json!("alert")));
    assert_eq!(kinds.last(), Some(&json!("all_clear")));
    assert_eq!(
        kinds.iter().filter(|k| *k == "alert").count(),
        1,
        "one alert, then reminders: {kinds:?}"
    );
    let log = host.log();
    assert!(!log.contains(SMTP_PASSWORD) && !log.contains(WEBHOOK_TOKEN));
}

/// The webhook's requests once one of them is of `kind`.
async fn loop_until_kind(
    sink: &WebhookSink,
    kind: &str,
) -> Vec<simulators::webhook::WebhookRequest> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let requests = sink.requests();
        if requests
            .iter()
            .any(|r| r.json.as_ref().is_some_and(|j| j["kind"] == kind))
        {
            return requests;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} came: {:?}",
            requests.iter().map(|r| r.json.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two engines on one PostgreSQL database (whatever the suite's backend, as the
/// tests of several engines in `cluster` run): one of them sends, the one holding
/// the work lease `alerts`, so the webhook gets one alert, then a reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_database_send_one_alert_then_a_reminder() {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let first = TestHost::start_postgres(&plugins, &[("MWE_ENGINE_NAME", "engine-a")]);
    // The first answer comes late, so that the other engine looks for problems
    // while the alert is still being delivered (and not yet stored as sent): an
    // engine sending without the lease would send a second alert then.
    let webhook = WebhookSink::start(WebhookOptions {
        tls: true,
        replies: vec![(1, WebhookReply::default().delayed(Duration::from_secs(2)))],
        ..WebhookOptions::default()
    })
    .await
    .expect("webhook sink");
    let ca = first.data.path().join("alert-ca.pem");
    std::fs::write(&ca, webhook.ca_pem().expect("webhook ca")).expect("write the CA");
    // Only a webhook; 1.2 s delay, 3 s repeat.
    let (status, saved) = first
        .put(
            "/api/alerts",
            &json!({
                "alert_after_minutes": 0.02,
                "alert_repeat_minutes": 0.05,
                "webhook_url": webhook.url(&format!("/hooks/{WEBHOOK_TOKEN}")),
                "ca_file": ca.to_str().expect("utf-8"),
            }),
        )
        .await;
    assert_eq!(status, 200, "{saved}");
    // Started once the settings are saved, the second engine reads them at its
    // first look, and so looks again every second (not every 15 s, as it would
    // with no channel set).
    let second = first.join(&plugins, &[("MWE_ENGINE_NAME", "engine-b")]);
    let id = scripted(&first, "Dynamics prod").await;
    first.post_script("alert-cluster-1", "fail_until:2").await;
    first.wait_for_state("failed", 1).await;

    let calls = webhook.wait_for(2, WAIT).await;
    let notices: Vec<Value> = calls
        .iter()
        .take(2)
        .map(|c| c.json.clone().expect("a JSON body"))
        .collect();
    let kinds: Vec<&Value> = notices.iter().map(|n| &n["kind"]).collect();
    assert_eq!(kinds, [&json!("alert"), &json!("reminder")], "{notices:?}");
    for notice in &notices {
        assert_eq!(notice["subject"], format!("configuration:{id}"), "{notice}");
    }
    // Both from the engine that holds the lease, both engines still running.
    let database = first.database.clone().expect("database");
    let holder: String = database.with(|c| {
        c.query_one(
            "SELECT e.name FROM leases l JOIN engines e ON e.id = l.owner \
             WHERE l.name = 'alerts'",
            &[],
        )
        .expect("the alerts lease is held")
        .get(0)
    });
    assert!(
        ["engine-a", "engine-b"].contains(&holder.as_str()),
        "{holder}"
    );
    for notice in &notices {
        assert_eq!(notice["engine"], holder.as_str(), "{notices:?}");
    }
    let (_, listing) = second.get("/api/engines").await;
    let engines = listing["engines"].as_array().expect("engines");
    assert_eq!(
        engines.iter().filter(|e| e["alive"] == true).count(),
        2,
        "{listing}"
    );
}

#[tokio::test]
async fn the_settings_hide_their_secrets_and_say_what_to_fix() {
    let host = TestHost::start(&PluginsDir::new());
    let sinks = sinks(SmtpTls::Implicit).await;
    let (status, fresh) = host.get("/api/alerts").await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["settings"]["alert_after_minutes"], Value::Null);
    assert!(
        fresh["fields"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["key"] == "alert_repeat_minutes" && f["default"] == "60")),
        "{fresh}"
    );

    let (status, refused) = host
        .put(
            "/api/alerts",
            &json!({"smtp_host": "127.0.0.1", "mail_to": "not an address", "alert_after_minutes": -1}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"], "the alert settings are not valid");
    assert!(
        refused["errors"]["mail_to"]
            .as_str()
            .is_some_and(|e| e.contains("not an e-mail address")),
        "{refused}"
    );
    assert!(refused["errors"]["mail_from"].is_string(), "{refused}");
    assert!(
        refused["errors"]["alert_after_minutes"].is_string(),
        "{refused}"
    );

    let (status, saved) = host
        .put(
            "/api/alerts",
            &alert_settings(&host, &sinks, "implicit", 15.0, 60.0),
        )
        .await;
    assert_eq!(status, 200, "{saved}");
    let shown = saved.to_string();
    assert!(
        !shown.contains(SMTP_PASSWORD) && !shown.contains(WEBHOOK_TOKEN),
        "{shown}"
    );
    assert_eq!(saved["settings"]["smtp_password"], json!({"set": true}));
    assert_eq!(saved["settings"]["webhook_url"], json!({"set": true}));

    // An edit that leaves the secrets out keeps them: the test alert still signs in.
    let (status, _) = host
        .put(
            "/api/alerts",
            &json!({"settings": {"mail_to": "oncall@example.com", "smtp_password": {"set": true}}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, test) = host.post_empty("/api/alerts/test").await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(
        test["deliveries"],
        json!([{"channel": "email", "ok": true}, {"channel": "webhook", "ok": true}])
    );
    let mail = &sinks.smtp.wait_for(1, WAIT).await[0];
    assert!(mail.tls, "implicit TLS");
    assert_eq!(mail.to, ["oncall@example.com"]);
    assert!(mail.subject().is_some_and(|s| s.contains("test alert")));
    assert_eq!(
        sinks.webhook.wait_for(1, WAIT).await[0]
            .json
            .as_ref()
            .map(|j| j["kind"].clone()),
        Some(json!("test"))
    );

    // A refusing server and webhook: 502, each channel's reason, no secret in it.
    sinks.smtp.fail_next(1, SmtpFault::permanent());
    sinks.webhook.reply_next(1, WebhookReply::status(503));
    let (status, failed) = host.post_empty("/api/alerts/test").await;
    assert_eq!(status, 502, "{failed}");
    let error = failed["error"].as_str().expect("error");
    assert!(error.contains("554") && error.contains("503"), "{error}");
    assert!(
        !error.contains(WEBHOOK_TOKEN) && !error.contains(SMTP_PASSWORD),
        "{error}"
    );

    let (_, audit) = host.get("/api/audit").await;
    let entries = audit.as_array().expect("entries");
    let actions = crate::helpers::audit_actions(entries);
    assert_eq!(
        actions,
        [
            "test alert",
            "test alert",
            "alert settings changed",
            "alert settings changed",
            "alert settings changed"
        ],
        "{audit}"
    );
    let audit_text = audit.to_string();
    assert!(
        !audit_text.contains(SMTP_PASSWORD) && !audit_text.contains(WEBHOOK_TOKEN),
        "{audit_text}"
    );
    assert_eq!(
        entries[3]["detail"]["changed"]["smtp_password"], "changed",
        "{audit}"
    );
    assert!(host.log().find(SMTP_PASSWORD).is_none());
}

#[tokio::test]
async fn a_test_alert_with_no_channel_set_says_what_to_set() {
    let host = TestHost::start(&PluginsDir::new());
    let (status, body) = host.post_empty("/api/alerts/test").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("SMTP server") && e.contains("webhook URL")),
        "{body}"
    );
}
