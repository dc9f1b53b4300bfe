//! Several engine processes on one PostgreSQL database: configurations shared,
//! intake on any engine, jobs taken over from an engine killed with `kill -9`, and
//! polling by one engine at a time that moves when that engine dies. These run on
//! PostgreSQL whatever the suite's backend (tests/run.sh runs them once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{json_lines, PluginsDir, PostgresDatabase, TestHost};

const END: &str = "support_conference_end";
/// Short leases, so a takeover comes within seconds.
const LEASE: &str = "3";

fn plugins() -> PluginsDir {
    crate::helpers::scripted_and_file_sink()
}

/// A loopback port free now, for an engine that keeps its event URL across a restart.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Polls `check` on a state until it holds (or fails after a minute, saying `what`).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(host: &TestHost, id: i64) -> String {
    let (_, body) = host.get(&format!("/api/configurations/{id}")).await;
    body["status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_configuration_made_on_one_engine_is_used_by_the_other() {
    let plugins = plugins();
    let first = TestHost::start_postgres(&plugins, &[("MWE_LEASE_SECONDS", LEASE)]);
    let second = first.join(&plugins, &[("MWE_LEASE_SECONDS", LEASE)]);
    let record = first.data.path().join("calls.jsonl");
    let id = first
        .scripted_configuration(
            "Shared",
            json!({"record_file": record.to_str().expect("utf-8")}),
        )
        .await;
    until("the second engine runs the configuration", || async {
        status_of(&second, id).await == "running"
    })
    .await;
    // An event posted to the second engine goes to the configuration made on the first,
    // secrets included (the scripted plugin's test reads them).
    let (status, body) = second
        .post_event(
            None,
            &[
                ("event", END),
                ("version", "3"),
                ("timestamp", "1"),
                ("lsid", "shared-1"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = second.wait_for_state("succeeded", 1).await;
    assert_eq!(done[0]["configuration_name"], "Shared");
    let (_, report) = second
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(report["ok"], true, "{report}");
    // Disabled on the second, it stops on the first.
    let (status, _) = second
        .post_empty(&format!("/api/configurations/{id}/disable"))
        .await;
    assert_eq!(status, 200);
    until("the first engine disables it", || async {
        status_of(&first, id).await == "disabled"
    })
    .await;
    let (status, body) = first
        .post_event(
            None,
            &[
                ("event", END),
                ("version", "3"),
                ("timestamp", "2"),
                ("lsid", "shared-2"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    // Both engines list both, alive, with the same plugins.
    let (status, listing) = first.get("/api/engines").await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["store"], "postgres");
    let engines = listing["engines"].as_array().expect("engines");
    assert_eq!(engines.len(), 2, "{listing}");
    for engine in engines {
        assert_eq!(engine["alive"], true, "{engine}");
        assert!(engine["last_heartbeat_at"].as_i64().is_some_and(|t| t > 0));
        assert_eq!(engine["plugins_differ"], json!([]), "{engine}");
        assert!(engine["events_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")));
    }
    assert_eq!(
        engines.iter().filter(|e| e["this_engine"] == true).count(),
        1,
        "{listing}"
    );
}

#[tokio::test]
async fn an_engine_with_another_key_file_refuses_to_start_and_says_why() {
    let plugins = plugins();
    let first = TestHost::start_postgres(&plugins, &[]);
    first.scripted_configuration("Sealed", json!({})).await;
    let database = first.database.as_ref().expect("database");
    // A second engine with its own (new) key file instead of a copy of the first's.
    let data = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(crate::helpers::host_binary())
        .args([
            "serve",
            "--admin-listen",
            "127.0.0.1:0",
            "--event-listen",
            "127.0.0.1:0",
        ])
        .arg("--plugins-dir")
        .arg(plugins.path())
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .arg("--database-url")
        .arg(&database.url)
        .env_remove("MWE_CONFIG")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not open the secrets stored in postgres://mwe_test@")
            && stderr.contains("needs a copy of the same key file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(":mwe_test@"),
        "no password in the message: {stderr}"
    );
}

/// The calls the scripted plugin recorded, per session.
fn calls_per_lsid(record: &std::path::Path) -> HashMap<String, usize> {
    let mut per_lsid = HashMap::new();
    for call in json_lines(record) {
        if let Some(lsid) = call["lsid"].as_str() {
            *per_lsid.entry(lsid.to_owned()).or_default() += 1;
        }
    }
    per_lsid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_both_engines_survives_a_kill_9_of_one_and_its_jobs_are_taken_over() {
    let plugins = plugins();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("MWE_LEASE_SECONDS", LEASE),
        ("MWE_EVENT_LISTEN", listen.as_str()),
    ];
    let mut first = TestHost::start_postgres(&plugins, &env);
    let second = first.join(&plugins, &[("MWE_LEASE_SECONDS", LEASE)]);
    let record = first.data.path().join("burst.jsonl");
    let id = first
        .scripted_configuration(
            "Burst",
            json!({"record_file": record.to_str().expect("utf-8")}),
        )
        .await;
    until("the second engine runs the configuration", || async {
        status_of(&second, id).await == "running"
    })
    .await;

    const TOTAL: usize = 3000;
    let accepted = Arc::new(Mutex::new(vec![false; TOTAL]));
    let urls = [
        format!("http://{listen}/ERSPost"),
        format!("{}/ERSPost", second.events),
    ];
    // Eight senders, each event to the engines in turn; one that gets no 200 is sent
    // again to the other (a load balancer's failover) until one answers 200.
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let (accepted, urls) = (Arc::clone(&accepted), urls.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in (s..TOTAL).step_by(8) {
                    let lsid = format!("b-{i}");
                    // Slow enough that calls are in flight when the engine is killed.
                    let script = if i % 10 == 0 { "sleep:200" } else { "ok" };
                    let form = [
                        ("event", END),
                        ("version", "3"),
                        ("timestamp", "1764231302"),
                        ("lsid", lsid.as_str()),
                        ("script", script),
                    ];
                    let mut target = i % 2;
                    loop {
                        let ok = client
                            .post(&urls[target])
                            .form(&form)
                            .send()
                            .await
                            .map(|r| r.status().as_u16() == 200)
                            .unwrap_or(false);
                        if ok {
                            accepted.lock().expect("lock")[i] = true;
                            break;
                        }
                        target = 1 - target;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    let accepted_count = || {
        accepted
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| **a)
            .count()
    };
    until("a third of the burst is accepted", || async {
        accepted_count() >= TOTAL / 3
    })
    .await;
    // The first engine must be running calls when it dies.
    until("the first engine runs calls", || async {
        let (_, listing) = second.get("/api/engines").await;
        listing["engines"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["this_engine"] == false && e["jobs_running"].as_i64().unwrap_or(0) > 0)
    })
    .await;
    first.kill();
    let killed_at = Instant::now();
    // The survivor takes over the jobs the dead engine was running once their
    // leases end, while that engine is still down.
    until("the survivor takes the dead engine's jobs over", || async {
        metric(&second.metrics().await, "mwe_jobs_taken_over_total ") > 0
    })
    .await;
    println!(
        "jobs taken over {:?} after the kill (lease {LEASE} s)",
        killed_at.elapsed()
    );
    let (_, listing) = second.get("/api/engines").await;
    let dead: Vec<&Value> = listing["engines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["this_engine"] == false)
        .collect();
    assert!(dead.iter().all(|e| e["alive"] == false), "{listing}");
    until("two thirds of the burst are accepted", || async {
        accepted_count() >= TOTAL * 2 / 3
    })
    .await;
    let first = first.start_again();
    for s in senders {
        s.await.expect("sender");
    }
    let done = format!("mwe_jobs{{state=\"succeeded\"}} {TOTAL}");
    until("every accepted event is processed", || async {
        second.metrics().await.lines().any(|l| l == done)
    })
    .await;
    let per_lsid = calls_per_lsid(&record);
    assert_eq!(per_lsid.len(), TOTAL, "every accepted event was processed");
    let repeated: Vec<_> = per_lsid.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.len() <= 4,
        "only the calls in flight on the killed engine (at most its 4 slots) may run twice: {repeated:?}"
    );
    assert_eq!(
        first.count("SELECT COUNT(*) FROM events"),
        TOTAL as i64,
        "each event stored once, whichever engine took it"
    );
    // Each job interrupted by the kill says so in its history, and ran again.
    let interrupted = first.count(
        "SELECT COUNT(*) FROM attempts WHERE outcome = 'interrupted'
         AND message LIKE 'the engine running this attempt stopped answering%'",
    );
    assert!(interrupted >= 1, "the taken-over attempts are marked");
}

#[tokio::test]
async fn polling_runs_on_one_engine_at_a_time_and_moves_when_it_dies() {
    let plugins = plugins();
    let mut first = TestHost::start_postgres(&plugins, &[("MWE_LEASE_SECONDS", LEASE)]);
    let mut second = first.join(&plugins, &[("MWE_LEASE_SECONDS", LEASE)]);
    let source = first.data.path().join("poll-source.jsonl");
    let output = first.data.path().join("polled.jsonl");
    let line = |lsid: &str, ts: i64| {
        json!({"event_type": END, "timestamp": ts, "lsid": lsid, "fields": {"external_key": "CAS-1"}})
            .to_string()
    };
    std::fs::write(&source, format!("{}\n{}\n", line("p1", 1), line("p2", 2))).expect("source");
    let (status, created) = first
        .post("/api/configurations", &json!({"plugin": "file-sink", "name": "Poller", "settings": {
            "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
            "polling_event_types": [END], "polling_interval_seconds": 30,
            "output_file": output.to_str().expect("utf-8"), "poll_source_file": source.to_str().expect("utf-8"),
        }}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    until("the second engine runs the configuration", || async {
        status_of(&second, id).await == "running"
    })
    .await;
    first.wait_for_state("succeeded", 2).await;
    let polls = |text: &str| metric(text, "mwe_polls_total{result=\"ok\"} ");
    let (a, b) = (
        polls(&first.metrics().await),
        polls(&second.metrics().await),
    );
    assert_eq!(a + b, 1, "one poll, by one engine: {a} and {b}");
    // The poller dies; what the appliance has next is found by the other engine.
    std::fs::write(
        &source,
        format!("{}\n{}\n{}\n", line("p1", 1), line("p2", 2), line("p3", 3)),
    )
    .expect("source");
    let survivor = if a == 1 {
        first.kill();
        &second
    } else {
        second.kill();
        &first
    };
    survivor.wait_for_state("succeeded", 3).await;
    assert_eq!(
        polls(&survivor.metrics().await),
        1,
        "the survivor polled once"
    );
    let handled: Vec<String> = json_lines(&output)
        .iter()
        .filter_map(|e| e["lsid"].as_str().map(str::to_owned))
        .collect();
    let mut sorted = handled.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["p1", "p2", "p3"],
        "each session imported once: {handled:?}"
    );
}

#[tokio::test]
async fn an_embedded_store_copied_into_postgres_goes_on_there_with_a_second_engine() {
    let plugins = plugins();
    let mut single = TestHost::start_sqlite(&plugins);
    let record = single.data.path().join("calls.jsonl");
    let id = single.scripted_configuration("Grown",
        json!({"bt_client_secret": "s3cret-value", "record_file": record.to_str().expect("utf-8")}),
    )
    .await;
    for lsid in ["before-1", "before-2"] {
        let (status, _) = single
            .post_event(
                None,
                &[
                    ("event", END),
                    ("version", "3"),
                    ("timestamp", "1"),
                    ("lsid", lsid),
                ],
            )
            .await;
        assert_eq!(status, 200);
    }
    single.wait_for_state("succeeded", 2).await;
    single.kill();

    let database = Arc::new(PostgresDatabase::create());
    let out = single.cli(&["store", "copy", "--to", &database.url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configurations: 1 rows"), "{stdout}");
    assert!(stdout.contains("events: 2 rows"), "{stdout}");
    assert!(
        !stdout.contains(&database.url),
        "no password printed: {stdout}"
    );
    // Again: refused, the database is no longer empty.
    let again = single.cli(&["store", "copy", "--to", &database.url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    let first = single.start_on(Arc::clone(&database));
    let second = first.join(&plugins, &[]);
    assert_eq!(first.events("").await.len(), 2, "the history came along");
    until(
        "the second engine runs the copied configuration",
        || async { status_of(&second, id).await == "running" },
    )
    .await;
    let (_, report) = second
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(
        report["ok"], true,
        "the sealed secret opens on both: {report}"
    );
    let (status, _) = second
        .post_event(
            None,
            &[
                ("event", END),
                ("version", "3"),
                ("timestamp", "2"),
                ("lsid", "after-1"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    first.wait_for_state("succeeded", 3).await;
    // A new configuration does not take an id the copied history names.
    let newer = first.scripted_configuration("Newer", json!({})).await;
    assert!(newer > id, "{newer} after {id}");
}

#[tokio::test]
async fn engines_whose_plugins_differ_say_so_in_the_list_and_the_log() {
    let plugins = plugins();
    let first = TestHost::start_postgres(&plugins, &[]);
    let fewer = PluginsDir::new();
    fewer.add("file-sink", "file_sink_plugin");
    let second = first.join(&fewer, &[]);
    let (_, listing) = first.get("/api/engines").await;
    let other = listing["engines"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["this_engine"] == false)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        other["plugins_differ"],
        json!(["scripted is loaded here only"]),
        "{listing}"
    );
    assert!(
        second
            .log()
            .contains("load different plugins: scripted is loaded there only"),
        "{}",
        second.log()
    );
}

#[tokio::test]
async fn an_engine_cut_off_from_the_database_reconnects_and_goes_on() {
    let plugins = plugins();
    let host = TestHost::start_postgres(&plugins, &[]);
    let record = host.data.path().join("calls.jsonl");
    host.scripted_configuration(
        "Cut",
        json!({"record_file": record.to_str().expect("utf-8")}),
    )
    .await;
    // The server drops every connection the engine has (a network cut, a failover of
    // the database).
    let database = host.database.clone().expect("database");
    let cut: i64 = database.with(|client| {
        client
            .query_one(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'middleware-engine'",
                &[],
            )
            .expect("terminate")
            .get(0)
    });
    assert!(cut >= 1, "the engine's connections were there to cut");
    // The admin's reads go on at once: a read that meets a closed connection is read
    // again on a new one.
    let (status, body) = host.get("/api/configurations").await;
    assert_eq!(status, 200, "{body}");
    // The appliance sends again until it gets a 200; the engine opens new connections.
    let form = [
        ("event", END),
        ("version", "3"),
        ("timestamp", "1"),
        ("lsid", "after-cut"),
    ];
    until("an event is accepted after the cut", || async {
        let (status, body) = host.post_event(None, &form).await;
        assert!(
            status == 200 || status == 503,
            "a refused event is one the appliance keeps (503): {status} {body}"
        );
        status == 200
    })
    .await;
    host.wait_for_state("succeeded", 1).await;
    assert!(
        host.log()
            .contains("connection to the database opened again"),
        "{}",
        host.log()
    );
}

#[tokio::test]
async fn a_backfill_moves_to_the_other_engine_when_its_engine_dies() {
    let plugins = plugins();
    let env = [("MWE_LEASE_SECONDS", LEASE)];
    let mut first = TestHost::start_postgres(&plugins, &env);
    let mut second = first.join(&plugins, &env);
    let record = first.data.path().join("calls.jsonl");
    let sessions_file = first.data.path().join("sessions.jsonl");
    let configuration = first.scripted_configuration("Bulk", json!({"record_file": record.to_str().expect("utf-8"), "sessions_file": sessions_file.to_str().expect("utf-8"), "bulk_script": "sleep:100"})).await;
    until("the second engine runs the configuration", || async {
        status_of(&second, configuration).await == "running"
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let start = now - 5 * 86_400;
    let sessions: Vec<(String, i64)> = (0..40)
        .map(|i| (format!("m{i:02}"), start + i * 3_000))
        .collect();
    let refs: Vec<(&str, i64)> = sessions.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    crate::bulk::write_sessions(&sessions_file, &refs);
    let (status, body) = first
        .post(
            &format!("/api/configurations/{configuration}/backfill"),
            &json!({"since": start, "until": start + 2 * 86_400}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_i64().expect("id");
    until("the backfill is under way", || async {
        crate::bulk::handled(&record).len() >= 5
    })
    .await;
    // The engine holding the backfill's lease dies.
    let database = first.database.clone().expect("database");
    let lease = format!("backfill:{id}");
    let owner: String = database.with(|c| {
        c.query_one("SELECT owner FROM leases WHERE name = $1", &[&lease])
            .expect("the backfill's lease is held")
            .get(0)
    });
    let (_, listing) = first.get("/api/engines").await;
    let first_id = listing["this_engine"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let survivor = if owner == first_id {
        first.kill();
        &second
    } else {
        second.kill();
        &first
    };
    let done = crate::bulk::wait_backfill(survivor, id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["imported"].as_i64(), Some(40), "{done}");
    for (lsid, _) in &sessions {
        let jobs = survivor.events(&format!("lsid={lsid}")).await;
        assert_eq!(jobs.len(), 1, "{lsid} queued once: {jobs:?}");
        assert_eq!(jobs[0]["state"], "succeeded", "{lsid}: {jobs:?}");
    }
    assert!(
        survivor.log().contains("backfill done"),
        "the survivor took the backfill over and ended it: {}",
        survivor.log()
    );
}
