//! The admin API through the real host process: every endpoint, the validation
//! rules, secrets, live changes, persistence and the admin address's protections.

use serde_json::{json, Value};

use crate::helpers::{PluginsDir, TestHost};

const SECRET: &str = "Sup3r-Secret-Value-42";

fn plugins() -> PluginsDir {
    let plugins = PluginsDir::new();
    plugins
        .add("file-sink", "file_sink_plugin")
        .add("scripted", "fixture_scripted")
        .add("broken", "fixture_not_a_plugin");
    plugins
}

fn scripted(name: &str, overrides: Value) -> Value {
    let mut settings = json!({
        "bt_hostname": "bt.example.com",
        "bt_client_id": "client-id",
        "bt_client_secret": SECRET,
        "outbound_event_types": ["support_conference_end"],
    });
    if let (Some(s), Some(o)) = (settings.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({ "plugin": "scripted", "name": name, "settings": settings })
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

#[tokio::test]
async fn plugins_endpoint_lists_loaded_and_failed_plugins_with_their_settings() {
    let host = TestHost::start(&plugins());
    let (status, list) = host.get("/api/plugins").await;
    assert_eq!(status, 200);
    let find = |id: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|p| p["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    };

    let sink = find("file-sink");
    assert_eq!(sink["name"], "File Sink (example)");
    assert_eq!(sink["status"], "loaded");
    let keys: Vec<&str> = sink["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        vec![
            "appliance_id",
            "bt_hostname",
            "bt_client_id",
            "bt_client_secret",
            "bt_locale",
            "allow_invalid_certificates",
            "use_non_tls",
            "ca_certificate_file",
            "outbound_event_types",
            "polling_event_types",
            "polling_interval_seconds",
            "retry_attempt_limit",
            "retry_outbound_event_types",
            "retry_polling_event_types",
            "reconcile_interval_minutes",
            "output_file",
            "skip_without_lsid",
            "poll_source_file",
        ]
    );
    let secret = &sink["settings"][3];
    assert_eq!(
        (secret["type"].as_str(), secret["section"].as_str()),
        (Some("secret"), Some("BeyondTrust Appliance B Series"))
    );
    assert_eq!(
        sink["outbound_event_types"][0]["name"],
        "support_conference_end"
    );

    let broken = find("broken");
    assert_eq!(broken["status"], "failed");
    assert_eq!(
        broken["error"],
        "not a middleware engine plugin: the library exports no plugin entry point"
    );
}

#[tokio::test]
async fn a_configuration_is_created_read_listed_and_its_secret_never_shown() {
    let host = TestHost::start(&plugins());
    let (status, created) = host
        .post("/api/configurations", &scripted("Production", json!({})))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["name"], "Production");
    assert_eq!(created["plugin"], "scripted");
    assert_eq!(created["disabled"], false);
    assert_eq!(created["status"]["state"], "running");
    assert_eq!(
        created["settings"]["bt_client_secret"],
        json!({"set": true})
    );
    assert_eq!(
        created["settings"]["appliance_id"], "Default",
        "defaults are filled in"
    );
    assert_eq!(created["settings"]["bt_locale"], "en-us");

    let (status, one) = host.get(&format!("/api/configurations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one, created);
    let (_, all) = host.get("/api/configurations").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));

    let (status, missing) = host.get("/api/configurations/999").await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("no configuration with id 999"))
    );
}

