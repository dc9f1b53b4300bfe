//! Where alerts go and when, as the admin sets them on the page or through
//! `PUT /api/alerts`. Each setting is declared once in [`FIELDS`] (the page draws
//! its form from the list, the API documents itself with it) and parsed once into
//! the trusted [`AlertSettings`]. Stored as one JSON document whose two secrets,
//! the SMTP password and the webhook URL, are sealed with the engine's key.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::configurations::FieldErrors;
use crate::secrets::{SecretBox, SecretsError};
use crate::settings::SecretString;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    Text,
    Number,
    Choice,
    Secret,
}

/// One alert setting, as the page shows it.
#[derive(Debug, Serialize)]
pub struct Field {
    pub key: &'static str,
    /// The part of the form it is in.
    pub section: &'static str,
    pub label: &'static str,
    pub kind: FieldKind,
    pub help: &'static str,
    /// Shown as the placeholder; what an empty value means.
    pub default: &'static str,
    /// The choices of a `choice`.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub choices: &'static [&'static str],
}

const fn field(
    section: &'static str,
    key: &'static str,
    label: &'static str,
    kind: FieldKind,
    help: &'static str,
    default: &'static str,
) -> Field {
    Field {
        key,
        section,
        label,
        kind,
        help,
        default,
        choices: &[],
    }
}

pub const ALERT_AFTER: &str = "alert_after_minutes";
pub const ALERT_REPEAT: &str = "alert_repeat_minutes";
const SMTP_HOST: &str = "smtp_host";
const SMTP_PORT: &str = "smtp_port";
const SMTP_TLS: &str = "smtp_tls";
const SMTP_USER: &str = "smtp_user";
pub const SMTP_PASSWORD: &str = "smtp_password";
const MAIL_FROM: &str = "mail_from";
const MAIL_TO: &str = "mail_to";
pub const WEBHOOK_URL: &str = "webhook_url";
const CA_FILE: &str = "ca_file";

/// Every alert setting, in the page's order.
pub const FIELDS: &[Field] = &[
    field(
        "When",
        ALERT_AFTER,
        "Send alert after (minutes)",
        FieldKind::Number,
        "An alert goes out once a problem has lasted this long: an event failed or waiting (counted from its arrival), a configuration not running, a plugin not loaded. Fractions are allowed.",
        "15",
    ),
    field(
        "When",
        ALERT_REPEAT,
        "Resend alerts every (minutes)",
        FieldKind::Number,
        "While the problem lasts the alert is sent again this often; an all-clear follows when it ends.",
        "60",
    ),
    field(
        "E-mail",
        SMTP_HOST,
        "SMTP server",
        FieldKind::Text,
        "The mail server's host name. Leave empty to send no e-mail.",
        "",
    ),
    Field {
        choices: &["starttls", "implicit", "none"],
        ..field(
            "E-mail",
            SMTP_TLS,
            "SMTP security",
            FieldKind::Choice,
            "starttls: plain connection upgraded with STARTTLS (port 587); implicit: TLS from the first byte (port 465); none: no encryption, for a relay on this machine only (no password).",
            "starttls",
        )
    },
    field(
        "E-mail",
        SMTP_PORT,
        "SMTP port",
        FieldKind::Number,
        "Empty: 587 for starttls, 465 for implicit, 25 for none.",
        "",
    ),
    field(
        "E-mail",
        SMTP_USER,
        "SMTP user",
        FieldKind::Text,
        "Leave empty when the server takes mail without signing in.",
        "",
    ),
    field(
        "E-mail",
        SMTP_PASSWORD,
        "SMTP password",
        FieldKind::Secret,
        "Kept sealed; never shown again.",
        "",
    ),
    field(
        "E-mail",
        MAIL_FROM,
        "From",
        FieldKind::Text,
        "The sender's address, e.g. Middleware engine <engine@example.com>.",
        "",
    ),
    field(
        "E-mail",
        MAIL_TO,
        "To",
        FieldKind::Text,
        "One or more addresses, separated by commas.",
        "",
    ),
    field(
        "Webhook",
        WEBHOOK_URL,
        "Webhook URL",
        FieldKind::Secret,
        "Each alert is POSTed there as JSON. Kept as a secret (such URLs often hold a token). Leave empty to call no webhook.",
        "",
    ),
    field(
        "Trust",
        CA_FILE,
        "Extra trusted CA file",
        FieldKind::Text,
        "A PEM file of certificate authorities trusted besides the system's, for a mail server or webhook with a private CA.",
        "",
    ),
];

