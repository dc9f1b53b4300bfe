//! Alerts, as the appliance sends them for its own outbound events ("Send Email
//! Alert After", "Resend Email Alerts"): once a problem has lasted
//! `alert_after_minutes`, an alert goes to each channel set (e-mail, webhook); it is
//! sent again every `alert_repeat_minutes` while the problem lasts, and an all-clear
//! follows when it ends.
//!
//! A problem is a configuration with failed events or with an event waiting longer
//! than `alert_after_minutes`, an enabled configuration that is not running, or a
//! plugin that did not load. What each channel was sent is stored (`alert_state`):
//! on a shared store one engine sends (the work lease `alerts`), and the engine that
//! takes over goes on where it stopped.

pub mod deliver;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::configurations::{Configuration, Configurations, FieldErrors, Status};
use crate::engine::health::{failed_events, not_running, waited};
use crate::engine::Engine;
pub use crate::store::alerts::Channel;
use crate::store::alerts::{self as stored, Sent};
use crate::store::{health, now_ms, Store, StoreError};
use deliver::{Kind, Notice};
use settings::{AlertSettings, RawSettings};

/// The work lease of the engine that sends the alerts.
const LEASE: &str = "alerts";
/// The longest and shortest pause between two looks.
const LOOK_MAX: Duration = Duration::from_secs(15);
const LOOK_MIN: Duration = Duration::from_secs(1);
/// A delivery that failed is tried again after this (or the repeat time, if shorter).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// A problem found now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub title: String,
    /// When it began (ms).
    pub since: i64,
    pub reasons: Vec<String>,
}

/// The timing from the settings, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub after: i64,
    pub repeat: i64,
    pub retry: i64,
}

impl Timing {
    fn of(settings: &AlertSettings) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            after: ms(settings.after),
            repeat: ms(settings.repeat),
            retry: ms(RETRY_AFTER.min(settings.repeat)),
        }
    }
}

/// What to do for one subject on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Send(Kind),
    /// Drop what was stored: the problem ended before any alert went out.
    Forget,
}

/// The step for one subject on one channel, from the problem found now (if any)
/// and what was sent so far (a pure function, tested as a table).
pub fn decide(problem: Option<&Problem>, sent: Option<&Sent>, now: i64, timing: Timing) -> Step {
    // After a failed delivery the next try waits.
    let may_try = sent.is_none_or(|s| {
        s.last_error.is_none() || s.tried_at.is_none_or(|t| now - t >= timing.retry)
    });
    match (problem, sent.and_then(|s| s.sent_at.map(|at| (s, at)))) {
        (Some(p), None) if now - p.since >= timing.after && may_try => Step::Send(Kind::Alert),
        (Some(_), Some((_, at))) if now - at >= timing.repeat && may_try => {
            Step::Send(Kind::Reminder)
        }
        (None, Some(_)) if may_try => Step::Send(Kind::AllClear),
        (None, None) if sent.is_some() => Step::Forget,
        _ => Step::Nothing,
    }
}

/// A configuration's problem, from its health (a pure function, tested as a table).
/// `not_running_since` is when the engine first saw it not running.
pub fn configuration_problem(
    title: String,
    health: &health::StoredHealth,
    oldest_failed_at: Option<i64>,
    status: &Status,
    not_running_since: i64,
    now: i64,
    after_ms: i64,
) -> Option<Problem> {
    let mut reasons = Vec::new();
    let mut since = Vec::new();
    if let Status::Failed(why) | Status::PluginNotLoaded(why) = status {
        reasons.push(not_running(why));
        since.push(not_running_since);
    }
    if health.failed > 0 {
        reasons.push(failed_events(health.failed));
        since.push(oldest_failed_at.unwrap_or(now));
    }
    if let Some(oldest) = health.oldest_waiting_at.filter(|t| now - t > after_ms) {
        reasons.push(format!(
            "an event has waited {} (since it arrived)",
            waited(now - oldest)
        ));
        since.push(oldest);
    }
    Some(Problem {
        title,
        since: since.into_iter().min()?,
        reasons,
    })
}

/// Why an alert channel could not be used, for the API.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("the alert settings are not valid")]
    Invalid(FieldErrors),
    #[error("no alert channel is set: give an SMTP server and recipients, or a webhook URL")]
    NoChannel,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    #[error(transparent)]
    Configurations(#[from] crate::configurations::ConfigError),
}

/// One channel's open alert, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OpenAlert {
    pub subject: String,
    pub channel: Channel,
    pub title: String,
    pub since: String,
    pub reasons: Vec<String>,
    pub sent_at: Option<String>,
    pub last_error: Option<String>,
}

