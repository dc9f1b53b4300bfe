//! Events through the real host process, with the scripted plugin (and the example
//! plugin for polling): intake answers, durability, retries, throttling, order,
//! crash recovery, polling, history and operations.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{json_lines, wait_for_lines, PluginsDir, TestHost};

const END: &str = "support_conference_end";
const CUSTOMER_SURVEY: &str = "support_conference_customer_exit_survey_completed";

fn plugins() -> PluginsDir {
    crate::helpers::scripted_and_file_sink()
}

/// Creates an enabled scripted configuration that records every call to a file.
async fn scripted(host: &TestHost, name: &str, overrides: Value) -> (i64, PathBuf) {
    let record = host.data.path().join(format!("{name}.jsonl"));
    let mut settings = json!({
        "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
        "record_file": record.to_str().expect("utf-8"),
        "outbound_event_types": [END, CUSTOMER_SURVEY],
        "retry_outbound_event_types": [END],
        "retry_attempt_limit": 2,
    });
    if let (Some(s), Some(o)) = (settings.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            s.insert(k.clone(), v.clone());
        }
    }
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "scripted", "name": name, "settings": settings}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (created["id"].as_i64().expect("id"), record)
}

fn end_event<'a>(lsid: &'a str, timestamp: &'a str, script: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("event", END),
        ("version", "3"),
        ("timestamp", timestamp),
        ("lsid", lsid),
        ("script", script),
    ]
}

#[tokio::test]
async fn an_event_is_stored_processed_and_shown_with_its_attempt() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (config, record) = scripted(&host, "Main", json!({})).await;
    let (status, answer) = host
        .post_event(None, &end_event("a1", "1764231302", "ok"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (answer["status"].as_str(), answer["jobs"].as_u64()),
        (Some("stored"), Some(1))
    );

    let done = host.wait_for_state("succeeded", 1).await;
    let event = &done[0];
    assert_eq!(event["configuration_id"], config);
    assert_eq!(event["configuration_name"], "Main");
    assert_eq!(
        (event["source"].as_str(), event["event_type"].as_str()),
        (Some("outbound"), Some(END))
    );
    assert_eq!(
        (event["lsid"].as_str(), event["attempts"].as_i64()),
        (Some("a1"), Some(1))
    );
    assert_eq!(event["appliance_id"], "Default");
    assert!(event["received_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let (status, detail) = host.get(&format!("/api/events/{}", event["id"])).await;
    assert_eq!(status, 200);
    assert_eq!(detail["attempt_log"][0]["outcome"], "succeeded");
    assert_eq!(detail["fields"]["timestamp"], "1764231302");
    let calls = json_lines(&record);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0]["lsid"].as_str(), calls[0]["attempt"].as_i64()),
        (Some("a1"), Some(1))
    );
}

#[tokio::test]
async fn an_event_no_configuration_takes_is_answered_200_and_recorded_as_ignored() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    scripted(&host, "Main", json!({})).await;
    let (status, answer) = host
        .post_event(Some("Elsewhere"), &end_event("b1", "1", "ok"))
        .await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ignored")));
    let begin = [
        ("event", "support_conference_begin"),
        ("version", "3"),
        ("timestamp", "2"),
        ("lsid", "b2"),
    ];
    let (status, answer) = host.post_event(None, &begin).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ignored")));

    let ignored = host.events("state=ignored").await;
    let reasons: Vec<&str> = ignored
        .iter()
        .filter_map(|e| e["last_error"].as_str())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "no enabled configuration with the Appliance Id \"Default\" handles support_conference_begin (see its Outbound Events Types)",
            "no enabled configuration has the Appliance Id \"Elsewhere\"",
        ]
    );
    assert_eq!(ignored[1]["configuration_id"], Value::Null);
}

