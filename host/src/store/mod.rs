//! The store: the embedded SQLite database in the data folder (the default, one
//! engine), or a PostgreSQL database that several engines share (`database_url`).
//! Both have versioned schema migrations in the code and run the same queries
//! (`db` speaks both).
//!
//! Calls run on blocking threads. SQLite has one writing connection (it serialises
//! writers anyway, and one connection keeps each transaction's view simple) and two
//! read-only ones; PostgreSQL has a few of each, and a connection the server closed
//! is opened again on its next use.

pub mod alerts;
pub mod audit;
pub mod bulk;
pub mod cluster;
mod configurations;
pub mod copy;
pub mod db;
pub mod events;
pub mod health;
mod kinds;
pub mod metrics_queries;
mod migrations;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use configurations::{ConfigurationRow, NewConfiguration};
pub use db::Connection;

/// The database file inside the data folder.
pub const DATABASE_FILE: &str = "engine.sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data folder {path}: {source}")]
    DataFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database {location} has schema version {found}, newer than this engine knows ({known}); run the newer engine, or restore a backup made for this one")]
    SchemaTooNew {
        location: String,
        found: i64,
        known: i64,
    },
    #[error("a configuration named {name:?} already exists for this plugin")]
    DuplicateName { name: String },
    #[error("not found")]
    NotFound,
    /// A query that must find a row found none (`optional()` turns it into `None`).
    #[error("the query found no row")]
    NoRow,
    #[error("{what} in the database cannot be read: {source}")]
    Corrupt {
        what: String,
        source: serde_json::Error,
    },
    #[error("column {index} of a stored row cannot be read: {message}")]
    Column { index: usize, message: String },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("cannot connect to PostgreSQL at {location}: {source}")]
    Connect {
        location: String,
        source: postgres::Error,
    },
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
}

/// Whether an error, or one of its causes, says the database server cannot be
/// reached or closed the connection. Wrappers declared `transparent` hide the
/// store's own error, so the PostgreSQL client's error is looked for as well.
pub fn unreachable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let found = e
            .downcast_ref::<StoreError>()
            .map(StoreError::is_unreachable)
            .or_else(|| {
                e.downcast_ref::<postgres::Error>()
                    .map(postgres_unreachable)
            });
        if found == Some(true) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Closed by the server, refused at connection (an I/O error underneath), or
/// refused because the server is shutting down or starting.
fn postgres_unreachable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    let shutting = |code: &SqlState| {
        code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code)
    };
    let io = std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>());
    e.is_closed() || io || e.code().is_some_and(shutting)
}

/// The server's own words when it refused a statement, else the client's error.
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl StoreError {
    /// The database server cannot be reached or closed the connection: the same
    /// call may work once a connection is opened again.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Postgres(e) => postgres_unreachable(e),
            _ => false,
        }
    }

    /// A unique constraint refused the write.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(code, _)) => {
                code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            Self::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

/// Where the store is: the embedded database, or a PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(Box<PostgresUrl>),
}

/// A `postgres://` URL; shown without its password.
#[derive(Clone)]
pub struct PostgresUrl {
    url: String,
    config: postgres::Config,
}

impl PostgresUrl {
    /// Parses a `postgres://` or `postgresql://` URL, saying what to fix.
    pub fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("database_url must be a postgres:// URL, e.g. postgres://engine:PASSWORD@db.example.net:5432/middleware (leave it unset for the embedded SQLite store)".into());
        }
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("database_url is not a valid PostgreSQL URL: {e}"))?;
        // As SQLite's busy timeout: a write that waits 5 s for a lock fails (intake
        // answers 503 and the appliance sends the event again) instead of hanging.
        let options = match config.get_options() {
            Some(given) => format!("{given} -c lock_timeout=5s"),
            None => "-c lock_timeout=5s".to_owned(),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("middleware-engine");
        }
        if config.get_dbname().is_none() {
            return Err("database_url names no database: add it after the host, e.g. postgres://engine@db.example.net/middleware".into());
        }
        Ok(Self {
            url: url.to_owned(),
            config,
        })
    }

    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl Eq for PostgresUrl {}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        let user = c.get_user().unwrap_or("");
        let host = c
            .get_hosts()
            .first()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_default();
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let db = c.get_dbname().unwrap_or("");
        write!(f, "postgres://{user}@{host}:{port}/{db}")
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => url.fmt(f),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Read-only connections kept for the history and other reads: they read while the
/// writer commits, so a large history query never holds up intake.
const READERS: usize = 2;
/// PostgreSQL takes writers side by side: intake's group commit, the dispatcher and
/// the admin API each get one without waiting for the others.
const POSTGRES_WRITERS: usize = 4;

