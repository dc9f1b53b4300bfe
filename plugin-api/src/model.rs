//! The values that cross between host and plugin, as plain serde types.
//!
//! They travel as JSON, so a field added later with `#[serde(default)]` does not
//! break plugins built against an older plugin-api.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A configuration's validated settings, keyed by setting key.
///
/// The host validates settings against the plugin's declarations before it opens an
/// instance, so the accessors here only convert; a missing optional value reads as
/// its declared default, which the host fills in.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub serde_json::Map<String, Value>);

/// Names the settings, never their values: secrets are among them, and a settings
/// value printed by accident must not leak one.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A text, secret or choice setting; empty text reads as `None`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn bool(&self, key: &str) -> bool {
        self.0.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        self.0.get(key).and_then(Value::as_i64)
    }

    /// A multi-choice setting; anything else reads as empty.
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.to_owned(), value.into());
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// Posted by the appliance to the host's event address.
    Outbound,
    /// Found by the plugin when the host asked it to poll.
    Polling,
    /// Queued by the host's reconciliation: the session ended on the appliance but its
    /// event never reached this configuration.
    Reconcile,
    /// Imported on demand, for a date range an admin asked for.
    Backfill,
}

/// One appliance event as handed to a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The host's id of this event (stable across retries).
    pub id: i64,
    pub source: EventSource,
    /// The BeyondTrust event name, e.g. `support_conference_end`.
    pub event_type: String,
    /// The Appliance Id the event arrived for.
    pub appliance_id: String,
    /// Unix seconds when the event originated on the appliance.
    pub timestamp: i64,
    /// The session's id, for session events.
    pub lsid: Option<String>,
    /// Every form field as the appliance sent it (or as the plugin found it when polling).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// 1 on the first attempt, 2 on the first retry, and so on.
    #[serde(default = "one")]
    pub attempt: u32,
}

fn one() -> u32 {
    1
}

/// How a plugin finished with an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The event was processed; `detail` says what was done, for the history.
    Done { detail: String },
    /// The event needs nothing done, for the reason given (e.g. no matching case).
    Skipped { reason: String },
}

/// What the host asks when it polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The cursor the plugin returned last time, or `None` on the first poll.
    pub cursor: Option<Value>,
    /// On the first poll: Unix seconds from which to look (when the configuration was
    /// created), so that no history is imported by default.
    pub since: i64,
    /// The polling event types the configuration selected.
    pub event_types: Vec<String>,
}

/// What a poll found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollResult {
    pub events: Vec<PolledEvent>,
    /// The cursor to store with the events, in the same transaction.
    pub cursor: Value,
}

/// An event found by polling; the host gives it an id and queues it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolledEvent {
    pub event_type: String,
    pub timestamp: i64,
    pub lsid: Option<String>,
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

/// What the host asks for reconciliation and backfill: the sessions that ended at or
/// after `since` and before `until` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedSessionsRequest {
    pub since: i64,
    pub until: i64,
}

/// The sessions that ended in a window, as one cheap listing call finds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedSessions {
    pub sessions: Vec<EndedSession>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedSession {
    pub lsid: String,
    /// Unix seconds when the session ended.
    pub ended_at: i64,
}

/// The result of a configuration's test: one check per piece an admin can fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    pub checks: Vec<Check>,
}

