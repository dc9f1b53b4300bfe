//! The open plugin instances of enabled configurations. Saving, enabling, disabling
//! or deleting a configuration reopens or closes its instance at once: no restart.

use std::collections::HashMap;

use plugin_api::Settings;
use serde::Serialize;
use tokio::sync::RwLock;

use super::policy::EventPolicy;
use super::Configuration;
use crate::plugins::runner::{CallLimits, PluginRunner};
use crate::plugins::Registry;

/// What an admin sees of a configuration's instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Status {
    Running,
    Disabled,
    /// The configuration's plugin did not load (the reason says why).
    PluginNotLoaded(String),
    /// The plugin refused to open the configuration.
    Failed(String),
}

struct Slot {
    name: String,
    disabled: bool,
    status: Status,
    policy: EventPolicy,
    runner: Option<PluginRunner>,
    created_at: i64,
    /// The stored row's `updated_at` this slot was opened from.
    updated_at: i64,
}

/// What the engine needs of one enabled configuration.
#[derive(Clone)]
pub struct Target {
    pub id: i64,
    pub name: String,
    pub policy: EventPolicy,
    pub runner: Option<PluginRunner>,
    pub status: Status,
    pub created_at: i64,
}

/// Configuration id -> its instance.
pub struct Live {
    slots: RwLock<HashMap<i64, Slot>>,
    limits: CallLimits,
}

impl Live {
    pub fn new(limits: CallLimits) -> Self {
        Self {
            slots: RwLock::new(HashMap::new()),
            limits,
        }
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// Opens (or reopens, or closes) the instance of one configuration to match it.
    /// Calls in flight on the old instance finish on it; it closes after them.
    pub async fn apply(&self, registry: &Registry, config: &Configuration) -> Status {
        let (name, plugin) = (config.name.as_str(), config.plugin.as_str());
        let policy = EventPolicy::from_settings(&config.settings);
        let (status, runner) = match &policy {
            _ if config.disabled => (Status::Disabled, None),
            // Saved by an older engine under looser rules, say: it takes nothing until
            // it is edited, and says why.
            Err(faults) => (
                Status::Failed(format!("its settings are not valid: {faults}; edit it")),
                None,
            ),
            Ok(_) => match open(registry, plugin, name, &config.settings, self.limits).await {
                Ok(runner) => (Status::Running, Some(runner)),
                Err(status) => (status, None),
            },
        };
        match &status {
            Status::Running => {
                tracing::info!(configuration = name, plugin, "configuration running")
            }
            Status::Disabled => {
                tracing::info!(configuration = name, plugin, "configuration disabled")
            }
            Status::PluginNotLoaded(why) | Status::Failed(why) => {
                tracing::warn!(
                    configuration = name,
                    plugin,
                    "configuration not running: {why}"
                )
            }
        }
        let slot = Slot {
            name: config.name.clone(),
            disabled: config.disabled,
            status: status.clone(),
            policy: policy.unwrap_or_else(|_| EventPolicy::inert()),
            runner,
            created_at: config.created_at,
            updated_at: config.updated_at,
        };
        self.slots.write().await.insert(config.id, slot);
        status
    }

    /// Each configuration applied, with the `updated_at` it was applied at.
    pub async fn versions(&self) -> HashMap<i64, i64> {
        self.slots
            .read()
            .await
            .iter()
            .map(|(id, slot)| (*id, slot.updated_at))
            .collect()
    }

    /// The enabled configurations an outbound event goes to.
    pub async fn routes(&self, appliance_id: &str, event_type: &str) -> Vec<(i64, String)> {
        let mut routes: Vec<(i64, String)> = self
            .slots
            .read()
            .await
            .iter()
            .filter(|(_, s)| !s.disabled && s.policy.routes(appliance_id, event_type))
            .map(|(id, s)| (*id, s.name.clone()))
            .collect();
        routes.sort();
        routes
    }

    /// Why no enabled configuration takes an event, for the history.
    pub async fn why_not_routed(&self, appliance_id: &str, event_type: &str) -> String {
        let slots = self.slots.read().await;
        let for_appliance = slots
            .values()
            .filter(|s| !s.disabled && s.policy.appliance_id == appliance_id)
            .count();
        if for_appliance == 0 {
            format!("no enabled configuration has the Appliance Id {appliance_id:?}")
        } else {
            format!(
                "no enabled configuration with the Appliance Id {appliance_id:?} handles {event_type} (see its Outbound Events Types)"
            )
        }
    }

    /// One enabled configuration, for the engine; `None` when disabled or deleted.
    pub async fn target(&self, id: i64) -> Option<Target> {
        self.slots
            .read()
            .await
            .get(&id)
            .filter(|s| !s.disabled)
            .map(|s| Target {
                id,
                name: s.name.clone(),
                policy: s.policy.clone(),
                runner: s.runner.clone(),
                status: s.status.clone(),
                created_at: s.created_at,
            })
    }

    /// Every enabled configuration that polls.
    pub async fn pollers(&self) -> Vec<Target> {
        let ids: Vec<i64> = self
            .slots
            .read()
            .await
            .iter()
            .filter(|(_, s)| !s.disabled && s.policy.polls().is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut targets = Vec::new();
        for id in ids {
            if let Some(t) = self.target(id).await {
                targets.push(t);
            }
        }
        targets
    }

    /// Every enabled configuration that reconciles: an interval set, and a plugin
    /// that lists ended sessions.
    pub async fn reconcilers(&self) -> Vec<Target> {
        let ids: Vec<i64> = self
            .slots
            .read()
            .await
            .iter()
            .filter(|(_, s)| !s.disabled && s.policy.reconcile_interval.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut targets = Vec::new();
        for id in ids {
            if let Some(t) = self.target(id).await {
                if t.runner.as_ref().is_some_and(|r| r.lists_ended_sessions()) {
                    targets.push(t);
                }
            }
        }
        targets
    }

    pub async fn remove(&self, id: i64) {
        self.slots.write().await.remove(&id);
    }

    pub async fn runner(&self, id: i64) -> Option<PluginRunner> {
        self.slots
            .read()
            .await
            .get(&id)
            .and_then(|s| s.runner.clone())
    }

    pub async fn status(&self, id: i64) -> Option<Status> {
        self.slots.read().await.get(&id).map(|s| s.status.clone())
    }
}

/// Opens a new instance outside the live set (e.g. to test a disabled configuration).
pub async fn open(
    registry: &Registry,
    plugin: &str,
    name: &str,
    settings: &Settings,
    limits: CallLimits,
) -> Result<PluginRunner, Status> {
    let Some(loaded) = registry.plugin(plugin) else {
        return Err(Status::PluginNotLoaded(plugin_missing(registry, plugin)));
    };
    PluginRunner::open(loaded, name, settings, limits)
        .await
        .map_err(|e| Status::Failed(e.message))
}

/// Why no plugin with this id is loaded, in the admin's terms.
pub fn plugin_missing(registry: &Registry, plugin: &str) -> String {
    let failed = registry
        .entries
        .iter()
        .find(|e| e.loaded().is_none() && e.folder == plugin);
    match failed {
        Some(entry) => match &entry.verdict {
            crate::plugins::Verdict::Failed(reason) => format!("the plugin {plugin:?} failed to load: {reason}"),
            crate::plugins::Verdict::Loaded(_) => String::new(),
        },
        None => format!(
            "no plugin with the id {plugin:?} is loaded; put it in {}/<folder>/ and restart the engine",
            registry.dir.display()
        ),
    }
}
