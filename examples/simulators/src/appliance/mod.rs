//! A BeyondTrust Remote Support B Series appliance: OAuth client credentials (at most
//! 30 valid tokens per client), the reporting API, `get_api_info`, outbound events to
//! HTTP recipients (strictly in order, the head re-sent until it gets a 200), and a
//! control API (`/control/...`) for tests and the demo.

pub mod model;
mod outbound;
pub mod report;
mod routes;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{lock, now, random_hex, serve, Listen, Monitor, Served};
use crate::tls::TestCertificate;
use model::{Session, SessionSpec, SurveyAnswer};
pub use outbound::Delivery;

/// At most this many valid tokens per API account; the oldest is invalidated beyond.
pub const MAX_TOKENS_PER_CLIENT: usize = 30;

#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    pub client_id: String,
    pub client_secret: String,
    pub token_lifetime: Duration,
    /// Serve HTTPS with a test certificate (default), or plain HTTP.
    pub tls: bool,
    /// Answer in the older Bomgar namespace.
    pub old_namespace: bool,
    /// How long the appliance waits before sending a refused event again.
    pub retry_interval: Duration,
    pub port: u16,
}

impl Default for ApplianceOptions {
    fn default() -> Self {
        Self {
            client_id: "c0ffee0123456789abcdef0123456789".into(),
            client_secret: "sim-appliance-secret-0123456789abcdef".into(),
            token_lifetime: Duration::from_secs(3600),
            tls: true,
            old_namespace: false,
            retry_interval: Duration::from_millis(500),
            port: 0,
        }
    }
}

pub(crate) struct Client {
    secret: String,
    /// Oldest first.
    tokens: VecDeque<(String, Instant)>,
    reporting_allowed: bool,
}

pub(crate) struct State {
    pub(crate) options: ApplianceOptions,
    pub(crate) host: Mutex<String>,
    pub(crate) clients: Mutex<HashMap<String, Client>>,
    pub(crate) token_lifetime: Mutex<Duration>,
    pub(crate) sessions: Mutex<BTreeMap<String, Session>>,
    pub(crate) next_lseq: Mutex<u64>,
    pub(crate) old_namespace: Mutex<bool>,
    pub(crate) monitor: Monitor,
    pub(crate) delivery: Delivery,
    /// The parameters of the last reporting call (to check the locale sent).
    pub(crate) last_reporting_params: Mutex<HashMap<String, String>>,
    /// The appliance's own id, sent as the `appliance_id` form field.
    pub(crate) appliance_guid: String,
}

/// A running simulated appliance. Stops when dropped.
pub struct Appliance {
    state: Arc<State>,
    _server: Served,
    /// `127.0.0.1:<port>`: what goes in a configuration's host name.
    pub host: String,
    /// `https://127.0.0.1:<port>` (or `http://` when plain).
    pub base_url: String,
    /// The test certificate, when serving HTTPS.
    pub cert_path: Option<std::path::PathBuf>,
    pub client_id: String,
}

impl Appliance {
    pub async fn start(options: ApplianceOptions, dir: &Path) -> Result<Self, String> {
        let mut clients = HashMap::new();
        clients.insert(
            options.client_id.clone(),
            Client {
                secret: options.client_secret.clone(),
                tokens: VecDeque::new(),
                reporting_allowed: true,
            },
        );
        let state = Arc::new(State {
            host: Mutex::new(String::new()),
            clients: Mutex::new(clients),
            token_lifetime: Mutex::new(options.token_lifetime),
            sessions: Mutex::new(BTreeMap::new()),
            next_lseq: Mutex::new(1),
            old_namespace: Mutex::new(options.old_namespace),
            monitor: Monitor::default(),
            delivery: Delivery::new(options.retry_interval),
            last_reporting_params: Mutex::new(HashMap::new()),
            appliance_guid: random_hex(16),
            options: options.clone(),
        });
        let router = routes::router(Arc::clone(&state));
        let (server, cert_path) = if options.tls {
            let cert = TestCertificate::generate(dir, "appliance-sim")?;
            (
                serve(router, options.port, Listen::Tls(&cert)).await?,
                Some(cert.cert_path.clone()),
            )
        } else {
            (serve(router, options.port, Listen::Plain).await?, None)
        };
        let host = format!("127.0.0.1:{}", server.addr.port());
        *lock(&state.host) = host.clone();
        let scheme = if options.tls { "https" } else { "http" };
        Ok(Self {
            base_url: format!("{scheme}://{host}"),
            host,
            cert_path,
            client_id: options.client_id.clone(),
            state,
            _server: server,
        })
    }

    pub fn client_secret(&self) -> String {
        lock(&self.state.clients)
            .get(&self.client_id)
            .map(|c| c.secret.clone())
            .unwrap_or_default()
    }

    /// Creates a session (running until [`Appliance::end_session`]); returns its lsid.
    pub fn create_session(&self, spec: SessionSpec) -> String {
        self.state.create_session(spec)
    }

    /// Ends a session (at `end_time`, or now) and sends `support_conference_end`.
    pub fn end_session(&self, lsid: &str, end_time: Option<i64>) -> Result<(), String> {
        self.state.end_session(lsid, end_time)
    }

    /// Records a customer exit survey and sends its event.
    pub fn submit_customer_survey(
        &self,
        lsid: &str,
        answers: Vec<SurveyAnswer>,
    ) -> Result<(), String> {
        self.state.submit_survey(lsid, answers, false)
    }

