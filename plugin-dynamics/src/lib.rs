//! The Microsoft Dynamics 365 plugin: BeyondTrust session reports into Dataverse.

pub mod settings;

use plugin_api::{
    Event, FieldError, Manifest, OpenContext, Outcome, Plugin, PluginError, Settings, TestReport,
};

pub struct Dynamics365;

impl Plugin for Dynamics365 {
    fn manifest() -> Manifest {
        settings::manifest()
    }

    fn validate(settings: &Settings) -> Vec<FieldError> {
        settings::validate(settings)
    }

    fn open(_ctx: OpenContext) -> Result<Self, PluginError> {
        Ok(Self)
    }

    fn test(&self) -> TestReport {
        let mut report = TestReport::default();
        report.push(
            "Event processing",
            Err("this build of the Dynamics 365 plugin declares its settings but cannot process events yet".into()),
        );
        report
    }

    fn handle_event(&self, _event: &Event) -> Result<Outcome, PluginError> {
        Err(PluginError::configuration(
            "this build of the Dynamics 365 plugin declares its settings but cannot process events yet",
        ))
    }
}

plugin_api::export_plugin!(Dynamics365);