#[tokio::test]
async fn a_malformed_or_oversized_event_is_refused_with_the_reason_and_not_stored() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    scripted(&host, "Main", json!({})).await;
    let (status, answer) = host
        .post_event(None, &[("event", END), ("version", "3"), ("lsid", "c1")])
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("the form field `timestamp` is missing"))
    );
    let (status, answer) = host
        .post_event(
            None,
            &[("event", END), ("version", "3"), ("timestamp", "1")],
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (
            400,
            Some(
                "the form field `lsid` is missing (every support_conference_end event carries one)"
            )
        )
    );
    let huge = "x".repeat(1024 * 1024 + 1);
    let (status, answer) = host
        .post_event(
            None,
            &[
                ("event", END),
                ("version", "3"),
                ("timestamp", "1"),
                ("lsid", "c2"),
                ("pad", &huge),
            ],
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("the event body is larger than 1048576 bytes"))
    );
    assert_eq!(host.events("").await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_redelivered_event_is_stored_and_processed_once() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    let event = end_event("d1", "1764231302", "ok");
    let (_, first) = host.post_event(None, &event).await;
    let (status, second) = host.post_event(None, &event).await;
    assert_eq!(
        (status, second["status"].as_str()),
        (200, Some("duplicate"))
    );
    assert_eq!(second["event_id"], first["event_id"]);
    // Another appliance id, or another time, is another event.
    let (_, other) = host
        .post_event(Some("Default"), &end_event("d1", "1764231303", "ok"))
        .await;
    assert_eq!(other["status"], "stored");
    host.wait_for_state("succeeded", 2).await;
    assert_eq!(host.events("lsid=d1").await.len(), 2);
    assert_eq!(json_lines(&record).len(), 2);
}

#[tokio::test]
async fn retries_stop_at_the_limit_and_happen_only_for_the_listed_types() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    host.post_event(None, &end_event("e1", "1", "fail:retryable"))
        .await;
    host.post_event(None, &end_event("e2", "2", "fail_until:2"))
        .await;
    let survey = [
        ("event", CUSTOMER_SURVEY),
        ("version", "3"),
        ("timestamp", "3"),
        ("lsid", "e3"),
        ("script", "fail:retryable"),
    ];
    host.post_event(None, &survey).await;

    let failed = host.wait_for_state("failed", 2).await;
    host.wait_for_state("succeeded", 1).await;
    let by_lsid = |lsid: &str| {
        failed
            .iter()
            .find(|e| e["lsid"] == lsid)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let exhausted = by_lsid("e1");
    assert_eq!(
        exhausted["attempts"], 3,
        "the first attempt and two retries"
    );
    assert_eq!(
        exhausted["last_error"],
        "told to fail (retryable) — gave up after 2 retries (the Retry Attempt Limit)"
    );
    let not_listed = by_lsid("e3");
    assert_eq!(not_listed["attempts"], 1);
    assert_eq!(
        not_listed["last_error"],
        "told to fail (retryable) — not retried: support_conference_customer_exit_survey_completed is not among this configuration's retried outbound event types"
    );
    let recovered = host.events("lsid=e2").await;
    assert_eq!(
        (
            recovered[0]["state"].as_str(),
            recovered[0]["attempts"].as_i64()
        ),
        (Some("succeeded"), Some(2))
    );

    let (_, detail) = host.get(&format!("/api/events/{}", exhausted["id"])).await;
    let outcomes: Vec<&str> = detail["attempt_log"]
        .as_array()
        .expect("log")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, vec!["error", "error", "error"]);
    let calls = json_lines(&record);
    assert_eq!(calls.iter().filter(|c| c["lsid"] == "e1").count(), 3);
}

#[tokio::test]
async fn a_throttled_configuration_pauses_its_whole_queue() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    host.post_event(None, &end_event("f1", "1", "throttle_once:1500"))
        .await;
    // Once the first call was throttled, another session's event arrives.
    wait_for_lines(&record, 1).await;
    host.post_event(None, &end_event("f2", "2", "ok")).await;
    host.wait_for_state("succeeded", 2).await;

    let calls = json_lines(&record);
    let at = |lsid: &str, nth: usize| -> i64 {
        calls
            .iter()
            .filter(|c| c["lsid"] == lsid)
            .nth(nth)
            .and_then(|c| c["at_ms"].as_i64())
            .expect("recorded")
    };
    let throttled_at = at("f1", 0);
    assert!(
        at("f2", 0) >= throttled_at + 1500,
        "another session's event ran during the pause"
    );
    assert!(
        at("f1", 1) >= throttled_at + 1500,
        "the throttled event came back before its delay"
    );
    let f1 = host.events("lsid=f1").await;
    assert_eq!(f1[0]["attempts"], 1, "a throttled attempt is not counted");
}

