//! The embedded store: one SQLite database in the data folder, in WAL mode, with
//! schema migrations versioned in the code.
//!
//! One connection serves every write, on blocking threads; SQLite serialises writers
//! anyway, and a single connection keeps each transaction's view simple.

pub mod bulk;
mod configurations;
pub mod events;
mod kinds;
mod migrations;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use configurations::{ConfigurationRow, NewConfiguration};

/// The database file inside the data folder.
pub const DATABASE_FILE: &str = "engine.sqlite3";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data folder {path}: {source}")]
    DataFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database {path} has schema version {found}, newer than this engine knows ({known}); run the newer engine, or restore a backup made for this one")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("a configuration named {name:?} already exists for this plugin")]
    DuplicateName { name: String },
    #[error("not found")]
    NotFound,
    #[error("{what} in the database cannot be read: {source}")]
    Corrupt {
        what: String,
        source: serde_json::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
}

/// Read-only connections kept for the history and other reads: in WAL mode they read
/// while the writer commits, so a large history query never holds up intake.
const READERS: usize = 2;

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    readers: Arc<Readers>,
    path: PathBuf,
}

struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up
    /// to date. Refuses a schema newer than this binary knows.
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
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is on disk before we answer (an accepted event is never lost).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut conn, &path)?;
        let readers = (0..READERS)
            .map(|_| open_reader(&path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::new(Readers {
                conns: readers,
                next: std::sync::atomic::AtomicUsize::new(0),
            }),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a read-only connection on a blocking thread; it sees every commit
    /// made before it starts and never waits for the writer.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let first = readers
                .next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Take a free reader if there is one, else wait for ours.
            let count = readers.conns.len();
            let free = (0..count).find_map(|i| readers.conns[(first + i) % count].try_lock().ok());
            let guard = match free {
                Some(guard) => guard,
                None => readers.conns[first % count]
                    .lock()
                    .map_err(|_| StoreError::Worker("a previous database read panicked".into()))?,
            };
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("a previous database call panicked".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
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
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Milliseconds since the Unix epoch, the store's one time format.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// For the store's unit tests: a migrated database with foreign keys on and the
/// configurations `ids` (named `c<id>`).
#[cfg(test)]
pub(crate) fn test_connection(ids: &[i64]) -> (tempfile::TempDir, rusqlite::Connection) {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("store"));
    let conn = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
    conn.pragma_update(None, "foreign_keys", "ON")
        .expect("foreign keys");
    for id in ids {
        conn.execute(
            "INSERT INTO configurations (id, plugin, name, settings, secrets, created_at, updated_at)
             VALUES (?1, 'p', ?2, '{}', '{}', 0, 0)",
            rusqlite::params![id, format!("c{id}")],
        )
        .expect("configuration");
    }
    (dir, conn)
}