const DEFAULT_AFTER_MINUTES: f64 = 15.0;
const DEFAULT_REPEAT_MINUTES: f64 = 60.0;
/// A week: longer delays are typing errors.
const MAX_MINUTES: f64 = 7.0 * 24.0 * 60.0;
const MAX_TEXT: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Implicit,
    None,
}

impl SmtpTls {
    fn default_port(self) -> u16 {
        match self {
            Self::StartTls => 587,
            Self::Implicit => 465,
            Self::None => 25,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, SecretString)>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
}

/// The alert settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    pub after: Duration,
    pub repeat: Duration,
    pub email: Option<EmailSettings>,
    pub webhook: Option<SecretString>,
    pub ca_file: Option<PathBuf>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            after: minutes(DEFAULT_AFTER_MINUTES),
            repeat: minutes(DEFAULT_REPEAT_MINUTES),
            email: None,
            webhook: None,
            ca_file: None,
        }
    }
}

impl AlertSettings {
    /// Whether any channel is set.
    pub fn sends(&self) -> bool {
        self.email.is_some() || self.webhook.is_some()
    }
}

fn minutes(m: f64) -> Duration {
    Duration::from_secs_f64(m * 60.0)
}

/// The settings as given (secrets in clear): what the page edits.
#[derive(Clone, Default, PartialEq)]
pub struct RawSettings(pub Map<String, Value>);

impl std::fmt::Debug for RawSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

fn text<'a>(raw: &'a Map<String, Value>, key: &str) -> &'a str {
    raw.get(key).and_then(Value::as_str).map_or("", str::trim)
}

/// A number given as a JSON number or as text; empty means the default.
fn number(raw: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| "must be a number".into()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("must be a number, not {s:?}")),
        Some(_) => Err("must be a number".into()),
    }
}

fn parse_minutes(raw: &Map<String, Value>, key: &str, default: f64) -> Result<Duration, String> {
    let m = number(raw, key)?.unwrap_or(default);
    if !m.is_finite() || m <= 0.0 || m > MAX_MINUTES {
        return Err(format!(
            "must be more than 0 and at most {MAX_MINUTES} minutes (a week)"
        ));
    }
    Ok(minutes(m))
}

fn parse_mailbox(text: &str) -> Result<Mailbox, String> {
    text.parse::<Mailbox>()
        .map_err(|e| format!("{text:?} is not an e-mail address ({e})"))
}