#[tokio::test]
async fn one_sessions_events_run_in_arrival_order_and_calls_stay_bounded() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    // Slow first, fast after: without ordering the later ones would finish first.
    let scripts = ["sleep:300", "ok", "sleep:100", "ok", "ok"];
    for (i, script) in scripts.iter().enumerate() {
        let timestamp = (i + 1).to_string();
        host.post_event(None, &end_event("same", &timestamp, script))
            .await;
    }
    for i in 0..8 {
        let lsid = format!("other-{i}");
        host.post_event(None, &end_event(&lsid, "1", "sleep:150"))
            .await;
    }
    host.wait_for_state("succeeded", 13).await;
    let calls = json_lines(&record);
    let order: Vec<i64> = calls
        .iter()
        .filter(|c| c["lsid"] == "same")
        .filter_map(|c| c["id"].as_i64())
        .collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "one session's events ran out of order");
    assert_eq!(order.len(), 5);
    let most = calls
        .iter()
        .filter_map(|c| c["in_flight"].as_i64())
        .max()
        .unwrap_or(0);
    assert!(most <= 4, "{most} calls ran at once; the bound is 4");
}

#[tokio::test]
async fn a_failed_event_can_be_retried_now() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    scripted(&host, "Main", json!({})).await;
    host.post_event(None, &end_event("g1", "1", "fail:permanent"))
        .await;
    let failed = host.wait_for_state("failed", 1).await;
    let id = failed[0]["id"].as_i64().expect("id");
    assert_eq!(failed[0]["attempts"], 1, "a permanent error is not retried");
    let (status, again) = host.post_empty(&format!("/api/events/{id}/retry")).await;
    assert_eq!(status, 200, "{again}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, event) = host.get(&format!("/api/events/{id}")).await;
        if event["attempts"] == 2 && event["state"] == "failed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retry never ran: {event}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.post_event(None, &end_event("g2", "1", "ok")).await;
    let done = host.wait_for_state("succeeded", 1).await;
    let (status, body) = host
        .post_empty(&format!("/api/events/{}/retry", done[0]["id"]))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            409,
            Some("only a failed event can be retried; this one is succeeded")
        )
    );
    let (status, _) = host.post_empty("/api/events/9999/retry").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn history_filters_by_configuration_state_session_and_time() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (first, _) = scripted(&host, "First", json!({})).await;
    let (second, _) = scripted(&host, "Second", json!({"appliance_id": "West"})).await;
    host.post_event(None, &end_event("h1", "1", "ok")).await;
    host.post_event(Some("West"), &end_event("h2", "1", "fail:permanent"))
        .await;
    host.wait_for_state("failed", 1).await;
    host.wait_for_state("succeeded", 1).await;
    let ids = |events: Vec<Value>| {
        events
            .iter()
            .filter_map(|e| e["configuration_id"].as_i64())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(host.events(&format!("configuration={first}")).await),
        vec![first]
    );
    assert_eq!(
        ids(host
            .events(&format!("configuration={second}&state=failed"))
            .await),
        vec![second]
    );
    assert_eq!(host.events("lsid=h2").await.len(), 1);
    assert_eq!(host.events("since=2999-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(host.events("since=0&limit=1").await.len(), 1);
    let (status, body) = host.get("/api/events?state=lost").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "state=\"lost\" is not one of: pending, running, succeeded, skipped, retrying, failed, ignored");
}

#[tokio::test]
async fn deleting_a_configuration_fails_its_waiting_events_visibly() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let (config, _) = scripted(&host, "Doomed", json!({})).await;
    host.post_empty(&format!("/api/configurations/{config}/disable"))
        .await;
    host.post_event(None, &end_event("i1", "1", "ok")).await;
    // Disabled: it takes no new event.
    assert_eq!(host.events("state=ignored").await.len(), 1);
    host.post_empty(&format!("/api/configurations/{config}/enable"))
        .await;
    host.post_event(None, &end_event("i2", "1", "sleep:2000"))
        .await;
    host.post_event(None, &end_event("i2", "2", "ok")).await;
    host.delete(&format!("/api/configurations/{config}")).await;
    let failed = host.wait_for_state("failed", 1).await;
    assert_eq!(failed[0]["last_error"], "the configuration was deleted");
}

