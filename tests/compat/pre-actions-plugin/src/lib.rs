//! A plugin built against plugin-api 0.1.0 (no `run_action` in its root module): the
//! current host must still load and run it.

use plugin_api::{Event, EventTypeDecl, Manifest, OpenContext, Outcome, Plugin, PluginError, TestReport};

pub struct PreActions;

impl Plugin for PreActions {
    fn manifest() -> Manifest {
        let end = EventTypeDecl::new("support_conference_end", "Support Session End");
        Manifest::new("pre-actions", "Built Before Actions", "0.1.0", "", vec![end], vec![], vec![])
    }
    fn open(_ctx: OpenContext) -> Result<Self, PluginError> {
        Ok(Self)
    }
    fn test(&self) -> TestReport {
        let mut report = TestReport::default();
        report.push("Old plugin", Ok("still works".into()));
        report
    }
    fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        Ok(Outcome::Done { detail: format!("handled {}", event.event_type) })
    }
}

plugin_api::export_plugin!(PreActions);