impl RawSettings {
    /// Checks every setting: all the errors at once, per setting.
    pub fn parse(&self) -> Result<AlertSettings, FieldErrors> {
        let raw = &self.0;
        let mut errors = FieldErrors::new();
        for (key, value) in raw {
            if !FIELDS.iter().any(|f| f.key == key) {
                errors.insert(
                    key.clone(),
                    format!(
                        "unknown alert setting; the settings are {}",
                        FIELDS.iter().map(|f| f.key).collect::<Vec<_>>().join(", ")
                    ),
                );
            } else if !matches!(value, Value::String(_) | Value::Number(_) | Value::Null) {
                errors.insert(key.clone(), "must be text or a number".into());
            } else if value.as_str().is_some_and(|s| s.len() > MAX_TEXT) {
                errors.insert(key.clone(), format!("must be at most {MAX_TEXT} bytes"));
            }
        }
        let mut settings = AlertSettings::default();
        match parse_minutes(raw, ALERT_AFTER, DEFAULT_AFTER_MINUTES) {
            Ok(d) => settings.after = d,
            Err(e) => {
                errors.insert(ALERT_AFTER.into(), e);
            }
        }
        match parse_minutes(raw, ALERT_REPEAT, DEFAULT_REPEAT_MINUTES) {
            Ok(d) => settings.repeat = d,
            Err(e) => {
                errors.insert(ALERT_REPEAT.into(), e);
            }
        }
        let ca = text(raw, CA_FILE);
        if !ca.is_empty() {
            let path = PathBuf::from(ca);
            if path.is_relative() {
                errors.insert(CA_FILE.into(), "must be an absolute path".into());
            } else {
                settings.ca_file = Some(path);
            }
        }
        settings.email = self.parse_email(&mut errors);
        let url = text(raw, WEBHOOK_URL);
        if !url.is_empty() {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    settings.webhook = Some(SecretString::new(url.to_owned()));
                }
                // The URL is a secret: the error must not repeat it.
                _ => {
                    errors.insert(
                        WEBHOOK_URL.into(),
                        "must be an http:// or https:// URL with a host".into(),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }

    /// The e-mail settings, when an SMTP server is given; their mistakes go to `errors`.
    fn parse_email(&self, errors: &mut FieldErrors) -> Option<EmailSettings> {
        let raw = &self.0;
        let host = text(raw, SMTP_HOST);
        let (from, to) = (text(raw, MAIL_FROM), text(raw, MAIL_TO));
        let (user, password) = (text(raw, SMTP_USER), text(raw, SMTP_PASSWORD));
        if host.is_empty() {
            for (key, given) in [(MAIL_FROM, from), (MAIL_TO, to), (SMTP_USER, user)] {
                if !given.is_empty() {
                    errors.insert(
                        SMTP_HOST.into(),
                        format!("is required to send e-mail (the {key} setting is given)"),
                    );
                }
            }
            return None;
        }
        if host.contains(|c: char| c.is_whitespace() || c == '/') {
            errors.insert(SMTP_HOST.into(), "must be a host name or address".into());
        }
        let tls = match text(raw, SMTP_TLS) {
            "" | "starttls" => SmtpTls::StartTls,
            "implicit" => SmtpTls::Implicit,
            "none" => SmtpTls::None,
            other => {
                errors.insert(
                    SMTP_TLS.into(),
                    format!("must be starttls, implicit or none, not {other:?}"),
                );
                SmtpTls::StartTls
            }
        };
        let port = match number(raw, SMTP_PORT) {
            Ok(None) => tls.default_port(),
            Ok(Some(p)) if p.fract() == 0.0 && (1.0..=65535.0).contains(&p) => p as u16,
            Ok(Some(_)) => {
                errors.insert(SMTP_PORT.into(), "must be a port from 1 to 65535".into());
                0
            }
            Err(e) => {
                errors.insert(SMTP_PORT.into(), e);
                0
            }
        };
        let credentials = match (user.is_empty(), password.is_empty()) {
            (true, true) => None,
            (false, false) => Some((user.to_owned(), SecretString::new(password.to_owned()))),
            (true, false) => {
                errors.insert(SMTP_USER.into(), "is required with a password".into());
                None
            }
            (false, true) => {
                errors.insert(SMTP_PASSWORD.into(), "is required with a user".into());
                None
            }
        };
        if credentials.is_some() && tls == SmtpTls::None {
            errors.insert(
                SMTP_TLS.into(),
                "must be starttls or implicit when signing in: a password never goes over an unencrypted connection".into(),
            );
        }
        let from = if from.is_empty() {
            errors.insert(MAIL_FROM.into(), "is required to send e-mail".into());
            None
        } else {
            parse_mailbox(from)
                .map_err(|e| errors.insert(MAIL_FROM.into(), e))
                .ok()
        };
        let mut recipients = Vec::new();
        for part in to.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match parse_mailbox(part) {
                Ok(m) => recipients.push(m),
                Err(e) => {
                    errors.insert(MAIL_TO.into(), e);
                }
            }
        }
        if recipients.is_empty() && !errors.contains_key(MAIL_TO) {
            errors.insert(MAIL_TO.into(), "give at least one address".into());
        }
        Some(EmailSettings {
            host: host.to_owned(),
            port,
            tls,
            credentials,
            from: from?,
            to: recipients,
        })
    }

    /// Applies an edit: a setting given replaces the stored one (`""` or null
    /// clears it), except that a secret left out, null or given back as
    /// `{"set": ...}` (as the API shows it) keeps its stored value.
    pub fn edited(&self, input: &Map<String, Value>) -> Self {
        let mut next = self.0.clone();
        for (key, value) in input {
            let secret = is_secret(key);
            match value {
                Value::Null | Value::Object(_) if secret => {}
                Value::Null => {
                    next.remove(key);
                }
                Value::String(s) if s.is_empty() => {
                    next.remove(key);
                }
                _ => {
                    next.insert(key.clone(), value.clone());
                }
            }
        }
        Self(next)
    }

    /// The settings as the API shows them: secrets only as `{"set": bool}`.
    pub fn view(&self) -> Map<String, Value> {
        let mut view = Map::new();
        for f in FIELDS {
            let value = self.0.get(f.key).cloned().unwrap_or(Value::Null);
            let shown = if f.kind == FieldKind::Secret {
                json!({ "set": value.as_str().is_some_and(|s| !s.is_empty()) })
            } else {
                value
            };
            view.insert(f.key.to_owned(), shown);
        }
        view
    }

    /// The settings an edit changed, for the audit log (a secret only as "changed").
    pub fn changes(&self, after: &Self) -> Map<String, Value> {
        crate::store::audit::setting_changes(&self.0, &after.0, is_secret)
    }

    /// The stored document: the secrets sealed, each bound to its setting.
    pub fn seal(&self, secrets: &SecretBox) -> Result<String, SecretsError> {
        let mut stored = self.0.clone();
        for f in FIELDS.iter().filter(|f| f.kind == FieldKind::Secret) {
            if let Some(Value::String(clear)) = stored.get(f.key) {
                let sealed = secrets.seal(&label(f.key), clear)?;
                stored.insert(f.key.to_owned(), Value::String(sealed));
            }
        }
        Ok(Value::Object(stored).to_string())
    }

    /// Reads the stored document. A secret that no longer opens (the key file was
    /// replaced) reads as not set, to be given again.
    pub fn unseal(document: &str, secrets: &SecretBox) -> Self {
        let mut raw = match serde_json::from_str::<Value>(document) {
            Ok(Value::Object(map)) => map,
            _ => {
                tracing::error!("the stored alert settings cannot be read; set them again");
                Map::new()
            }
        };
        for f in FIELDS.iter().filter(|f| f.kind == FieldKind::Secret) {
            if let Some(Value::String(sealed)) = raw.get(f.key) {
                match secrets.unseal(&label(f.key), sealed) {
                    Ok(clear) => {
                        raw.insert(f.key.to_owned(), Value::String(clear));
                    }
                    Err(e) => {
                        tracing::error!(setting = f.key, "alert settings: {e}");
                        raw.remove(f.key);
                    }
                }
            }
        }
        Self(raw)
    }
}

fn is_secret(key: &str) -> bool {
    FIELDS
        .iter()
        .any(|f| f.key == key && f.kind == FieldKind::Secret)
}

fn label(key: &str) -> String {
    format!("alerts.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(value: Value) -> RawSettings {
        match value {
            Value::Object(map) => RawSettings(map),
            _ => unreachable!(),
        }
    }

    #[test]
    fn nothing_set_means_no_channel_and_the_appliance_like_defaults() {
        let settings = RawSettings::default().parse().unwrap();
        assert!(!settings.sends());
        assert_eq!(settings.after, Duration::from_secs(15 * 60));
        assert_eq!(settings.repeat, Duration::from_secs(60 * 60));
    }

    #[test]
    fn a_full_email_and_webhook_setting_parses() {
        let settings = raw(json!({
            "alert_after_minutes": 0.05, "alert_repeat_minutes": "2",
            "smtp_host": "mail.example.com", "smtp_tls": "implicit",
            "smtp_user": "engine", "smtp_password": "pw",
            "mail_from": "Engine <engine@example.com>",
            "mail_to": "a@example.com, b@example.com",
            "webhook_url": "https://hooks.example.com/x?token=t",
        }))
        .parse()
        .unwrap();
        assert_eq!(settings.after, Duration::from_secs(3));
        assert_eq!(settings.repeat, Duration::from_secs(120));
        let email = settings.email.unwrap();
        assert_eq!((email.port, email.tls), (465, SmtpTls::Implicit));
        assert_eq!(email.to.len(), 2);
        assert!(settings.webhook.is_some());
    }

    #[test]
    fn each_mistake_is_named_by_its_setting() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"alert_after_minutes": 0}),
                ALERT_AFTER,
                "more than 0",
            ),
            (
                json!({"alert_repeat_minutes": "soon"}),
                ALERT_REPEAT,
                "must be a number",
            ),
            (
                json!({"mail_to": "a@example.com"}),
                SMTP_HOST,
                "required to send e-mail",
            ),
            (
                json!({"smtp_host": "m", "mail_to": "a@example.com"}),
                MAIL_FROM,
                "required",
            ),
            (
                json!({"smtp_host": "m", "mail_from": "e@example.com"}),
                MAIL_TO,
                "at least one",
            ),
            (
                json!({"smtp_host": "m", "mail_from": "e@example.com", "mail_to": "nobody"}),
                MAIL_TO,
                "not an e-mail address",
            ),
            (
                json!({"smtp_host": "m", "mail_from": "e@x.com", "mail_to": "a@x.com", "smtp_tls": "ssl"}),
                SMTP_TLS,
                "starttls, implicit or none",
            ),
            (
                json!({"smtp_host": "m", "mail_from": "e@x.com", "mail_to": "a@x.com", "smtp_tls": "none",
                       "smtp_user": "u", "smtp_password": "p"}),
                SMTP_TLS,
                "never goes over",
            ),
            (
                json!({"smtp_host": "m", "mail_from": "e@x.com", "mail_to": "a@x.com", "smtp_user": "u"}),
                SMTP_PASSWORD,
                "required with a user",
            ),
            (
                json!({"smtp_host": "m", "mail_from": "e@x.com", "mail_to": "a@x.com", "smtp_port": 70000}),
                SMTP_PORT,
                "1 to 65535",
            ),
            (
                json!({"webhook_url": "ftp://secret-token@x"}),
                WEBHOOK_URL,
                "http:// or https://",
            ),
            (json!({"ca_file": "ca.pem"}), CA_FILE, "absolute"),
            (
                json!({"smtp_hots": "m"}),
                "smtp_hots",
                "unknown alert setting",
            ),
        ];
        for (input, key, words) in cases {
            let errors = raw(input.clone()).parse().unwrap_err();
            let error = errors
                .get(key)
                .unwrap_or_else(|| panic!("{input}: {errors:?}"));
            assert!(error.contains(words), "{input}: {error}");
            assert!(!error.contains("secret-token"), "{error}");
        }
    }

    #[test]
    fn an_edit_keeps_secrets_left_out_and_the_view_hides_them() {
        let stored = raw(json!({"webhook_url": "https://h.example.com/t0k3n", "smtp_host": "m"}));
        let edited = stored.edited(
            json!({"webhook_url": {"set": true}, "smtp_host": "", "alert_after_minutes": 5})
                .as_object()
                .unwrap(),
        );
        assert_eq!(edited.0.get(WEBHOOK_URL), stored.0.get(WEBHOOK_URL));
        assert_eq!(edited.0.get(SMTP_HOST), None);
        let view = Value::Object(edited.view()).to_string();
        assert!(!view.contains("t0k3n"), "{view}");
        assert!(view.contains(r#""webhook_url":{"set":true}"#), "{view}");
        let changes = Value::Object(
            stored.changes(
                &edited.edited(
                    json!({"webhook_url": "https://h.example.com/new"})
                        .as_object()
                        .unwrap(),
                ),
            ),
        )
        .to_string();
        assert!(changes.contains(r#""webhook_url":"changed""#), "{changes}");
        assert!(
            !changes.contains("new") && !changes.contains("t0k3n"),
            "{changes}"
        );
        assert!(format!("{edited:?}").find("t0k3n").is_none());
    }

    #[test]
    fn secrets_are_sealed_in_the_stored_document() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretBox::open_or_create(&dir.path().join("key")).unwrap();
        let settings = raw(json!({"smtp_password": "hunter2", "smtp_host": "m"}));
        let document = settings.seal(&secrets).unwrap();
        assert!(!document.contains("hunter2"), "{document}");
        assert_eq!(RawSettings::unseal(&document, &secrets), settings);
    }
}
