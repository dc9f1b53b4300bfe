//! The engine among hostile neighbours and on a long history: silent and idle
//! sockets, bodies that never end, senders that may not send, pages on other ports of
//! the machine, a restart on hundreds of thousands of stored events, ids reused.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{answer, PluginsDir, TestHost};

/// A bound for a step that, broken, would hang for minutes: not a timing goal.
const HANG: Duration = Duration::from_secs(60);

fn address(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

fn sink_plugins() -> PluginsDir {
    let plugins = PluginsDir::new();
    plugins.add("file-sink", "file_sink_plugin");
    plugins
}

const END_FORM: &[(&str, &str)] = &[
    ("event", "support_conference_end"),
    ("version", "3"),
    ("timestamp", "1764231302"),
    ("lsid", "c4f0a8d2e9b14c6f"),
];

/// Sends `head` (and whatever body bytes it holds) and returns the whole answer the
/// engine gives before closing, without sending more.
async fn raw_exchange(addr: &str, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, stream.read_to_end(&mut answer))
        .await
        .expect("the engine answers and closes instead of waiting for the rest")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_restart_on_200_000_stored_events_answers_the_first_event_at_once() {
    let plugins = PluginsDir::new();
    let mut host = TestHost::start(&plugins);
    host.kill();
    // A long history: 100,000 events finished long ago (past the retention, so the
    // start-up prune has them to remove) and 100,000 recent ones.
    let now = chrono_ms();
    match &host.database {
        None => {
            let mut db = rusqlite::Connection::open(host.database_file()).expect("database");
            let tx = db.transaction().expect("transaction");
            {
                let mut event = tx
                    .prepare(
                        "INSERT INTO events (source, appliance_id, event_type, lsid, timestamp, fields, received_at, dedup_key)
                         VALUES ('outbound', 'Default', 'support_conference_end', ?1, ?2, '{}', ?3, ?1)",
                    )
                    .expect("prepare");
                let mut job = tx
                    .prepare(
                        "INSERT INTO jobs (event_id, source, event_type, lsid, state, attempts, next_attempt_at,
                                           last_error, received_at, updated_at)
                         VALUES (?1, 'outbound', 'support_conference_end', ?2, 'ignored', 0, ?3, 'no configuration', ?3, ?3)",
                    )
                    .expect("prepare");
                for i in 0..200_000_i64 {
                    let at = if i < 100_000 { 1_000 + i } else { now - 1_000 };
                    let lsid = format!("stored-{i}");
                    event
                        .execute(rusqlite::params![lsid, i, at])
                        .expect("event");
                    job.execute(rusqlite::params![tx.last_insert_rowid(), lsid, at])
                        .expect("job");
                }
            }
            tx.commit().expect("commit");
        }
        Some(database) => database.with(|client| {
            client
                .execute(
                    "INSERT INTO events (source, appliance_id, event_type, lsid, timestamp, fields, received_at, dedup_key)
                     SELECT 'outbound', 'Default', 'support_conference_end', 'stored-' || i, i, '{}',
                            CASE WHEN i < 100000 THEN 1000 + i ELSE $1::bigint - 1000 END, 'stored-' || i
                     FROM generate_series(0::bigint, 199999::bigint) AS i",
                    &[&now],
                )
                .expect("events");
            client
                .batch_execute(
                    "INSERT INTO jobs (event_id, source, event_type, lsid, state, attempts, next_attempt_at,
                                       last_error, received_at, updated_at)
                     SELECT id, 'outbound', 'support_conference_end', lsid, 'ignored', 0, received_at,
                            'no configuration', received_at, received_at
                     FROM events",
                )
                .expect("jobs");
        }),
    }
    let started = Instant::now();
    let host = host.start_again();
    let http = patient_client();
    let (status, body) = post_end_event(&http, &host).await;
    let first_event = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ignored");
    println!("restart with 200,000 events stored: first event answered after {first_event:?}");
    let (status, _) = answer(
        http.get(format!("{}/api/configurations", host.admin))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200, "the admin API answers too");
}

/// A client that gives up only on a hang (see [`HANG`]).
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HANG)
        .build()
        .expect("client")
}

