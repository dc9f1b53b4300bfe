//! `bench`: measures the engine as built in release mode and writes the table to
//! `docs/benchmarks.md`. Run through `bash examples/bench.sh`.
//!
//! 1. Intake: durable accepts per second and latency at 1, 8 and 64 concurrent
//!    senders, beside a bare handler on the same HTTP stack that stores nothing, both
//!    driven by `wrk`; then at 8 senders on a store of 100,000 events, alone and with
//!    history queries running beside it.
//! 2. End to end through the real host and Dynamics cdylib against the simulators:
//!    sessions per minute without a limit, and with a Dataverse-like limit (scaled
//!    down) the share of the limit used and whether any request came before a
//!    Retry-After had passed.
//! 3. Requests per session against each remote over 1,000 sessions.
//! 4. Memory (RSS) idle and under load, and the time from start to ready.
//! 5. A restart on a long history: 200,000 events stored (half past the retention),
//!    the time to the first event answered, and to the old half pruned meanwhile.
//! 6. Backfill of 2,000 sessions under the scaled Dataverse limit, batched, beside the
//!    per-session path of 2; reconciliation over 10,000 ended sessions.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod wrk;
use simulators::appliance::model::SessionSpec;
use simulators::appliance::{Appliance, ApplianceOptions};
use simulators::dataverse::{Dataverse, DataverseOptions, Limits};

const LEVEL_SECONDS: u64 = 5;
/// Events in the store of the "beside history queries" runs.
const STORED: i64 = 100_000;

struct Engine {
    child: Child,
    admin: String,
    events: String,
    ready_after: Duration,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fail(message: String) -> ! {
    eprintln!("bench: {message}");
    std::process::exit(1)
}

fn start_engine(binary: &Path, plugins: &Path, data: &Path) -> Engine {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--admin-listen",
            "127.0.0.1:0",
            "--event-listen",
            "127.0.0.1:0",
            "--log-level",
            "error",
        ])
        .arg("--plugins-dir")
        .arg(plugins)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start {}: {e}", binary.display())));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("no output".into()));
    let mut lines = BufReader::new(stdout).lines();
    let (mut admin, mut events) = (String::new(), String::new());
    while events.is_empty() {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("admin page: ") {
                    admin = a.trim_end_matches('/').to_owned();
                }
                if let Some(e) = line.strip_prefix("event address: ") {
                    events = e.split("/ERSPost").next().unwrap_or("").to_owned();
                }
            }
            _ => fail("the engine stopped at start".into()),
        }
    }
    let ready_after = started.elapsed();
    std::thread::spawn(move || lines.for_each(drop));
    Engine {
        child,
        admin,
        events,
        ready_after,
    }
}

/// Events in the store of the restart benchmark; half of them past the retention.
const HISTORY: i64 = 200_000;

struct Restart {
    ready: Duration,
    first_event: Duration,
    first_api: Duration,
    pruned: Duration,
}

/// Adds `count` events (an `ignored` job each) to the store in `data`; the first
/// `old` of them finished long ago, past any retention.
fn fill_store(data: &Path, count: i64, old: i64) {
    let fill = || -> rusqlite::Result<()> {
        let mut db = rusqlite::Connection::open(data.join("engine.sqlite3"))?;
        let tx = db.transaction()?;
        {
            let mut event = tx.prepare(
                "INSERT INTO events (source, appliance_id, event_type, lsid, timestamp, fields, received_at, dedup_key)
                 VALUES ('outbound', 'Default', 'support_conference_end', ?1, ?2, '{}', ?3, ?1)",
            )?;
            let mut job = tx.prepare(
                "INSERT INTO jobs (event_id, source, event_type, lsid, state, next_attempt_at, last_error, received_at, updated_at)
                 VALUES (?1, 'outbound', 'support_conference_end', ?2, 'ignored', ?3, 'no configuration', ?3, ?3)",
            )?;
            let now = chrono::Utc::now().timestamp_millis();
            for i in 0..count {
                let at = if i < old { 1_000 + i } else { now - 1_000 };
                let lsid = format!("history-{i}");
                event.execute(rusqlite::params![lsid, i, at])?;
                job.execute(rusqlite::params![tx.last_insert_rowid(), lsid, at])?;
            }
        }
        tx.commit()
    };
    fill().unwrap_or_else(|e| fail(format!("cannot fill the store: {e}")));
}

