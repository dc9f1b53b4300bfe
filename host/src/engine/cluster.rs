//! Several engines on one database. Each engine has an id (new at every start) and
//! a row in `engines`; its heartbeat renews the leases of the jobs it runs and of the
//! work it holds (a configuration's polling or reconciliation, a backfill). On a
//! shared store every engine also takes over the running jobs whose lease ended,
//! and picks up configuration changes made on the other engines.
//!
//! On the embedded store there is one engine: it heartbeats too (the page shows it),
//! and a job of its own never expires under it.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::store::cluster::{self, EngineRow, EngineView};
use crate::store::{now_ms, StoreError};

/// How often an engine on a shared store looks for jobs whose lease ended.
const TAKEOVER_LOOK: Duration = Duration::from_secs(1);

/// How often an engine looks for configuration changes made by another.
const CONFIGURATION_SYNC: Duration = Duration::from_millis(250);

/// What one engine is on the database.
pub struct Identity {
    /// New at every start: leases name it.
    pub id: String,
    pub lease: Duration,
    pub shared: bool,
    /// Work leases held now (`poll:<id>`, `reconcile:<id>`, `backfill:<id>`).
    held: std::sync::Mutex<HashSet<String>>,
}

impl Identity {
    pub fn new(lease: Duration, shared: bool) -> Self {
        let mut bytes = [0u8; 8];
        let id = match getrandom::fill(&mut bytes) {
            Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => format!("{:x}{:x}", std::process::id(), now_ms()),
        };
        Self {
            id,
            lease,
            shared,
            held: std::sync::Mutex::new(HashSet::new()),
        }
    }

    pub fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// When a lease taken now ends.
    pub fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(self.lease_ms())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Engine {
    /// Registers this engine on the database, once its addresses are bound. On a
    /// shared store the jobs an earlier run of the same engine left running go back
    /// to the queue at once (they cannot be running: that run is gone).
    pub async fn register(
        self: &Arc<Self>,
        name: String,
        admin_url: String,
        events_url: String,
    ) -> Result<(), StoreError> {
        let plugins: Vec<String> = self
            .configurations
            .registry()
            .loaded()
            .map(|p| format!("{}@{}", p.manifest.id, p.manifest.version))
            .collect();
        let my_name = name.clone();
        let row = EngineRow {
            id: self.identity.id.clone(),
            name: name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            admin_url,
            events_url,
            plugins: plugins.clone(),
        };
        let (id, shared, lease_ms) = (
            self.identity.id.clone(),
            self.identity.shared,
            self.identity.lease_ms(),
        );
        let (others, taken_back) = self
            .store
            .call(move |conn| {
                let now = now_ms();
                let others = cluster::engines(conn, now, lease_ms)?;
                cluster::register_engine(conn, &row, now)?;
                let taken_back = if shared {
                    cluster::take_back_own(conn, &name, &id, now)?
                } else {
                    0
                };
                Ok((others, taken_back))
            })
            .await?;
        if taken_back > 0 {
            tracing::warn!(
                jobs = taken_back,
                "resuming jobs this engine's last run left running"
            );
            self.wake();
        }
        for other in others.iter().filter(|o| o.alive && o.name != my_name) {
            let differ = plugin_difference(&plugins, &other.plugins);
            if !differ.is_empty() {
                tracing::warn!(
                    engine = %other.name,
                    "this engine and {} load different plugins: {}",
                    other.name,
                    differ.join("; ")
                );
            }
        }
        tokio::spawn(Arc::clone(self).heartbeat_loop());
        if self.identity.shared {
            tokio::spawn(Arc::clone(self).configuration_sync_loop());
        }
        Ok(())
    }

    /// Renews this engine's leases every third of the lease and, on a shared store,
    /// looks every second for jobs of engines that stopped answering: a lease ends at
    /// most one lease time after an engine's last heartbeat, so its jobs run again
    /// within the lease time and a second of its death.
    async fn heartbeat_loop(self: Arc<Self>) {
        let every = (self.identity.lease / 3).max(TAKEOVER_LOOK);
        let mut last_beat: Option<std::time::Instant> = None;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if last_beat.is_none_or(|at| at.elapsed() >= every) {
                last_beat = Some(std::time::Instant::now());
                self.heartbeat().await;
            }
            if self.identity.shared {
                self.take_over_expired().await;
            }
            tokio::time::sleep(TAKEOVER_LOOK).await;
        }
    }

    async fn heartbeat(&self) {
        let (id, running) = (
            self.identity.id.clone(),
            self.in_flight.load(Ordering::SeqCst),
        );
        let until = self.identity.lease_until(now_ms());
        match self
            .store
            .call(move |conn| cluster::heartbeat(conn, &id, running, now_ms(), until))
            .await
        {
            Ok(held) => {
                let held: HashSet<String> = held.into_iter().collect();
                let mut mine = self.identity.held();
                let lost: Vec<String> = mine.difference(&held).cloned().collect();
                for name in lost {
                    tracing::warn!(lease = %name, "another engine took this work over");
                    mine.remove(&name);
                }
            }
            Err(e) => tracing::error!("heartbeat failed (another engine takes this one's work over once its leases end): {e}"),
        }
    }

