//! The plugin's manifest and its own settings checks.

use plugin_api::manifest::is_domain_name;
use plugin_api::{check_host_name, EventTypeDecl, FieldError, Manifest, SettingDecl, Settings};

pub const SECTION: &str = "Microsoft Dynamics 365 Instance";

pub const SESSION_END: &str = "support_conference_end";
pub const CUSTOMER_SURVEY: &str = "support_conference_customer_exit_survey_completed";
pub const REP_SURVEY: &str = "support_conference_rep_exit_survey_completed";

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
            SettingDecl::text("dynamics_url", "Microsoft Dynamics 365 URL")
                .required()
                .help("URL of the Microsoft Dynamics 365 instance, e.g. https://contoso.crm4.dynamics.com"),
            SettingDecl::text("azure_tenant_id", "Azure AD Tenant ID")
                .required()
                .help("The Tenant ID (a GUID) or primary domain of the Azure instance."),
            SettingDecl::text("azure_client_id", "Azure AD App Registration ID")
                .required()
                .help("The Application (client) ID of the app registration created for this integration."),
            SettingDecl::secret("azure_client_secret", "Azure AD App Registration Client Secret")
                .required()
                .help("The client secret created under the app registration. Stored encrypted; never shown again."),
            SettingDecl::bool("update_all_sessions", "Update Microsoft Dynamics 365 with all BeyondTrust sessions")
                .help("If enabled, all BeyondTrust sessions are imported; otherwise only sessions whose external key is the ticket number of an existing Case."),
            SettingDecl::text("allowed_prefixes", "List of Allowed Microsoft Dynamics 365 Prefixes")
                .help("Optional comma-separated list of prefixes (e.g. ABC, CBA): only sessions whose external key starts with one of them are imported. Ignored when all sessions are imported."),
            SettingDecl::bool("import_timestamps_as_utc", "Import Timestamp as UTC")
                .help("If enabled, date and time values are imported as UTC; otherwise as local time in the time zone below."),
            SettingDecl::text("time_zone", "Local Time Zone")
                .help("IANA time zone for local times, e.g. Europe/Berlin. Empty: the server's time zone."),
            SettingDecl::text("azure_cloud", "Azure Cloud")
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

/// Checks the shapes the declarations cannot express.
pub fn validate(settings: &Settings) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(url) = settings.str("dynamics_url") {
        if let Err(e) = check_https_url(url) {
            errors.push(FieldError::new("dynamics_url", e));
        }
    }
    if let Some(tenant) = settings.str("azure_tenant_id") {
        if !is_guid(tenant) && !is_domain_name(tenant) {
            errors.push(FieldError::new(
                "azure_tenant_id",
                "must be the tenant's GUID (e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47) or its domain (e.g. contoso.onmicrosoft.com)",
            ));
        }
    }
    if let Some(client) = settings.str("azure_client_id") {
        if !is_guid(client) {
            errors.push(FieldError::new(
                "azure_client_id",
                "must be the app registration's Application (client) ID, a GUID",
            ));
        }
    }
    if let Some(prefixes) = settings.str("allowed_prefixes") {
        if let Err(e) = parse_prefixes(prefixes) {
            errors.push(FieldError::new("allowed_prefixes", e));
        }
    }
    if let Some(zone) = settings.str("time_zone") {
        if zone.parse::<chrono_tz::Tz>().is_err() {
            errors.push(FieldError::new(
                "time_zone",
                format!("{zone:?} is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)"),
            ));
        }
    }
    if let Some(cloud) = settings.str("azure_cloud") {
        if !matches!(cloud, "public" | "usgovernment" | "china") && check_https_url(cloud).is_err()
        {
            errors.push(FieldError::new(
                "azure_cloud",
                "must be public, usgovernment, china, or an https:// authority host URL",
            ));
        }
    }
    errors
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

/// A configuration's settings, typed once when its instance opens (they were
/// validated when saved).
pub struct Config {
    pub appliance: crate::appliance::ApplianceSettings,
    pub dynamics: crate::dynamics::DynamicsSettings,
    pub rules: crate::rules::ImportRules,
    pub times: crate::rules::Times,
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Self, plugin_api::PluginError> {
        use plugin_api::PluginError;
        let required = |key: &str| {
            s.str(key)
                .map(str::to_owned)
                .ok_or_else(|| PluginError::configuration(format!("the setting {key} is empty")))
        };
        let tls = crate::http::TlsSettings::load(
            s.bool("allow_invalid_certificates"),
            s.str("ca_certificate_file"),
        )?;
        let prefixes = match s.str("allowed_prefixes") {
            Some(text) => parse_prefixes(text).map_err(PluginError::configuration)?,
            None => Vec::new(),
        };
        let times = if s.bool("import_timestamps_as_utc") {
            crate::rules::Times::Utc
        } else {
            let zone = match s.str("time_zone") {
                Some(name) => name.parse().map_err(|_| {
                    PluginError::configuration(format!("{name:?} is not an IANA time zone"))
                })?,
                None => crate::rules::server_zone(),
            };
            crate::rules::Times::Local(zone)
        };
        Ok(Self {
            appliance: crate::appliance::ApplianceSettings {
                host: required("bt_hostname")?,
                client_id: required("bt_client_id")?,
                client_secret: required("bt_client_secret")?.into(),
                locale: s.str("bt_locale").unwrap_or("en-us").to_owned(),
                tls: tls.clone(),
            },
            dynamics: crate::dynamics::DynamicsSettings {
                url: required("dynamics_url")?.trim_end_matches('/').to_owned(),
                tenant_id: required("azure_tenant_id")?,
                client_id: required("azure_client_id")?,
                client_secret: required("azure_client_secret")?.into(),
                cloud: crate::dynamics::Cloud::parse(s.str("azure_cloud")),
                tls,
            },
            rules: crate::rules::ImportRules {
                all_sessions: s.bool("update_all_sessions"),
                prefixes,
            },
            times,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set(k, *v);
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
}