#[derive(Clone)]
pub struct Store {
    writers: Arc<Pool>,
    readers: Arc<Pool>,
    location: Arc<Location>,
}

type Opener = Box<dyn Fn() -> Result<Connection, StoreError> + Send + Sync>;

struct Pool {
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    /// Opens a connection again after the server closed one (PostgreSQL).
    reopen: Option<Opener>,
    /// Counts the connections found closed by the server, in both pools of a store:
    /// one closed connection (a failover, a restart of the server, a cut) usually
    /// means all are, so each other connection is asked before its next use instead
    /// of failing a call of its own.
    lost: Arc<AtomicU64>,
}

struct Slot {
    conn: Connection,
    /// The value of `lost` when this connection was last known to work.
    checked: u64,
}

impl Pool {
    fn new(conns: Vec<Connection>, reopen: Option<Opener>, lost: Arc<AtomicU64>) -> Self {
        let checked = lost.load(Ordering::Acquire);
        Self {
            slots: conns
                .into_iter()
                .map(|conn| Mutex::new(Slot { conn, checked }))
                .collect(),
            next: AtomicUsize::new(0),
            reopen,
            lost,
        }
    }

    /// A free connection if there is one, else the next in turn once it is free;
    /// opened again first if the server closed it.
    fn checkout(&self) -> Result<std::sync::MutexGuard<'_, Slot>, StoreError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.slots.len();
        let free = (0..count).find_map(|i| self.slots[(first + i) % count].try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => self.slots[first % count]
                .lock()
                .map_err(|_| StoreError::Worker("a previous database call panicked".into()))?,
        };
        let lost = self.lost.load(Ordering::Acquire);
        if let Some(reopen) = &self.reopen {
            let suspect = slot.checked < lost;
            if !slot.conn.is_usable() || (suspect && !slot.conn.answers()) {
                slot.conn = reopen()?;
                tracing::info!("connection to the database opened again");
            }
        }
        slot.checked = lost;
        Ok(slot)
    }

    /// After a failed call: true when it failed because the server closed the
    /// connection (asked, since the client may not have noticed yet), which then
    /// tells the store's other connections to check theirs.
    fn closed_under(&self, slot: &Slot) -> bool {
        let closed = self.reopen.is_some() && !(slot.conn.is_usable() && slot.conn.answers());
        if closed {
            self.lost.fetch_add(1, Ordering::AcqRel);
        }
        closed
    }

    /// Runs `f` on a connection. A write is not run again when its connection is
    /// lost: whether its commit reached the server is not known.
    fn with<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut slot = self.checkout()?;
        let result = f(&mut slot.conn);
        if result.is_err() {
            self.closed_under(&slot);
        }
        result
    }

    /// Runs the read `f` on a connection, and once more on a new one when the server
    /// had closed the first: reading again changes nothing.
    fn read<T>(&self, f: impl Fn(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let slot = self.checkout()?;
        match f(&slot.conn) {
            Err(_) if self.closed_under(&slot) => {
                drop(slot);
                f(&self.checkout()?.conn)
            }
            result => result,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the embedded database in `data_dir` and brings its
    /// schema up to date. Refuses a schema newer than this binary knows.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let folder_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::DataFolder { path, source }
        };
        private::create_folder(data_dir).map_err(folder_error(data_dir))?;
        let path = data_dir.join(DATABASE_FILE);
        // SQLite gives its -wal and -shm files the mode of the database file, so the
        // file is made owner-only before SQLite first opens it.
        private::create_file(&path).map_err(folder_error(&path))?;
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk before we answer (an accepted event is never lost).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut conn = Connection::sqlite(conn);
        let location = Location::Sqlite(path.clone());
        migrations::apply(&mut conn, &location)?;
        let readers = (0..READERS)
            .map(|_| open_reader(&path))
            .collect::<Result<_, _>>()?;
        let lost = Arc::new(AtomicU64::new(0));
        Ok(Self {
            writers: Arc::new(Pool::new(vec![conn], None, Arc::clone(&lost))),
            readers: Arc::new(Pool::new(readers, None, lost)),
            location: Arc::new(location),
        })
    }

    /// Connects to a PostgreSQL database that may be shared with other engines and
    /// brings its schema up to date (one engine at a time migrates). Refuses a schema
    /// newer than this binary knows.
    pub fn open_postgres(url: &PostgresUrl) -> Result<Self, StoreError> {
        let connect = {
            let url = url.clone();
            move || -> Result<Connection, StoreError> {
                let client = url.config().connect(postgres::NoTls).map_err(|source| {
                    StoreError::Connect {
                        location: url.to_string(),
                        source,
                    }
                })?;
                Ok(Connection::postgres(client))
            }
        };
        let location = Location::Postgres(Box::new(url.clone()));
        let mut first = connect()?;
        migrations::apply(&mut first, &location)?;
        let mut writers = vec![first];
        for _ in 1..POSTGRES_WRITERS {
            writers.push(connect()?);
        }
        let readers = (0..READERS).map(|_| connect()).collect::<Result<_, _>>()?;
        let lost = Arc::new(AtomicU64::new(0));
        Ok(Self {
            writers: Arc::new(Pool::new(
                writers,
                Some(Box::new(connect.clone())),
                Arc::clone(&lost),
            )),
            readers: Arc::new(Pool::new(readers, Some(Box::new(connect)), lost)),
            location: Arc::new(location),
        })
    }

    /// Opens the store the settings name: PostgreSQL with a `database_url`, else the
    /// embedded database in the data folder.
    pub fn open_at(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::Sqlite(data_dir) => Self::open(data_dir),
            Location::Postgres(url) => Self::open_postgres(url),
        }
    }

    /// [`Store::open_at`] from async code: the PostgreSQL client blocks, so it
    /// connects off the async threads.
    pub async fn open_async(location: &Location) -> Result<Self, StoreError> {
        let location = location.clone();
        tokio::task::spawn_blocking(move || Self::open_at(&location))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Several engines may share this store.
    pub fn is_shared(&self) -> bool {
        matches!(*self.location, Location::Postgres(_))
    }

    /// Runs `f` on a read-only connection on a blocking thread; it sees every commit
    /// made before it starts and never waits for the writer. It is run again on a
    /// new connection if the server had closed the first.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.read(f))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Runs `f` with a writing connection on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let writers = Arc::clone(&self.writers);
        tokio::task::spawn_blocking(move || writers.with(f))
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// As [`Store::call`], on the calling thread (start-up and command-line tools).
    pub fn call_blocking<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.writers.with(f)
    }
}