/// The result of one delivery of the test alert.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub channel: Channel,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The stored settings document, as given (secrets in clear) and as parsed.
#[derive(Debug, Default)]
struct Loaded {
    document: Option<String>,
    raw: RawSettings,
    parsed: AlertSettings,
}

pub struct Alerter {
    store: Store,
    configurations: Arc<Configurations>,
    engine: Arc<Engine>,
    /// The settings as last read: the page's health uses `alert_after_minutes`.
    current: RwLock<Arc<Loaded>>,
    /// Saving the settings wakes the loop.
    changed: Notify,
    /// When this engine first saw each configuration not running (ms).
    not_running: Mutex<HashMap<i64, i64>>,
    started_at: i64,
    /// Named in every notice.
    engine_name: String,
    admin_url: String,
}

impl Alerter {
    pub fn new(
        store: Store,
        configurations: Arc<Configurations>,
        engine: Arc<Engine>,
        engine_name: String,
        admin_url: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            configurations,
            engine,
            current: RwLock::new(Arc::new(Loaded::default())),
            changed: Notify::new(),
            not_running: Mutex::new(HashMap::new()),
            started_at: now_ms(),
            engine_name,
            admin_url,
        })
    }

    /// Reads the stored settings, then looks for problems until the engine stops.
    pub async fn start(self: &Arc<Self>) {
        if let Err(e) = self.load().await {
            tracing::error!("cannot read the alert settings: {e}");
        }
        tokio::spawn(Arc::clone(self).run());
    }

    /// How long an event may wait before it is a problem (ms).
    pub fn after_ms(&self) -> i64 {
        Timing::of(&read(&self.current).parsed).after
    }

    /// The stored settings as given, and as parsed (defaults when they no longer
    /// parse: a key file replaced, an old document). Read at every look, since
    /// another engine may have saved new ones; unsealed and parsed again only when
    /// the document changed.
    async fn load(&self) -> Result<Arc<Loaded>, StoreError> {
        let document = self.store.read(stored::settings).await?;
        let current = Arc::clone(&read(&self.current));
        if current.document == document {
            return Ok(current);
        }
        let raw = match &document {
            Some(doc) => RawSettings::unseal(doc, self.configurations.secrets()),
            None => RawSettings::default(),
        };
        let parsed = raw.parse().unwrap_or_else(|errors| {
            tracing::error!(?errors, "the stored alert settings are not valid: no alerts are sent until they are saved again");
            AlertSettings::default()
        });
        let loaded = Arc::new(Loaded {
            document,
            raw,
            parsed,
        });
        *write(&self.current) = Arc::clone(&loaded);
        Ok(loaded)
    }

    /// The settings as the API shows them (secrets as `{"set": bool}`).
    pub async fn view(&self) -> Result<Map<String, Value>, StoreError> {
        Ok(self.load().await?.raw.view())
    }

    /// Applies an edit; answers what changed (secrets only as "changed") and the
    /// new view.
    pub async fn save(
        &self,
        input: &Map<String, Value>,
    ) -> Result<(Map<String, Value>, Map<String, Value>), AlertError> {
        let before = self.load().await?;
        let after = before.raw.edited(input);
        let parsed = after.parse().map_err(AlertError::Invalid)?;
        let document = after.seal(self.configurations.secrets())?;
        let saved = document.clone();
        self.store
            .call(move |conn| stored::save_settings(conn, &saved))
            .await?;
        let (changes, view) = (before.raw.changes(&after), after.view());
        *write(&self.current) = Arc::new(Loaded {
            document: Some(document),
            raw: after,
            parsed,
        });
        self.changed.notify_one();
        Ok((changes, view))
    }

    /// The alerts open now, per channel.
    pub async fn open(&self) -> Result<Vec<OpenAlert>, StoreError> {
        let sent = self.store.read(stored::sent).await?;
        Ok(sent
            .into_iter()
            .map(|s| OpenAlert {
                subject: s.subject,
                channel: s.channel,
                title: s.title,
                since: crate::admin::rfc3339(s.since),
                reasons: s.reasons,
                sent_at: s.sent_at.map(crate::admin::rfc3339),
                last_error: s.last_error,
            })
            .collect())
    }

    /// Sends a test alert through every channel set now, and says how each went.
    pub async fn send_test(&self) -> Result<Vec<Delivery>, AlertError> {
        let loaded = self.load().await?;
        let settings = &loaded.parsed;
        if !settings.sends() {
            return Err(AlertError::NoChannel);
        }
        let notice = self.notice(Kind::Test, "test".into(), "test alert".into(), vec![], None);
        let extra_roots = extra_roots(settings).await;
        let mut results = Vec::new();
        for channel in channels(settings) {
            let outcome = self
                .deliver(settings, extra_roots.as_deref(), channel, &notice)
                .await;
            results.push(Delivery {
                channel,
                ok: outcome.is_ok(),
                error: outcome.err(),
            });
        }
        Ok(results)
    }

    fn notice(
        &self,
        kind: Kind,
        subject: String,
        title: String,
        reasons: Vec<String>,
        since: Option<i64>,
    ) -> Notice {
        Notice {
            kind,
            subject,
            title,
            reasons,
            since,
            engine: self.engine_name.clone(),
            admin_url: self.admin_url.clone(),
            at: now_ms(),
        }
    }

    async fn deliver(
        &self,
        settings: &AlertSettings,
        extra_roots: Option<&str>,
        channel: Channel,
        notice: &Notice,
    ) -> Result<(), String> {
        let outcome = match (channel, &settings.email, &settings.webhook) {
            (Channel::Email, Some(email), _) => deliver::email(email, extra_roots, notice).await,
            (Channel::Webhook, _, Some(url)) => deliver::webhook(url, extra_roots, notice).await,
            _ => Err("the channel is no longer set".into()),
        };
        match &outcome {
            Ok(()) => tracing::info!(
                channel = channel.as_str(),
                kind = notice.kind.name(),
                subject = %notice.subject,
                "alert sent"
            ),
            Err(e) => tracing::warn!(
                channel = channel.as_str(),
                kind = notice.kind.name(),
                subject = %notice.subject,
                "alert not delivered: {e}"
            ),
        }
        outcome
    }

    async fn run(self: Arc<Self>) {
        loop {
            if self.engine.is_stopping() {
                return;
            }
            let pause = match self.round().await {
                Ok(pause) => pause,
                Err(e) => {
                    tracing::error!("cannot look for problems to alert about: {e}");
                    LOOK_MAX
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.changed.notified() => {}
            }
        }
    }

    /// One look: every problem against what was sent, and the deliveries due.
    /// Answers how long to wait before the next look.
    async fn round(&self) -> Result<Duration, AlertError> {
        let loaded = self.load().await?;
        let settings = &loaded.parsed;
        let timing = Timing::of(settings);
        let pause = (settings.after.min(settings.repeat) / 10).clamp(LOOK_MIN, LOOK_MAX);
        // Every engine follows which configurations are not running, so that the
        // one that takes the lease over knows since when; the rest only the sender.
        let configurations = self.enabled_configurations().await?;
        if !settings.sends() || !self.engine.hold(LEASE.to_owned()).await {
            return Ok(pause);
        }
        let problems = self.problems(configurations, timing.after).await?;
        let sent: BTreeMap<(String, Channel), Sent> = self
            .store
            .read(stored::sent)
            .await?
            .into_iter()
            .map(|s| ((s.subject.clone(), s.channel), s))
            .collect();
        let active = channels(settings);
        // What was stored for a channel no longer set cannot be cleared there.
        for (subject, channel) in sent.keys().filter(|(_, c)| !active.contains(c)) {
            let (subject, channel) = (subject.clone(), *channel);
            self.store
                .call(move |conn| stored::forget(conn, &subject, channel))
                .await?;
        }
        let subjects: BTreeSet<&String> =
            problems.keys().chain(sent.keys().map(|(s, _)| s)).collect();
        // Read when a delivery is due, once per look.
        let mut extra: Option<Option<String>> = None;
        for subject in subjects {
            let problem = problems.get(subject);
            for &channel in &active {
                let before = sent.get(&(subject.clone(), channel));
                match decide(problem, before, now_ms(), timing) {
                    Step::Nothing => {}
                    Step::Forget => {
                        let subject = subject.clone();
                        self.store
                            .call(move |conn| stored::forget(conn, &subject, channel))
                            .await?;
                    }
                    Step::Send(kind) => {
                        let (title, since, reasons) = match (problem, before) {
                            (Some(p), _) => (p.title.clone(), p.since, p.reasons.clone()),
                            (None, Some(s)) => (s.title.clone(), s.since, s.reasons.clone()),
                            (None, None) => continue,
                        };
                        let notice =
                            self.notice(kind, subject.clone(), title, reasons, Some(since));
                        if extra.is_none() {
                            extra = Some(extra_roots(settings).await);
                        }
                        let roots = extra.as_ref().and_then(Option::as_deref);
                        let outcome = self.deliver(settings, roots, channel, &notice).await;
                        self.record(notice, channel, before, outcome).await?;
                    }
                }
            }
        }
        Ok(pause)
    }

    /// Stores what `notice` did on `channel`: an all-clear delivered ends the
    /// subject's record there.
    async fn record(
        &self,
        notice: Notice,
        channel: Channel,
        before: Option<&Sent>,
        outcome: Result<(), String>,
    ) -> Result<(), StoreError> {
        let previous_sent = before.and_then(|s| s.sent_at);
        self.store
            .call(move |conn| match (notice.kind, outcome) {
                (Kind::AllClear, Ok(())) => stored::forget(conn, &notice.subject, channel),
                (_, outcome) => stored::put(
                    conn,
                    &Sent {
                        channel,
                        since: notice.since.unwrap_or(notice.at),
                        sent_at: if outcome.is_ok() {
                            Some(notice.at)
                        } else {
                            previous_sent
                        },
                        tried_at: Some(notice.at),
                        last_error: outcome.err(),
                        subject: notice.subject,
                        title: notice.title,
                        reasons: notice.reasons,
                    },
                ),
            })
            .await
    }

    /// The enabled configurations with their status, and when this engine first saw
    /// each of those not running.
    async fn enabled_configurations(
        &self,
    ) -> Result<Vec<(Configuration, Status, i64)>, AlertError> {
        let now = now_ms();
        let mut not_running = std::mem::take(&mut *lock(&self.not_running));
        let mut seen = HashMap::new();
        let mut enabled = Vec::new();
        for config in self.configurations.list().await? {
            if config.disabled {
                continue;
            }
            let status = self.configurations.status(config.id).await;
            let since = if matches!(status, Status::Failed(_) | Status::PluginNotLoaded(_)) {
                let first = not_running.remove(&config.id).unwrap_or(now);
                seen.insert(config.id, first);
                first
            } else {
                now
            };
            enabled.push((config, status, since));
        }
        *lock(&self.not_running) = seen;
        Ok(enabled)
    }

    /// Every problem found now, by subject.
    async fn problems(
        &self,
        configurations: Vec<(Configuration, Status, i64)>,
        after_ms: i64,
    ) -> Result<BTreeMap<String, Problem>, AlertError> {
        let mut problems = BTreeMap::new();
        let registry = self.configurations.registry();
        for entry in &registry.entries {
            if let crate::plugins::Verdict::Failed(why) = &entry.verdict {
                problems.insert(
                    format!("plugin:{}", entry.folder),
                    Problem {
                        title: format!("plugin folder {:?}", entry.folder),
                        since: self.started_at,
                        reasons: vec![format!("the plugin did not load: {why}")],
                    },
                );
            }
        }
        let now = now_ms();
        for (config, status, not_running_since) in configurations {
            let id = config.id;
            let (health, oldest_failed) = self
                .store
                .read(move |conn| Ok((health::of(conn, id)?, stored::oldest_failed_at(conn, id)?)))
                .await?;
            let title = format!("configuration {:?} ({})", config.name, config.plugin);
            if let Some(problem) = configuration_problem(
                title,
                &health,
                oldest_failed,
                &status,
                not_running_since,
                now,
                after_ms,
            ) {
                problems.insert(format!("configuration:{id}"), problem);
            }
        }
        Ok(problems)
    }
}