#[tokio::test]
async fn each_validation_rule_answers_422_with_a_message_per_field() {
    let host = TestHost::start(&plugins());
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"bt_hostname": ""}), "bt_hostname", "is required"),
        (json!({"bt_hostname": "https://bt.example.com"}), "bt_hostname", "remove the scheme (https://); enter only the host name, e.g. support.example.com or support.example.com:8443"),
        (json!({"bt_hostname": "bt.example.com/api"}), "bt_hostname", "must not contain a path, query or user; enter only the host name, e.g. support.example.com or support.example.com:8443"),
        (json!({"bt_hostname": "bt example.com"}), "bt_hostname", "must not contain spaces; enter only the host name, e.g. support.example.com or support.example.com:8443"),
        (json!({"use_non_tls": true}), "use_non_tls", "TLS cannot be disabled when using OAuth authentication (an API client ID and secret are set); uncheck Use Non-TLS Connections"),
        (json!({"polling_event_types": ["support_conference_end"]}), "polling_interval_seconds", "is required when a polling event type is selected (at least 30 seconds)"),
        (json!({"polling_event_types": ["support_conference_end"], "polling_interval_seconds": 29}), "polling_interval_seconds", "must be at least 30"),
        (json!({"retry_outbound_event_types": ["support_conference_customer_exit_survey_completed"]}), "retry_outbound_event_types", "support_conference_customer_exit_survey_completed not selected under Outbound Events Types; only selected types can be retried"),
        (json!({"retry_polling_event_types": ["support_conference_end"]}), "retry_polling_event_types", "support_conference_end not selected under Polling Event Types; only selected types can be retried"),
        (json!({"retry_attempt_limit": 101}), "retry_attempt_limit", "must be at most 100"),
        (json!({"retry_attempt_limit": "three"}), "retry_attempt_limit", "must be a whole number"),
        (json!({"outbound_event_types": ["support_conference_begin"]}), "outbound_event_types", "\"support_conference_begin\" is not one of the choices: support_conference_end, support_conference_customer_exit_survey_completed, support_conference_rep_exit_survey_completed"),
        (json!({"allow_invalid_certificates": "yes"}), "allow_invalid_certificates", "must be true or false"),
        (json!({"bt_client_secret": null}), "bt_client_secret", "is required"),
        (json!({"colour": "blue"}), "colour", "unknown setting: Scripted (test fixture) has no setting \"colour\""),
        (json!({"ca_certificate_file": "/nonexistent/ca.pem"}), "ca_certificate_file", "cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"),
        (json!({"bt_locale": "english"}), "bt_locale", "\"english\" is not a locale; use a form like en-us or de-de"),
    ];
    for (overrides, key, message) in cases {
        let (status, body) = host
            .post("/api/configurations", &scripted("Bad", overrides.clone()))
            .await;
        assert_eq!(status, 422, "{overrides} -> {body}");
        assert_eq!(body["errors"][key], message, "{overrides} -> {body}");
        assert_eq!(body["error"], "the configuration is not valid");
    }
    // A name is required; the plugin must be loaded.
    let mut nameless = scripted("  ", json!({}));
    nameless["name"] = json!("  ");
    let (status, body) = host.post("/api/configurations", &nameless).await;
    assert_eq!(
        (status, body["errors"]["name"].as_str()),
        (422, Some("is required"))
    );
    let (status, body) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "nope", "name": "x", "settings": {}}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["errors"]["plugin"]
            .as_str()
            .is_some_and(|m| m.starts_with("no plugin with the id \"nope\" is loaded")),
        "{body}"
    );
    // Nothing was stored along the way.
    let (_, all) = host.get("/api/configurations").await;
    assert_eq!(all, json!([]));
}

#[tokio::test]
async fn plugin_specific_checks_come_back_with_the_common_ones() {
    let host = TestHost::start(&plugins());
    let body = json!({"plugin": "file-sink", "name": "Sink", "settings": {
        "bt_hostname": "bt.example.com:8443", "bt_client_id": "c", "bt_client_secret": "s",
        "use_non_tls": true, "output_file": "relative/events.jsonl"}});
    let (status, answer) = host.post("/api/configurations", &body).await;
    assert_eq!(status, 422);
    assert_eq!(answer["errors"]["output_file"], "must be an absolute path");
    assert!(answer["errors"]["use_non_tls"].is_string());
}

