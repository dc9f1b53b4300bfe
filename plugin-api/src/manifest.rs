//! What a plugin declares about itself: identity, settings, event types.
//!
//! Settings are declared once, here, and the host derives the admin form, the
//! validation and the API's description from the declarations.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The section every BeyondTrust plugin shares, declared once by [`common_bt_settings`].
pub const BT_SECTION: &str = "BeyondTrust Appliance B Series";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Stable identifier, e.g. `dynamics365`: lowercase letters, digits, `_`, `-`, `.`.
    pub id: String,
    /// What the admin page shows, e.g. "Microsoft Dynamics 365".
    pub name: String,
    pub version: String,
    pub description: String,
    /// Every setting, the common B Series section first (see [`Manifest::new`]).
    pub settings: Vec<SettingDecl>,
    /// Appliance outbound events the plugin can handle.
    pub outbound_event_types: Vec<EventTypeDecl>,
    /// Events the plugin can find by polling.
    pub polling_event_types: Vec<EventTypeDecl>,
    /// The plugin-api version the plugin was built against (filled in by the kit).
    #[serde(default)]
    pub plugin_api_version: String,
    /// Operations an admin can run on a configuration (e.g. provisioning).
    #[serde(default)]
    pub actions: Vec<ActionDecl>,
}

/// An action a plugin offers on each of its configurations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDecl {
    /// Stable name, used in the API and the CLI, e.g. `provision`.
    pub name: String,
    pub label: String,
    pub description: String,
    /// Whether it changes anything (the admin page asks to confirm those).
    pub changes_things: bool,
}

impl ActionDecl {
    pub fn new(name: &str, label: &str, description: &str, changes_things: bool) -> Self {
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
            description: description.to_owned(),
            changes_things,
        }
    }
}

impl Manifest {
    /// A manifest whose settings start with the common B Series section, followed
    /// by `own_settings`.
    pub fn new(
        id: &str,
        name: &str,
        version: &str,
        description: &str,
        outbound_event_types: Vec<EventTypeDecl>,
        polling_event_types: Vec<EventTypeDecl>,
        own_settings: Vec<SettingDecl>,
    ) -> Self {
        let mut settings = common_bt_settings(&outbound_event_types, &polling_event_types);
        settings.extend(own_settings);
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            settings,
            outbound_event_types,
            polling_event_types,
            plugin_api_version: crate::PLUGIN_API_VERSION.to_owned(),
            actions: Vec::new(),
        }
    }

    /// Declares the actions the plugin offers.
    pub fn with_actions(mut self, actions: Vec<ActionDecl>) -> Self {
        self.actions = actions;
        self
    }

    pub fn setting(&self, key: &str) -> Option<&SettingDecl> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// Checks the declarations themselves; the kit refuses to load a plugin whose
    /// manifest fails here, so that the host can trust every manifest it holds.
    pub fn check(&self) -> Result<(), String> {
        if !is_identifier(&self.id, true) {
            return Err(format!(
                "plugin id {:?} must be lowercase letters, digits, '_', '-' or '.'",
                self.id
            ));
        }
        if self.name.trim().is_empty() {
            return Err("plugin name is empty".into());
        }
        if self.version.trim().is_empty() {
            return Err("plugin version is empty".into());
        }
        let mut keys = std::collections::HashSet::new();
        for setting in &self.settings {
            if !is_identifier(&setting.key, false) {
                return Err(format!(
                    "setting key {:?} must be lowercase letters, digits or '_'",
                    setting.key
                ));
            }
            if matches!(setting.key.as_str(), "name" | "plugin" | "disabled") {
                return Err(format!(
                    "setting key {:?} is reserved for the configuration itself",
                    setting.key
                ));
            }
            if !keys.insert(setting.key.as_str()) {
                return Err(format!("setting {:?} is declared twice", setting.key));
            }
            setting.check()?;
        }
        let mut action_names = std::collections::HashSet::new();
        for action in &self.actions {
            if !is_identifier(&action.name, true) || !action_names.insert(&action.name) {
                return Err(format!(
                    "action {:?} is not a valid name or is declared twice",
                    action.name
                ));
            }
        }
        for list in [&self.outbound_event_types, &self.polling_event_types] {
            let mut names = std::collections::HashSet::new();
            for event_type in list {
                if event_type.name.trim().is_empty() || !names.insert(&event_type.name) {
                    return Err(format!(
                        "event type {:?} is empty or declared twice",
                        event_type.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str, allow_dash_dot: bool) -> bool {
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '_'
                || (allow_dash_dot && (c == '-' || c == '.'))
        })
}

/// An event type by its BeyondTrust name, with the label the admin page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeDecl {
    pub name: String,
    pub label: String,
}

impl EventTypeDecl {
    pub fn new(name: &str, label: &str) -> Self {
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
        }
    }
}

/// One allowed value of a choice setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SettingKind {
    Text,
    /// Never shown back, logged or returned by the API; encrypted at rest.
    Secret,
    Bool,
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    Choice {
        allowed: Vec<Choice>,
    },
    MultiChoice {
        allowed: Vec<Choice>,
    },
}

