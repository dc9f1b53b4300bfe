//! `bench`: measures the engine as built in release mode and writes the table to
//! `docs/benchmarks.md`. Run through `bash examples/bench.sh`.
//!
//! 1. Intake: durable accepts per second and latency at 1, 8 and 64 concurrent
//!    senders on SQLite and on PostgreSQL, beside a bare handler on the same HTTP
//!    stack that stores nothing, all driven by `wrk`; then at 8 senders on a store of
//!    100,000 events, alone and with history queries running beside it.
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
//! 7. Failover: two engines on one PostgreSQL database, one killed with `kill -9`
//!    while it runs jobs; the time until the other has taken them over and run them.
//!
//! PostgreSQL comes from `MWE_BENCH_POSTGRES` (else `MWE_TEST_POSTGRES`), a URL whose
//! role may create databases: each measurement gets a fresh one, dropped at the end.
//! `MWE_BENCH_ONLY=postgres` runs only the PostgreSQL measurements (with SQLite and the
//! bare handler beside them in 1), `MWE_BENCH_QUICK=1` shortens the runs for a smoke
//! test; either prints the tables without writing `docs/benchmarks.md`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    start_engine_with(binary, plugins, data, &[])
}

/// Starts the engine with `extra` arguments to `serve` (a database URL, a lease).
fn start_engine_with(binary: &Path, plugins: &Path, data: &Path, extra: &[&OsStr]) -> Engine {
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
        .args(extra)
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

/// The PostgreSQL server the bench makes its databases on: `MWE_BENCH_POSTGRES`,
/// else the tests' `MWE_TEST_POSTGRES` (bench.sh sets it through tests/postgres.sh).
fn postgres_admin() -> String {
    ["MWE_BENCH_POSTGRES", "MWE_TEST_POSTGRES"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| {
            fail("set MWE_BENCH_POSTGRES to postgres://USER:PASSWORD@HOST:PORT/postgres (a role that may create databases), or run bash examples/bench.sh".into())
        })
}

/// Runs `f` on a thread of its own: the sync `postgres` client panics inside the
/// tokio runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| fail("a database thread panicked".into()))
    })
}

/// What makes a commit on the server durable, for the table: its version, `fsync`
/// and `synchronous_commit` (a server with either off would flatter the figures).
fn postgres_server(admin: &str) -> String {
    let settings = off_runtime(|| {
        let mut client = postgres::Client::connect(admin, postgres::NoTls)?;
        let row = client.query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')",
            &[],
        )?;
        Ok::<_, postgres::Error>((
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        ))
    });
    match settings {
        Ok((version, fsync, commit)) => {
            // "15.18 (Debian 15.18-0+deb12u1)": the number is enough.
            let version = version.split_whitespace().next().unwrap_or("?");
            format!("PostgreSQL {version}, fsync {fsync}, synchronous_commit {commit}")
        }
        Err(e) => fail(format!("cannot reach the PostgreSQL server: {e}")),
    }
}

/// A fresh database on the bench's PostgreSQL server, dropped (with the connections
/// still on it) when this is.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(admin: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mwe_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let created = off_runtime(|| {
            let mut client = postgres::Client::connect(admin, postgres::NoTls)?;
            client.batch_execute(&format!("CREATE DATABASE \"{name}\""))
        });
        if let Err(e) = created {
            fail(format!("cannot create the database {name}: {e}"));
        }
        // The admin URL with its database replaced (a query string stays).
        let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
        let authority = base.find("://").map_or(0, |i| i + 3);
        let path = base[authority..]
            .find('/')
            .map_or(base.len(), |i| authority + i);
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let url = format!("{}/{name}{query}", &base[..path]);
        Self {
            admin: admin.to_owned(),
            name,
            url,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let dropped = off_runtime(|| {
            let mut client = postgres::Client::connect(&self.admin, postgres::NoTls)?;
            client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("bench: cannot drop the database {}: {e}", self.name);
        }
    }
}

async fn get_text(http: &reqwest::Client, url: String) -> String {
    match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => fail(format!("admin API: {e}")),
    }
}

/// The value of the metric line that starts with `name` (labels included).
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Jobs the first engine of a failover run is running when it is killed: as many as
/// its plugin slots (`--plugin-concurrency`, 4 by default), so all start at once.
const FAILOVER_JOBS: usize = 4;
/// The leases measured; 30 s is the default.
const FAILOVER_LEASES: [u64; 2] = [10, 30];

/// How long each failover call sleeps: a heartbeat interval (a third of the lease,
/// the longest wait before the kill) and 2 s, so it is still running at the kill.
fn failover_call_ms(lease: u64) -> u64 {
    lease * 1000 / 3 + 2000
}

