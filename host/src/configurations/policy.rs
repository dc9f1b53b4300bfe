//! The typed view of a configuration's common B Series section that the engine uses
//! for routing, retries and polling: read once when the configuration is applied.

use std::time::Duration;

use plugin_api::{CommonSettings, EventSource, FieldError, Settings};

/// Which Retry ... Event Types list an event's source answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryGroup {
    Outbound,
    Polling,
}

impl RetryGroup {
    pub fn of(source: EventSource) -> Self {
        match source {
            // Reconciled and backfilled session ends stand in for outbound events.
            EventSource::Outbound | EventSource::Reconcile | EventSource::Backfill => {
                Self::Outbound
            }
            EventSource::Polling => Self::Polling,
        }
    }

    /// As the settings' labels name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Polling => "polling",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPolicy {
    pub appliance_id: String,
    pub outbound_event_types: Vec<String>,
    pub polling_event_types: Vec<String>,
    pub polling_interval: Option<Duration>,
    pub retry_attempt_limit: u32,
    pub retry_outbound_event_types: Vec<String>,
    pub retry_polling_event_types: Vec<String>,
    /// How often to reconcile (the plugin must list ended sessions too).
    pub reconcile_interval: Option<Duration>,
}

impl From<&CommonSettings> for EventPolicy {
    fn from(common: &CommonSettings) -> Self {
        Self {
            appliance_id: common.appliance_id.clone(),
            outbound_event_types: common.outbound_event_types.clone(),
            polling_event_types: common.polling_event_types.clone(),
            polling_interval: common.polling_interval,
            retry_attempt_limit: common.retry_attempt_limit,
            retry_outbound_event_types: common.retry_outbound_event_types.clone(),
            retry_polling_event_types: common.retry_polling_event_types.clone(),
            reconcile_interval: common.reconcile_interval,
        }
    }
}

impl EventPolicy {
    /// Reads validated settings (defaults filled in at save time) through the
    /// common section's one typed view; the faults, one line, when they do not pass.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        CommonSettings::parse(settings)
            .map(|common| Self::from(&common))
            .map_err(|faults| FieldError::summary(&faults))
    }

    /// The policy of a configuration whose settings cannot be read: it takes no event.
    pub fn inert() -> Self {
        Self {
            appliance_id: String::new(),
            outbound_event_types: Vec::new(),
            polling_event_types: Vec::new(),
            polling_interval: None,
            retry_attempt_limit: 0,
            retry_outbound_event_types: Vec::new(),
            retry_polling_event_types: Vec::new(),
            reconcile_interval: None,
        }
    }

    /// Whether an outbound event for `appliance_id` of `event_type` goes to this configuration.
    pub fn routes(&self, appliance_id: &str, event_type: &str) -> bool {
        self.appliance_id == appliance_id
            && self.outbound_event_types.iter().any(|t| t == event_type)
    }

    /// Whether a failed event of this type and source may be retried at all.
    pub fn retries(&self, source: EventSource, event_type: &str) -> bool {
        let list = match RetryGroup::of(source) {
            RetryGroup::Outbound => &self.retry_outbound_event_types,
            RetryGroup::Polling => &self.retry_polling_event_types,
        };
        self.retry_attempt_limit > 0 && list.iter().any(|t| t == event_type)
    }

    /// Polling interval, when the configuration polls.
    pub fn polls(&self) -> Option<Duration> {
        if self.polling_event_types.is_empty() {
            None
        } else {
            self.polling_interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_retries_follow_the_settings() {
        let settings: Settings = serde_json::from_value(serde_json::json!({
            "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
            "appliance_id": "West", "outbound_event_types": ["support_conference_end"],
            "retry_attempt_limit": 2, "retry_outbound_event_types": ["support_conference_end"],
            "polling_event_types": [], "polling_interval_seconds": 60,
        }))
        .expect("settings");
        let p = EventPolicy::from_settings(&settings).expect("valid");
        assert!(p.routes("West", "support_conference_end"));
        assert!(!p.routes("Default", "support_conference_end"));
        assert!(!p.routes("West", "support_conference_begin"));
        assert!(p.retries(EventSource::Outbound, "support_conference_end"));
        assert!(!p.retries(EventSource::Polling, "support_conference_end"));
        assert_eq!(p.polls(), None, "no polling type chosen");
    }
}