/// The declaration of one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingDecl {
    pub key: String,
    pub label: String,
    #[serde(flatten)]
    pub kind: SettingKind,
    pub default: Option<Value>,
    pub required: bool,
    pub help: String,
    pub section: String,
}

impl SettingDecl {
    fn new(key: &str, label: &str, kind: SettingKind) -> Self {
        Self {
            key: key.to_owned(),
            label: label.to_owned(),
            kind,
            default: None,
            required: false,
            help: String::new(),
            section: String::new(),
        }
    }

    pub fn text(key: &str, label: &str) -> Self {
        Self::new(key, label, SettingKind::Text)
    }

    pub fn secret(key: &str, label: &str) -> Self {
        Self::new(key, label, SettingKind::Secret)
    }

    pub fn bool(key: &str, label: &str) -> Self {
        Self::new(key, label, SettingKind::Bool).default(false)
    }

    pub fn integer(key: &str, label: &str, min: Option<i64>, max: Option<i64>) -> Self {
        Self::new(key, label, SettingKind::Integer { min, max })
    }

    pub fn choice(key: &str, label: &str, allowed: &[(&str, &str)]) -> Self {
        Self::new(
            key,
            label,
            SettingKind::Choice {
                allowed: choices(allowed),
            },
        )
    }

    pub fn multi_choice(key: &str, label: &str, allowed: &[(&str, &str)]) -> Self {
        Self::new(
            key,
            label,
            SettingKind::MultiChoice {
                allowed: choices(allowed),
            },
        )
        .default(Value::Array(Vec::new()))
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    pub fn help(mut self, help: &str) -> Self {
        self.help = help.to_owned();
        self
    }

    pub fn section(mut self, section: &str) -> Self {
        self.section = section.to_owned();
        self
    }

    pub fn is_secret(&self) -> bool {
        matches!(self.kind, SettingKind::Secret)
    }

    fn check(&self) -> Result<(), String> {
        if self.label.trim().is_empty() {
            return Err(format!("setting {:?} has no label", self.key));
        }
        let allowed = match &self.kind {
            SettingKind::Choice { allowed } | SettingKind::MultiChoice { allowed } => allowed,
            SettingKind::Integer {
                min: Some(min),
                max: Some(max),
            } if min > max => {
                return Err(format!("setting {:?}: min is above max", self.key));
            }
            _ => return Ok(()),
        };
        let known = |v: &Value| {
            v.as_str()
                .is_some_and(|s| allowed.iter().any(|c| c.value == s))
        };
        let default_ok = match (&self.kind, &self.default) {
            (_, None) => true,
            (SettingKind::Choice { .. }, Some(v)) => known(v),
            (_, Some(Value::Array(items))) => items.iter().all(known),
            _ => false,
        };
        if default_ok {
            Ok(())
        } else {
            Err(format!(
                "setting {:?}: default is not among its allowed values",
                self.key
            ))
        }
    }
}

fn choices(allowed: &[(&str, &str)]) -> Vec<Choice> {
    allowed
        .iter()
        .map(|(value, label)| Choice {
            value: (*value).to_owned(),
            label: (*label).to_owned(),
        })
        .collect()
}

/// The "BeyondTrust Appliance B Series" section every BeyondTrust plugin shares:
/// how to reach the appliance, which events to handle, polling and retries.
/// Event-type choices are the plugin's own declared types.
pub fn common_bt_settings(
    outbound: &[EventTypeDecl],
    polling: &[EventTypeDecl],
) -> Vec<SettingDecl> {
    let pairs = |types: &[EventTypeDecl]| -> Vec<(String, String)> {
        types
            .iter()
            .map(|t| (t.name.clone(), t.label.clone()))
            .collect()
    };
    let multi = |key: &str, label: &str, types: &[(String, String)]| {
        let allowed: Vec<(&str, &str)> = types
            .iter()
            .map(|(n, l)| (n.as_str(), l.as_str()))
            .collect();
        SettingDecl::multi_choice(key, label, &allowed)
    };
    let outbound = pairs(outbound);
    let polling = pairs(polling);
    [
        SettingDecl::text("appliance_id", "Appliance Id")
            .required()
            .default("Default")
            .help("Must match the Appliance Id in the outbound event URL configured on the B Series Appliance (…/ERSPost?appliance=<Appliance Id>). If outbound events are not used, any value may be used."),
        SettingDecl::text("bt_hostname", "BeyondTrust Appliance B Series Host Name")
            .required()
            .help("The host name of the B Series Appliance, e.g. support.example.com (a port may follow). Do not include https:// or other URL elements."),
        SettingDecl::text("bt_client_id", "BeyondTrust Integration API OAuth Client ID")
            .required()
            .help("The client ID of the API account (/login > Management > API Configuration)."),
        SettingDecl::secret("bt_client_secret", "BeyondTrust Integration API OAuth Client Secret")
            .required()
            .help("The client secret of the API account. Stored encrypted; never shown again."),
        SettingDecl::text("bt_locale", "Locale Used for BeyondTrust API Calls")
            .required()
            .default("en-us")
            .help("The appliance returns session data in this language, e.g. en-us."),
        SettingDecl::bool("allow_invalid_certificates", "Allow Invalid Certificates")
            .help("Leave unchecked unless there is a specific need. If checked, invalid certificates (e.g. self-signed) are accepted in calls to the appliance. Not recommended in production."),
        SettingDecl::bool("use_non_tls", "Use Non-TLS Connections")
            .help("Leave unchecked. If checked, TLS is disabled altogether (HTTP access must be enabled on the appliance). When using OAuth authentication, TLS cannot be disabled."),
        SettingDecl::text("ca_certificate_file", "Extra Trusted CA Certificates (PEM file)")
            .help("Optional path to a PEM file of additional trusted root certificates, for a private CA or a TLS-inspecting proxy. Used for the appliance and for Dynamics."),
        multi("outbound_event_types", "Outbound Events Types", &outbound)
            .help("Events the plugin processes when the appliance sends them. Each must also be selected for this engine's HTTP recipient on the appliance."),
        multi("polling_event_types", "Polling Event Types", &polling)
            .help("Use polling when the appliance cannot reach this engine. Caveat: a customer exit survey submitted after the poll that saw its session end is not processed."),
        SettingDecl::integer("polling_interval_seconds", "Polling Interval (seconds)", Some(30), Some(86_400))
            .help("How often to poll the appliance for sessions that have ended. Required when a polling event type is selected; at least 30."),
        SettingDecl::integer("retry_attempt_limit", "Retry Attempt Limit", Some(0), Some(100))
            .required()
            .default(3)
            .help("How many times a failed event is retried (for the event types selected below)."),
        multi("retry_outbound_event_types", "Retry Outbound Event Types", &outbound)
            .help("Outbound events that are retried when processing fails."),
        multi("retry_polling_event_types", "Retry Polling Event Types", &polling)
            .help("Polling events that are retried when processing fails."),
    ]
    .into_iter()
    .map(|s| s.section(BT_SECTION))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::new(
            "sample",
            "Sample",
            "1.0.0",
            "",
            vec![EventTypeDecl::new(
                "support_conference_end",
                "Support Session End",
            )],
            vec![],
            vec![SettingDecl::text("target", "Target").section("Sample")],
        )
    }

