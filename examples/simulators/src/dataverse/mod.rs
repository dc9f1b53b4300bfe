//! Entra ID (the token endpoint) and Dataverse (the Web API) for one simulated
//! environment, each on its own TLS port like the real hosts.

mod batch;
mod control;
mod entra;
pub mod metadata;
pub mod model;
mod webapi;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::{lock, random_guid, serve, Listen, Monitor, Served};
use crate::tls::TestCertificate;
use model::{Annotation, Incident, Table, TableMeta};

/// Service protection limits, per user (the application user), as Dataverse applies
/// them over a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per window; none: no limit.
    pub requests: Option<u32>,
    pub window_seconds: u64,
    /// Requests in progress at once; none: no limit.
    pub concurrent: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests: None,
            window_seconds: 300,
            concurrent: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DataverseOptions {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    /// Whether the `bt_session` table exists from the start.
    pub provisioned: bool,
    pub limits: Limits,
    /// Fixed ports (0: any free port).
    pub entra_port: u16,
    pub api_port: u16,
}

impl Default for DataverseOptions {
    fn default() -> Self {
        Self {
            tenant_id: "7d2e1b4c-9a3f-4e21-8c5d-0f6a1b2c3d4e".into(),
            client_id: "5f3a2c1d-8b7e-4f60-9d1c-2e3f4a5b6c7d".into(),
            client_secret: "sim~dataverse.client-secret_0123456789".into(),
            token_lifetime: Duration::from_secs(3599),
            provisioned: true,
            limits: Limits::default(),
            entra_port: 0,
            api_port: 0,
        }
    }
}

/// Makes the writes (PATCH, POST, PUT, DELETE) whose address or body contains a text
/// fail with a Dataverse error, as an org's own plug-in refusing a record would, e.g.
/// to fail one session's row: `{"contains": "<lsid>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFault {
    pub contains: String,
    #[serde(default = "write_fault_status")]
    pub status: u16,
    #[serde(default = "write_fault_code")]
    pub code: String,
    #[serde(default = "write_fault_message")]
    pub message: String,
    /// How many writes it fails; every matching write when absent.
    #[serde(default)]
    pub count: Option<u32>,
}

fn write_fault_status() -> u16 {
    400
}

fn write_fault_code() -> String {
    // What Dataverse answers when a plug-in throws InvalidPluginExecutionException.
    "0x80040265".into()
}

fn write_fault_message() -> String {
    "The record was refused by a plug-in of the organization (simulated).".into()
}

impl WriteFault {
    pub fn new(contains: &str) -> Self {
        Self {
            contains: contains.to_owned(),
            status: write_fault_status(),
            code: write_fault_code(),
            message: write_fault_message(),
            count: None,
        }
    }
}

pub(crate) struct Token {
    client_id: String,
    audience: String,
    expires_at: Instant,
}

pub(crate) struct State {
    pub(crate) options: DataverseOptions,
    /// The environment URL (`https://127.0.0.1:<port>`), the tokens' audience.
    pub(crate) url: Mutex<String>,
    pub(crate) secret: Mutex<String>,
    pub(crate) secret_expired: Mutex<bool>,
    pub(crate) token_lifetime: Mutex<Duration>,
    pub(crate) tokens: Mutex<HashMap<String, Token>>,
    pub(crate) incidents: Mutex<BTreeMap<String, Incident>>,
    pub(crate) tables: Mutex<BTreeMap<String, Table>>,
    pub(crate) annotations: Mutex<Vec<Annotation>>,
    pub(crate) missing_privileges: Mutex<HashSet<String>>,
    pub(crate) customizations: Mutex<metadata::Customizations>,
    pub(crate) limits: Mutex<Limits>,
    pub(crate) window: Mutex<VecDeque<Instant>>,
    pub(crate) in_flight: AtomicU32,
    /// When the last 429 said the client may come back.
    pub(crate) blocked_until: Mutex<Option<Instant>>,
    pub(crate) early_after_429: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) entra: Monitor,
    pub(crate) api: Monitor,
    /// Requests take it shared, a `$batch` change set exclusively: a change set's
    /// writes and their rollback are never interleaved with other writes.
    pub(crate) transactions: tokio::sync::RwLock<()>,
    pub(crate) write_faults: Mutex<Vec<WriteFault>>,
    pub(crate) user_id: String,
    pub(crate) business_unit_id: String,
    pub(crate) organization_id: String,
}