/// A number in [0, 1), different at each call (std's hasher keys are random).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

struct Failover {
    lease: u64,
    /// From the start of the calls to the kill (a random part of a heartbeat interval).
    killed_after: Duration,
    /// Jobs running (the whole database) just before the kill.
    running_at_kill: u64,
    /// From the kill until the survivor queued the first of them again.
    taken_over: Duration,
    /// ... until every one was called again, on the survivor.
    called_again: Duration,
    /// ... until all the events succeeded.
    succeeded: Duration,
    /// The survivor's `mwe_jobs_taken_over_total` at the end.
    taken_over_total: u64,
}

/// Session ends whose plugin calls the scripted plugin recorded in `record`.
fn recorded_calls(record: &Path) -> usize {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|call| {
            call["lsid"]
                .as_str()
                .is_some_and(|l| l.starts_with("failover-"))
        })
        .count()
}

/// Two engines on a fresh database with `lease` seconds; the first runs
/// [`FAILOVER_JOBS`] slow calls and is killed with SIGKILL, the second takes them
/// over once their leases end. The second starts, and the kill comes, at random
/// points of a heartbeat interval, as a real failure falls whenever it falls.
async fn failover(binary: &Path, plugins: &Path, work: &Path, admin: &str, lease: u64) -> Failover {
    let database = Database::create(admin);
    let root = work.join(&database.name);
    let heartbeat = Duration::from_millis(lease * 1000 / 3);
    let call_ms = failover_call_ms(lease);
    let lease_arg = lease.to_string();
    let shared = [
        OsStr::new("--database-url"),
        OsStr::new(&database.url),
        OsStr::new("--lease-seconds"),
        OsStr::new(&lease_arg),
    ];
    let mut first = start_engine_with(
        binary,
        plugins,
        &root.join("first"),
        &[
            &shared[..],
            &[OsStr::new("--engine-name"), OsStr::new("bench-first")],
        ]
        .concat(),
    );
    // The second engine, with a copy of the key file the first created.
    let key = root.join("second.key");
    std::fs::copy(root.join("first").join("secret.key"), &key)
        .unwrap_or_else(|e| fail(format!("cannot copy the key file: {e}")));
    tokio::time::sleep(heartbeat.mul_f64(random_fraction())).await;
    let second = start_engine_with(
        binary,
        plugins,
        &root.join("second"),
        &[
            &shared[..],
            &[
                OsStr::new("--engine-name"),
                OsStr::new("bench-second"),
                OsStr::new("--secret-key-file"),
                key.as_os_str(),
            ],
        ]
        .concat(),
    );
    let http = reqwest::Client::new();
    let record = root.join("calls.jsonl");
    let created = api(
        &http,
        format!("{}/api/configurations", first.admin),
        Some(json!({"plugin": "scripted", "name": "Failover", "settings": {
            "bt_hostname": "bt.example.com", "bt_client_id": "bench", "bt_client_secret": "bench",
            "record_file": record.to_string_lossy(), "outbound_event_types": ["support_conference_end"],
        }})),
    )
    .await;
    let id = created["id"]
        .as_i64()
        .unwrap_or_else(|| fail(format!("configuration refused: {created}")));
    // Both engines run the configuration before the events come, as in production.
    let configured = Instant::now();
    let configuration = format!("{}/api/configurations/{id}", second.admin);
    loop {
        let state = match http.get(&configuration).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(e) => fail(format!("admin API: {e}")),
        };
        if state["status"]["state"] == "running" {
            break;
        }
        if configured.elapsed() > Duration::from_secs(30) {
            fail(format!(
                "the second engine does not run the configuration: {state}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Posted to the first engine, which takes them at once (the second would find
    // them at its next look, a second later at most: they are running by then).
    let script = format!("sleep:{call_ms}");
    for i in 0..FAILOVER_JOBS {
        let lsid = format!("failover-{i}");
        let form = [
            ("event", "support_conference_end"),
            ("version", "3"),
            ("timestamp", "1764231302"),
            ("lsid", lsid.as_str()),
            ("script", script.as_str()),
        ];
        let answered = http
            .post(format!("{}/ERSPost", first.events))
            .form(&form)
            .send()
            .await
            .map(|r| r.status().is_success());
        if !matches!(answered, Ok(true)) {
            fail(format!("a failover event: {answered:?}"));
        }
    }
    let posted = Instant::now();
    while recorded_calls(&record) < FAILOVER_JOBS {
        if posted.elapsed() > Duration::from_secs(30) {
            fail("the calls did not start within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls_started = Instant::now();
    tokio::time::sleep(heartbeat.mul_f64(random_fraction())).await;
    let metrics = format!("{}/metrics", second.admin);
    let before = get_text(&http, metrics.clone()).await;
    let running_at_kill = metric(&before, "mwe_jobs{state=\"running\"}").unwrap_or(0);
    // Killed well before its calls end, or there would be nothing to take over.
    if posted.elapsed() + Duration::from_secs(1) > Duration::from_millis(call_ms) {
        fail(format!(
            "{:?} from the events to the kill: too late for calls of {call_ms} ms",
            posted.elapsed()
        ));
    }
    if let Err(e) = first.child.kill() {
        fail(format!("cannot kill the first engine: {e}"));
    }
    let killed = Instant::now();
    let killed_after = killed - calls_started;
    let _ = first.child.wait();
    let done = format!("mwe_jobs{{state=\"succeeded\"}} {FAILOVER_JOBS}");
    let deadline = Duration::from_secs(lease * 2 + call_ms / 1000 + 60);
    let (mut taken_over, mut called_again) = (None, None);
    let (succeeded, taken_over_total) = loop {
        let text = get_text(&http, metrics.clone()).await;
        let total = metric(&text, "mwe_jobs_taken_over_total").unwrap_or(0);
        if taken_over.is_none() && total > 0 {
            taken_over = Some(killed.elapsed());
        }
        // Each job taken over is called once more (a job the second engine happened
        // to take itself is called once only).
        let total_calls =
            FAILOVER_JOBS.saturating_add(usize::try_from(total).unwrap_or(usize::MAX));
        if called_again.is_none() && total > 0 && recorded_calls(&record) >= total_calls {
            called_again = Some(killed.elapsed());
        }
        if text.lines().any(|l| l == done) {
            break (killed.elapsed(), total);
        }
        if killed.elapsed() > deadline {
            fail(format!(
                "the events of the killed engine did not succeed within {deadline:?} (lease {lease} s)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(second);
    drop(first);
    drop(database);
    let _ = std::fs::remove_dir_all(&root);
    // Succeeded without a takeover: the calls ended before the kill, nothing measured.
    let (Some(taken_over), Some(called_again)) = (taken_over, called_again) else {
        fail(format!(
            "the events succeeded, but not after a takeover (taken over {taken_over:?}, called again {called_again:?})"
        ));
    };
    Failover {
        lease,
        killed_after,
        running_at_kill,
        taken_over,
        called_again,
        succeeded,
        taken_over_total,
    }
}

/// Section 1's table: each level on SQLite, on PostgreSQL and on the bare handler.
fn write_intake(
    doc: &mut String,
    level: u64,
    server: &str,
    rows: &[(usize, wrk::Run, wrk::Run, wrk::Run)],
) {
    let _ = writeln!(doc, "## 1. Intake (durable accept: committed to the store before the 200; SQLite with WAL and synchronous=FULL, or PostgreSQL)\n");
    let _ = writeln!(doc, "Each level runs {level} s on loopback, driven by `wrk` (an independent load generator; each request a new session), against an engine on SQLite, an engine on a fresh PostgreSQL database ({server}; on this machine, over loopback TCP) and a bare handler on the same HTTP stack that stores nothing (the ceiling, measured the same way in the same run). No configuration takes the events, so each is stored with one `ignored` row.\n");
    let _ = writeln!(doc, "| senders | SQLite events/s | SQLite p50 ms | SQLite p99 ms | PostgreSQL events/s | PostgreSQL p50 ms | PostgreSQL p99 ms | errors (SQLite / PostgreSQL) | bare handler events/s | bare p99 ms | SQLite / bare | PostgreSQL / bare |");
    let _ = writeln!(
        doc,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (senders, s, p, b) in rows {
        let _ = writeln!(
            doc,
            "| {senders} | {:.0} | {} | {} | {:.0} | {} | {} | {} / {} | {:.0} | {} | {:.0} % | {:.0} % |",
            s.per_second,
            ms(s.p50),
            ms(s.p99),
            p.per_second,
            ms(p.p50),
            ms(p.p99),
            s.errors,
            p.errors,
            b.per_second,
            ms(b.p99),
            s.per_second / b.per_second.max(1.0) * 100.0,
            p.per_second / b.per_second.max(1.0) * 100.0
        );
    }
    // The target for the shared store, beside what this run measured.
    if let Some((_, _, p, _)) = rows.iter().find(|(senders, ..)| *senders == 64) {
        let mut missed = Vec::new();
        if p.per_second < 5_000.0 {
            missed.push("fewer than 5,000 events/s");
        }
        if p.p99 >= Duration::from_millis(20) {
            missed.push("p99 not under 20 ms");
        }
        if p.errors > 0 {
            missed.push("errors");
        }
        let verdict = if missed.is_empty() {
            "**met**".to_owned()
        } else {
            format!("**not met** ({})", missed.join(", "))
        };
        let _ = writeln!(doc, "\nTarget on PostgreSQL (issue 15): at least 5,000 durable events/s at 64 senders, p99 under 20 ms. This run: {:.0} events/s, p99 {} ms: {verdict}.", p.per_second, ms(p.p99));
    }
}

/// Section 7's table, and min / median / max of each lease's runs.
fn write_failover(doc: &mut String, runs: &[Failover]) {
    let _ = writeln!(
        doc,
        "\n## 7. Failover (two engines on one PostgreSQL database, one killed with `kill -9`)\n"
    );
    let _ = writeln!(doc, "Two engines on a fresh database, sharing the key file, both running a configuration of the scripted test plugin. {FAILOVER_JOBS} events are posted to the first engine, which starts them all at once (its {FAILOVER_JOBS} plugin slots), each call sleeping a third of the lease and 2 s; then the first engine is killed with SIGKILL. The second engine starts, and the kill comes, at random points of a heartbeat interval, so each run falls where a real failure might. An engine renews its leases every third of the lease, and every engine looks each second for leases that ended, so a takeover is due between 2/3 of the lease and the lease (and up to a second) after the kill; the interrupted calls then run again from the start on the survivor, so the events succeed one call later. Times from the kill, polled every 20 ms.\n");
    let _ = writeln!(doc, "| `--lease-seconds` | run | kill, s after the calls started | jobs running at the kill | kill -> taken over s (`mwe_jobs_taken_over_total` > 0) | kill -> every one called again s | kill -> all succeeded s | jobs taken over |");
    let _ = writeln!(
        doc,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for lease in FAILOVER_LEASES {
        let default = if lease == 30 { " (default)" } else { "" };
        for (n, r) in runs.iter().filter(|r| r.lease == lease).enumerate() {
            let _ = writeln!(
                doc,
                "| {lease}{default} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} |",
                n + 1,
                r.killed_after.as_secs_f64(),
                r.running_at_kill,
                r.taken_over.as_secs_f64(),
                r.called_again.as_secs_f64(),
                r.succeeded.as_secs_f64(),
                r.taken_over_total
            );
        }
    }
    let _ = writeln!(doc);
    // min / median / max of one measure over the runs of one lease.
    let spread = |lease: u64, measure: fn(&Failover) -> Duration| {
        let mut times: Vec<f64> = runs
            .iter()
            .filter(|r| r.lease == lease)
            .map(|r| measure(r).as_secs_f64())
            .collect();
        times.sort_by(f64::total_cmp);
        match (times.first(), times.last()) {
            (Some(min), Some(max)) => {
                format!("{min:.2} / {:.2} / {max:.2} s", times[times.len() / 2])
            }
            _ => "-".to_owned(),
        }
    };
    for lease in FAILOVER_LEASES {
        let count = runs.iter().filter(|r| r.lease == lease).count();
        let _ = writeln!(doc, "- Lease {lease} s ({count} runs, min / median / max): the dead engine's jobs taken over {} after the kill, running again on the survivor {}.", spread(lease, |r| r.taken_over), spread(lease, |r| r.called_again));
    }
}

/// `runs` failover runs at each of [`FAILOVER_LEASES`].
async fn failovers(
    binary: &Path,
    plugins: &Path,
    work: &Path,
    admin: &str,
    runs: usize,
) -> Vec<Failover> {
    let mut measured = Vec::new();
    for lease in FAILOVER_LEASES {
        for _ in 0..runs {
            let run = failover(binary, plugins, work, admin, lease).await;
            println!(
                "failover, lease {lease} s: killed {:.2} s into the calls, {} running, taken over after {:.2} s, called again after {:.2} s, all succeeded after {:.2} s",
                run.killed_after.as_secs_f64(),
                run.running_at_kill,
                run.taken_over.as_secs_f64(),
                run.called_again.as_secs_f64(),
                run.succeeded.as_secs_f64()
            );
            measured.push(run);
        }
    }
    measured
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

    // The scripted test plugin, for the failover: a Plugins folder of its own, so the
    // other measurements load the Dynamics plugin alone.
    let scripted = release.join(format!(
        "{}fixture_scripted.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    let failover_plugins = work.path().join("FailoverPlugins");
    std::fs::create_dir_all(failover_plugins.join("scripted"))
        .unwrap_or_else(|e| fail(format!("mkdir: {e}")));
    if let Some(name) = scripted.file_name() {
        std::fs::copy(&scripted, failover_plugins.join("scripted").join(name)).unwrap_or_else(
            |e| {
                fail(format!(
                    "{}: {e} (run bash examples/bench.sh)",
                    scripted.display()
                ))
            },
        );
    }
    let only_postgres = match std::env::var("MWE_BENCH_ONLY").as_deref() {
        Ok("postgres") => true,
        Ok("") | Err(_) => false,
        Ok(other) => fail(format!(
            "MWE_BENCH_ONLY is {other:?}: only postgres is known"
        )),
    };
    // A smoke run: short levels and one failover per lease; its figures are not kept.
    let quick = std::env::var("MWE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let level = if quick { 2 } else { LEVEL_SECONDS };
    let failover_runs = if quick { 1 } else { 3 };
    // Checked first, so that a missing server stops the run before it has taken minutes.
    let admin = postgres_admin();
    let server = postgres_server(&admin);

    // 1. Intake, driven by wrk: on SQLite, on PostgreSQL, and the bare handler.
    let script = wrk::event_script(work.path()).unwrap_or_else(|e| fail(format!("script: {e}")));
    let engine = start_engine(&binary, &plugins, &work.path().join("intake-data"));
    let idle_rss = rss_kib(engine.child.id());
    let ready = engine.ready_after;
    let intake_database = Database::create(&admin);
    let on_postgres = start_engine_with(
        &binary,
        &plugins,
        &work.path().join("intake-postgres-data"),
        &[
            OsStr::new("--database-url"),
            OsStr::new(&intake_database.url),
        ],
    );
    let bare = bare_handler().await;
    let mut rows = Vec::new();
    let mut loaded_rss = 0;
    for senders in [1, 8, 64] {
        let prefix = format!("level{senders}");
        let durable = wrk::run(
            &format!("{}/ERSPost", engine.events),
            senders,
            level,
            Some((&script, &prefix)),
        )
        .unwrap_or_else(|e| fail(e));
        loaded_rss = loaded_rss.max(rss_kib(engine.child.id()));
        let shared = wrk::run(
            &format!("{}/ERSPost", on_postgres.events),
            senders,
            level,
            Some((&script, &prefix)),
        )
        .unwrap_or_else(|e| fail(e));
        let plain =
            wrk::run(&bare, senders, level, Some((&script, &prefix))).unwrap_or_else(|e| fail(e));
        println!(
            "intake, {senders} senders: SQLite {:.0}/s p50 {} ms p99 {} ms; PostgreSQL {:.0}/s p50 {} ms p99 {} ms; bare {:.0}/s",
            durable.per_second,
            ms(durable.p50),
            ms(durable.p99),
            shared.per_second,
            ms(shared.p50),
            ms(shared.p99),
            plain.per_second
        );
        rows.push((senders, durable, shared, plain));
    }
    drop(engine);
    drop(on_postgres);
    drop(intake_database);

    if only_postgres {
        let failovers = failovers(
            &binary,
            &failover_plugins,
            work.path(),
            &admin,
            failover_runs,
        )
        .await;
        let mut doc = String::new();
        write_intake(&mut doc, level, &server, &rows);
        write_failover(&mut doc, &failovers);
        print!("\n{doc}");
        println!("(MWE_BENCH_ONLY=postgres: docs/benchmarks.md is left as it is)");
        return;
    }

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
            std::thread::spawn(move || wrk::run(&url, 2, level, None))
        });
        let prefix = format!("beside{}", beside.len());
        let intake = wrk::run(
            &format!("{}/ERSPost", engine.events),
            8,
            level,
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
    let failovers = failovers(
        &binary,
        &failover_plugins,
        work.path(),
        &admin,
        failover_runs,
    )
    .await;
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
    let _ = writeln!(doc, "Made by `bash examples/bench.sh` on {} ({machine}), release build.\nEvery number the README states comes from this table. The run takes about twelve minutes.\n", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    write_intake(&mut doc, level, &server, &rows);
    let _ = writeln!(doc, "\nOn SQLite, on a store of {STORED} events, 8 senders, alone and with two `wrk` connections querying the history on the admin address at the same time (the history reads on its own read-only connections, each filter served by an index):\n");
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
    write_failover(&mut doc, &failovers);
    print!("\n{doc}");
    if quick {
        println!("(MWE_BENCH_QUICK: docs/benchmarks.md is left as it is)");
        return;
    }
    std::fs::write("docs/benchmarks.md", &doc)
        .unwrap_or_else(|e| fail(format!("cannot write docs/benchmarks.md: {e}")));
    println!("written to docs/benchmarks.md");
}
