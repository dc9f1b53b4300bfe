//! The open plugin instances of enabled configurations. Saving, enabling, disabling
//! or deleting a configuration reopens or closes its instance at once: no restart.

use std::collections::HashMap;

use plugin_api::Settings;
use serde::Serialize;
use tokio::sync::RwLock;

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
    status: Status,
    runner: Option<PluginRunner>,
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
    pub async fn apply(
        &self,
        registry: &Registry,
        id: i64,
        plugin: &str,
        name: &str,
        disabled: bool,
        settings: &Settings,
    ) -> Status {
        let slot = if disabled {
            Slot {
                status: Status::Disabled,
                runner: None,
            }
        } else {
            match open(registry, plugin, name, settings, self.limits).await {
                Ok(runner) => Slot {
                    status: Status::Running,
                    runner: Some(runner),
                },
                Err(status) => Slot {
                    status,
                    runner: None,
                },
            }
        };
        match &slot.status {
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
        let status = slot.status.clone();
        self.slots.write().await.insert(id, slot);
        status
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
