//! Shared helpers: build the real binaries and plugin libraries once, lay out
//! Plugins folders, run the host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Every package whose artifact a test uses.
const PACKAGES: &[&str] = &[
    "host",
    "plugin-dynamics",
    "file-sink-plugin",
    "fixture-not-a-plugin",
    "fixture-ctor-panics",
    "fixture-ctor-fails",
    "fixture-old-api",
    "fixture-scripted",
    "simulators",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

/// Builds the host binary and every plugin library (once per test run) and returns
/// the folder holding them.
pub fn artifacts() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace_root())
            .arg("build")
            .arg("--quiet");
        for package in PACKAGES {
            command.args(["-p", package]);
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the test artifacts failed");
        // A plugin built against plugin-api 0.1.0, from its own workspace, into the same target folder.
        let debug = target_dir();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--manifest-path",
                "tests/compat/Cargo.toml",
                "-p",
                "fixture-pre-actions",
            ])
            .env("CARGO_TARGET_DIR", debug.parent().expect("target folder"))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the compatibility fixture failed"
        );
        debug
    })
}

/// The path of a plugin library built from `crate_name` (its lib name).
pub fn library(crate_name: &str) -> PathBuf {
    let file = format!(
        "{}{crate_name}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    );
    artifacts().join(file)
}

pub fn host_binary() -> PathBuf {
    artifacts().join(format!("middleware-engine{}", std::env::consts::EXE_SUFFIX))
}

/// A Plugins folder in a temporary directory.
pub struct PluginsDir {
    pub dir: tempfile::TempDir,
}

impl PluginsDir {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the library built from `crate_name` into `Plugins/<folder>/`.
    pub fn add(&self, folder: &str, crate_name: &str) -> &Self {
        let source = library(crate_name);
        let target = self.path().join(folder);
        std::fs::create_dir_all(&target).expect("mkdir");
        let name = source.file_name().expect("file name");
        std::fs::copy(&source, target.join(name)).expect("copy plugin");
        self
    }

    /// Writes an arbitrary file into `Plugins/<folder>/<name>`.
    pub fn write(&self, folder: &str, name: &str, contents: &str) -> &Self {
        let target = self.path().join(folder);
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::write(target.join(name), contents).expect("write");
        self
    }
}

/// Runs `middleware-engine <args>` to completion.
pub fn run_host(args: &[&str]) -> Output {
    Command::new(host_binary())
        .args(args)
        .env_remove("MWE_CONFIG")
        .output()
        .expect("host runs")
}

/// `middleware-engine tls init` for localhost and 127.0.0.1 with `data` as the data
/// folder, plus `extra` arguments (e.g. `--force`).
pub fn tls_init(data: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--data-dir",
        data.to_str().expect("utf-8"),
        "tls",
        "init",
        "--hostname",
        "localhost",
        "--ip",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    run_host(&args)
}

/// A Plugins folder with the scripted test plugin and the example file sink.
pub fn scripted_and_file_sink() -> PluginsDir {
    let plugins = PluginsDir::new();
    plugins
        .add("scripted", "fixture_scripted")
        .add("file-sink", "file_sink_plugin");
    plugins
}

/// The store the end-to-end suites run on: the embedded SQLite (the default) or, with
/// `MWE_TEST_STORE=postgres`, a fresh PostgreSQL database per test on the server
/// `MWE_TEST_POSTGRES` names (tests/run.sh runs the suites once on each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("MWE_TEST_STORE").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("MWE_TEST_STORE is {other:?}: use sqlite or postgres"),
    }
}

/// Runs `f` on a thread of its own: the PostgreSQL client blocks, and must not run
/// on the async test's threads.
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("a database thread panicked"))
}

/// A fresh PostgreSQL database, dropped (with its connections) when this is.
pub struct PostgresDatabase {
    admin: String,
    name: String,
    pub url: String,
}