/// The data folder and the database hold configurations, the event history and the
/// key: they are readable by the engine's user only (0700 and 0600), whatever the
/// umask, and looser modes left by an older version are tightened.
mod private {
    use std::path::Path;

    #[cfg(unix)]
    pub fn create_folder(path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        tighten(path, 0o700)
    }

    #[cfg(unix)]
    pub fn create_file(path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        tighten(path, 0o600)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            match tighten(Path::new(&side), 0o600) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Sets `mode` when the file's permissions are looser.
    #[cfg(unix)]
    fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if current & !mode != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    #[cfg(not(unix))]
    pub fn create_folder(path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    #[cfg(not(unix))]
    pub fn create_file(_path: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(Connection::sqlite(conn))
}

/// Milliseconds since the Unix epoch, the store's one time format.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod reconnect_tests {
    use super::testing::PostgresDatabase;
    use super::*;

    /// What a failover or a network cut does: the server ends every session the
    /// engine has on the database.
    fn cut(database: &PostgresDatabase) -> i64 {
        let mut client =
            postgres::Client::connect(&database.url, postgres::NoTls).expect("connect");
        client
            .query_one(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .expect("terminate")
            .get(0)
    }

    #[test]
    fn after_the_server_closes_every_connection_reads_and_writes_go_on() {
        let database = PostgresDatabase::create();
        let url = PostgresUrl::parse(&database.url).expect("url");
        let store = Store::open_postgres(&url).expect("store");
        assert_eq!(cut(&database), (POSTGRES_WRITERS + READERS) as i64);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // The first read meets a closed connection and is run again on a new one.
            let count: i64 = store
                .read(|c| c.query_row("SELECT COUNT(*) FROM configurations", &[], |r| r.get(0)))
                .await
                .expect("a read after the cut");
            assert_eq!(count, 0);
            // That told the writers to check theirs before use: no write fails either.
            for n in 0..POSTGRES_WRITERS {
                store
                    .call(move |c| {
                        c.execute(
                            "INSERT INTO configurations (plugin, name, settings, secrets, created_at, updated_at)
                             VALUES ('p', ?1, '{}', '{}', 0, 0)",
                            db::params![format!("c{n}")],
                        )
                    })
                    .await
                    .expect("a write after the cut");
            }
        });
        drop(store);
    }

    #[test]
    fn a_closed_connection_is_an_unreachable_database_and_a_bad_query_is_not() {
        let database = PostgresDatabase::create();
        let mut client =
            postgres::Client::connect(&database.url, postgres::NoTls).expect("connect");
        let bad = StoreError::from(
            client
                .batch_execute("SELECT * FROM no_such_table")
                .expect_err("no such table"),
        );
        assert!(!bad.is_unreachable(), "{bad}");
        cut(&database);
        let closed = StoreError::from(client.batch_execute("SELECT 1").expect_err("cut"));
        assert!(closed.is_unreachable(), "{closed}");
        // Wrapped as the admin API's callers wrap it, the cause is still found.
        let wrapped = crate::configurations::ConfigError::Store(closed);
        assert!(unreachable(&wrapped));
        assert!(!unreachable(&crate::configurations::ConfigError::Store(
            bad
        )));
        // The admin API answers it as a pause to wait out, not as its own failure.
        use axum::response::IntoResponse;
        let answer = crate::admin::error::ApiError::from(wrapped).into_response();
        assert_eq!(answer.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()[axum::http::header::RETRY_AFTER], "5");
    }
}

/// Writes a store unit test once and runs it on both servers: `fn name(conn) { .. }`
/// becomes `name::sqlite` and `name::postgres`, each with a fresh database holding
/// the configurations 1 and 2.
#[cfg(test)]
macro_rules! on_both_stores {
    ($(fn $name:ident($conn:ident) $body:block)+) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run(backend: $crate::store::testing::Backend) {
                #[allow(unused_mut)]
                let (_guard, mut $conn) = $crate::store::testing::connection(backend, &[1, 2]);
                $body
            }

            #[test]
            fn sqlite() {
                run($crate::store::testing::Backend::Sqlite);
            }

            #[test]
            fn postgres() {
                run($crate::store::testing::Backend::Postgres);
            }
        }
    )+};
}
#[cfg(test)]
pub(crate) use on_both_stores;