    #[test]
    fn common_section_comes_first_with_the_plugins_event_types() {
        let m = sample();
        assert_eq!(m.settings[0].key, "appliance_id");
        assert_eq!(m.settings.last().map(|s| s.key.as_str()), Some("target"));
        let outbound = m.setting("outbound_event_types").expect("declared");
        assert_eq!(outbound.section, BT_SECTION);
        match &outbound.kind {
            SettingKind::MultiChoice { allowed } => {
                assert_eq!(allowed.len(), 1);
                assert_eq!(allowed[0].value, "support_conference_end");
            }
            other => panic!("unexpected kind {other:?}"),
        }
        assert!(m
            .setting("bt_client_secret")
            .is_some_and(SettingDecl::is_secret));
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn check_refuses_bad_declarations() {
        let mut m = sample();
        m.id = "Bad Id".into();
        assert!(m.check().is_err_and(|e| e.contains("plugin id")));

        let mut m = sample();
        m.settings.push(SettingDecl::text("target", "Again"));
        assert_eq!(
            m.check(),
            Err("setting \"target\" is declared twice".to_owned())
        );

        let mut m = sample();
        m.settings
            .push(SettingDecl::choice("mode", "Mode", &[("a", "A")]).default("b"));
        assert!(m.check().is_err_and(|e| e.contains("default is not among")));
    }

    #[test]
    fn declarations_serialize_with_their_type() {
        let decl = SettingDecl::integer("n", "N", Some(1), None).required();
        let json = serde_json::to_value(&decl).expect("serialize");
        assert_eq!(json["type"], "integer");
        assert_eq!(json["min"], 1);
        let back: SettingDecl = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, decl);
    }
}

