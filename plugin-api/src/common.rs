//! The "BeyondTrust Appliance B Series" section every BeyondTrust plugin shares: how
//! to reach the appliance, which events to handle, polling and retries. Its keys are
//! spelled once ([`keys`]), declared once ([`common_bt_settings`]) and read once into
//! the typed [`CommonSettings`], which the host (routing, retries, polling) and every
//! plugin (the appliance's address and credentials) use.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::manifest::{EventTypeDecl, SettingDecl};
use crate::{FieldError, Settings};

/// The keys of the common section.
pub mod keys {
    pub const APPLIANCE_ID: &str = "appliance_id";
    pub const BT_HOSTNAME: &str = "bt_hostname";
    pub const BT_CLIENT_ID: &str = "bt_client_id";
    pub const BT_CLIENT_SECRET: &str = "bt_client_secret";
    pub const BT_LOCALE: &str = "bt_locale";
    pub const ALLOW_INVALID_CERTIFICATES: &str = "allow_invalid_certificates";
    pub const USE_NON_TLS: &str = "use_non_tls";
    pub const CA_CERTIFICATE_FILE: &str = "ca_certificate_file";
    pub const OUTBOUND_EVENT_TYPES: &str = "outbound_event_types";
    pub const POLLING_EVENT_TYPES: &str = "polling_event_types";
    pub const POLLING_INTERVAL_SECONDS: &str = "polling_interval_seconds";
    pub const RETRY_ATTEMPT_LIMIT: &str = "retry_attempt_limit";
    pub const RETRY_OUTBOUND_EVENT_TYPES: &str = "retry_outbound_event_types";
    pub const RETRY_POLLING_EVENT_TYPES: &str = "retry_polling_event_types";
    pub const RECONCILE_INTERVAL_MINUTES: &str = "reconcile_interval_minutes";
}

/// How to reach the appliance's APIs.
#[derive(Debug, Clone)]
pub struct ApplianceAccess {
    /// Host name or address, with an optional port; no scheme.
    pub host: String,
    pub client_id: String,
    /// Never printed: `Debug` shows it redacted.
    pub client_secret: SecretString,
    pub locale: String,
    pub allow_invalid_certificates: bool,
    pub use_non_tls: bool,
    /// Extra trusted roots (PEM), for the appliance and the plugin's other remotes.
    pub ca_certificate_file: Option<PathBuf>,
}

/// The common section of one configuration, checked and typed.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// Matches the `appliance` parameter of the outbound event URL.
    pub appliance_id: String,
    pub appliance: ApplianceAccess,
    pub outbound_event_types: Vec<String>,
    pub polling_event_types: Vec<String>,
    pub polling_interval: Option<Duration>,
    pub retry_attempt_limit: u32,
    pub retry_outbound_event_types: Vec<String>,
    pub retry_polling_event_types: Vec<String>,
    /// How often the host looks for ended sessions whose event never came; `None`
    /// when off (0).
    pub reconcile_interval: Option<Duration>,
}

impl CommonSettings {
    /// Reads the section from settings that passed the per-field checks of the
    /// declarations (the host fills in defaults), applying the rules that span fields
    /// ([`check_common_settings`]). Every fault is returned, each naming its field.
    pub fn parse(settings: &Settings) -> Result<Self, Vec<FieldError>> {
        let mut errors = check_common_settings(settings);
        let mut required = |key: &str| match settings.str(key) {
            Some(value) => value.to_owned(),
            None => {
                if !errors.iter().any(|e| e.key == key) {
                    errors.push(FieldError::new(key, "is required"));
                }
                String::new()
            }
        };
        let appliance = ApplianceAccess {
            host: required(keys::BT_HOSTNAME),
            client_id: required(keys::BT_CLIENT_ID),
            client_secret: SecretString::from(required(keys::BT_CLIENT_SECRET)),
            locale: settings.str(keys::BT_LOCALE).unwrap_or("en-us").to_owned(),
            allow_invalid_certificates: settings.bool(keys::ALLOW_INVALID_CERTIFICATES),
            use_non_tls: settings.bool(keys::USE_NON_TLS),
            ca_certificate_file: settings.str(keys::CA_CERTIFICATE_FILE).map(PathBuf::from),
        };
        let common = Self {
            appliance_id: settings
                .str(keys::APPLIANCE_ID)
                .unwrap_or("Default")
                .to_owned(),
            appliance,
            outbound_event_types: settings.list(keys::OUTBOUND_EVENT_TYPES),
            polling_event_types: settings.list(keys::POLLING_EVENT_TYPES),
            polling_interval: settings
                .int(keys::POLLING_INTERVAL_SECONDS)
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            retry_attempt_limit: settings
                .int(keys::RETRY_ATTEMPT_LIMIT)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            retry_outbound_event_types: settings.list(keys::RETRY_OUTBOUND_EVENT_TYPES),
            retry_polling_event_types: settings.list(keys::RETRY_POLLING_EVENT_TYPES),
            reconcile_interval: settings
                .int(keys::RECONCILE_INTERVAL_MINUTES)
                .and_then(|m| u64::try_from(m).ok())
                .filter(|m| *m > 0)
                .map(|m| Duration::from_secs(m * 60)),
        };
        if errors.is_empty() {
            Ok(common)
        } else {
            Err(errors)
        }
    }
}

