//! Reconciliation and backfill through the real binary, with the scripted test plugin
//! listing ended sessions from its `sessions_file` (one JSON line per session:
//! `{"lsid": ..., "ended_at": <Unix s>}`) and recording every call to `record_file`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{json_lines, PluginsDir, TestHost};

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub struct Bulk {
    pub host: TestHost,
    pub configuration: i64,
    pub record: PathBuf,
    pub sessions: PathBuf,
    /// Kept for restarts: the host loads its plugins from here.
    pub _plugins: PluginsDir,
}

/// A host with one scripted configuration that takes session ends.
pub async fn start(bulk_script: &str) -> Bulk {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = TestHost::start(&plugins);
    let record = host.data.path().join("calls.jsonl");
    let sessions = host.data.path().join("sessions.jsonl");
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "scripted", "name": "Bulk", "settings": {
                "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
                "record_file": record.to_str().expect("utf-8"),
                "sessions_file": sessions.to_str().expect("utf-8"),
                "bulk_script": bulk_script,
                "outbound_event_types": ["support_conference_end"],
            }}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    Bulk {
        configuration: created["id"].as_i64().expect("id"),
        host,
        record,
        sessions,
        _plugins: plugins,
    }
}

pub fn write_sessions(path: &Path, sessions: &[(&str, i64)]) {
    let text: String = sessions
        .iter()
        .map(|(lsid, at)| format!("{}\n", json!({"lsid": lsid, "ended_at": at})))
        .collect();
    std::fs::write(path, text).expect("write the sessions file");
}