impl TestReport {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn push(&mut self, name: impl Into<String>, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.checks.push(Check {
            name: name.into(),
            ok,
            detail,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A message about one setting, shown next to its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub key: String,
    pub message: String,
}

impl FieldError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Faults as one line, `key: message; key: message`, for a log or an error.
    pub fn summary(faults: &[Self]) -> String {
        faults
            .iter()
            .map(|f| format!("{}: {}", f.key, f.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the host should do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A passing failure (timeout, 5xx, data not there yet): worth another attempt.
    Retryable,
    /// The remote side asks us to slow down: pause this configuration's whole queue
    /// for `retry_after`, then try again.
    Throttled,
    /// The configuration is wrong (credentials, URL, permissions): an admin must act.
    Configuration,
    /// This event can never succeed as it is.
    Permanent,
    /// The plugin panicked; the panic was caught at the boundary.
    Panicked,
    /// The call took longer than the host's time limit (set by the host only).
    TimedOut,
}

impl ErrorKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Retryable => 1,
            Self::Throttled => 2,
            Self::Configuration => 3,
            Self::Permanent => 4,
            Self::Panicked => 5,
            Self::TimedOut => 6,
        }
    }

    /// Unknown codes (from a newer plugin) read as permanent: the host never retries
    /// what it does not understand.
    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Retryable,
            2 => Self::Throttled,
            3 => Self::Configuration,
            5 => Self::Panicked,
            6 => Self::TimedOut,
            _ => Self::Permanent,
        }
    }

    /// Whether another attempt could succeed without anyone changing anything.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Retryable | Self::Throttled | Self::TimedOut)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Retryable => "retryable",
            Self::Throttled => "throttled",
            Self::Configuration => "configuration",
            Self::Permanent => "permanent",
            Self::Panicked => "panicked",
            Self::TimedOut => "timed out",
        })
    }
}

/// A failed plugin call, typed so the host knows whether and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: String,
    /// Not before this delay (e.g. from a `Retry-After` header).
    pub retry_after: Option<Duration>,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, message)
    }

    pub fn throttled(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(ErrorKind::Throttled, message).retry_after(retry_after)
    }

    pub fn configuration(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Configuration, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    /// Asks the host not to try again before `delay`.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// Severity of a log record a plugin sends to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
            Self::Debug => 4,
            Self::Trace => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Error,
            2 => Self::Warn,
            3 => Self::Info,
            4 => Self::Debug,
            _ => Self::Trace,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn debug_output_names_settings_but_shows_no_value() {
        let mut s = Settings::default();
        s.set("bt_client_secret", "hunter2-very-secret");
        let printed = format!("{s:?}");
        assert!(printed.contains("bt_client_secret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    use super::*;

    #[test]
    fn error_kind_codes_round_trip_and_unknown_is_permanent() {
        for kind in [
            ErrorKind::Retryable,
            ErrorKind::Throttled,
            ErrorKind::Configuration,
            ErrorKind::Permanent,
            ErrorKind::Panicked,
            ErrorKind::TimedOut,
        ] {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
        assert_eq!(ErrorKind::from_code(200), ErrorKind::Permanent);
    }

    #[test]
    fn settings_accessors_read_declared_types() {
        let settings: Settings = serde_json::from_value(serde_json::json!({
            "host": "bt.example.com", "empty": "", "flag": true, "n": 30,
            "types": ["support_conference_end"]
        }))
        .expect("settings json");
        assert_eq!(settings.str("host"), Some("bt.example.com"));
        assert_eq!(settings.str("empty"), None);
        assert!(settings.bool("flag"));
        assert!(!settings.bool("missing"));
        assert_eq!(settings.int("n"), Some(30));
        assert_eq!(settings.list("types"), vec!["support_conference_end"]);
        assert!(settings.list("host").is_empty());
    }

    #[test]
    fn test_report_is_ok_only_when_every_check_passed() {
        let mut report = TestReport::default();
        assert!(!report.ok(), "a report without checks proves nothing");
        report.push("a", Ok("fine".into()));
        assert!(report.ok());
        report.push("b", Err("broken".into()));
        assert!(!report.ok());
    }

    #[test]
    fn event_without_attempt_defaults_to_first() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "id": 1, "source": "outbound", "event_type": "support_conference_end",
            "appliance_id": "Default", "timestamp": 1, "lsid": null
        }))
        .expect("event json");
        assert_eq!(event.attempt, 1);
        assert!(event.fields.is_empty());
    }
}