/// The rules of the common B Series section that span fields or need more than a
/// type: host name shape, TLS with OAuth, polling interval, retry types, CA file.
/// `settings` has already passed the per-field checks.
pub fn check_common_settings(settings: &crate::Settings) -> Vec<crate::FieldError> {
    use crate::FieldError;
    let mut errors = Vec::new();
    if let Some(id) = settings.str("appliance_id") {
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
        {
            errors.push(FieldError::new(
                "appliance_id",
                "use letters, digits, spaces, '-', '_' or '.' (it is part of the outbound event URL)",
            ));
        }
    }
    if let Some(host) = settings.str("bt_hostname") {
        if let Err(message) = check_host_name(host) {
            errors.push(FieldError::new("bt_hostname", message));
        }
    }
    if let Some(locale) = settings.str("bt_locale") {
        let mut parts = locale.split('-');
        let language_ok = parts.next().is_some_and(|p| {
            (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic())
        });
        if !language_ok
            || !parts
                .all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            errors.push(FieldError::new(
                "bt_locale",
                format!("{locale:?} is not a locale; use a form like en-us or de-de"),
            ));
        }
    }
    let oauth =
        settings.str("bt_client_id").is_some() || settings.str("bt_client_secret").is_some();
    if settings.bool("use_non_tls") && oauth {
        errors.push(FieldError::new(
            "use_non_tls",
            "TLS cannot be disabled when using OAuth authentication (an API client ID and secret are set); uncheck Use Non-TLS Connections",
        ));
    }
    if !settings.list("polling_event_types").is_empty()
        && settings.int("polling_interval_seconds").is_none()
    {
        errors.push(FieldError::new(
            "polling_interval_seconds",
            "is required when a polling event type is selected (at least 30 seconds)",
        ));
    }
    for (retry, chosen, label) in [
        (
            "retry_outbound_event_types",
            "outbound_event_types",
            "Outbound Events Types",
        ),
        (
            "retry_polling_event_types",
            "polling_event_types",
            "Polling Event Types",
        ),
    ] {
        let chosen = settings.list(chosen);
        let stray: Vec<String> = settings
            .list(retry)
            .into_iter()
            .filter(|t| !chosen.contains(t))
            .collect();
        if !stray.is_empty() {
            errors.push(FieldError::new(
                retry,
                format!(
                    "{} not selected under {label}; only selected types can be retried",
                    stray.join(", ")
                ),
            ));
        }
    }
    if let Some(path) = settings.str("ca_certificate_file") {
        match std::fs::read_to_string(path) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => errors.push(FieldError::new(
                "ca_certificate_file",
                format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            )),
            Err(e) => errors.push(FieldError::new(
                "ca_certificate_file",
                format!("cannot read {path}: {e}"),
            )),
        }
    }
    errors
}

