//! The plugin's manifest and its settings, read once into the typed [`Config`].

use plugin_api::common::{self, is_domain_name};
use plugin_api::{
    check_host_name, CommonSettings, EventTypeDecl, FieldError, Manifest, SettingDecl, Settings,
};

pub const SECTION: &str = "Microsoft Dynamics 365 Instance";

pub const SESSION_END: &str = "support_conference_end";
pub const CUSTOMER_SURVEY: &str = "support_conference_customer_exit_survey_completed";
pub const REP_SURVEY: &str = "support_conference_rep_exit_survey_completed";

/// The keys of this plugin's own section (the common section's are in
/// `plugin_api::common::keys`).
pub mod keys {
    pub const DYNAMICS_URL: &str = "dynamics_url";
    pub const AZURE_TENANT_ID: &str = "azure_tenant_id";
    pub const AZURE_CLIENT_ID: &str = "azure_client_id";
    pub const AZURE_CLIENT_SECRET: &str = "azure_client_secret";
    pub const UPDATE_ALL_SESSIONS: &str = "update_all_sessions";
    pub const ALLOWED_PREFIXES: &str = "allowed_prefixes";
    pub const IMPORT_TIMESTAMPS_AS_UTC: &str = "import_timestamps_as_utc";
    pub const TIME_ZONE: &str = "time_zone";
    pub const AZURE_CLOUD: &str = "azure_cloud";
}

pub const ACTION_PROVISION: &str = "provision";
pub const ACTION_CHECK_SCHEMA: &str = "check-schema";

pub fn manifest() -> Manifest {
    let end = EventTypeDecl::new(SESSION_END, "Support Session End");
    Manifest::new(
        "dynamics365",
        "Microsoft Dynamics 365",
        env!("CARGO_PKG_VERSION"),
        "Imports BeyondTrust Remote Support sessions into Microsoft Dynamics 365, linked to their Case.",
        vec![
            end.clone(),
            EventTypeDecl::new(CUSTOMER_SURVEY, "Customer Exit Survey is Completed"),
            EventTypeDecl::new(REP_SURVEY, "Representative Survey is Completed"),
        ],
        vec![end],
        vec![
            SettingDecl::text(keys::DYNAMICS_URL, "Microsoft Dynamics 365 URL")
                .required()
                .help("URL of the Microsoft Dynamics 365 instance, e.g. https://contoso.crm4.dynamics.com"),
            SettingDecl::text(keys::AZURE_TENANT_ID, "Azure AD Tenant ID")
                .required()
                .help("The Tenant ID (a GUID) or primary domain of the Azure instance."),
            SettingDecl::text(keys::AZURE_CLIENT_ID, "Azure AD App Registration ID")
                .required()
                .help("The Application (client) ID of the app registration created for this integration."),
            SettingDecl::secret(keys::AZURE_CLIENT_SECRET, "Azure AD App Registration Client Secret")
                .required()
                .help("The client secret created under the app registration. Stored encrypted; never shown again."),
            SettingDecl::bool(keys::UPDATE_ALL_SESSIONS, "Update Microsoft Dynamics 365 with all BeyondTrust sessions")
                .help("If enabled, all BeyondTrust sessions are imported; otherwise only sessions whose external key is the ticket number of an existing Case."),
            SettingDecl::text(keys::ALLOWED_PREFIXES, "List of Allowed Microsoft Dynamics 365 Prefixes")
                .help("Optional comma-separated list of prefixes (e.g. ABC, CBA): only sessions whose external key starts with one of them are imported. Ignored when all sessions are imported."),
            SettingDecl::bool(keys::IMPORT_TIMESTAMPS_AS_UTC, "Import Timestamp as UTC")
                .help("If enabled, date and time values are imported as UTC; otherwise as local time in the time zone below."),
            SettingDecl::text(keys::TIME_ZONE, "Local Time Zone")
                .help("IANA time zone for local times, e.g. Europe/Berlin. Empty: the server's time zone."),
            SettingDecl::text(keys::AZURE_CLOUD, "Azure Cloud")
                .default("public")
                .help("public, usgovernment, china, or the https URL of a custom authority host."),
        ]
        .into_iter()
        .map(|s| s.section(SECTION))
        .collect(),
    )
    .with_actions(vec![
        plugin_api::ActionDecl::new(
            ACTION_PROVISION,
            "Provision Dynamics",
            "Creates whatever is missing of the BeyondTrust Session table (columns, Case lookup, alternate key) in the solution BeyondTrustMiddlewareEngine, waits for the key's index and publishes. Changes nothing that exists.",
            true,
        ),
        plugin_api::ActionDecl::new(
            ACTION_CHECK_SCHEMA,
            "Check schema",
            "Compares the BeyondTrust Session table in Dynamics with the definition, changing nothing.",
            false,
        ),
    ])
}

/// Checks the shapes the declarations cannot express: whatever [`Config::parse`]
/// finds, so that a configuration that saves is one that opens.
pub fn validate(settings: &Settings) -> Vec<FieldError> {
    Config::parse(settings).err().unwrap_or_default()
}