async fn post_end_event(http: &reqwest::Client, host: &TestHost) -> (u16, serde_json::Value) {
    answer(
        http.post(format!("{}/ERSPost", host.events))
            .form(END_FORM)
            .send()
            .await,
    )
    .await
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_never_starve_the_appliance() {
    let host = TestHost::start_with_env(
        &PluginsDir::new(),
        &[
            ("MWE_CLIENT_HEADER_TIMEOUT", "1"),
            ("MWE_EVENT_MAX_CONNECTIONS", "20"),
        ],
    );
    let events = address(&host.events);
    // Twenty connections that never send a byte hold every slot of the event address.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(&events).await.expect("connect"));
    }
    // The admin address has its own slots.
    let (status, _) = host.get("/api/plugins").await;
    assert_eq!(status, 200);
    // The engine closes each silent connection (the read sees the end) ...
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(HANG, stream.read(&mut byte))
            .await
            .expect("the engine closes a silent connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // ... and the appliance's event, which waited for a slot, is answered.
    let (status, body) = host.post_event(None, END_FORM).await;
    assert_eq!(status, 200, "{body}");
    // A kept-alive connection that goes idle after its answer is closed as well.
    let mut kept = TcpStream::connect(&events).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, kept.read_to_end(&mut answer))
        .await
        .expect("closed once idle")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_body_that_never_ends_is_answered_408_on_both_addresses() {
    let host = TestHost::start_with_env(&PluginsDir::new(), &[("MWE_CLIENT_BODY_TIMEOUT", "1")]);
    let events = raw_exchange(
        &address(&host.events),
        "POST /ERSPost HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nevent=support",
    )
    .await;
    assert!(events.starts_with("HTTP/1.1 408"), "{events}");
    assert!(
        events.contains("the request body did not arrive within 1 s"),
        "{events}"
    );
    let admin = raw_exchange(
        &address(&host.admin),
        "POST /api/configurations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"plugin\":",
    )
    .await;
    assert!(admin.starts_with("HTTP/1.1 408"), "{admin}");
    assert!(admin.contains("\"error\""), "answered in JSON: {admin}");
    // Nothing was stored from the unfinished event.
    assert!(host.events("limit=10").await.is_empty());
}

#[tokio::test]
async fn a_source_that_may_not_send_is_refused_before_its_body_is_read() {
    let host = TestHost::start_with_env(
        &PluginsDir::new(),
        &[("MWE_EVENT_ALLOWED_SOURCES", "192.0.2.0/24")],
    );
    // Headers announce a 1 MiB body that never comes; the 403 must not wait for it.
    let answer = raw_exchange(
        &address(&host.events),
        "POST /ERSPost HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("127.0.0.1 is not an allowed event source"),
        "{answer}"
    );
}

#[tokio::test]
async fn with_few_file_descriptors_hundreds_of_idle_sockets_leave_the_engine_answering() {
    // As systemd starts services: a soft limit far below the hard one.
    let host = TestHost::start_wrapped(
        &PluginsDir::new(),
        &["prlimit", "--nofile=200:4096", "--"],
        &[("MWE_CLIENT_HEADER_TIMEOUT", "30")],
    );
    let events = address(&host.events);
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(&events).await.expect("connect"));
    }
    let http = patient_client();
    let (status, body) = post_end_event(&http, &host).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = answer(http.get(format!("{}/api/plugins", host.admin)).send().await).await;
    assert_eq!(status, 200);
    assert!(
        !host.log().contains("Too many open files"),
        "{}",
        host.log()
    );
    drop(idle);
}