/// The declarations of the section, the event-type choices being the plugin's own
/// declared types.
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
        SettingDecl::text(keys::APPLIANCE_ID, "Appliance Id")
            .required()
            .default("Default")
            .help("Must match the Appliance Id in the outbound event URL configured on the B Series Appliance (…/ERSPost?appliance=<Appliance Id>). If outbound events are not used, any value may be used."),
        SettingDecl::text(keys::BT_HOSTNAME, "BeyondTrust Appliance B Series Host Name")
            .required()
            .help("The host name of the B Series Appliance, e.g. support.example.com (a port may follow). Do not include https:// or other URL elements."),
        SettingDecl::text(keys::BT_CLIENT_ID, "BeyondTrust Integration API OAuth Client ID")
            .required()
            .help("The client ID of the API account (/login > Management > API Configuration)."),
        SettingDecl::secret(keys::BT_CLIENT_SECRET, "BeyondTrust Integration API OAuth Client Secret")
            .required()
            .help("The client secret of the API account. Stored encrypted; never shown again."),
        SettingDecl::text(keys::BT_LOCALE, "Locale Used for BeyondTrust API Calls")
            .required()
            .default("en-us")
            .help("The appliance returns session data in this language, e.g. en-us."),
        SettingDecl::bool(keys::ALLOW_INVALID_CERTIFICATES, "Allow Invalid Certificates")
            .help("Leave unchecked unless there is a specific need. If checked, invalid certificates (e.g. self-signed) are accepted in calls to the appliance. Not recommended in production."),
        SettingDecl::bool(keys::USE_NON_TLS, "Use Non-TLS Connections")
            .help("Leave unchecked. If checked, TLS is disabled altogether (HTTP access must be enabled on the appliance). When using OAuth authentication, TLS cannot be disabled."),
        SettingDecl::text(keys::CA_CERTIFICATE_FILE, "Extra Trusted CA Certificates (PEM file)")
            .help("Optional path to a PEM file of additional trusted root certificates, for a private CA or a TLS-inspecting proxy. Used for the appliance and for Dynamics."),
        multi(keys::OUTBOUND_EVENT_TYPES, "Outbound Events Types", &outbound)
            .help("Events the plugin processes when the appliance sends them. Each must also be selected for this engine's HTTP recipient on the appliance."),
        multi(keys::POLLING_EVENT_TYPES, "Polling Event Types", &polling)
            .help("Use polling when the appliance cannot reach this engine. Caveat: a customer exit survey submitted after the poll that saw its session end is not processed."),
        SettingDecl::integer(keys::POLLING_INTERVAL_SECONDS, "Polling Interval (seconds)", Some(30), Some(86_400))
            .help("How often to poll the appliance for sessions that have ended. Required when a polling event type is selected; at least 30."),
        SettingDecl::integer(keys::RETRY_ATTEMPT_LIMIT, "Retry Attempt Limit", Some(0), Some(100))
            .required()
            .default(3)
            .help("How many times a failed event is retried (for the event types selected below)."),
        multi(keys::RETRY_OUTBOUND_EVENT_TYPES, "Retry Outbound Event Types", &outbound)
            .help("Outbound events that are retried when processing fails."),
        multi(keys::RETRY_POLLING_EVENT_TYPES, "Retry Polling Event Types", &polling)
            .help("Polling events that are retried when processing fails."),
        SettingDecl::integer(keys::RECONCILE_INTERVAL_MINUTES, "Reconciliation Interval (minutes)", Some(0), Some(10_080))
            .default(60)
            .help("How often the engine asks the appliance which sessions ended and imports those whose event never arrived (the appliance drops an event after its Retry Duration). 0 turns it off. Plugins that cannot list sessions ignore it."),
    ]
    .into_iter()
    .map(|s| s.section(crate::BT_SECTION))
    .collect()
}