    pub fn submit_rep_survey(&self, lsid: &str, answers: Vec<SurveyAnswer>) -> Result<(), String> {
        self.state.submit_survey(lsid, answers, true)
    }

    /// Sends outbound events to `url` (e.g. the engine's `/ERSPost?appliance=...`).
    pub fn add_recipient(&self, url: &str) {
        self.state.delivery.add_recipient(url);
    }

    /// Calls per endpoint: `token`, `reporting`, `command`, and per report type
    /// `reporting:<generate_report>` (e.g. `reporting:SupportSessionListing`).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.monitor.counts()
    }

    /// Calls to one endpoint or report type (a key of [`Appliance::counts`]).
    pub fn count(&self, endpoint: &str) -> u64 {
        self.state.monitor.count(endpoint)
    }

    pub fn reset_counts(&self) {
        self.state.monitor.reset_counts();
    }

    pub fn arm(&self, rule: crate::common::FaultRule) {
        self.state.monitor.arm(rule);
    }

    /// Regenerates the client secret: every token of the client becomes invalid.
    pub fn rotate_secret(&self, secret: &str) {
        self.state.with_client(|c| {
            c.secret = secret.to_owned();
            c.tokens.clear();
        });
    }

    /// Invalidates every token of the client, its secret unchanged (as when other
    /// programs using the same API account push its tokens past the 30 kept).
    pub fn revoke_tokens(&self) {
        self.state.with_client(|c| c.tokens.clear());
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.token_lifetime) = lifetime;
    }

    pub fn set_reporting_allowed(&self, allowed: bool) {
        self.state.with_client(|c| c.reporting_allowed = allowed);
    }

    pub fn set_old_namespace(&self, old: bool) {
        *lock(&self.state.old_namespace) = old;
    }

    /// Valid tokens the client holds now.
    pub fn valid_tokens(&self) -> usize {
        lock(&self.state.clients)
            .get(&self.client_id)
            .map_or(0, |c| {
                c.tokens
                    .iter()
                    .filter(|(_, exp)| *exp > Instant::now())
                    .count()
            })
    }

    /// Events delivered (got a 200), and delivery attempts, per recipient.
    pub fn deliveries(&self) -> Vec<outbound::RecipientReport> {
        self.state.delivery.report()
    }

    /// The parameters of the last reporting call.
    pub fn last_reporting_params(&self) -> HashMap<String, String> {
        lock(&self.state.last_reporting_params).clone()
    }

    pub fn session(&self, lsid: &str) -> Option<Session> {
        lock(&self.state.sessions).get(lsid).cloned()
    }
}

impl State {
    /// Changes the configured API account (the one the simulator serves).
    pub(crate) fn with_client(&self, f: impl FnOnce(&mut Client)) {
        if let Some(c) = lock(&self.clients).get_mut(&self.options.client_id) {
            f(c);
        }
    }

    pub(crate) fn namespace(&self) -> &'static str {
        if *lock(&self.old_namespace) {
            report::OLD_NAMESPACE
        } else {
            report::NAMESPACE
        }
    }

    pub(crate) fn create_session(&self, spec: SessionSpec) -> String {
        let lsid = spec.lsid.clone().unwrap_or_else(|| random_hex(16));
        let lseq = {
            let mut next = lock(&self.next_lseq);
            let n = *next;
            *next += 1;
            n
        };
        let session = Session {
            lsid: lsid.clone(),
            lseq,
            start_time: spec.start_time.unwrap_or_else(now),
            end_time: None,
            report_visible_from_ms: None,
            customer_survey: None,
            rep_survey: None,
            spec,
        };
        lock(&self.sessions).insert(lsid.clone(), session);
        lsid
    }

    fn event_form(&self, event: &str, session: &Session, timestamp: i64) -> Vec<(String, String)> {
        let mut form = vec![
            ("event".to_owned(), event.to_owned()),
            ("version".to_owned(), "3".to_owned()),
            ("timestamp".to_owned(), timestamp.to_string()),
            ("appliance_id".to_owned(), self.appliance_guid.clone()),
            ("lsid".to_owned(), session.lsid.clone()),
        ];
        if let Some(key) = &session.spec.external_key {
            form.push(("external_key".to_owned(), key.clone()));
        }
        form
    }

    pub(crate) fn end_session(&self, lsid: &str, end_time: Option<i64>) -> Result<(), String> {
        let form = {
            let mut sessions = lock(&self.sessions);
            let session = sessions
                .get_mut(lsid)
                .ok_or_else(|| format!("no session {lsid}"))?;
            let end = end_time.unwrap_or_else(now).max(session.start_time);
            session.end_time = Some(end);
            let delay_ms = (session.spec.report_delay_seconds * 1000.0) as i64;
            session.report_visible_from_ms = Some(chrono::Utc::now().timestamp_millis() + delay_ms);
            self.event_form("support_conference_end", session, end)
        };
        self.delivery.send(form);
        Ok(())
    }

    pub(crate) fn submit_survey(
        &self,
        lsid: &str,
        answers: Vec<SurveyAnswer>,
        rep: bool,
    ) -> Result<(), String> {
        let form = {
            let mut sessions = lock(&self.sessions);
            let session = sessions
                .get_mut(lsid)
                .ok_or_else(|| format!("no session {lsid}"))?;
            let event = if rep {
                session.rep_survey = Some(answers);
                "support_conference_rep_exit_survey_completed"
            } else {
                session.customer_survey = Some(answers);
                "support_conference_customer_exit_survey_completed"
            };
            self.event_form(event, session, now())
        };
        self.delivery.send(form);
        Ok(())
    }
}