    async fn take_over_expired(&self) {
        match self
            .store
            .call(|conn| cluster::take_over_expired(conn, now_ms()))
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    jobs = n,
                    "took over jobs of an engine that stopped answering"
                );
                self.metrics.taken_over(n);
                self.wake();
            }
            Err(e) => tracing::error!("cannot look for jobs to take over: {e}"),
        }
    }

    /// Applies configurations created, edited, enabled, disabled or deleted on
    /// another engine (this engine's own changes are applied as they are made).
    async fn configuration_sync_loop(self: Arc<Self>) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.configurations.sync().await {
                tracing::error!("cannot read the configurations to pick up changes: {e}");
            }
            tokio::time::sleep(CONFIGURATION_SYNC).await;
        }
    }

    /// Takes (or renews) the work lease `name`; false when another engine holds it.
    pub(crate) async fn hold(&self, name: String) -> bool {
        let (id, now) = (self.identity.id.clone(), now_ms());
        let until = self.identity.lease_until(now);
        let key = name.clone();
        match self
            .store
            .call(move |conn| cluster::take_lease(conn, &key, &id, now, until))
            .await
        {
            Ok(true) => {
                self.identity.held().insert(name);
                true
            }
            Ok(false) => {
                self.identity.held().remove(&name);
                false
            }
            Err(e) => {
                tracing::error!(lease = %name, "cannot take the work lease: {e}");
                false
            }
        }
    }

    /// Gives a work lease back (the work stopped here).
    pub(super) async fn let_go(&self, name: &str) {
        if !self.identity.held().remove(name) {
            return;
        }
        let (id, key) = (self.identity.id.clone(), name.to_owned());
        if let Err(e) = self
            .store
            .call(move |conn| cluster::release_lease(conn, &key, &id))
            .await
        {
            tracing::warn!(lease = %name, "cannot give the work lease back (it ends by itself): {e}");
        }
    }

    /// Whether this engine holds the work lease `name` (as of its last take or
    /// heartbeat).
    pub(super) fn holds(&self, name: &str) -> bool {
        self.identity.held().contains(name)
    }

    /// The work leases of one kind (`poll:`) held now.
    pub(super) fn held_of(&self, prefix: &str) -> Vec<String> {
        self.identity
            .held()
            .iter()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// After the drain: the work leases go back and the row says stopped, so another
    /// engine takes the polling over at once.
    pub async fn unregister(&self) {
        let id = self.identity.id.clone();
        if let Err(e) = self
            .store
            .call(move |conn| cluster::engine_stopped(conn, &id, now_ms()))
            .await
        {
            tracing::warn!("cannot record this engine's stop (its leases end by themselves): {e}");
        }
    }

    /// The engines on the database, for the API and the page, with what each loads
    /// that this one does not (and the other way round).
    pub async fn engines(&self) -> Result<Vec<EngineListing>, StoreError> {
        let lease_ms = self.identity.lease_ms();
        let engines = self
            .store
            .read(move |conn| cluster::engines(conn, now_ms(), lease_ms))
            .await?;
        let mine: Vec<String> = engines
            .iter()
            .find(|e| e.id == self.identity.id)
            .map(|e| e.plugins.clone())
            .unwrap_or_default();
        Ok(engines
            .into_iter()
            .map(|engine| EngineListing {
                this_engine: engine.id == self.identity.id,
                plugins_differ: plugin_difference(&mine, &engine.plugins),
                engine,
            })
            .collect())
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// This machine's host name, for the default engine name.
pub fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that
        // and the name ends at the first NUL (or the buffer's end).
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            let name = String::from_utf8_lossy(&buf[..end]).into_owned();
            if !name.is_empty() {
                return name;
            }
        }
    }
    "engine".to_owned()
}

/// An engine as listed, beside this one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineListing {
    #[serde(flatten)]
    pub engine: EngineView,
    /// The engine answering this request.
    pub this_engine: bool,
    /// How its plugins differ from this engine's (empty when the same).
    pub plugins_differ: Vec<String>,
}

/// "x@1 here, x@2 there" and the like: each plugin loaded on one side only, or at
/// another version.
fn plugin_difference(mine: &[String], theirs: &[String]) -> Vec<String> {
    let split = |list: &[String]| -> BTreeMap<String, String> {
        list.iter()
            .map(|p| match p.split_once('@') {
                Some((id, version)) => (id.to_owned(), version.to_owned()),
                None => (p.clone(), String::new()),
            })
            .collect()
    };
    let (mine, theirs) = (split(mine), split(theirs));
    let mut out = Vec::new();
    for (id, version) in &mine {
        match theirs.get(id) {
            None => out.push(format!("{id} is loaded here only")),
            Some(v) if v != version => out.push(format!("{id} is at {version} here and {v} there")),
            Some(_) => {}
        }
    }
    for id in theirs.keys() {
        if !mine.contains_key(id) {
            out.push(format!("{id} is loaded there only"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plugin_difference;

    #[test]
    fn plugin_sets_are_compared_by_id_and_version() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(plugin_difference(&list(&["a@1", "b@2"]), &list(&["b@2", "a@1"])).is_empty());
        assert_eq!(
            plugin_difference(&list(&["a@1", "b@2"]), &list(&["a@2", "c@1"])),
            vec![
                "a is at 1 here and 2 there",
                "b is loaded here only",
                "c is loaded there only"
            ]
        );
    }
}
