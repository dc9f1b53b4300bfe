//! The Microsoft Dynamics 365 plugin: when a BeyondTrust support session ends, its
//! record lands in Dataverse as a `bt_session` row linked to the Case whose ticket
//! number is the session's external key. See `docs/dynamics-schema.md`.

pub mod appliance;
mod checks;
pub mod dynamics;
mod http;
pub mod provision;
pub mod rules;
pub mod schema;
pub mod settings;
pub mod sync;

use std::time::Duration;

use plugin_api::{
    kit::block_on, Event, FieldError, Logger, Manifest, OpenContext, Outcome, Plugin, PluginError,
    PollRequest, PollResult, Settings, TestReport,
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
        let config = settings::Config::from_settings(&ctx.settings)?;
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

    fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        block_on(self.sync.handle(event))?
    }

    fn poll(&self, request: &PollRequest) -> Result<PollResult, PluginError> {
        block_on(self.sync.poll(request))?
    }

    fn run_action(&self, action: &str, progress: &Logger) -> Result<TestReport, PluginError> {
        let dynamics = &self.sync.dynamics;
        match action {
            settings::ACTION_PROVISION => block_on(provision::provision(dynamics, progress))?,
            settings::ACTION_CHECK_SCHEMA => block_on(async {
                let table = schema::table();
                let meta = provision::read_table(dynamics, table).await?;
                Ok(provision::report(&provision::compare(table, meta.as_ref())))
            })?,
            other => Err(PluginError::configuration(format!("no action {other:?}"))),
        }
    }
}

plugin_api::export_plugin!(Dynamics365);