fn channels(settings: &AlertSettings) -> Vec<Channel> {
    let mut channels = Vec::new();
    if settings.email.is_some() {
        channels.push(Channel::Email);
    }
    if settings.webhook.is_some() {
        channels.push(Channel::Webhook);
    }
    channels
}

/// The extra trusted CA file's text; a file that cannot be read is logged and
/// left out (the delivery then says the certificate is not trusted).
async fn extra_roots(settings: &AlertSettings) -> Option<String> {
    let path = settings.ca_file.clone()?;
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(path)).await
    };
    match read.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::error!(path = %path.display(), "alerts: cannot read the extra trusted CA file: {e}");
            None
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::health::StoredHealth;

    const T: Timing = Timing {
        after: 1_000,
        repeat: 10_000,
        retry: 3_000,
    };

    fn problem(since: i64) -> Problem {
        Problem {
            title: "c".into(),
            since,
            reasons: vec!["1 event failed".into()],
        }
    }

    fn sent(sent_at: Option<i64>, tried_at: i64, error: bool) -> Sent {
        Sent {
            subject: "configuration:1".into(),
            channel: Channel::Email,
            title: "c".into(),
            since: 0,
            reasons: vec![],
            sent_at,
            tried_at: Some(tried_at),
            last_error: error.then(|| "refused".into()),
        }
    }

    #[test]
    fn when_alerts_reminders_and_all_clears_go_out() {
        type Case = (&'static str, Option<Problem>, Option<Sent>, i64, Step);
        let cases: Vec<Case> = vec![
            ("all well", None, None, 50_000, Step::Nothing),
            (
                "a problem younger than the delay waits",
                Some(problem(0)),
                None,
                999,
                Step::Nothing,
            ),
            (
                "the delay reached: alert",
                Some(problem(0)),
                None,
                1_000,
                Step::Send(Kind::Alert),
            ),
            (
                "alerted, within the repeat time",
                Some(problem(0)),
                Some(sent(Some(1_000), 1_000, false)),
                10_999,
                Step::Nothing,
            ),
            (
                "the repeat time reached: reminder",
                Some(problem(0)),
                Some(sent(Some(1_000), 1_000, false)),
                11_000,
                Step::Send(Kind::Reminder),
            ),
            (
                "ended after an alert: all clear",
                None,
                Some(sent(Some(1_000), 1_000, false)),
                2_000,
                Step::Send(Kind::AllClear),
            ),
            (
                "ended before any alert went out: forget",
                None,
                Some(sent(None, 1_000, true)),
                1_500,
                Step::Forget,
            ),
            (
                "the first alert failed: wait to retry",
                Some(problem(0)),
                Some(sent(None, 1_000, true)),
                3_999,
                Step::Nothing,
            ),
            (
                "the first alert failed: retry",
                Some(problem(0)),
                Some(sent(None, 1_000, true)),
                4_000,
                Step::Send(Kind::Alert),
            ),
            (
                "a reminder failed: wait to retry",
                Some(problem(0)),
                Some(sent(Some(1_000), 11_000, true)),
                13_999,
                Step::Nothing,
            ),
            (
                "a reminder failed: retry",
                Some(problem(0)),
                Some(sent(Some(1_000), 11_000, true)),
                14_000,
                Step::Send(Kind::Reminder),
            ),
            (
                "an all clear failed: wait to retry",
                None,
                Some(sent(Some(1_000), 2_000, true)),
                4_999,
                Step::Nothing,
            ),
            (
                "an all clear failed: retry",
                None,
                Some(sent(Some(1_000), 2_000, true)),
                5_000,
                Step::Send(Kind::AllClear),
            ),
        ];
        for (what, problem, sent, now, expected) in cases {
            assert_eq!(
                decide(problem.as_ref(), sent.as_ref(), now, T),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn what_makes_a_configuration_a_problem() {
        let now = 100_000;
        let after = 15_000;
        let calm = StoredHealth {
            pending: 2,
            oldest_waiting_at: Some(now - 10_000),
            ..StoredHealth::default()
        };
        let failing = StoredHealth {
            failed: 3,
            ..calm.clone()
        };
        let stuck = StoredHealth {
            oldest_waiting_at: Some(now - 20_000),
            ..calm.clone()
        };
        type Case = (
            &'static str,
            StoredHealth,
            Option<i64>,
            Status,
            Option<(i64, Vec<&'static str>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "waiting within the delay",
                calm.clone(),
                None,
                Status::Running,
                None,
            ),
            ("disabled", calm.clone(), None, Status::Disabled, None),
            (
                "failed events: since the oldest arrived",
                failing,
                Some(now - 50_000),
                Status::Running,
                Some((now - 50_000, vec!["3 events failed"])),
            ),
            (
                "an event waiting longer than the delay",
                stuck,
                None,
                Status::Running,
                Some((
                    now - 20_000,
                    vec!["an event has waited 20 seconds (since it arrived)"],
                )),
            ),
            (
                "not running: since first seen",
                calm,
                None,
                Status::Failed("the token was refused".into()),
                Some((now - 5_000, vec!["not running: the token was refused"])),
            ),
        ];
        for (what, health, oldest_failed, status, expected) in cases {
            let found = configuration_problem(
                "c".into(),
                &health,
                oldest_failed,
                &status,
                now - 5_000,
                now,
                after,
            )
            .map(|p| (p.since, p.reasons));
            let expected = expected.map(|(since, reasons)| {
                (
                    since,
                    reasons.into_iter().map(String::from).collect::<Vec<_>>(),
                )
            });
            assert_eq!(found, expected, "{what}");
        }
    }
}
