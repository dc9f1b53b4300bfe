//! The typed view of a configuration's common B Series section that the engine uses
//! for routing, retries and polling: read once when the configuration is applied.

use std::time::Duration;

use plugin_api::{EventSource, Settings};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPolicy {
    pub appliance_id: String,
    pub outbound_event_types: Vec<String>,
    pub polling_event_types: Vec<String>,
    pub polling_interval: Option<Duration>,
    pub retry_attempt_limit: u32,
    pub retry_outbound_event_types: Vec<String>,
    pub retry_polling_event_types: Vec<String>,
}

impl EventPolicy {
    /// Reads validated settings (defaults already filled in at save time).
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            appliance_id: settings.str("appliance_id").unwrap_or("Default").to_owned(),
            outbound_event_types: settings.list("outbound_event_types"),
            polling_event_types: settings.list("polling_event_types"),
            polling_interval: settings
                .int("polling_interval_seconds")
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            retry_attempt_limit: settings
                .int("retry_attempt_limit")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            retry_outbound_event_types: settings.list("retry_outbound_event_types"),
            retry_polling_event_types: settings.list("retry_polling_event_types"),
        }
    }

    /// Whether an outbound event for `appliance_id` of `event_type` goes to this configuration.
    pub fn routes(&self, appliance_id: &str, event_type: &str) -> bool {
        self.appliance_id == appliance_id
            && self.outbound_event_types.iter().any(|t| t == event_type)
    }

    /// Whether a failed event of this type and source may be retried at all.
    pub fn retries(&self, source: EventSource, event_type: &str) -> bool {
        let list = match source {
            EventSource::Outbound => &self.retry_outbound_event_types,
            EventSource::Polling => &self.retry_polling_event_types,
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
            "appliance_id": "West", "outbound_event_types": ["support_conference_end"],
            "retry_attempt_limit": 2, "retry_outbound_event_types": ["support_conference_end"],
            "polling_event_types": [], "polling_interval_seconds": 60,
        }))
        .expect("settings");
        let p = EventPolicy::from_settings(&settings);
        assert!(p.routes("West", "support_conference_end"));
        assert!(!p.routes("Default", "support_conference_end"));
        assert!(!p.routes("West", "support_conference_begin"));
        assert!(p.retries(EventSource::Outbound, "support_conference_end"));
        assert!(!p.retries(EventSource::Polling, "support_conference_end"));
        assert_eq!(p.polls(), None, "no polling type chosen");
    }
}