#[tokio::test]
async fn a_page_on_another_port_of_the_machine_cannot_change_anything() {
    let host = TestHost::start(&sink_plugins());
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "file-sink", "name": "Sink", "settings": {
                "output_file": host.data.path().join("out.jsonl").to_str().expect("utf-8"),
                "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
            }}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    let port = host.admin.rsplit(':').next().expect("port").to_owned();
    for (origin, sec_fetch) in [
        (Some("http://localhost:9999".to_owned()), None),
        (Some("https://127.0.0.1:1".to_owned()), None),
        (Some(format!("https://127.0.0.1:{port}")), None),
        (None, Some("cross-site")),
    ] {
        for action in ["disable", "copy", "test"] {
            let mut request = host
                .http
                .post(host.url(&format!("/api/configurations/{id}/{action}")));
            if let Some(origin) = &origin {
                request = request.header("origin", origin);
            }
            if let Some(site) = sec_fetch {
                request = request.header("sec-fetch-site", site);
            }
            let (status, body) = answer(request.send().await).await;
            assert_eq!(
                status, 403,
                "{action} from {origin:?} {sec_fetch:?}: {body}"
            );
        }
    }
    let (_, listed) = host.get("/api/configurations").await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "no copy was made: {listed}"
    );
    assert_eq!(listed[0]["disabled"], false, "not disabled: {listed}");
    // The page itself, and a client that is no browser, still may.
    let (status, body) = answer(
        host.http
            .post(host.url(&format!("/api/configurations/{id}/disable")))
            .header("origin", format!("http://127.0.0.1:{port}"))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = host
        .post_empty(&format!("/api/configurations/{id}/enable"))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_deleted_configurations_id_history_and_jobs_are_never_given_to_a_new_one() {
    let plugins = sink_plugins();
    let host = TestHost::start(&plugins);
    let data = std::sync::Arc::clone(&host.data);
    let settings = |file: &str| {
        json!({
            "output_file": data.path().join(file).to_str().expect("utf-8"),
            "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
            "outbound_event_types": ["support_conference_end"],
        })
    };
    let (status, first) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "file-sink", "name": "Old", "settings": settings("old.jsonl")}),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let old = first["id"].as_i64().expect("id");
    let (status, body) = host.post_event(None, END_FORM).await;
    assert_eq!(status, 200, "{body}");
    host.wait_for_state("succeeded", 1).await;
    let (status, _) = host.delete(&format!("/api/configurations/{old}")).await;
    assert_eq!(status, 204);
    let (status, second) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "file-sink", "name": "New", "settings": settings("new.jsonl")}),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    let new = second["id"].as_i64().expect("id");
    assert_ne!(new, old, "a deleted configuration's id is not reused");
    assert!(
        host.events(&format!("configuration={new}"))
            .await
            .is_empty(),
        "the new configuration has no history of the old one"
    );
    // Ids stay unique across a restart too.
    let host = host.restart();
    let (status, third) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "file-sink", "name": "Newer", "settings": settings("newer.jsonl")}),
        )
        .await;
    assert_eq!(status, 201, "{third}");
    assert!(third["id"].as_i64().expect("id") > new);
}

#[tokio::test]
async fn bad_path_ids_and_repeated_query_fields_are_answered_in_json() {
    let host = TestHost::start(&PluginsDir::new());
    for path in [
        "/api/configurations/abc",
        "/api/events/1x",
        "/api/events?limit=1&limit=2",
        "/api/events?state=failed&state=pending",
    ] {
        let (status, body) = host.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn percent_encoded_bytes_that_are_not_utf8_are_refused_like_raw_ones() {
    let host = TestHost::start(&PluginsDir::new());
    for body in [
        &b"event=support_conference_end&version=3&timestamp=1&lsid=a&external_key=CAS%FF01"[..],
        &b"event=support_conference_end&version=3&timestamp=1&lsid=a&external_key=CAS\xff01"[..],
    ] {
        let (status, answer) = answer(
            host.http
                .post(format!("{}/ERSPost", host.events))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_vec())
                .send()
                .await,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().is_some(), "{answer}");
    }
    assert!(
        host.events("limit=10").await.is_empty(),
        "nothing was stored"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_folder_and_database_are_private_to_the_engine() {
    use std::os::unix::fs::PermissionsExt;
    let host = TestHost::start(&PluginsDir::new());
    let (status, _) = host.post_event(None, END_FORM).await;
    assert_eq!(status, 200);
    let data = host.data.path().join("data");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).expect("list") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path) & 0o077, 0, "{} is private", path.display());
    }
}