/// The rules of the common B Series section that span fields or need more than a
/// type: host name shape, TLS with OAuth, polling interval, retry types, CA file.
/// `settings` has already passed the per-field checks.
pub fn check_common_settings(settings: &Settings) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(id) = settings.str(keys::APPLIANCE_ID) {
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
        {
            errors.push(FieldError::new(
                keys::APPLIANCE_ID,
                "use letters, digits, spaces, '-', '_' or '.' (it is part of the outbound event URL)",
            ));
        }
    }
    if let Some(host) = settings.str(keys::BT_HOSTNAME) {
        if let Err(message) = check_host_name(host) {
            errors.push(FieldError::new(keys::BT_HOSTNAME, message));
        }
    }
    if let Some(locale) = settings.str(keys::BT_LOCALE) {
        let mut parts = locale.split('-');
        let language_ok = parts.next().is_some_and(|p| {
            (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic())
        });
        if !language_ok
            || !parts
                .all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            errors.push(FieldError::new(
                keys::BT_LOCALE,
                format!("{locale:?} is not a locale; use a form like en-us or de-de"),
            ));
        }
    }
    let oauth = settings.str(keys::BT_CLIENT_ID).is_some()
        || settings.str(keys::BT_CLIENT_SECRET).is_some();
    if settings.bool(keys::USE_NON_TLS) && oauth {
        errors.push(FieldError::new(
            keys::USE_NON_TLS,
            "TLS cannot be disabled when using OAuth authentication (an API client ID and secret are set); uncheck Use Non-TLS Connections",
        ));
    }
    if !settings.list(keys::POLLING_EVENT_TYPES).is_empty()
        && settings.int(keys::POLLING_INTERVAL_SECONDS).is_none()
    {
        errors.push(FieldError::new(
            keys::POLLING_INTERVAL_SECONDS,
            "is required when a polling event type is selected (at least 30 seconds)",
        ));
    }
    for (retry, chosen, label) in [
        (
            keys::RETRY_OUTBOUND_EVENT_TYPES,
            keys::OUTBOUND_EVENT_TYPES,
            "Outbound Events Types",
        ),
        (
            keys::RETRY_POLLING_EVENT_TYPES,
            keys::POLLING_EVENT_TYPES,
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
    if let Some(path) = settings.str(keys::CA_CERTIFICATE_FILE) {
        match std::fs::read_to_string(path) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => errors.push(FieldError::new(
                keys::CA_CERTIFICATE_FILE,
                format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            )),
            Err(e) => errors.push(FieldError::new(
                keys::CA_CERTIFICATE_FILE,
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
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn settings(value: serde_json::Value) -> Settings {
        serde_json::from_value(value).expect("settings")
    }

    fn faults(s: &Settings) -> Vec<String> {
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
            faults(&s),
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
        assert!(faults(&good).is_empty());
    }

    #[test]
    fn the_section_is_read_into_its_typed_view_with_every_fault_named() {
        let s = settings(serde_json::json!({
            "appliance_id": "West", "bt_hostname": "bt.example.com", "bt_client_id": "id",
            "bt_client_secret": "s3cret-value", "bt_locale": "de-de",
            "outbound_event_types": ["support_conference_end"],
            "polling_event_types": ["support_conference_end"], "polling_interval_seconds": 60,
            "retry_attempt_limit": 2, "retry_outbound_event_types": ["support_conference_end"],
        }));
        let common = CommonSettings::parse(&s).expect("valid");
        assert_eq!(common.appliance_id, "West");
        assert_eq!(common.appliance.host, "bt.example.com");
        assert_eq!(
            common.appliance.client_secret.expose_secret(),
            "s3cret-value"
        );
        assert_eq!(common.polling_interval, Some(Duration::from_secs(60)));
        assert_eq!(common.retry_attempt_limit, 2);
        assert!(
            !format!("{common:?}").contains("s3cret-value"),
            "the secret is redacted in Debug output"
        );
        let missing = settings(serde_json::json!({"bt_hostname": "https://bt.example.com"}));
        let faults: Vec<String> = CommonSettings::parse(&missing)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            faults,
            vec!["bt_hostname", "bt_client_id", "bt_client_secret"]
        );
    }
}