#[tokio::test]
async fn bad_requests_get_the_right_status() {
    let host = TestHost::start(&plugins());
    let (status, _) = host
        .post("/api/configurations", &scripted("Once", json!({})))
        .await;
    assert_eq!(status, 201);
    let (status, body) = host
        .post("/api/configurations", &scripted("Once", json!({})))
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("a configuration named \"Once\" already exists for this plugin; choose another name")));

    let raw = |body: &'static str, content_type: &'static str| {
        host.http
            .post(host.url("/api/configurations"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, body) = crate::helpers::answer(raw("{not json", "application/json").await).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the body is not valid JSON")),
        "{body}"
    );
    let (status, body) =
        crate::helpers::answer(raw(r#"{"plugin":"scripted"}"#, "application/json").await).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing field `name`")),
        "{body}"
    );
    let (status, body) =
        crate::helpers::answer(raw("plugin=scripted", "application/x-www-form-urlencoded").await)
            .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            415,
            Some("send the body as JSON, with Content-Type: application/json")
        )
    );
    let huge = format!(
        r#"{{"plugin":"scripted","name":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let (status, body) = crate::helpers::answer(
        host.http
            .post(host.url("/api/configurations"))
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("the request body is larger than 262144 bytes"))
    );
    let (status, body) = host.get("/api/nothing-here").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("no such API endpoint"))
    );
}

#[tokio::test]
async fn edit_keeps_an_omitted_secret_and_takes_effect_without_restart() {
    let host = TestHost::start(&plugins());
    let (_, created) = host
        .post(
            "/api/configurations",
            &scripted("Live", json!({"record_file": "/tmp/first.jsonl"})),
        )
        .await;
    let id = created["id"].as_i64().expect("id");
    let (_, report) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(check(&report, "Record file")["detail"], "/tmp/first.jsonl");

    // The page sends no secret when the admin leaves it empty.
    let mut edit = scripted("Live renamed", json!({"record_file": "/tmp/second.jsonl"}));
    edit["settings"]
        .as_object_mut()
        .map(|s| s.remove("bt_client_secret"));
    let (status, saved) = host.put(&format!("/api/configurations/{id}"), &edit).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["name"], "Live renamed");
    assert_eq!(saved["settings"]["bt_client_secret"], json!({"set": true}));

    let (_, report) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        check(&report, "Record file")["detail"],
        "/tmp/second.jsonl",
        "the new value is live"
    );
    assert_eq!(
        check(&report, "Secret")["detail"],
        format!("{} characters", SECRET.len()),
        "the stored secret was kept"
    );

    // A plugin cannot be changed by an edit.
    let mut other = edit.clone();
    other["plugin"] = json!("file-sink");
    let (status, body) = host.put(&format!("/api/configurations/{id}"), &other).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["errors"]["plugin"],
        "this configuration belongs to \"scripted\"; a configuration cannot change plugin"
    );
}

