//! The backfill API and the `backfill` command through the real binary: what each
//! endpoint answers, and the command following a backfill to its end. The success
//! paths use the scripted plugin listing sessions from its `sessions_file` (see
//! `bulk`); the file sink cannot list sessions.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bulk::{start, wait_backfill, write_sessions};
use crate::helpers::{host_binary, PluginsDir, TestHost};

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A host with one file-sink configuration (which cannot list ended sessions); its id.
async fn file_sink() -> (TestHost, i64) {
    let plugins = PluginsDir::new();
    plugins.add("file-sink", "file_sink_plugin");
    let host = TestHost::start(&plugins);
    let output = host.data.path().join("sink.jsonl");
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "file-sink", "name": "Sink", "settings": {
                "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
                "output_file": output.to_str().expect("utf-8"),
            }}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (host, created["id"].as_i64().expect("id"))
}

fn error(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// `--admin-listen` for the command, from the host's admin URL.
fn admin_listen(host: &TestHost) -> String {
    host.admin.trim_start_matches("http://").to_owned()
}

/// `middleware-engine backfill <args> --admin-listen <the host's>`, run to its end.
fn backfill_command(host: &TestHost, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["backfill"];
    all.extend_from_slice(args);
    let listen = admin_listen(host);
    all.extend_from_slice(&["--admin-listen", &listen]);
    let out = host.cli(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_plugin_that_cannot_list_sessions_is_refused_saying_so() {
    let (host, id) = file_sink().await;
    let (status, body) = host
        .post(
            &format!("/api/configurations/{id}/backfill"),
            &json!({"since": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        error(&body),
        "the plugin of \"Sink\" cannot list ended sessions, which a backfill needs"
    );
    let (status, body) = host
        .post_empty(&format!("/api/configurations/{id}/reconcile"))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, list) = host
        .get(&format!("/api/configurations/{id}/backfills"))
        .await;
    assert_eq!((status, list), (200, json!([])));
    let (status, configuration) = host.get(&format!("/api/configurations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        configuration["reconciliation"],
        Value::Null,
        "{configuration}"
    );
    let (_, plugins) = host.get("/api/plugins").await;
    assert_eq!(plugins[0]["lists_ended_sessions"], false, "{plugins}");

    // The command says the same, as bad input.
    let (code, _, stderr) = backfill_command(&host, &["Sink", "--since", "2026-01-01"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot list ended sessions"), "{stderr}");
}

#[tokio::test]
async fn unknown_ids_and_bad_times_are_answered_with_what_to_fix() {
    let (host, id) = file_sink().await;
    let (status, body) = host
        .post("/api/configurations/999/backfill", &json!({"since": 0}))
        .await;
    assert_eq!(
        (status, error(&body)),
        (404, "no configuration has the id 999")
    );
    let (status, body) = host.get("/api/configurations/999/backfills").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = host.get("/api/backfills/999").await;
    assert_eq!((status, error(&body)), (404, "no backfill has the id 999"));
    let (status, body) = host.delete("/api/backfills/999").await;
    assert_eq!((status, error(&body)), (404, "no backfill has the id 999"));

    let path = format!("/api/configurations/{id}/backfill");
    for (body, starts) in [
        (json!({}), "since is required"),
        (
            json!({"since": "yesterday"}),
            "since: \"yesterday\" is not a time",
        ),
        (
            json!({"since": "2026-11-01T00:00"}),
            "since: \"2026-11-01T00:00\" is not a time",
        ),
        (json!({"since": -3}), "since: -3 is not a time"),
        (
            json!({"since": 0, "until": "soon"}),
            "until: \"soon\" is not a time",
        ),
    ] {
        let (status, answer) = host.post(&path, &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert!(error(&answer).starts_with(starts), "{body}: {answer}");
        assert!(
            error(&answer).contains("RFC 3339") && error(&answer).contains("Unix seconds"),
            "{answer}"
        );
    }
    let (status, answer) = host.post(&path, &json!({"since": 10, "until": 10})).await;
    assert_eq!(
        (status, error(&answer)),
        (422, "the range is empty: since must be before until")
    );
    let (status, answer) = host.post(&path, &json!({"since": now_s() + 3600})).await;
    assert_eq!(
        (status, error(&answer)),
        (422, "the range starts in the future")
    );
    let (status, answer) = host
        .post(
            &path,
            &json!({"since": now_s() + 3600, "until": now_s() + 7200}),
        )
        .await;
    assert_eq!(
        (status, error(&answer)),
        (422, "the range starts in the future")
    );
    let (status, answer) = host.post(&path, &json!({"since": 0, "untill": 10})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(error(&answer).contains("untill"), "{answer}");

    // A disabled configuration must be enabled first.
    let (status, _) = host
        .post_empty(&format!("/api/configurations/{id}/disable"))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = host.post(&path, &json!({"since": 0})).await;
    assert_eq!(
        (status, error(&answer)),
        (
            409,
            "the configuration \"Sink\" is disabled or not running: enable it first"
        )
    );
}

#[tokio::test]
async fn a_backfill_is_started_followed_and_listed() {
    let bulk = start("ok").await;
    let host = &bulk.host;
    let day = 86_400;
    let start_at = now_s() - 3 * day;
    write_sessions(
        &bulk.sessions,
        &[
            ("a", start_at + 10),
            ("b", start_at + day),
            ("c", start_at + 2 * day),
        ],
    );
    let path = format!("/api/configurations/{}/backfill", bulk.configuration);
    // RFC 3339 with an offset, and Unix seconds as text.
    let body = json!({"since": rfc3339_plus_one_hour(start_at), "until": (start_at + 2 * day).to_string()});
    let response = host
        .http
        .post(host.url(&path))
        .json(&body)
        .send()
        .await
        .expect("the host answers");
    assert_eq!(response.status().as_u16(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    let answer: Value = response.json().await.expect("JSON");
    let first = answer["id"].as_i64().expect("an id");
    assert_eq!(location, Some(format!("/api/backfills/{first}")));

    let done = wait_backfill(host, first).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["configuration_id"].as_i64(), Some(bulk.configuration));
    assert_eq!(done["configuration_name"], "Bulk");
    assert_eq!(
        (done["since"].as_i64(), done["until"].as_i64()),
        (Some(start_at), Some(start_at + 2 * day))
    );
    assert_eq!(
        (
            done["found"].as_i64(),
            done["imported"].as_i64(),
            done["queued"].as_i64()
        ),
        (Some(2), Some(2), Some(0)),
        "{done}"
    );
    assert_eq!(done["listed"].as_f64(), Some(1.0));
    assert_eq!(done["eta_seconds"], Value::Null);
    assert_eq!(done["error"], Value::Null);
    assert!(done["finished_at"].as_i64().is_some(), "{done}");
    let (status, again) = host.get(&format!("/api/backfills/{first}")).await;
    assert_eq!((status, &again), (200, &done));
    let (status, ended) = host.delete(&format!("/api/backfills/{first}")).await;
    assert_eq!(
        (status, error(&ended)),
        (
            409,
            format!("the backfill {first} has already ended: it is done").as_str()
        )
    );

    // Until defaults to now: a second backfill, listed newest first.
    let (status, answer) = host
        .post(&path, &json!({"since": start_at + 2 * day - 1}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let second = answer["id"].as_i64().expect("an id");
    let done = wait_backfill(host, second).await;
    assert_eq!(
        (done["found"].as_i64(), done["already_imported"].as_i64()),
        (Some(1), Some(0)),
        "{done}"
    );
    assert!(done["until"].as_i64() >= Some(now_s() - 60), "{done}");
    let (status, list) = host
        .get(&format!(
            "/api/configurations/{}/backfills",
            bulk.configuration
        ))
        .await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|b| b["id"].as_i64())
        .collect();
    assert_eq!(ids, vec![second, first], "newest first");
    let (_, configuration) = host
        .get(&format!("/api/configurations/{}", bulk.configuration))
        .await;
    assert!(
        configuration
            .as_object()
            .is_some_and(|c| c.contains_key("reconciliation")),
        "{configuration}"
    );
    let (_, plugins) = host.get("/api/plugins").await;
    assert_eq!(plugins[0]["lists_ended_sessions"], true, "{plugins}");
}

#[tokio::test]
async fn a_running_backfill_is_cancelled_and_its_waiting_events_failed() {
    let bulk = start("sleep:2000").await;
    let host = &bulk.host;
    let start_at = now_s() - 86_400;
    // More than the engine runs at once, so that some wait when it is cancelled.
    let many: Vec<(String, i64)> = (0..200)
        .map(|i| (format!("m{i:03}"), start_at + 100 + i))
        .collect();
    let refs: Vec<(&str, i64)> = many.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    write_sessions(&bulk.sessions, &refs);
    let (status, body) = host
        .post(
            &format!("/api/configurations/{}/backfill", bulk.configuration),
            &json!({"since": start_at}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_i64().expect("an id");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, running) = host.get(&format!("/api/backfills/{id}")).await;
        assert_eq!(running["state"], "running", "{running}");
        if running["found"].as_i64() == Some(200) {
            assert!(running["queued"].as_i64() > Some(0), "{running}");
            break;
        }
        assert!(Instant::now() < deadline, "never listed: {running}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cancelled) = host.delete(&format!("/api/backfills/{id}")).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["eta_seconds"], Value::Null, "{cancelled}");
    assert!(cancelled["failed"].as_i64() > Some(0), "{cancelled}");
    assert!(cancelled["finished_at"].as_i64().is_some(), "{cancelled}");
    let (status, again) = host.delete(&format!("/api/backfills/{id}")).await;
    assert_eq!(
        (status, error(&again)),
        (
            409,
            format!("the backfill {id} has already ended: it is cancelled").as_str()
        )
    );
    let (_, after) = host.get(&format!("/api/backfills/{id}")).await;
    assert_eq!(after["state"], "cancelled", "{after}");
}

/// Unix seconds as RFC 3339 at +01:00, without a date library.
fn rfc3339_plus_one_hour(seconds: i64) -> String {
    let local = seconds + 3600;
    let (days, rest) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    // The civil date of a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+01:00",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[tokio::test]
async fn the_command_follows_a_backfill_to_its_end() {
    let bulk = start("ok").await;
    let host = &bulk.host;
    let day = 86_400;
    let start_at = now_s() - 2 * day;
    write_sessions(&bulk.sessions, &[("x", start_at + 5), ("y", start_at + 6)]);
    let since = start_at.to_string();
    let until = (start_at + day).to_string();
    let (code, stdout, stderr) =
        backfill_command(host, &["Bulk", "--since", &since, "--until", &until]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("backfill 1 of \"Bulk\": sessions ended from "),
        "{stdout}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("done: found 2, imported 2, already imported 0, skipped 0, failed 0"),
        "{stdout}"
    );

    // Again: both already imported.
    let (code, stdout, stderr) =
        backfill_command(host, &["Bulk", "--since", &since, "--until", &until]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.ends_with("done: found 2, imported 0, already imported 2, skipped 0, failed 0\n"),
        "{stdout}"
    );

    // Bad input: exit 2, saying what to fix.
    let (code, _, stderr) = backfill_command(host, &["Nope", "--since", &since]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("no configuration is named \"Nope\"; there are \"Bulk\""),
        "{stderr}"
    );
    let (code, _, stderr) = backfill_command(host, &["Bulk", "--since", "last week"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is not a time"), "{stderr}");
}

#[tokio::test]
async fn the_command_exits_1_when_the_backfill_is_cancelled() {
    let bulk = start("sleep:2000").await;
    let host = &bulk.host;
    let start_at = now_s() - 86_400;
    let many: Vec<(String, i64)> = (0..30)
        .map(|i| (format!("c{i:02}"), start_at + i))
        .collect();
    let refs: Vec<(&str, i64)> = many.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    write_sessions(&bulk.sessions, &refs);
    let command = Command::new(host_binary())
        .args(["backfill", "Bulk", "--since", &start_at.to_string()])
        .args(["--admin-listen", &admin_listen(host)])
        .env_remove("MWE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let (_, list) = host
            .get(&format!(
                "/api/configurations/{}/backfills",
                bulk.configuration
            ))
            .await;
        if let Some(id) = list[0]["id"].as_i64() {
            break id;
        }
        assert!(Instant::now() < deadline, "the command started no backfill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, body) = host.delete(&format!("/api/backfills/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let out = tokio::task::spawn_blocking(move || command.wait_with_output())
        .await
        .expect("joined")
        .expect("the command ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("cancelled: found ")),
        "{stdout}"
    );
    assert!(stderr.contains("the backfill cancelled"), "{stderr}");
}

#[tokio::test]
async fn the_command_says_when_the_engine_is_not_running() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(host_binary())
        .args(["backfill", "Bulk", "--since", "2026-01-01"])
        .args(["--admin-listen", &format!("0.0.0.0:{port}")])
        .args(["--admin-token", "a-token-of-sixteen-or-more"])
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("MWE_CONFIG")
        .output()
        .expect("the command runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "middleware-engine: cannot reach the engine's admin API at http://127.0.0.1:{port}/ (is the service running?): "
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("a-token-of-sixteen"), "{stderr}");
}