/// A running simulated environment. Stops when dropped.
pub struct Dataverse {
    state: Arc<State>,
    _entra: Served,
    _api: Served,
    /// The authority host for the credential (`https://127.0.0.1:<port>`).
    pub authority: String,
    /// The environment URL (`https://127.0.0.1:<port>`).
    pub url: String,
    /// The test certificate both ports use, as a PEM file.
    pub cert_path: std::path::PathBuf,
    pub tenant_id: String,
    pub client_id: String,
}

/// Publishers (unique name, prefix), solutions (unique name), PublishXml calls, and
/// which solution each created component went into.
#[derive(Debug, Clone, Default)]
pub struct CustomizationReport {
    pub publishers: Vec<(String, String)>,
    pub solutions: Vec<String>,
    pub publish_calls: u64,
    pub components: Vec<(String, String)>,
}

/// Everything written, for tests and the demo.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub rows: Vec<Map<String, Value>>,
    pub annotations: Vec<Annotation>,
}

impl Dataverse {
    /// Starts Entra ID and Dataverse on loopback, with a certificate written to `dir`.
    pub async fn start(options: DataverseOptions, dir: &Path) -> Result<Self, String> {
        let cert = TestCertificate::generate(dir, "dataverse-sim")?;
        let mut tables = BTreeMap::new();
        if options.provisioned {
            let meta = TableMeta::from_definition(model::BT_SESSION_DEFINITION)?;
            tables.insert(
                meta.logical_name.clone(),
                Table {
                    meta,
                    rows: BTreeMap::new(),
                },
            );
        }
        let state = Arc::new(State {
            url: Mutex::new(String::new()),
            secret: Mutex::new(options.client_secret.clone()),
            secret_expired: Mutex::new(false),
            token_lifetime: Mutex::new(options.token_lifetime),
            tokens: Mutex::new(HashMap::new()),
            incidents: Mutex::new(BTreeMap::new()),
            tables: Mutex::new(tables),
            annotations: Mutex::new(Vec::new()),
            missing_privileges: Mutex::new(HashSet::new()),
            customizations: Mutex::new(metadata::Customizations::new()),
            limits: Mutex::new(options.limits),
            window: Mutex::new(VecDeque::new()),
            in_flight: AtomicU32::new(0),
            blocked_until: Mutex::new(None),
            early_after_429: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            entra: Monitor::default(),
            api: Monitor::default(),
            transactions: tokio::sync::RwLock::new(()),
            write_faults: Mutex::new(Vec::new()),
            user_id: random_guid(),
            business_unit_id: random_guid(),
            organization_id: random_guid(),
            options: options.clone(),
        });
        let entra = serve(
            entra::router(Arc::clone(&state)),
            options.entra_port,
            Listen::Tls(&cert),
        )
        .await?;
        let api = serve(
            webapi::router(Arc::clone(&state)),
            options.api_port,
            Listen::Tls(&cert),
        )
        .await?;
        let url = format!("https://127.0.0.1:{}", api.addr.port());
        *lock(&state.url) = url.clone();
        Ok(Self {
            authority: format!("https://127.0.0.1:{}", entra.addr.port()),
            url,
            cert_path: cert.cert_path.clone(),
            tenant_id: options.tenant_id.clone(),
            client_id: options.client_id.clone(),
            state,
            _entra: entra,
            _api: api,
        })
    }

    pub fn client_secret(&self) -> String {
        lock(&self.state.secret).clone()
    }

    /// Adds a case; returns its id.
    pub fn add_case(&self, ticketnumber: &str, title: &str) -> String {
        self.state.add_case(ticketnumber, title)
    }

    /// Rows of `bt_session` and every note.
    pub fn snapshot(&self) -> Snapshot {
        self.state.snapshot()
    }

    /// The row of one session, by its lsid.
    pub fn row(&self, lsid: &str) -> Option<Map<String, Value>> {
        self.snapshot()
            .rows
            .into_iter()
            .find(|r| r.get("bt_lsid").and_then(Value::as_str) == Some(lsid))
    }

    /// Calls per endpoint (`token`, `WhoAmI`, `incidents`, `bt_sessions`, `annotations`,
    /// `$batch`, ...); the operations inside a `$batch` count as `$batch/<endpoint>`.
    pub fn api_counts(&self) -> BTreeMap<String, u64> {
        self.state.api.counts()
    }