/// Fills a store with [`HISTORY`] events (half of them finished long ago), starts
/// the engine on it and measures from the start.
async fn restart_on_history(binary: &Path, plugins: &Path, data: &Path) -> Restart {
    drop(start_engine(binary, plugins, data)); // creates the schema
    fill_store(data, HISTORY, HISTORY / 2);
    let started = Instant::now();
    let engine = start_engine(binary, plugins, data);
    let http = reqwest::Client::new();
    let form = [
        ("event", "support_conference_end"),
        ("version", "3"),
        ("timestamp", "1764231302"),
        ("lsid", "after-restart"),
    ];
    let answered = http
        .post(format!("{}/ERSPost", engine.events))
        .form(&form)
        .send()
        .await
        .map(|r| r.status().is_success());
    if !matches!(answered, Ok(true)) {
        fail(format!("the first event after the restart: {answered:?}"));
    }
    let first_event = started.elapsed();
    let _ = api(&http, format!("{}/api/configurations", engine.admin), None).await;
    let first_api = started.elapsed();
    let remaining = format!("mwe_jobs{{state=\"ignored\"}} {}\n", HISTORY / 2 + 1);
    loop {
        let metrics = http
            .get(format!("{}/metrics", engine.admin))
            .send()
            .await
            .ok();
        let text = match metrics {
            Some(m) => m.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if text.contains(&remaining) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            fail("the old history was not pruned within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Restart {
        ready: engine.ready_after,
        first_event,
        first_api,
        pruned: started.elapsed(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn bare_handler() -> String {
    let app = axum::Router::new().route(
        "/ERSPost",
        axum::routing::post(|_body: axum::body::Bytes| async { "ok" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail(format!("bind: {e}")));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(format!("addr: {e}")));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/ERSPost")
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn api(http: &reqwest::Client, url: String, body: Option<Value>) -> Value {
    let request = match body {
        Some(b) => http.post(url).json(&b),
        None => http.post(url),
    };
    match request.send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(e) => fail(format!("admin API: {e}")),
    }
}

struct E2e {
    sessions: usize,
    seconds: f64,
    reports: u64,
    dataverse: u64,
    bt_tokens: u64,
    entra_tokens: u64,
    throttled: u64,
    early: u64,
    accepted_requests: u64,
    peak_rss: u64,
}

/// The simulated appliance and Dataverse, and the bundle of their certificates.
struct Sims {
    dir: tempfile::TempDir,
    appliance: Appliance,
    dataverse: Dataverse,
    bundle: PathBuf,
}

impl Sims {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
        let appliance = Appliance::start(ApplianceOptions::default(), dir.path())
            .await
            .unwrap_or_else(|e| fail(e));
        let dataverse = Dataverse::start(DataverseOptions::default(), dir.path())
            .await
            .unwrap_or_else(|e| fail(e));
        let mut bundle = std::fs::read_to_string(&dataverse.cert_path).unwrap_or_default();
        if let Some(c) = &appliance.cert_path {
            bundle.push_str(&std::fs::read_to_string(c).unwrap_or_default());
        }
        let bundle_path = dir.path().join("trusted.pem");
        std::fs::write(&bundle_path, bundle).unwrap_or_else(|e| fail(format!("write: {e}")));
        Self {
            dir,
            appliance,
            dataverse,
            bundle: bundle_path,
        }
    }

    /// A Dynamics configuration's settings for these simulators, with `overrides`.
    fn settings(&self, overrides: Value) -> Value {
        let (appliance, dataverse) = (&self.appliance, &self.dataverse);
        let mut settings = json!({
            "bt_hostname": appliance.host, "bt_client_id": appliance.client_id, "bt_client_secret": appliance.client_secret(),
            "ca_certificate_file": self.bundle.to_string_lossy(),
            "outbound_event_types": ["support_conference_end"], "retry_outbound_event_types": ["support_conference_end"], "retry_attempt_limit": 10,
            "dynamics_url": dataverse.url, "azure_tenant_id": dataverse.tenant_id, "azure_client_id": dataverse.client_id,
            "azure_client_secret": dataverse.client_secret(), "azure_cloud": dataverse.authority,
            "update_all_sessions": false, "import_timestamps_as_utc": true,
        });
        if let (Some(s), Some(o)) = (settings.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                s.insert(k.clone(), v.clone());
            }
        }
        settings
    }

    /// Dataverse requests that count against its limit: a `$batch` is one, whatever
    /// it carries (its operations are counted apart, as `$batch/<endpoint>`).
    fn dataverse_requests(&self) -> u64 {
        self.dataverse
            .api_counts()
            .iter()
            .filter(|(endpoint, _)| {
                ["incidents", "bt_sessions", "annotations", "$batch"].contains(&endpoint.as_str())
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// Creates the Bench configuration; its id.
async fn configure(http: &reqwest::Client, engine: &Engine, settings: Value) -> i64 {
    let created = api(
        http,
        format!("{}/api/configurations", engine.admin),
        Some(json!({"plugin": "dynamics365", "name": "Bench", "settings": settings})),
    )
    .await;
    created["id"]
        .as_i64()
        .unwrap_or_else(|| fail(format!("configuration refused: {created}")))
}

/// Ends `sessions` sessions on the appliance and waits until every row is in
/// Dataverse, or until `run_for` has passed (then the rows so far count).
async fn end_to_end(
    binary: &Path,
    plugins: &Path,
    sessions: usize,
    limits: Option<Limits>,
    run_for: Option<Duration>,
) -> E2e {
    let sims = Sims::start().await;
    let (appliance, dataverse) = (&sims.appliance, &sims.dataverse);
    let engine = start_engine(binary, plugins, &sims.dir.path().join("data"));
    let http = reqwest::Client::new();
    configure(&http, &engine, sims.settings(json!({}))).await;
    for i in 0..sessions {
        dataverse.add_case(&format!("CAS-{i:06}"), "Bench case");
    }
    if let Some(l) = limits {
        dataverse.set_limits(l);
    }
    appliance.add_recipient(&format!("{}/ERSPost", engine.events));
    let started = Instant::now();
    for i in 0..sessions {
        let lsid = appliance.create_session(SessionSpec {
            external_key: Some(format!("CAS-{i:06}")),
            start_time: Some(chrono::Utc::now().timestamp() - 300),
            ..SessionSpec::default()
        });
        if let Err(e) = appliance.end_session(&lsid, None) {
            fail(e);
        }
    }
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while dataverse.snapshot().rows.len() < sessions {
        if run_for.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if Instant::now() > deadline {
            fail(format!(
                "only {} of {sessions} rows after 30 minutes",
                dataverse.snapshot().rows.len()
            ));
        }
        peak_rss = peak_rss.max(rss_kib(engine.child.id()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let data_requests = sims.dataverse_requests();
    let (early, throttled) = dataverse.throttle_report();
    E2e {
        sessions: dataverse.snapshot().rows.len(),
        seconds,
        reports: appliance.counts().get("reporting").copied().unwrap_or(0),
        dataverse: data_requests,
        bt_tokens: appliance.counts().get("token").copied().unwrap_or(0),
        entra_tokens: dataverse.token_requests(),
        throttled,
        early,
        accepted_requests: data_requests.saturating_sub(throttled),
        peak_rss,
    }
}

/// Sessions of the backfill benchmark.
const BACKFILLED: usize = 2_000;
/// Ended sessions of the reconciliation benchmark.
const RECONCILED: usize = 10_000;

struct Backfill {
    sessions: usize,
    seconds: f64,
    dataverse: u64,
    reports: u64,
    throttled: u64,
    early: u64,
}

/// Backfills `BACKFILLED` sessions that ended without their events reaching the
/// engine, under Dataverse's limit `limits`: the batched path.
async fn backfill(binary: &Path, plugins: &Path, limits: Limits) -> Backfill {
    let sims = Sims::start().await;
    let (appliance, dataverse) = (&sims.appliance, &sims.dataverse);
    let engine = start_engine(binary, plugins, &sims.dir.path().join("data"));
    let http = reqwest::Client::new();
    let id = configure(
        &http,
        &engine,
        sims.settings(json!({"reconcile_interval_minutes": 0})),
    )
    .await;
    let ended = chrono::Utc::now().timestamp() - 600;
    for i in 0..BACKFILLED {
        dataverse.add_case(&format!("CAS-{i:06}"), "Bench case");
        let lsid = appliance.create_session(SessionSpec {
            external_key: Some(format!("CAS-{i:06}")),
            start_time: Some(ended - 300),
            ..SessionSpec::default()
        });
        if let Err(e) = appliance.end_session(&lsid, Some(ended)) {
            fail(e);
        }
    }
    dataverse.set_limits(limits);
    let started = Instant::now();
    let answer = api(
        &http,
        format!("{}/api/configurations/{id}/backfill", engine.admin),
        Some(json!({"since": ended - 3_600})),
    )
    .await;
    let backfill = answer["id"]
        .as_i64()
        .unwrap_or_else(|| fail(format!("backfill refused: {answer}")));
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let state = http
            .get(format!("{}/api/backfills/{backfill}", engine.admin))
            .send()
            .await
            .unwrap_or_else(|e| fail(format!("admin API: {e}")))
            .json::<Value>()
            .await
            .unwrap_or(Value::Null);
        if state["state"] != "running" {
            if state["state"] != "done" || state["imported"].as_u64() != Some(BACKFILLED as u64) {
                fail(format!(
                    "the backfill did not import every session: {state}"
                ));
            }
            break;
        }
        if Instant::now() > deadline {
            fail(format!(
                "the backfill is still running after 30 minutes: {state}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (early, throttled) = dataverse.throttle_report();
    Backfill {
        sessions: dataverse.snapshot().rows.len(),
        seconds,
        dataverse: sims.dataverse_requests(),
        reports: appliance.counts().get("reporting").copied().unwrap_or(0),
        throttled,
        early,
    }
}

/// One reconciliation asked for now: its time and the sessions it queued.
async fn reconcile_once(http: &reqwest::Client, url: &str) -> (f64, u64) {
    let started = Instant::now();
    let answer = api(http, url.to_owned(), None).await;
    let seconds = started.elapsed().as_secs_f64();
    if answer["ok"] != true {
        fail(format!("reconciliation failed: {answer}"));
    }
    (seconds, answer["queued"].as_u64().unwrap_or(0))
}

struct Reconciliation {
    /// (seconds, sessions queued, appliance calls) of each run.
    first: (f64, u64, u64),
    again: (f64, u64, u64),
}

/// Reconciles a configuration over `RECONCILED` ended sessions none of whose events
/// came, twice: the first run queues them all, the second finds each already taken.
async fn reconciliation(binary: &Path, plugins: &Path) -> Reconciliation {
    let sims = Sims::start().await;
    let appliance = &sims.appliance;
    let engine = start_engine(binary, plugins, &sims.dir.path().join("data"));
    let http = reqwest::Client::new();
    let id = configure(&http, &engine, sims.settings(json!({}))).await;
    for _ in 0..RECONCILED {
        let lsid = appliance.create_session(SessionSpec::default());
        if let Err(e) = appliance.end_session(&lsid, None) {
            fail(e);
        }
    }
    let url = format!("{}/api/configurations/{id}/reconcile", engine.admin);
    let before = appliance.count("reporting:SupportSessionListing");
    let (s1, q1) = reconcile_once(&http, &url).await;
    let l1 = appliance.count("reporting:SupportSessionListing");
    let (s2, q2) = reconcile_once(&http, &url).await;
    let l2 = appliance.count("reporting:SupportSessionListing");
    Reconciliation {
        first: (s1, q1, l1 - before),
        again: (s2, q2, l2 - l1),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let release = PathBuf::from("target/release");
    let binary = release.join("middleware-engine");
    let library = release.join(format!(
        "{}plugin_dynamics.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    let work = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
    let plugins = work.path().join("Plugins");
    std::fs::create_dir_all(plugins.join("dynamics365"))
        .unwrap_or_else(|e| fail(format!("mkdir: {e}")));
    if let Some(name) = library.file_name() {
        std::fs::copy(&library, plugins.join("dynamics365").join(name)).unwrap_or_else(|e| {
            fail(format!(
                "{}: {e} (run bash examples/bench.sh)",
                library.display()
            ))
        });
    }

    // 1. Intake, driven by wrk.
    let script = wrk::event_script(work.path()).unwrap_or_else(|e| fail(format!("script: {e}")));
    let engine = start_engine(&binary, &plugins, &work.path().join("intake-data"));
    let idle_rss = rss_kib(engine.child.id());
    let ready = engine.ready_after;
    let bare = bare_handler().await;
    let mut rows = Vec::new();
    let mut loaded_rss = 0;
    for senders in [1, 8, 64] {
        let prefix = format!("level{senders}");
        let durable = wrk::run(
            &format!("{}/ERSPost", engine.events),
            senders,
            LEVEL_SECONDS,
            Some((&script, &prefix)),
        )
        .unwrap_or_else(|e| fail(e));
        loaded_rss = loaded_rss.max(rss_kib(engine.child.id()));
        let plain = wrk::run(&bare, senders, LEVEL_SECONDS, Some((&script, &prefix)))
            .unwrap_or_else(|e| fail(e));
        println!(
            "intake, {senders} senders: durable {:.0}/s p50 {} ms p99 {} ms; bare {:.0}/s",
            durable.per_second,
            ms(durable.p50),
            ms(durable.p99),
            plain.per_second
        );
        rows.push((senders, durable, plain));
    }
    drop(engine);

    // 1b. Intake on a store of 100,000 events, alone and beside history queries.
    let stored = work.path().join("stored-data");
    drop(start_engine(&binary, &plugins, &stored)); // creates the schema
    fill_store(&stored, STORED, 0);
    let engine = start_engine(&binary, &plugins, &stored);
    let mut beside = Vec::new();
    for (name, query) in [
        ("alone", None),
        (
            "2 loops of GET /api/events?limit=1000",
            Some("/api/events?limit=1000"),
        ),
        (
            "2 loops of GET /api/events?lsid=x",
            Some("/api/events?lsid=x"),
        ),
    ] {
        let reader = query.map(|q| {
            let url = format!("{}{q}", engine.admin);
            std::thread::spawn(move || wrk::run(&url, 2, LEVEL_SECONDS, None))
        });
        let prefix = format!("beside{}", beside.len());
        let intake = wrk::run(
            &format!("{}/ERSPost", engine.events),
            8,
            LEVEL_SECONDS,
            Some((&script, &prefix)),
        )
        .unwrap_or_else(|e| fail(e));
        let history = match reader.map(|r| r.join()) {
            Some(Ok(Ok(run))) => Some(run),
            Some(Ok(Err(e))) => fail(e),
            Some(Err(_)) => fail("the history load panicked".into()),
            None => None,
        };
        println!(
            "intake on {STORED} events, {name}: {:.0}/s p99 {} ms",
            intake.per_second,
            ms(intake.p99)
        );
        beside.push((name, intake, history));
    }
    drop(engine);

    // 2 and 3. End to end.
    let free = end_to_end(&binary, &plugins, 1000, None, None).await;
    println!(
        "end to end, no limit: {} sessions in {:.1} s",
        free.sessions, free.seconds
    );
    // Dataverse's 6,000 requests per 300 s, scaled down 10x in time: 600 per 30 s.
    let limit = Limits {
        requests: Some(600),
        window_seconds: 30,
        concurrent: Some(52),
    };
    // More sessions than the limit lets through in 90 s, so that it binds throughout.
    let limited = end_to_end(
        &binary,
        &plugins,
        1500,
        Some(limit),
        Some(Duration::from_secs(90)),
    )
    .await;
    println!(
        "end to end, limited: {} sessions in {:.1} s, {} throttled, {} early",
        limited.sessions, limited.seconds, limited.throttled, limited.early
    );
    let batched = backfill(&binary, &plugins, limit).await;
    println!(
        "backfill, limited: {} sessions in {:.1} s, {} throttled, {} early",
        batched.sessions, batched.seconds, batched.throttled, batched.early
    );
    let reconciled = reconciliation(&binary, &plugins).await;
    println!(
        "reconciliation over {RECONCILED} sessions: {:.2} s (queued {}), again {:.2} s (queued {})",
        reconciled.first.0, reconciled.first.1, reconciled.again.0, reconciled.again.1
    );
    let restart = restart_on_history(&binary, &plugins, &work.path().join("history-data")).await;
    println!(
        "restart on {HISTORY} events: first event after {} ms, pruned after {:.1} s",
        restart.first_event.as_millis(),
        restart.pruned.as_secs_f64()
    );
    let allowed = 600.0 * limited.seconds / 30.0;
    let share = limited.accepted_requests as f64 / allowed.max(1.0) * 100.0;

    let machine = format!(
        "{} cores, {} GiB, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m.lines().next().and_then(|l| l
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()))
            .map_or(0, |k| k / 1024 / 1024),
        std::env::consts::ARCH
    );
    let mut doc = String::new();
    let _ = writeln!(doc, "# Benchmarks\n");
    let _ = writeln!(doc, "Made by `bash examples/bench.sh` on {} ({machine}), release build.\nEvery number the README states comes from this table. The run takes about eight minutes.\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    let _ = writeln!(doc, "## 1. Intake (durable accept: committed to SQLite, WAL, synchronous=FULL, before the 200)\n");
    let _ = writeln!(doc, "Each level runs {LEVEL_SECONDS} s on loopback, driven by `wrk` (an independent load generator; each request a new session), once against the engine's event address and once against a bare handler on the same HTTP stack that stores nothing (the ceiling, measured the same way in the same run). No configuration takes the events, so each is stored with one `ignored` row.\n");
    let _ = writeln!(doc, "| senders | durable events/s | p50 ms | p99 ms | errors | bare handler events/s | bare p99 ms | durable / bare |");
    let _ = writeln!(
        doc,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (senders, d, b) in &rows {
        let _ = writeln!(
            doc,
            "| {senders} | {:.0} | {} | {} | {} | {:.0} | {} | {:.0} % |",
            d.per_second,
            ms(d.p50),
            ms(d.p99),
            d.errors,
            b.per_second,
            ms(b.p99),
            d.per_second / b.per_second.max(1.0) * 100.0
        );
    }
    let _ = writeln!(doc, "\nOn a store of {STORED} events, 8 senders, alone and with two `wrk` connections querying the history on the admin address at the same time (the history reads on its own read-only connections, each filter served by an index):\n");
    let _ = writeln!(
        doc,
        "| beside intake | intake events/s | intake p99 ms | history queries/s | history p99 ms |"
    );
    let _ = writeln!(doc, "| --- | ---: | ---: | ---: | ---: |");
    for (name, intake, history) in &beside {
        let (rate, p99) = match history {
            Some(h) => (format!("{:.0}", h.per_second), ms(h.p99)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            doc,
            "| {name} | {:.0} | {} | {rate} | {p99} |",
            intake.per_second,
            ms(intake.p99)
        );
    }
    let _ = writeln!(doc, "\n## 2. End to end (session end on the appliance -> row in Dataverse, through the host and the cdylib)\n");
    let _ = writeln!(doc, "| run | sessions | seconds | sessions/minute | 429 answers | requests before Retry-After |");
    let _ = writeln!(doc, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, r) in [
        ("no limit", &free),
        ("Dataverse limit 600 requests / 30 s", &limited),
    ] {
        let _ = writeln!(
            doc,
            "| {name} | {} | {:.1} | {:.0} | {} | {} |",
            r.sessions,
            r.seconds,
            r.sessions as f64 / r.seconds * 60.0,
            r.throttled,
            r.early
        );
    }
    let _ = writeln!(doc, "\nThe limited run offers 1,500 sessions (3,000 requests) and stops after 90 s (three windows): {} requests accepted of {allowed:.0} the limit allows in that time: **{share:.0} % of the limit used**. A request \"before Retry-After\" is one that reached Dataverse after a 429 had asked to wait (requests already in flight when the first 429 came count too).\n", limited.accepted_requests);
    let _ = writeln!(
        doc,
        "## 3. Requests per session (the no-limit run, {} sessions)\n",
        free.sessions
    );
    let _ = writeln!(doc, "| remote | requests | per session |");
    let _ = writeln!(doc, "| --- | ---: | ---: |");
    for (name, n) in [
        ("appliance reporting API", free.reports),
        ("appliance OAuth tokens", free.bt_tokens),
        ("Dataverse Web API", free.dataverse),
        ("Entra ID tokens", free.entra_tokens),
    ] {
        let _ = writeln!(
            doc,
            "| {name} | {n} | {:.3} |",
            n as f64 / free.sessions as f64
        );
    }
    let _ = writeln!(doc, "\n## 4. Memory and start-up\n");
    let _ = writeln!(doc, "| measure | value |");
    let _ = writeln!(doc, "| --- | ---: |");
    let _ = writeln!(
        doc,
        "| start to ready (plugin loaded, both addresses listening) | {} ms |",
        ready.as_millis()
    );
    let _ = writeln!(doc, "| RSS idle | {} MiB |", idle_rss / 1024);
    let _ = writeln!(
        doc,
        "| RSS under intake load (64 senders) | {} MiB |",
        loaded_rss / 1024
    );
    let _ = writeln!(
        doc,
        "| RSS peak, end to end (1,000 sessions) | {} MiB |",
        free.peak_rss / 1024
    );
    let _ = writeln!(doc, "\n## 5. A restart on a long history\n");
    let _ = writeln!(doc, "The engine is killed and started on a store of {HISTORY} events, half of them finished past the retention, so the start-up prune has {} events to remove while the appliance's stream goes on. Times from the process start.\n", HISTORY / 2);
    let _ = writeln!(doc, "| measure | value |");
    let _ = writeln!(doc, "| --- | ---: |");
    let _ = writeln!(doc, "| start to ready | {} ms |", restart.ready.as_millis());
    let _ = writeln!(
        doc,
        "| start to the first event answered (200) | {} ms |",
        restart.first_event.as_millis()
    );
    let _ = writeln!(
        doc,
        "| start to the first admin API answer | {} ms |",
        restart.first_api.as_millis()
    );
    let _ = writeln!(
        doc,
        "| start to the old half pruned (in steps, while serving) | {:.1} s |",
        restart.pruned.as_secs_f64()
    );
    let _ = writeln!(doc, "\n## 6. Backfill and reconciliation\n");
    let per_session = limited.sessions as f64 / limited.seconds * 60.0;
    let per_minute = batched.sessions as f64 / batched.seconds * 60.0;
    let _ = writeln!(doc, "Under the same Dataverse limit as section 2 (600 requests / 30 s), {BACKFILLED} sessions that ended without their events reaching the engine, imported by one backfill (listed a day at a time, reports read with `lsids=`, written through `$batch`, 10 sessions a request), beside the per-session path of section 2 (each session's outbound event handled alone).\n");
    let _ = writeln!(doc, "| path | sessions | seconds | sessions/minute | Dataverse requests / session | appliance report calls / session | 429 answers | requests before Retry-After |");
    let _ = writeln!(
        doc,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        doc,
        "| per session (section 2, limited) | {} | {:.1} | {per_session:.0} | {:.2} | {:.2} | {} | {} |",
        limited.sessions,
        limited.seconds,
        limited.dataverse as f64 / limited.sessions.max(1) as f64,
        limited.reports as f64 / limited.sessions.max(1) as f64,
        limited.throttled,
        limited.early
    );
    let _ = writeln!(
        doc,
        "| backfill, batched | {} | {:.1} | {per_minute:.0} | {:.2} | {:.3} | {} | {} |",
        batched.sessions,
        batched.seconds,
        batched.dataverse as f64 / batched.sessions.max(1) as f64,
        batched.reports as f64 / batched.sessions.max(1) as f64,
        batched.throttled,
        batched.early
    );
    let _ = writeln!(
        doc,
        "\nBatched / per session: **{:.1} times** as many sessions per minute.\n",
        per_minute / per_session.max(1.0)
    );
    let _ = writeln!(doc, "Reconciliation of one configuration over {RECONCILED} sessions that ended after it was created, none of whose events came (`POST /api/configurations/{{id}}/reconcile`, timed from the request to the answer, which comes once the missing sessions are queued):\n");
    let _ = writeln!(
        doc,
        "| run | seconds | sessions queued | appliance listing calls |"
    );
    let _ = writeln!(doc, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(
        doc,
        "| first (every session missing) | {:.2} | {} | {} |",
        reconciled.first.0, reconciled.first.1, reconciled.first.2
    );
    let _ = writeln!(
        doc,
        "| again (every session already taken) | {:.2} | {} | {} |",
        reconciled.again.0, reconciled.again.1, reconciled.again.2
    );
    print!("\n{doc}");
    std::fs::write("docs/benchmarks.md", &doc)
        .unwrap_or_else(|e| fail(format!("cannot write docs/benchmarks.md: {e}")));
    println!("written to docs/benchmarks.md");
}
