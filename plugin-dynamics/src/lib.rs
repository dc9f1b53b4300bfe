//! The Microsoft Dynamics 365 plugin: when a BeyondTrust support session ends, its
//! record lands in Dataverse as a `bt_session` row linked to the Case whose ticket
//! number is the session's external key. See `docs/dynamics-schema.md`.

pub mod appliance;
pub mod bulk;
mod checks;
pub mod dynamics;
pub mod error;
mod http;
pub mod provision;
pub mod rules;
pub mod schema;
pub mod settings;
pub mod sync;

use std::time::Duration;

use plugin_api::{
    kit::block_on, EndedSessions, EndedSessionsRequest, Event, FieldError, Logger, Manifest,
    OpenContext, Outcome, Plugin, PluginError, PollRequest, PollResult, Settings, TestReport,
};

/// Time limit of one call to the appliance or Dataverse while handling events.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Dynamics365 {
    config: settings::Config,
    sync: sync::Sync,
}

impl Plugin for Dynamics365 {
    fn manifest() -> Manifest {
        settings::manifest()
    }

    fn validate(settings: &Settings) -> Vec<FieldError> {
        settings::validate(settings)
    }

    fn open(ctx: OpenContext) -> Result<Self, PluginError> {
        let config = settings::Config::parse(&ctx.settings).map_err(|faults| {
            PluginError::configuration(format!(
                "the settings are not valid: {}",
                FieldError::summary(&faults)
            ))
        })?;
        let sync = sync::Sync {
            appliance: appliance::ApplianceClient::new(config.appliance.clone(), CALL_TIMEOUT)?,
            dynamics: dynamics::DynamicsClient::new(config.dynamics.clone(), CALL_TIMEOUT)?,
            rules: config.rules.clone(),
            times: config.times,
            log: ctx.log,
        };
        Ok(Self { config, sync })
    }

    fn test(&self) -> TestReport {
        match block_on(checks::run(&self.config)) {
            Ok(report) => report,
            Err(e) => {
                let mut report = TestReport::default();
                report.push("Plugin runtime", Err(e.message));
                report
            }
        }
    }

    // The plugin's typed errors become the kit's here, and only here.
    fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        Ok(block_on(self.sync.handle(event))??)
    }

    fn poll(&self, request: &PollRequest) -> Result<PollResult, PluginError> {
        Ok(block_on(self.sync.poll(request))??)
    }

    const LISTS_ENDED_SESSIONS: bool = true;

    /// One `SupportSessionListing` call per window.
    fn ended_sessions(&self, request: &EndedSessionsRequest) -> Result<EndedSessions, PluginError> {
        Ok(block_on(self.sync.ended_sessions(request))??)
    }

    /// Reports, surveys and case lookups fetched for the whole batch, the writes in
    /// Dataverse `$batch`es (see `bulk`).
    fn handle_batch(&self, events: &[Event]) -> Vec<Result<Outcome, PluginError>> {
        match block_on(self.sync.handle_batch(events)) {
            Ok(verdicts) => verdicts
                .into_iter()
                .map(|v| v.map_err(|e| PluginError::from(&*e)))
                .collect(),
            Err(e) => events.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn run_action(&self, action: &str, progress: &Logger) -> Result<TestReport, PluginError> {
        let dynamics = &self.sync.dynamics;
        match action {
            settings::ACTION_PROVISION => Ok(block_on(provision::provision(dynamics, progress))??),
            settings::ACTION_CHECK_SCHEMA => Ok(block_on(provision::check(dynamics))??),
            other => Err(PluginError::configuration(format!("no action {other:?}"))),
        }
    }
}

plugin_api::export_plugin!(Dynamics365);

#[cfg(test)]
mod tests {
    use super::*;

    const BT_SECRET: &str = "bt-secret-value-4711";
    const AZURE_SECRET: &str = "azure-secret-value-0815";

    fn config() -> settings::Config {
        let mut s = Settings::default();
        for (key, value) in [
            ("bt_hostname", "support.example.com"),
            ("bt_client_id", "0123456789abcdef"),
            ("bt_client_secret", BT_SECRET),
            ("dynamics_url", "https://contoso.crm4.dynamics.com/"),
            ("azure_tenant_id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("azure_client_id", "11111111-2222-3333-4444-555555555555"),
            ("azure_client_secret", AZURE_SECRET),
            ("time_zone", "Europe/Berlin"),
        ] {
            s.set(key, value);
        }
        settings::Config::parse(&s).expect("valid settings")
    }

    #[test]
    fn no_settings_struct_prints_a_secret() {
        use secrecy::ExposeSecret;
        let config = config();
        let printed = format!("{:?} {:#?}", config.appliance, config.dynamics);
        assert!(!printed.contains(BT_SECRET), "{printed}");
        assert!(!printed.contains(AZURE_SECRET), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert!(printed.contains("support.example.com"), "the rest is shown");
        // The values are there for the calls that need them.
        assert_eq!(config.appliance.client_secret.expose_secret(), BT_SECRET);
        assert_eq!(config.dynamics.client_secret.expose_secret(), AZURE_SECRET);
    }
}