/// A host name or IP address, optionally with a port; no scheme, path or spaces.
pub fn check_host_name(value: &str) -> Result<(), String> {
    let hint = "enter only the host name, e.g. support.example.com or support.example.com:8443";
    if value.contains("://") {
        return Err(format!(
            "remove the scheme ({}); {hint}",
            &value[..value.find("://").unwrap_or(0) + 3]
        ));
    }
    if value.chars().any(|c| c.is_whitespace()) {
        return Err(format!("must not contain spaces; {hint}"));
    }
    if value.contains(['/', '?', '#', '@']) {
        return Err(format!("must not contain a path, query or user; {hint}"));
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => return Err(format!("unclosed '[' in an IPv6 address; {hint}")),
        }
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (value, None),
        }
    };
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("the port {port:?} is not a number from 1 to 65535"));
        }
    }
    if host.parse::<std::net::IpAddr>().is_ok() || is_domain_name(host) {
        Ok(())
    } else {
        Err(format!("{host:?} is not a valid host name; {hint}"))
    }
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
pub fn is_domain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod common_rule_tests {
    use super::*;
    use crate::Settings;

    fn settings(value: serde_json::Value) -> Settings {
        serde_json::from_value(value).expect("settings")
    }

    fn keys(s: &Settings) -> Vec<String> {
        check_common_settings(s)
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[test]
    fn host_names_take_a_port_but_no_scheme_path_or_spaces() {
        for ok in [
            "bt.example.com",
            "bt.example.com:8443",
            "10.0.0.5",
            "[::1]:443",
            "localhost",
        ] {
            assert_eq!(check_host_name(ok), Ok(()), "{ok}");
        }
        assert!(check_host_name("https://bt.example.com")
            .is_err_and(|e| e.starts_with("remove the scheme (https://)")));
        assert!(check_host_name("bt.example.com/login").is_err_and(|e| e.contains("path")));
        assert!(check_host_name("bt example.com").is_err_and(|e| e.contains("spaces")));
        assert!(check_host_name("bt.example.com:0").is_err_and(|e| e.contains("port")));
        assert!(check_host_name("bt_.example.com").is_err());
    }

    #[test]
    fn cross_field_rules_name_the_field_to_fix() {
        let s = settings(serde_json::json!({
            "bt_client_id": "id", "bt_client_secret": "secret", "use_non_tls": true,
            "polling_event_types": ["support_conference_end"],
            "outbound_event_types": [],
            "retry_outbound_event_types": ["support_conference_end"],
            "bt_locale": "english please",
            "ca_certificate_file": "/nonexistent/ca.pem",
        }));
        assert_eq!(
            keys(&s),
            vec![
                "bt_locale",
                "use_non_tls",
                "polling_interval_seconds",
                "retry_outbound_event_types",
                "ca_certificate_file"
            ]
        );
        let good = settings(serde_json::json!({
            "bt_hostname": "bt.example.com", "bt_locale": "en-us",
            "polling_event_types": ["support_conference_end"], "polling_interval_seconds": 60,
            "retry_polling_event_types": ["support_conference_end"],
        }));
        assert!(keys(&good).is_empty());
    }
}