/// The lsids the plugin handled, in order (event lines only).
pub fn handled(record: &Path) -> Vec<(String, String)> {
    json_lines(record)
        .iter()
        .filter_map(|l| {
            Some((
                l["lsid"].as_str()?.to_owned(),
                l["source"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Polls a backfill until it is no longer running (a bound on a hang, not a timing goal).
pub async fn wait_backfill(host: &TestHost, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = host.get(&format!("/api/backfills/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if body["state"] != "running" {
            return body;
        }
        assert!(Instant::now() < deadline, "still running: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_backfill(host: &TestHost, configuration: i64, since: i64, until: i64) -> i64 {
    let (status, body) = host
        .post(
            &format!("/api/configurations/{configuration}/backfill"),
            &json!({"since": since, "until": until}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_i64().expect("id")
}

#[tokio::test]
async fn reconciliation_imports_a_session_whose_event_never_came_once() {
    let bulk = start("ok").await;
    let host = &bulk.host;
    let now = now_s();
    // "delivered" came through its outbound event; "lost" never did.
    let (status, _) = host
        .post_event(
            None,
            &[
                ("event", "support_conference_end"),
                ("version", "3"),
                ("timestamp", &now.to_string()),
                ("lsid", "delivered"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    host.wait_for_state("succeeded", 1).await;
    write_sessions(&bulk.sessions, &[("delivered", now), ("lost", now)]);

    let (status, body) = host
        .post_empty(&format!(
            "/api/configurations/{}/reconcile",
            bulk.configuration
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["found"].as_i64(), body["queued"].as_i64()),
        (Some(2), Some(1))
    );
    host.wait_for_state("succeeded", 2).await;
    let lost = host.events("lsid=lost").await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0]["source"], "reconcile");
    assert_eq!(host.events("lsid=delivered").await.len(), 1, "not touched");

    // Again: nothing new is queued.
    let (status, body) = host
        .post_empty(&format!(
            "/api/configurations/{}/reconcile",
            bulk.configuration
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queued"].as_i64(), Some(0), "{body}");
    assert_eq!(
        handled(&bulk.record),
        vec![
            ("delivered".to_owned(), "outbound".to_owned()),
            ("lost".to_owned(), "reconcile".to_owned())
        ]
    );
    let metrics = host.metrics().await;
    assert!(
        metrics.contains("mwe_sessions_queued_total{source=\"reconcile\"} 1\n"),
        "{metrics}"
    );
    let (status, configuration) = host
        .get(&format!("/api/configurations/{}", bulk.configuration))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        configuration["reconciliation"]["last_queued"].as_i64(),
        Some(0),
        "{configuration}"
    );
}

#[tokio::test]
async fn a_backfill_imports_its_range_once_and_a_second_writes_nothing() {
    let bulk = start("ok").await;
    let host = &bulk.host;
    let day = 86_400;
    let start = now_s() - 10 * day;
    // Four days of sessions, two outside the range on either side.
    let sessions: Vec<(String, i64)> = (0..12)
        .map(|i| (format!("s{i:02}"), start + i * day / 3))
        .collect();
    let refs: Vec<(&str, i64)> = sessions.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    write_sessions(&bulk.sessions, &refs);
    let (since, until) = (start + day / 3, start + 11 * day / 3);
    let expected: Vec<&str> = refs
        .iter()
        .filter(|(_, t)| (since..until).contains(t))
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(expected.len(), 10);

    let id = start_backfill(host, bulk.configuration, since, until).await;
    let done = wait_backfill(host, id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["found"].as_i64(), Some(10), "{done}");
    assert_eq!(done["imported"].as_i64(), Some(10), "{done}");
    assert_eq!(done["already_imported"].as_i64(), Some(0), "{done}");
    let mut imported: Vec<String> = handled(&bulk.record).into_iter().map(|(l, _)| l).collect();
    imported.sort();
    assert_eq!(imported, expected);
    assert!(
        handled(&bulk.record)
            .iter()
            .all(|(_, source)| source == "backfill"),
        "{:?}",
        handled(&bulk.record)
    );
    // Listed in day-sized chunks, never a call per session; handled in batches.
    let lines = json_lines(&bulk.record);
    let lists = lines.iter().filter(|l| l.get("list").is_some()).count();
    assert!((3..=5).contains(&lists), "{lists} listing calls");
    assert!(
        lines.iter().any(|l| l["batch"].as_i64() > Some(1)),
        "{lines:?}"
    );

    let again = start_backfill(host, bulk.configuration, since, until).await;
    let done = wait_backfill(host, again).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (
            done["found"].as_i64(),
            done["already_imported"].as_i64(),
            done["imported"].as_i64()
        ),
        (Some(10), Some(10), Some(0)),
        "{done}"
    );
    assert_eq!(handled(&bulk.record).len(), 10, "nothing written again");
    let (status, list) = host
        .get(&format!(
            "/api/configurations/{}/backfills",
            bulk.configuration
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
}

#[tokio::test]
async fn a_backfill_survives_a_kill_and_completes_without_a_session_imported_twice() {
    let bulk = start("sleep:100").await;
    let mut host = bulk.host;
    let day = 86_400;
    let start = now_s() - 5 * day;
    let sessions: Vec<(String, i64)> = (0..40)
        .map(|i| (format!("k{i:02}"), start + i * 3_000))
        .collect();
    let refs: Vec<(&str, i64)> = sessions.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    write_sessions(&bulk.sessions, &refs);
    let id = start_backfill(&host, bulk.configuration, start, start + 2 * day).await;

    // Half-way: some sessions handled, not all.
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled(&bulk.record).len() < 5 {
        assert!(Instant::now() < deadline, "the backfill never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill();
    let before = handled(&bulk.record).len();
    assert!(
        before < 40,
        "the kill came too late to test anything: {before}"
    );
    let host = host.start_again();
    let done = wait_backfill(&host, id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["imported"].as_i64(), Some(40), "{done}");
    // One event per session in the history, each succeeded once.
    for (lsid, _) in &sessions {
        let jobs = host.events(&format!("lsid={lsid}")).await;
        assert_eq!(jobs.len(), 1, "{lsid}: {jobs:?}");
        assert_eq!(jobs[0]["state"], "succeeded", "{lsid}: {jobs:?}");
    }
    // The plugin saw every session; only those in flight at the kill ran again.
    let mut seen: Vec<String> = handled(&bulk.record).into_iter().map(|(l, _)| l).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 40);
}

#[tokio::test]
async fn live_events_go_first_while_a_backfill_runs() {
    let bulk = start("sleep:200").await;
    let host = &bulk.host;
    let start = now_s() - 3 * 86_400;
    let sessions: Vec<(String, i64)> = (0..300)
        .map(|i| (format!("b{i:03}"), start + i * 60))
        .collect();
    let refs: Vec<(&str, i64)> = sessions.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    write_sessions(&bulk.sessions, &refs);
    let id = start_backfill(host, bulk.configuration, start, start + 86_400).await;
    // The backfill is under way: its events are being handled.
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled(&bulk.record).is_empty() {
        assert!(Instant::now() < deadline, "the backfill never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = host
        .post_event(
            None,
            &[
                ("event", "support_conference_end"),
                ("version", "3"),
                ("timestamp", &now_s().to_string()),
                ("lsid", "live"),
                ("script", "ok"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    // The live event is done while most of the backfill still waits.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = host.events("lsid=live").await;
        if live.first().is_some_and(|e| e["state"] == "succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "the live event waited: {live:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, running) = host.get(&format!("/api/backfills/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(running["state"], "running", "{running}");
    assert!(running["queued"].as_i64() > Some(100), "{running}");
    let (status, _) = host.delete(&format!("/api/backfills/{id}")).await;
    assert_eq!(status, 200);
}