#[tokio::test]
async fn the_event_token_and_source_allow_list_are_enforced() {
    let plugins = plugins();
    let host = TestHost::start_with_env(&plugins, &[("MWE_EVENT_TOKEN", "s3cret-event-token")]);
    scripted(&host, "Main", json!({})).await;
    let mut form = end_event("j1", "1", "ok");
    let (status, body) = host.post_event(None, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            403,
            Some("the form field outbound_event_token is missing or wrong")
        )
    );
    form.push(("outbound_event_token", "s3cret-event-token"));
    let (status, _) = host.post_event(None, &form).await;
    assert_eq!(status, 200);
    let stored = host.wait_for_state("succeeded", 1).await;
    let (_, detail) = host.get(&format!("/api/events/{}", stored[0]["id"])).await;
    assert_eq!(
        detail["fields"].get("outbound_event_token"),
        None,
        "the token is not stored"
    );

    let fenced = TestHost::start_with_env(
        &plugins,
        &[("MWE_EVENT_ALLOWED_SOURCES", "10.0.0.0/8, 192.168.1.7")],
    );
    let (status, body) = fenced.post_event(None, &end_event("j2", "1", "ok")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("127.0.0.1 is not an allowed event source"))
    );
}

#[tokio::test]
async fn metrics_count_events_by_outcome_and_the_queue_by_state() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    scripted(&host, "Main", json!({})).await;
    host.post_event(None, &end_event("k1", "1", "ok")).await;
    host.post_event(None, &end_event("k1", "1", "ok")).await;
    host.post_event(Some("Nowhere"), &end_event("k2", "1", "ok"))
        .await;
    host.post_event(None, &[("event", END)]).await;
    host.wait_for_state("succeeded", 1).await;
    let text = host.metrics().await;
    for line in [
        "mwe_events_received_total{outcome=\"stored\"} 1",
        "mwe_events_received_total{outcome=\"duplicate\"} 1",
        "mwe_events_received_total{outcome=\"ignored\"} 1",
        "mwe_events_received_total{outcome=\"rejected\"} 1",
        "mwe_jobs{state=\"succeeded\"} 1",
        "mwe_jobs{state=\"ignored\"} 1",
        "mwe_plugin_call_duration_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    let (status, body) = crate::helpers::answer(
        host.http
            .get(format!("{}/healthz", host.events))
            .send()
            .await,
    )
    .await;
    assert_eq!((status, body), (200, json!("ok")));
}