impl PostgresDatabase {
    pub fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let admin = std::env::var("MWE_TEST_POSTGRES").expect(
            "MWE_TEST_POSTGRES is not set: run the tests with `bash tests/run.sh`, which starts \
             PostgreSQL, or set it to postgres://USER:PASSWORD@HOST:PORT/postgres",
        );
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mwe_t_e{}_{n}", std::process::id());
        blocking(|| {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .expect("connect to MWE_TEST_POSTGRES");
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .expect("create database");
        });
        let at = admin
            .rfind('/')
            .expect("MWE_TEST_POSTGRES names a database");
        let url = format!("{}/{name}", &admin[..at]);
        Self { admin, name, url }
    }

    /// Runs `f` with a connection to this database, off the async threads.
    pub fn with<T: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        blocking(|| {
            let mut client =
                postgres::Client::connect(&self.url, postgres::NoTls).expect("connect");
            f(&mut client)
        })
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        blocking(|| {
            if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
                let _ = client.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ));
            }
        });
    }
}

/// Another connection holding the store's write lock until dropped: SQLite's
/// exclusive lock, or PostgreSQL's EXCLUSIVE lock on the events table (reads go on,
/// writes wait).
pub enum StoreLock {
    Sqlite(rusqlite::Connection),
    /// Taken out (and closed off the async threads) when the lock is dropped.
    Postgres(Option<postgres::Client>),
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(conn) => {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Self::Postgres(client) => {
                if let Some(mut client) = client.take() {
                    blocking(move || {
                        let _ = client.batch_execute("ROLLBACK");
                    });
                }
            }
        }
    }
}

/// Where a wrapper command is kept among a test host's environment entries.
const WRAPPER: &str = "test host wrapper";

/// The database a new test host gets on the suite's backend.
fn fresh_database() -> Option<std::sync::Arc<PostgresDatabase>> {
    (backend() == Backend::Postgres).then(|| std::sync::Arc::new(PostgresDatabase::create()))
}

/// A running `middleware-engine serve`, on random loopback ports, with its own data
/// folder (and, on PostgreSQL, its database). Killed when dropped.
pub struct TestHost {
    child: std::process::Child,
    pub admin: String,
    /// The event address' base URL (`http://127.0.0.1:<port>`).
    pub events: String,
    pub data: std::sync::Arc<tempfile::TempDir>,
    /// The PostgreSQL database, on that backend (shared by the engines of one test).
    pub database: Option<std::sync::Arc<PostgresDatabase>>,
    plugins_dir: PathBuf,
    extra_env: Vec<(String, String)>,
    log: PathBuf,
    pub http: reqwest::Client,
}

impl TestHost {
    /// Starts the host over `plugins` with a fresh data folder.
    pub fn start(plugins: &PluginsDir) -> Self {
        Self::start_with(
            plugins.path(),
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            fresh_database(),
            Vec::new(),
        )
    }

    /// Starts a second engine on this one's PostgreSQL database, with its own data
    /// folder, a copy of this one's key file, and `env`.
    pub fn join(&self, plugins: &PluginsDir, env: &[(&str, &str)]) -> Self {
        let database = self
            .database
            .clone()
            .expect("engines share a PostgreSQL database (TestHost::start_postgres)");
        let data = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        let key = data.path().join("secret.key");
        std::fs::copy(self.data.path().join("data").join("secret.key"), &key)
            .expect("copy the key file");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push(("MWE_SECRET_KEY_FILE".into(), key.display().to_string()));
        Self::start_with(plugins.path(), data, Some(database), env)
    }

    /// Starts the host on the embedded SQLite store whatever the suite's backend.
    pub fn start_sqlite(plugins: &PluginsDir) -> Self {
        Self::start_with(
            plugins.path(),
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            None,
            Vec::new(),
        )
    }

    /// Starts a new host process on this one's data folder (after this one exited),
    /// now on `database`.
    pub fn start_on(&mut self, database: std::sync::Arc<PostgresDatabase>) -> Self {
        self.database = Some(database);
        self.start_again()
    }