#[tokio::test]
async fn copy_carries_secrets_and_starts_disabled_then_delete_removes_it() {
    let host = TestHost::start(&plugins());
    let (_, created) = host
        .post("/api/configurations", &scripted("Prod", json!({})))
        .await;
    let id = created["id"].as_i64().expect("id");
    let (status, copy) = host
        .post_empty(&format!("/api/configurations/{id}/copy"))
        .await;
    assert_eq!(status, 201, "{copy}");
    assert_eq!(copy["name"], "Prod (copy)");
    assert_eq!(copy["disabled"], true);
    assert_eq!(copy["status"]["state"], "disabled");
    assert_eq!(copy["settings"]["bt_client_secret"], json!({"set": true}));
    let copy_id = copy["id"].as_i64().expect("id");
    let (status, second) = host
        .post_empty(&format!("/api/configurations/{id}/copy"))
        .await;
    assert_eq!(
        (status, second["name"].as_str()),
        (201, Some("Prod (copy 2)"))
    );

    // A disabled configuration can still be tested; the secret came along.
    let (_, report) = host
        .post_empty(&format!("/api/configurations/{copy_id}/test"))
        .await;
    assert_eq!(
        check(&report, "Secret")["detail"],
        format!("{} characters", SECRET.len())
    );

    let (status, enabled) = host
        .post_empty(&format!("/api/configurations/{copy_id}/enable"))
        .await;
    assert_eq!(
        (status, enabled["status"]["state"].as_str()),
        (200, Some("running"))
    );
    let (status, disabled) = host
        .post_empty(&format!("/api/configurations/{copy_id}/disable"))
        .await;
    assert_eq!(
        (status, disabled["status"]["state"].as_str()),
        (200, Some("disabled"))
    );

    let (status, body) = host.delete(&format!("/api/configurations/{copy_id}")).await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, _) = host.get(&format!("/api/configurations/{copy_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = host.delete(&format!("/api/configurations/{copy_id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_panicking_test_is_reported_and_the_host_goes_on_serving() {
    let host = TestHost::start(&plugins());
    let (_, created) = host
        .post(
            "/api/configurations",
            &scripted("Panics", json!({"panic_on_test": true})),
        )
        .await;
    let id = created["id"].as_i64().expect("id");
    let (status, report) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], false);
    let detail = check(&report, "Plugin test")["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.starts_with("the plugin panicked in test: test panicked on purpose"),
        "{detail}"
    );
    let (status, _) = host.get("/api/configurations").await;
    assert_eq!(status, 200, "the host still serves");
    let (status, report) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(
        (status, report["ok"].as_bool()),
        (200, Some(false)),
        "and the instance can be called again"
    );
}

#[tokio::test]
async fn a_configuration_that_cannot_open_shows_why() {
    let host = TestHost::start(&plugins());
    let (_, created) = host
        .post(
            "/api/configurations",
            &scripted("Refuses", json!({"fail_open": true})),
        )
        .await;
    assert_eq!(
        created["status"],
        json!({"state": "failed", "detail": "told to fail opening"})
    );
    let id = created["id"].as_i64().expect("id");
    let (_, report) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(
        report["checks"],
        json!([{"name": "Open configuration", "ok": false, "detail": "told to fail opening"}])
    );
}

#[tokio::test]
async fn configurations_survive_a_restart_with_their_secrets() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (_, created) = host
        .post(
            "/api/configurations",
            &scripted("Durable", json!({"record_file": "/tmp/durable.jsonl"})),
        )
        .await;
    let id = created["id"].as_i64().expect("id");
    let (_, disabled) = host
        .post("/api/configurations", &scripted("Off", json!({})))
        .await;
    host.post_empty(&format!("/api/configurations/{}/disable", disabled["id"]))
        .await;

    let host = host.restart();
    let (_, all) = host.get("/api/configurations").await;
    let states: Vec<(&str, &str)> = all
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["status"]["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(states, vec![("Durable", "running"), ("Off", "disabled")]);
    let (_, report) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(
        check(&report, "Secret")["detail"],
        format!("{} characters", SECRET.len())
    );
}

#[tokio::test]
async fn secrets_appear_in_no_answer_log_line_or_database_file() {
    let host = TestHost::start(&plugins());
    let mut seen = String::new();
    let (_, created) = host
        .post("/api/configurations", &scripted("Secretive", json!({})))
        .await;
    seen.push_str(&created.to_string());
    let id = created["id"].as_i64().expect("id");
    for path in [
        "/api/configurations",
        &format!("/api/configurations/{id}"),
        "/api/plugins",
    ] {
        seen.push_str(&host.get(path).await.1.to_string());
    }
    seen.push_str(
        &host
            .post_empty(&format!("/api/configurations/{id}/test"))
            .await
            .1
            .to_string(),
    );
    seen.push_str(
        &host
            .post_empty(&format!("/api/configurations/{id}/copy"))
            .await
            .1
            .to_string(),
    );
    let mut edit = scripted("Secretive", json!({}));
    edit["settings"]["bt_client_secret"] = json!(format!("{SECRET}-rotated"));
    seen.push_str(
        &host
            .put(&format!("/api/configurations/{id}"), &edit)
            .await
            .1
            .to_string(),
    );
    let page = host
        .http
        .get(host.url("/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    seen.push_str(&page);

    assert!(!seen.contains(SECRET), "a secret leaked into an answer");
    let log = host.log();
    assert!(
        log.contains("configuration created"),
        "the log is being written"
    );
    assert!(!log.contains(SECRET), "a secret leaked into the log");
    // The store (the database file and its write-ahead log, or every row of every
    // table) holds only sealed values.
    let bytes = host.store_contents();
    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        holds(b"bt.example.com"),
        "this is the file holding the configurations"
    );
    assert!(!holds(SECRET.as_bytes()), "a secret is stored in clear");
}