/// For the store's unit tests: a migrated database with foreign keys on and the
/// configurations `ids` (named `c<id>`), on either server.
#[cfg(test)]
pub(crate) mod testing {
    use super::{db, Connection, Store, DATABASE_FILE};

    #[derive(Debug, Clone, Copy)]
    pub enum Backend {
        Sqlite,
        Postgres,
    }

    /// Keeps the test's database until the test ends.
    pub enum Guard {
        Sqlite(#[allow(dead_code)] tempfile::TempDir),
        Postgres(#[allow(dead_code)] PostgresDatabase),
    }

    /// A fresh PostgreSQL database, dropped when this is.
    pub struct PostgresDatabase {
        admin: String,
        pub name: String,
        pub url: String,
    }

    impl PostgresDatabase {
        /// Creates one on the server `MWE_TEST_POSTGRES` names (tests/run.sh sets it).
        pub fn create() -> Self {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let admin = std::env::var("MWE_TEST_POSTGRES").expect(
                "MWE_TEST_POSTGRES is not set: run the tests with `bash tests/run.sh`, which starts PostgreSQL, \
                 or set it to postgres://USER:PASSWORD@HOST:PORT/postgres (a role that may create databases)",
            );
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("mwe_t_u{}_{n}", std::process::id());
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .expect("connect to MWE_TEST_POSTGRES");
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .expect("create database");
            let url = match admin.rfind('/') {
                Some(at) => format!("{}/{name}", &admin[..at]),
                None => panic!("MWE_TEST_POSTGRES has no database part"),
            };
            Self { admin, name, url }
        }
    }

    impl Drop for PostgresDatabase {
        fn drop(&mut self) {
            if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
                let _ = client.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ));
            }
        }
    }

    pub fn connection(backend: Backend, ids: &[i64]) -> (Guard, Connection) {
        let (guard, conn) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                drop(Store::open(dir.path()).expect("store"));
                let conn =
                    rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
                conn.pragma_update(None, "foreign_keys", "ON")
                    .expect("foreign keys");
                (Guard::Sqlite(dir), Connection::sqlite(conn))
            }
            Backend::Postgres => {
                let database = PostgresDatabase::create();
                let url = super::PostgresUrl::parse(&database.url).expect("url");
                drop(Store::open_postgres(&url).expect("store"));
                let client = url.config().connect(postgres::NoTls).expect("connect");
                (Guard::Postgres(database), Connection::postgres(client))
            }
        };
        for id in ids {
            conn.execute(
                "INSERT INTO configurations (id, plugin, name, settings, secrets, created_at, updated_at)
                 VALUES (?1, 'p', ?2, '{}', '{}', 0, 0)",
                db::params![id, format!("c{id}")],
            )
            .expect("configuration");
        }
        (guard, conn)
    }
}