    /// Starts the host on a fresh PostgreSQL database whatever the suite's backend
    /// (for the tests of several engines), with `env`.
    pub fn start_postgres(plugins: &PluginsDir, env: &[(&str, &str)]) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_with(
            plugins.path(),
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            Some(std::sync::Arc::new(PostgresDatabase::create())),
            env,
        )
    }

    /// Starts the host with extra `MWE_*` environment variables.
    pub fn start_with_env(plugins: &PluginsDir, env: &[(&str, &str)]) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_with(
            plugins.path(),
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            fresh_database(),
            env,
        )
    }

    /// Starts the host through a wrapper command (e.g. `prlimit --nofile=200:4096 --`)
    /// with extra `MWE_*` environment variables.
    pub fn start_wrapped(plugins: &PluginsDir, wrapper: &[&str], env: &[(&str, &str)]) -> Self {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push((WRAPPER.to_owned(), wrapper.join("\u{1f}")));
        Self::start_with(
            plugins.path(),
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            fresh_database(),
            env,
        )
    }

    fn start_with(
        plugins_dir: &Path,
        data: std::sync::Arc<tempfile::TempDir>,
        database: Option<std::sync::Arc<PostgresDatabase>>,
        extra_env: Vec<(String, String)>,
    ) -> Self {
        use std::io::BufRead;
        let log = data.path().join(format!(
            "host-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        // A wrapper command, kept among the environment so a restart uses it again.
        let wrapper: Vec<String> = extra_env
            .iter()
            .find(|(k, _)| k == WRAPPER)
            .map(|(_, v)| v.split('\u{1f}').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(host_binary());
                command
            }
            None => Command::new(host_binary()),
        };
        let mut child = command
            .args([
                "serve",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-level",
                "debug",
            ])
            // A random event port, unless the test fixed one (MWE_EVENT_LISTEN).
            .args(
                (!extra_env.iter().any(|(k, _)| k == "MWE_EVENT_LISTEN"))
                    .then_some(["--event-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            // Retries in tests come quickly; the default starts at 30 s.
            .args([
                "--retry-backoff-min-ms",
                "100",
                "--retry-backoff-max-ms",
                "400",
            ])
            .arg("--plugins-dir")
            .arg(plugins_dir)
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(
                database
                    .iter()
                    .flat_map(|db| ["--database-url".to_owned(), db.url.clone()]),
            )
            .env_remove("MWE_CONFIG")
            .envs(
                extra_env
                    .iter()
                    .filter(|(k, _)| k != WRAPPER)
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdout(std::process::Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("host starts");
        // The host prints its addresses on stdout once it listens.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut admin, mut events) = (None, None);
        while admin.is_none() || events.is_none() {
            match rx.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("admin page: ") {
                        admin = Some(url.trim_end_matches('/').to_owned());
                    }
                    if let Some(url) = line.strip_prefix("event address: ") {
                        events = url.split("/ERSPost").next().map(str::to_owned);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "the host did not start: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        Self {
            child,
            admin: admin.unwrap_or_default(),
            events: events.unwrap_or_default(),
            data,
            database,
            plugins_dir: plugins_dir.to_owned(),
            extra_env,
            log,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the host (SIGKILL: nothing gets a chance to flush) and starts it again on
    /// the same data folder.
    pub fn restart(mut self) -> Self {
        self.kill();
        self.start_again()
    }

    /// Starts a new host process on this one's data folder (after this one exited).
    pub fn start_again(&mut self) -> Self {
        Self::start_with(
            &self.plugins_dir.clone(),
            std::sync::Arc::clone(&self.data),
            self.database.clone(),
            std::mem::take(&mut self.extra_env),
        )
    }

    /// SIGKILL, now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `middleware-engine <args>` on this host's Plugins and data folders (and
    /// its database).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(host_binary())
            .args(args)
            .arg("--plugins-dir")
            .arg(&self.plugins_dir)
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .args(
                self.database
                    .iter()
                    .flat_map(|db| ["--database-url".to_owned(), db.url.clone()]),
            )
            .envs(
                self.extra_env
                    .iter()
                    .filter(|(k, _)| k == "MWE_SECRET_KEY_FILE")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env_remove("MWE_CONFIG")
            .output()
            .expect("host runs")
    }

    /// The process id, to send it signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// Everything the host has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn database_file(&self) -> PathBuf {
        self.data.path().join("data").join("engine.sqlite3")
    }

    /// Holds the store's write lock from another connection until the guard drops.
    pub fn lock_store(&self) -> StoreLock {
        match &self.database {
            None => {
                let conn = rusqlite::Connection::open(self.database_file()).expect("open");
                conn.execute_batch("BEGIN EXCLUSIVE").expect("lock");
                StoreLock::Sqlite(conn)
            }
            Some(db) => StoreLock::Postgres(Some(blocking(|| {
                let mut client =
                    postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
                client
                    .batch_execute("BEGIN; LOCK TABLE events IN EXCLUSIVE MODE")
                    .expect("lock");
                client
            }))),
        }
    }

    /// A number the store answers (`SELECT COUNT(*) ...`), read from another
    /// connection.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.database {
            None => rusqlite::Connection::open(self.database_file())
                .expect("open")
                .query_row(sql, [], |r| r.get(0))
                .expect("count"),
            Some(db) => db.with(|c| c.query_one(sql, &[]).expect("count").get(0)),
        }
    }

    /// Everything the store holds, as bytes: the SQLite files, or every row of every
    /// table as text.
    pub fn store_contents(&self) -> Vec<u8> {
        match &self.database {
            None => {
                let database = self.database_file();
                let mut bytes = std::fs::read(&database).expect("database file");
                if let Ok(wal) = std::fs::read(database.with_extension("sqlite3-wal")) {
                    bytes.extend(wal);
                }
                bytes
            }
            Some(db) => db.with(|client| {
                let tables: Vec<String> = client
                    .query(
                        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
                        &[],
                    )
                    .expect("tables")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut bytes = Vec::new();
                for table in tables {
                    for row in client
                        .query(&format!("SELECT t::text FROM \"{table}\" t"), &[])
                        .expect("rows")
                    {
                        bytes.extend(row.get::<_, String>(0).into_bytes());
                        bytes.push(b'\n');
                    }
                }
                bytes
            }),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        answer(self.http.get(self.url(path)).send().await).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        answer(self.http.post(self.url(path)).json(body).send().await).await
    }

    pub async fn post_empty(&self, path: &str) -> (u16, serde_json::Value) {
        answer(self.http.post(self.url(path)).send().await).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        answer(self.http.put(self.url(path)).json(body).send().await).await
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        answer(self.http.delete(self.url(path)).send().await).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Posts an outbound event the way the appliance does.
    pub async fn post_event(
        &self,
        appliance: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let url = match appliance {
            Some(a) => format!("{}/ERSPost?appliance={a}", self.events),
            None => format!("{}/ERSPost", self.events),
        };
        answer(self.http.post(url).form(form).send().await).await
    }

    /// Creates a configuration of the scripted fixture (`PluginsDir::add("scripted",
    /// "fixture_scripted")`) taking session ends, with `extra` settings over the few it
    /// needs, and answers its id.
    pub async fn scripted_configuration(&self, name: &str, extra: serde_json::Value) -> i64 {
        let mut settings = serde_json::json!({
            "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
            "outbound_event_types": ["support_conference_end"],
        });
        if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let (status, created) = self
            .post(
                "/api/configurations",
                &serde_json::json!({"plugin": "scripted", "name": name, "settings": settings}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_i64().expect("id")
    }

    /// Posts the end of session `lsid`, which the scripted fixture plays `script` for
    /// (see its crate's documentation), and checks the engine took it.
    pub async fn post_script(&self, lsid: &str, script: &str) {
        let form = [
            ("event", "support_conference_end"),
            ("version", "3"),
            ("timestamp", "1"),
            ("lsid", lsid),
            ("script", script),
        ];
        let (status, body) = self.post_event(None, &form).await;
        assert_eq!(status, 200, "{body}");
    }

    /// The history, newest first, filtered by a query string such as `state=failed`.
    pub async fn events(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.get(&format!("/api/events?{query}")).await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// Waits until the history has `count` events in `state` (and returns them), or
    /// fails the test after a generous deadline.
    pub async fn wait_for_state(&self, state: &str, count: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let found = self.events(&format!("state={state}&limit=1000")).await;
            if found.len() >= count {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited 60 s for {count} events in state {state}; history: {:?}",
                self.events("limit=50").await
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Waits until a file has at least `count` JSON lines (a plugin recorded its calls).
pub async fn wait_for_lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let lines = json_lines(path);
        if lines.len() >= count {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 30 s for {count} lines in {}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The JSON lines of a file (empty when the file does not exist yet).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and JSON body (null when empty) of an answer.
pub async fn answer(response: reqwest::Result<reqwest::Response>) -> (u16, serde_json::Value) {
    let response = response.expect("the host answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, json)
}

/// The actions of audit log entries, in their order.
pub fn audit_actions(entries: &[serde_json::Value]) -> Vec<&str> {
    entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect()
}