#[tokio::test]
async fn sigterm_refuses_new_events_and_lets_the_call_in_flight_finish() {
    let plugins = plugins();
    let mut host = TestHost::start(&plugins);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    host.post_event(None, &end_event("l1", "1", "sleep:1500"))
        .await;
    wait_for_lines(&record, 1).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &host.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // While the call finishes, new events are refused with 503 (the appliance keeps them).
    let mut refused = None;
    for i in 0..400 {
        let lsid = format!("l-late-{i}");
        let (status, body) = match host
            .http
            .post(format!("{}/ERSPost", host.events))
            .form(&end_event(&lsid, "2", "ok"))
            .send()
            .await
        {
            Ok(r) => crate::helpers::answer(Ok(r)).await,
            Err(_) => break, // the servers have closed
        };
        if status == 503 {
            refused = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        refused.as_ref().and_then(|b| b["error"].as_str()),
        Some("the engine is stopping; the appliance keeps the event and sends it again")
    );
    assert_eq!(host.wait_exit(), Some(0));
    let host = host.start_again();
    let l1 = host.events("lsid=l1").await;
    assert_eq!(
        (l1[0]["state"].as_str(), l1[0]["attempts"].as_i64()),
        (Some("succeeded"), Some(1)),
        "the call in flight finished before exit"
    );
}

#[tokio::test]
async fn kill_9_during_a_burst_loses_no_accepted_event_and_repeats_none_but_those_in_flight() {
    let plugins = plugins();
    let mut host = TestHost::start(&plugins);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    const TOTAL: usize = 600;
    let lsids: Vec<String> = (0..TOTAL).map(|i| format!("burst-{i}")).collect();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(vec![false; TOTAL]));

    // Eight senders, like eight appliances' worth of traffic, until the host dies.
    let send_all = |url: String, only_missing: bool| {
        let accepted = std::sync::Arc::clone(&accepted);
        let lsids = lsids.clone();
        async move {
            let client = reqwest::Client::new();
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let (client, url, next, accepted, lsids) = (
                        client.clone(),
                        url.clone(),
                        next.clone(),
                        accepted.clone(),
                        lsids.clone(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if i >= TOTAL {
                                return;
                            }
                            if only_missing && accepted.lock().expect("lock")[i] {
                                continue;
                            }
                            let form = [
                                ("event", END),
                                ("version", "3"),
                                ("timestamp", "1764231302"),
                                ("lsid", lsids[i].as_str()),
                                ("script", "sleep:3"),
                            ];
                            let ok = client
                                .post(format!("{url}/ERSPost"))
                                .form(&form)
                                .send()
                                .await
                                .map(|r| r.status().as_u16() == 200)
                                .unwrap_or(false);
                            if ok {
                                accepted.lock().expect("lock")[i] = true;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
        }
    };
    let burst = tokio::spawn(send_all(host.events.clone(), false));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while accepted
        .lock()
        .expect("lock")
        .iter()
        .filter(|a| **a)
        .count()
        < TOTAL / 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the burst did not get going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill();
    burst.await.expect("senders");
    let before_restart = accepted
        .lock()
        .expect("lock")
        .iter()
        .filter(|a| **a)
        .count();
    assert!(
        before_restart < TOTAL,
        "the host died before the burst ended"
    );

    // Like the appliance, send again what got no 200.
    let host = host.start_again();
    send_all(host.events.clone(), true).await;
    assert!(
        accepted.lock().expect("lock").iter().all(|a| *a),
        "every event is eventually accepted"
    );
    host.wait_for_state("succeeded", TOTAL).await;

    let calls = json_lines(&record);
    let mut per_lsid = std::collections::HashMap::<String, usize>::new();
    for call in &calls {
        *per_lsid
            .entry(call["lsid"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert!(
        lsids.iter().all(|l| per_lsid.contains_key(l)),
        "an accepted event was never processed"
    );
    let repeated = per_lsid.values().filter(|n| **n > 1).count();
    assert!(
        per_lsid.values().all(|n| *n <= 2),
        "an event ran more than twice"
    );
    assert!(
        repeated <= 4,
        "{repeated} events ran twice; only the (at most 4) in flight at the kill may"
    );
    assert_eq!(
        host.events("limit=1000").await.len(),
        TOTAL,
        "each event stored once"
    );
}

#[tokio::test]
async fn the_polling_cursor_advances_and_survives_a_restart() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    let source = host.data.path().join("poll-source.jsonl");
    let output = host.data.path().join("polled.jsonl");
    let line = |lsid: &str, ts: i64| {
        json!({"event_type": END, "timestamp": ts, "lsid": lsid, "fields": {"external_key": "CAS-1"}}).to_string()
    };
    std::fs::write(&source, format!("{}\n{}\n", line("p1", 1), line("p2", 2))).expect("source");
    let (status, created) = host
        .post("/api/configurations", &json!({"plugin": "file-sink", "name": "Poller", "settings": {
            "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
            "polling_event_types": [END], "polling_interval_seconds": 30,
            "output_file": output.to_str().expect("utf-8"), "poll_source_file": source.to_str().expect("utf-8"),
        }}))
        .await;
    assert_eq!(status, 201, "{created}");
    let done = host.wait_for_state("succeeded", 2).await;
    assert!(done.iter().all(|e| e["source"] == "polling"));

    std::fs::write(
        &source,
        format!("{}\n{}\n{}\n", line("p1", 1), line("p2", 2), line("p3", 3)),
    )
    .expect("source");
    let host = host.restart();
    host.wait_for_state("succeeded", 3).await;
    let handled: Vec<String> = json_lines(&output)
        .iter()
        .filter_map(|e| e["lsid"].as_str().map(str::to_owned))
        .collect();
    // p1 and p2 are two sessions, handled in parallel (only one session's events are
    // ordered); p3 was found by the poll after the restart.
    let mut first_poll = handled.get(..2).map(<[String]>::to_vec).unwrap_or_default();
    first_poll.sort();
    assert_eq!(
        (first_poll, handled.get(2..).map(<[String]>::to_vec)),
        (
            vec!["p1".to_owned(), "p2".to_owned()],
            Some(vec!["p3".to_owned()])
        ),
        "each polled event once, the second poll's after the first's: {handled:?}"
    );
    let text = host.metrics().await;
    assert!(text.contains("mwe_polls_total{result=\"ok\"} 1"), "{text}");
}

#[tokio::test]
async fn a_locked_database_gets_503_so_the_appliance_keeps_the_event() {
    let plugins = plugins();
    let host = TestHost::start(&plugins);
    scripted(&host, "Main", json!({})).await;
    // Another process holds the database's write lock.
    let blocker = host.lock_store();
    let (status, body) = host.post_event(None, &end_event("m1", "1", "ok")).await;
    assert_eq!(status, 503);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the event could not be stored")
                && e.ends_with("the appliance keeps it and sends it again")),
        "{body}"
    );
    drop(blocker);
    // The appliance sends it again; now it is stored, once.
    let (status, _) = host.post_event(None, &end_event("m1", "1", "ok")).await;
    assert_eq!(status, 200);
    host.wait_for_state("succeeded", 1).await;
    assert_eq!(
        host.events("").await.len(),
        1,
        "nothing half-written from the refused attempt"
    );
    let text = host.metrics().await;
    assert!(
        text.contains("mwe_events_received_total{outcome=\"unavailable\"} 1"),
        "{text}"
    );
}

/// The calls a plugin recorded across kill -9s, one JSON object a line. Each record is
/// written with one `write`, so a kill leaves no torn line: every line is parsed
/// strictly, and one that is not a whole record fails the test, naming it.
fn recorded_calls(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a torn record: {:?}",
        path.display(),
        text.lines().last().unwrap_or_default()
    );
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "line {} of {} is not one whole record ({e}); was it written in more than one write? {line}",
                    i + 1,
                    path.display()
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_during_thousands_of_events_loses_none_and_repeats_only_calls_in_flight() {
    let plugins = plugins();
    // A fixed event port: the senders, like appliances, keep one URL across restarts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let listen = format!("127.0.0.1:{port}");
    let mut host = TestHost::start_with_env(&plugins, &[("MWE_EVENT_LISTEN", listen.as_str())]);
    let (_, record) = scripted(&host, "Main", json!({})).await;
    const TOTAL: usize = 3000;
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(vec![false; TOTAL]));
    let url = format!("http://{listen}/ERSPost");
    // Eight senders; each event is sent again until it gets a 200, as the appliance does.
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let (accepted, url) = (std::sync::Arc::clone(&accepted), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in (s..TOTAL).step_by(8) {
                    let lsid = format!("k-{i}");
                    let form = [
                        ("event", END),
                        ("version", "3"),
                        ("timestamp", "1764231302"),
                        ("lsid", lsid.as_str()),
                    ];
                    loop {
                        let ok = client
                            .post(&url)
                            .form(&form)
                            .send()
                            .await
                            .map(|r| r.status().as_u16() == 200)
                            .unwrap_or(false);
                        if ok {
                            accepted.lock().expect("lock")[i] = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    // Kill the engine three times during the burst, restarting it each time.
    for quarter in 1..=3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while accepted
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| **a)
            .count()
            < TOTAL * quarter / 4
        {
            assert!(std::time::Instant::now() < deadline, "the burst stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        host.kill();
        host = host.start_again();
    }
    for s in senders {
        s.await.expect("sender");
    }
    // More than the history API lists at once: count through the metrics.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done = format!("mwe_jobs{{state=\"succeeded\"}} {TOTAL}");
    loop {
        let text = host.metrics().await;
        if text.lines().any(|l| l == done) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all processed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut per_lsid = std::collections::HashMap::<String, usize>::new();
    for call in recorded_calls(&record) {
        *per_lsid
            .entry(call["lsid"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_lsid.len(), TOTAL, "every accepted event was processed");
    let repeated = per_lsid.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 3 * 4,
        "{repeated} events ran twice; at most the 4 in flight at each of the 3 kills may"
    );
    let stored = host.count("SELECT COUNT(*) FROM events") as usize;
    assert_eq!(stored, TOTAL, "each event stored once");
}