    /// Calls to one endpoint (a key of [`Dataverse::api_counts`]).
    pub fn api_count(&self, endpoint: &str) -> u64 {
        self.state.api.count(endpoint)
    }

    /// Forgets the call counts (Web API and Entra ID).
    pub fn reset_counts(&self) {
        self.state.api.reset_counts();
        self.state.entra.reset_counts();
    }

    /// Fails the writes that match (see [`WriteFault`]).
    pub fn fail_writes(&self, fault: WriteFault) {
        if fault.count != Some(0) {
            lock(&self.state.write_faults).push(fault);
        }
    }

    pub fn clear_write_faults(&self) {
        lock(&self.state.write_faults).clear();
    }

    pub fn token_requests(&self) -> u64 {
        self.state.entra.count("token")
    }

    pub fn arm(&self, rule: crate::common::FaultRule) {
        self.state.api.arm(rule);
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> u32 {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    pub fn set_limits(&self, limits: Limits) {
        *lock(&self.state.limits) = limits;
        lock(&self.state.window).clear();
    }

    /// How many requests came before a 429's Retry-After had passed, and how many 429s.
    pub fn throttle_report(&self) -> (u64, u64) {
        (
            self.state.early_after_429.load(Ordering::SeqCst),
            self.state.throttled.load(Ordering::SeqCst),
        )
    }

    /// Makes every issued token invalid (as after a credential change).
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.token_lifetime) = lifetime;
    }

    pub fn rotate_secret(&self, secret: &str) {
        *lock(&self.state.secret) = secret.to_owned();
    }

    pub fn expire_secret(&self, expired: bool) {
        *lock(&self.state.secret_expired) = expired;
    }

    /// Takes a privilege (e.g. `prvReadIncident`) away from the application user.
    pub fn revoke_privilege(&self, privilege: &str) {
        lock(&self.state.missing_privileges).insert(privilege.to_owned());
    }

    /// What provisioning left: publishers, solutions, publications, components.
    pub fn customizations(&self) -> CustomizationReport {
        let c = lock(&self.state.customizations);
        CustomizationReport {
            publishers: c
                .publishers
                .iter()
                .map(|p| (p.uniquename.clone(), p.customizationprefix.clone()))
                .collect(),
            solutions: c.solutions.iter().map(|s| s.uniquename.clone()).collect(),
            publish_calls: c.publish_calls,
            components: c.components.clone(),
        }
    }

    /// Gives a privilege back.
    pub fn restore_privilege(&self, privilege: &str) {
        lock(&self.state.missing_privileges).remove(privilege);
    }

    pub fn drop_table(&self, logical_name: &str) {
        lock(&self.state.tables).remove(logical_name);
    }

    /// The `bt_session` table's metadata, when it exists.
    pub fn table(&self, logical_name: &str) -> Option<TableMeta> {
        lock(&self.state.tables)
            .get(logical_name)
            .map(|t| t.meta.clone())
    }

    /// Changes one column's metadata (to simulate drift).
    pub fn alter_column(&self, table: &str, column: &str, f: impl FnOnce(&mut model::Column)) {
        if let Some(t) = lock(&self.state.tables).get_mut(table) {
            if let Some(c) = t.meta.columns.iter_mut().find(|c| c.logical_name == column) {
                f(c);
            }
        }
    }
}

impl State {
    pub(crate) fn add_case(&self, ticketnumber: &str, title: &str) -> String {
        let id = random_guid();
        lock(&self.incidents).insert(
            id.clone(),
            Incident {
                incidentid: id.clone(),
                ticketnumber: ticketnumber.to_owned(),
                title: title.to_owned(),
            },
        );
        id
    }

    /// The error of the first write fault matching a write to `path` with `body`.
    pub(crate) fn write_fault(&self, path: &str, body: &[u8]) -> Option<WriteFault> {
        let mut faults = lock(&self.write_faults);
        let text = String::from_utf8_lossy(body);
        let index = faults
            .iter()
            .position(|f| path.contains(&f.contains) || text.contains(&f.contains))?;
        let fault = faults[index].clone();
        if let Some(n) = faults[index].count.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                faults.remove(index);
            }
        }
        Some(fault)
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let rows = lock(&self.tables)
            .get("bt_session")
            .map(|t| t.rows.values().cloned().collect())
            .unwrap_or_default();
        Snapshot {
            rows,
            annotations: lock(&self.annotations).clone(),
        }
    }
}