/// The allowed prefixes: comma-separated, spaces around commas ignored, none empty.
pub fn parse_prefixes(text: &str) -> Result<Vec<String>, String> {
    let prefixes: Vec<String> = text.split(',').map(|p| p.trim().to_owned()).collect();
    if prefixes.iter().any(String::is_empty) {
        return Err("separate prefixes with single commas, e.g. ABC, CBA (an empty prefix would allow everything)".into());
    }
    if let Some(bad) = prefixes.iter().find(|p| p.chars().any(char::is_whitespace)) {
        return Err(format!(
            "the prefix {bad:?} contains a space; separate prefixes with commas"
        ));
    }
    Ok(prefixes)
}

fn check_https_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err("must start with https://".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if url.chars().any(char::is_whitespace) || check_host_name(authority).is_err() {
        return Err(format!(
            "{url:?} is not a valid https URL (e.g. https://contoso.crm.dynamics.com)"
        ));
    }
    Ok(())
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A configuration's settings, read once and typed: `validate` reports what
/// `parse` finds, `open` uses what it returns.
pub struct Config {
    pub appliance: crate::appliance::ApplianceSettings,
    pub dynamics: crate::dynamics::DynamicsSettings,
    pub rules: crate::rules::ImportRules,
    pub times: crate::rules::Times,
}

impl Config {
    /// Reads the common B Series section (`plugin_api::CommonSettings`) and this
    /// plugin's own; every fault is returned, each naming its field.
    pub fn parse(s: &Settings) -> Result<Self, Vec<FieldError>> {
        let (common, mut errors) = match CommonSettings::parse(s) {
            Ok(common) => (Some(common), Vec::new()),
            Err(faults) => (None, faults),
        };
        let mut fault = |key: &str, message: String| errors.push(FieldError::new(key, message));
        let required = |key: &str, fault: &mut dyn FnMut(&str, String)| match s.str(key) {
            Some(value) => value.to_owned(),
            None => {
                fault(key, "is required".into());
                String::new()
            }
        };
        let url = required(keys::DYNAMICS_URL, &mut fault);
        if !url.is_empty() {
            if let Err(e) = check_https_url(&url) {
                fault(keys::DYNAMICS_URL, e);
            }
        }
        let tenant_id = required(keys::AZURE_TENANT_ID, &mut fault);
        if !tenant_id.is_empty() && !is_guid(&tenant_id) && !is_domain_name(&tenant_id) {
            fault(
                keys::AZURE_TENANT_ID,
                "must be the tenant's GUID (e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47) or its domain (e.g. contoso.onmicrosoft.com)".into(),
            );
        }
        let client_id = required(keys::AZURE_CLIENT_ID, &mut fault);
        if !client_id.is_empty() && !is_guid(&client_id) {
            fault(
                keys::AZURE_CLIENT_ID,
                "must be the app registration's Application (client) ID, a GUID".into(),
            );
        }
        let client_secret = required(keys::AZURE_CLIENT_SECRET, &mut fault);
        let prefixes = match s.str(keys::ALLOWED_PREFIXES).map(parse_prefixes) {
            None => Vec::new(),
            Some(Ok(prefixes)) => prefixes,
            Some(Err(e)) => {
                fault(keys::ALLOWED_PREFIXES, e);
                Vec::new()
            }
        };
        let zone = match s.str(keys::TIME_ZONE) {
            None => None,
            Some(name) => match name.parse::<chrono_tz::Tz>() {
                Ok(zone) => Some(zone),
                Err(_) => {
                    fault(
                        keys::TIME_ZONE,
                        format!("{name:?} is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"),
                    );
                    None
                }
            },
        };
        let cloud = s.str(keys::AZURE_CLOUD);
        if let Some(cloud) = cloud {
            if !matches!(cloud, "public" | "usgovernment" | "china")
                && check_https_url(cloud).is_err()
            {
                fault(
                    keys::AZURE_CLOUD,
                    "must be public, usgovernment, china, or an https:// authority host URL".into(),
                );
            }
        }
        let Some(common) = common else {
            return Err(errors);
        };
        let access = &common.appliance;
        let ca_file = access
            .ca_certificate_file
            .as_deref()
            .and_then(|p| p.to_str());
        let tls = match crate::http::TlsSettings::load(access.allow_invalid_certificates, ca_file) {
            Ok(tls) => Some(tls),
            Err(e) => {
                fault(common::keys::CA_CERTIFICATE_FILE, e.to_string());
                None
            }
        };
        let (Some(tls), true) = (tls, errors.is_empty()) else {
            return Err(errors);
        };
        let times = if s.bool(keys::IMPORT_TIMESTAMPS_AS_UTC) {
            crate::rules::Times::Utc
        } else {
            crate::rules::Times::Local(zone.unwrap_or_else(crate::rules::server_zone))
        };
        Ok(Self {
            appliance: crate::appliance::ApplianceSettings {
                host: access.host.clone(),
                client_id: access.client_id.clone(),
                client_secret: access.client_secret.clone(),
                locale: access.locale.clone(),
                tls: tls.clone(),
            },
            dynamics: crate::dynamics::DynamicsSettings {
                url: url.trim_end_matches('/').to_owned(),
                tenant_id,
                client_id,
                client_secret: client_secret.into(),
                cloud: crate::dynamics::Cloud::parse(cloud),
                tls,
            },
            rules: crate::rules::ImportRules {
                all_sessions: s.bool(keys::UPDATE_ALL_SESSIONS),
                prefixes,
            },
            times,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Complete, valid settings with `pairs` put over them.
    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in [
            ("bt_hostname", "support.example.com"),
            ("bt_client_id", "0123456789abcdef"),
            ("bt_client_secret", "bt-secret"),
            ("dynamics_url", "https://contoso.crm4.dynamics.com"),
            ("azure_tenant_id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("azure_client_id", "11111111-2222-3333-4444-555555555555"),
            ("azure_client_secret", "azure-secret"),
        ]
        .into_iter()
        .chain(pairs.iter().copied())
        {
            s.set(k, v);
        }
        s
    }

    fn keys(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn manifest_is_valid_and_declares_the_seed_fields() {
        let m = manifest();
        assert_eq!(m.check(), Ok(()));
        assert_eq!(m.id, "dynamics365");
        for key in [
            "dynamics_url",
            "azure_tenant_id",
            "azure_client_id",
            "azure_client_secret",
            "update_all_sessions",
            "allowed_prefixes",
            "import_timestamps_as_utc",
            "time_zone",
            "azure_cloud",
            "bt_hostname",
            "bt_client_secret",
        ] {
            assert!(m.setting(key).is_some(), "{key} is declared");
        }
        assert!(m
            .setting("azure_client_secret")
            .is_some_and(|s| s.is_secret()));
        assert_eq!(m.polling_event_types.len(), 1);
        assert_eq!(m.outbound_event_types.len(), 3);
    }

    #[test]
    fn good_settings_pass() {
        let s = settings(&[
            ("dynamics_url", "https://contoso.crm4.dynamics.com"),
            ("azure_tenant_id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("azure_client_id", "11111111-2222-3333-4444-555555555555"),
            ("allowed_prefixes", "CAS, INC ,ABC"),
            ("time_zone", "Europe/Berlin"),
            ("azure_cloud", "usgovernment"),
        ]);
        assert_eq!(validate(&s), vec![]);
        let s = settings(&[
            ("azure_tenant_id", "contoso.onmicrosoft.com"),
            ("dynamics_url", "https://127.0.0.1:8443/"),
        ]);
        assert_eq!(validate(&s), vec![]);
    }

    #[test]
    fn each_bad_shape_is_named() {
        let s = settings(&[
            ("dynamics_url", "http://contoso.crm.dynamics.com"),
            ("azure_tenant_id", "not a tenant"),
            ("azure_client_id", "abc"),
            ("allowed_prefixes", "ABC,,CBA"),
            ("time_zone", "Mars/Olympus"),
            ("azure_cloud", "moon"),
        ]);
        let errors = validate(&s);
        assert_eq!(
            keys(&errors),
            vec![
                "dynamics_url",
                "azure_tenant_id",
                "azure_client_id",
                "allowed_prefixes",
                "time_zone",
                "azure_cloud"
            ]
        );
        assert_eq!(errors[0].message, "must start with https://");
        assert!(errors[4]
            .message
            .starts_with("\"Mars/Olympus\" is not an IANA time zone name"));
    }

    #[test]
    fn prefixes_ignore_spaces_around_commas() {
        assert_eq!(
            parse_prefixes(" ABC , cba"),
            Ok(vec!["ABC".to_owned(), "cba".to_owned()])
        );
        assert!(parse_prefixes("AB C").is_err());
        assert!(parse_prefixes("ABC,").is_err());
    }

    #[test]
    fn what_saves_is_what_opens() {
        let config = Config::parse(&settings(&[
            ("allowed_prefixes", "CAS, INC"),
            ("time_zone", "Europe/Berlin"),
        ]))
        .expect("valid");
        assert_eq!(config.rules.prefixes, vec!["CAS", "INC"]);
        assert_eq!(config.appliance.host, "support.example.com");
        assert_eq!(config.dynamics.url, "https://contoso.crm4.dynamics.com");
        let missing = Config::parse(&Settings::default())
            .err()
            .unwrap_or_default();
        assert!(
            ["bt_hostname", "dynamics_url", "azure_client_secret"]
                .iter()
                .all(|key| keys(&missing).contains(key)),
            "{missing:?}"
        );
        let unreadable_ca = settings(&[("ca_certificate_file", "/nonexistent/ca.pem")]);
        assert_eq!(keys(&validate(&unreadable_ca)), vec!["ca_certificate_file"]);
    }
}
