//! Named configurations of plugins: validated when saved, stored with their secrets
//! sealed, and kept live (an open instance per enabled configuration).

pub mod live;
pub mod policy;
pub mod transfer;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use plugin_api::{Manifest, PluginError, Settings, TestReport};

use crate::plugins::runner::run_blocking;
use crate::plugins::Registry;
use crate::secrets::{SecretBox, SecretsError};
use crate::store::{ConfigurationRow, NewConfiguration, Store, StoreError};

pub use live::{Live, Status, Target};
pub use policy::EventPolicy;
pub use validate::{ConfigurationInput, FieldErrors};

/// A configuration with its secrets decrypted, for the host's own use only.
#[derive(Clone)]
pub struct Configuration {
    pub id: i64,
    pub plugin: String,
    pub name: String,
    pub disabled: bool,
    /// Every setting, secrets included: never log or return it.
    pub settings: Settings,
    /// Which settings are secrets (from the stored row, so known even when the
    /// plugin is not loaded).
    pub secret_keys: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for Configuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configuration")
            .field("id", &self.id)
            .field("plugin", &self.plugin)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no configuration with id {0}")]
    NotFound(i64),
    #[error("the configuration is not valid")]
    Invalid(FieldErrors),
    #[error("a configuration named {0:?} already exists for this plugin; choose another name")]
    DuplicateName(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("the plugin offers no action {0:?}")]
    UnknownAction(String),
    #[error("checking the configuration failed: {0}")]
    Worker(String),
}

/// Actions (provisioning, say) may wait on the remote side for minutes.
const ACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl From<StoreError> for ConfigError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateName { name } => Self::DuplicateName(name),
            other => Self::Store(other),
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid([(key.to_owned(), message.into())].into())
}

/// The configurations service the admin API (and the engine) use.
pub struct Configurations {
    store: Store,
    secrets: SecretBox,
    registry: Arc<Registry>,
    live: Live,
    /// Told of every configuration applied or deleted (the engine looks again).
    wakeup: Arc<crate::engine::Wakeup>,
}

impl Configurations {
    pub fn new(
        store: Store,
        secrets: SecretBox,
        registry: Arc<Registry>,
        live: Live,
        wakeup: Arc<crate::engine::Wakeup>,
    ) -> Self {
        Self {
            store,
            secrets,
            registry,
            live,
            wakeup,
        }
    }

    /// The engine's key, for other secrets kept with the configurations (alerts).
    pub fn secrets(&self) -> &SecretBox {
        &self.secrets
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Opens an instance for every enabled configuration (at start).
    pub async fn start_all(&self) -> Result<(), ConfigError> {
        for config in self.list().await? {
            self.apply(&config).await;
        }
        Ok(())
    }

    /// Applies what changed in the store since this engine last looked: configurations
    /// created, edited, enabled, disabled or deleted by another engine on a shared
    /// database. Returns how many were applied or removed.
    pub async fn sync(&self) -> Result<usize, ConfigError> {
        let stored = self.store.configuration_versions().await?;
        let applied = self.live.versions().await;
        let mut changed = 0;
        for (id, updated_at) in &stored {
            if applied.get(id) != Some(updated_at) {
                match self.row(*id).await {
                    Ok(row) => {
                        let config = self.decrypt(row);
                        tracing::info!(configuration = %config.name, "configuration changed on another engine");
                        self.apply(&config).await;
                        changed += 1;
                    }
                    // Deleted since: the next look removes it.
                    Err(ConfigError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for id in applied.keys().filter(|id| !stored.contains_key(id)) {
            tracing::info!(
                configuration_id = id,
                "configuration deleted on another engine"
            );
            self.live.remove(*id).await;
            self.wakeup.configuration_changed(*id);
            changed += 1;
        }
        Ok(changed)
    }

    pub async fn list(&self) -> Result<Vec<Configuration>, ConfigError> {
        let rows = self.store.list_configurations().await?;
        Ok(rows.into_iter().map(|row| self.decrypt(row)).collect())
    }

    pub async fn get(&self, id: i64) -> Result<Configuration, ConfigError> {
        Ok(self.decrypt(self.row(id).await?))
    }

    async fn row(&self, id: i64) -> Result<ConfigurationRow, ConfigError> {
        self.store.get_configuration(id).await.map_err(|e| match e {
            StoreError::NotFound => ConfigError::NotFound(id),
            other => other.into(),
        })
    }

    pub async fn status(&self, id: i64) -> Status {
        self.live.status(id).await.unwrap_or(Status::Disabled)
    }

    pub async fn create(&self, input: ConfigurationInput) -> Result<Configuration, ConfigError> {
        let manifest = self.manifest(&input.plugin)?;
        let valid = self
            .validate(&manifest, &input, &Settings::default())
            .await?;
        let new = self.seal(
            &manifest,
            &input.plugin,
            valid.name,
            valid.disabled,
            valid.settings,
        )?;
        let row = self.store.insert_configuration(new).await?;
        let config = self.decrypt(row);
        self.apply(&config).await;
        Ok(config)
    }

    /// As [`Configurations::create`], for an import that lacks the secrets `missing`:
    /// the rest is checked as for any configuration (the missing ones standing in
    /// with a placeholder), and it is stored disabled and without them, to be given
    /// on its page.
    pub(super) async fn create_missing_secrets(
        &self,
        input: ConfigurationInput,
        missing: &[String],
    ) -> Result<Configuration, ConfigError> {
        if missing.is_empty() {
            return self.create(input).await;
        }
        let manifest = self.manifest(&input.plugin)?;
        let mut probe = input.clone();
        for key in missing {
            probe.settings.insert(
                key.clone(),
                serde_json::Value::String("placeholder-for-a-secret-to-give".into()),
            );
        }
        let valid = self
            .validate(&manifest, &probe, &Settings::default())
            .await?;
        let mut settings = valid.settings;
        for key in missing {
            settings.0.remove(key);
        }
        let new = self.seal(&manifest, &input.plugin, valid.name, true, settings)?;
        let row = self.store.insert_configuration(new).await?;
        let config = self.decrypt(row);
        self.apply(&config).await;
        Ok(config)
    }

    pub async fn update(
        &self,
        id: i64,
        input: ConfigurationInput,
    ) -> Result<Configuration, ConfigError> {
        let current = self.get(id).await?;
        if input.plugin != current.plugin {
            return Err(invalid(
                "plugin",
                format!(
                    "this configuration belongs to {:?}; a configuration cannot change plugin",
                    current.plugin
                ),
            ));
        }
        let manifest = self.manifest(&current.plugin)?;
        let valid = self.validate(&manifest, &input, &current.settings).await?;
        let new = self.seal(
            &manifest,
            &current.plugin,
            valid.name,
            valid.disabled,
            valid.settings,
        )?;
        let row = match self.store.update_configuration(id, new).await {
            Err(StoreError::NotFound) => return Err(ConfigError::NotFound(id)),
            other => other?,
        };
        let config = self.decrypt(row);
        self.apply(&config).await;
        Ok(config)
    }

    /// Enables or disables without touching the other settings.
    pub async fn set_disabled(
        &self,
        id: i64,
        disabled: bool,
    ) -> Result<Configuration, ConfigError> {
        let current = self.get(id).await?;
        let row = self.store.get_configuration(id).await?;
        let new = NewConfiguration {
            plugin: row.plugin,
            name: row.name,
            disabled,
            settings: row.settings,
            secrets: row.secrets,
        };
        let row = self.store.update_configuration(id, new).await?;
        let config = Configuration {
            disabled,
            updated_at: row.updated_at,
            ..current
        };
        self.apply(&config).await;
        Ok(config)
    }

    pub async fn delete(&self, id: i64) -> Result<(), ConfigError> {
        let failed = self
            .store
            .call(move |conn| {
                crate::store::events::delete_configuration(
                    conn,
                    id,
                    "the configuration was deleted",
                    crate::store::now_ms(),
                )
            })
            .await;
        let failed = match failed {
            Err(StoreError::NotFound) => return Err(ConfigError::NotFound(id)),
            other => other?,
        };
        self.live.remove(id).await;
        tracing::info!(
            configuration_id = id,
            waiting_events_failed = failed,
            "configuration deleted"
        );
        self.wakeup.configuration_changed(id);
        Ok(())
    }

    /// A copy named "<name> (copy)" (or "(copy 2)", ...), secrets carried over. The
    /// copy starts disabled, so that an event is not processed twice by surprise.
    pub async fn copy(&self, id: i64) -> Result<Configuration, ConfigError> {
        let row = self.row(id).await?;
        let mut attempt = 1;
        loop {
            let name = match attempt {
                1 => format!("{} (copy)", row.name),
                n => format!("{} (copy {n})", row.name),
            };
            let new = NewConfiguration {
                plugin: row.plugin.clone(),
                name,
                disabled: true,
                settings: row.settings.clone(),
                secrets: row.secrets.clone(),
            };
            match self.store.insert_configuration(new).await {
                Ok(copy) => {
                    let config = self.decrypt(copy);
                    self.apply(&config).await;
                    return Ok(config);
                }
                Err(StoreError::DuplicateName { .. }) if attempt < 100 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs the plugin's test: on the live instance when running, else on an instance
    /// opened just for the test (so a disabled configuration can be tested too).
    pub async fn test(&self, id: i64) -> Result<TestReport, ConfigError> {
        let config = self.get(id).await?;
        let runner = match self.live.runner(id).await {
            Some(runner) => runner,
            None => {
                match live::open(
                    &self.registry,
                    &config.plugin,
                    &config.name,
                    &config.settings,
                    self.live.limits(),
                )
                .await
                {
                    Ok(runner) => runner,
                    Err(Status::PluginNotLoaded(why)) => return Ok(failed_check("Plugin", why)),
                    Err(Status::Failed(why)) => return Ok(failed_check("Open configuration", why)),
                    Err(_) => return Ok(failed_check("Open configuration", "cannot open".into())),
                }
            }
        };
        Ok(match runner.test().await {
            Ok(report) => report,
            Err(e) => failed_check("Plugin test", e.message),
        })
    }

    /// The actions the configuration's plugin offers.
    pub async fn actions(&self, id: i64) -> Result<Vec<plugin_api::ActionDecl>, ConfigError> {
        let config = self.get(id).await?;
        Ok(self
            .registry
            .plugin(&config.plugin)
            .map(|p| p.manifest.actions.clone())
            .unwrap_or_default())
    }

    /// Runs a plugin action on a configuration (enabled or not); progress lines go
    /// to `progress` as they come.
    pub async fn run_action(
        &self,
        id: i64,
        action: &str,
        progress: plugin_api::loader::LogFn,
    ) -> Result<TestReport, ConfigError> {
        let config = self.get(id).await?;
        let Some(plugin) = self.registry.plugin(&config.plugin).cloned() else {
            return Ok(failed_check(
                "Plugin",
                live::plugin_missing(&self.registry, &config.plugin),
            ));
        };
        if !plugin.manifest.actions.iter().any(|a| a.name == action) {
            return Err(ConfigError::UnknownAction(action.to_owned()));
        }
        let action = action.to_owned();
        tracing::info!(configuration = %config.name, action = %action, "running an action");
        let result = run_blocking(ACTION_TIMEOUT, move || {
            plugin.run_action(&config.name, &config.settings, &action, progress)
        })
        .await;
        Ok(match result {
            Ok(report) => report,
            Err(e) => failed_check("Action", e.message),
        })
    }

    /// Configurations with this name (one per plugin at most).
    pub async fn by_name(&self, name: &str) -> Result<Vec<Configuration>, ConfigError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|c| c.name == name)
            .collect())
    }

    fn manifest(&self, plugin: &str) -> Result<Manifest, ConfigError> {
        self.registry
            .plugin(plugin)
            .map(|p| p.manifest.clone())
            .ok_or_else(|| invalid("plugin", live::plugin_missing(&self.registry, plugin)))
    }

    async fn validate(
        &self,
        manifest: &Manifest,
        input: &ConfigurationInput,
        stored: &Settings,
    ) -> Result<validate::Validated, ConfigError> {
        // Off the async threads: the common rules read the CA file from disk.
        let (m, i, s) = (manifest.clone(), input.clone(), stored.clone());
        let mut valid = tokio::task::spawn_blocking(move || validate::validate(&m, &i, &s))
            .await
            .map_err(|e| ConfigError::Worker(e.to_string()))?
            .map_err(ConfigError::Invalid)?;
        // Then the plugin's own checks, as a plugin call (contained, time-limited).
        let plugin =
            self.registry.plugin(&manifest.id).cloned().ok_or_else(|| {
                invalid("plugin", live::plugin_missing(&self.registry, &manifest.id))
            })?;
        let settings = valid.settings.clone();
        let found = run_blocking(self.live.limits().timeout, move || {
            plugin.validate(&settings)
        })
        .await
        .map_err(|e: PluginError| {
            invalid(
                "plugin",
                format!("the plugin could not check the settings: {}", e.message),
            )
        })?;
        for e in found {
            valid.errors.entry(e.key).or_insert(e.message);
        }
        if valid.errors.is_empty() {
            Ok(valid)
        } else {
            Err(ConfigError::Invalid(std::mem::take(&mut valid.errors)))
        }
    }

    fn seal(
        &self,
        manifest: &Manifest,
        plugin: &str,
        name: String,
        disabled: bool,
        settings: Settings,
    ) -> Result<NewConfiguration, ConfigError> {
        let mut plain = settings.0;
        let mut secrets = BTreeMap::new();
        for decl in manifest.settings.iter().filter(|d| d.is_secret()) {
            if let Some(value) = plain.remove(&decl.key) {
                let text = value.as_str().unwrap_or_default();
                secrets.insert(decl.key.clone(), self.secrets.seal(&decl.key, text)?);
            }
        }
        Ok(NewConfiguration {
            plugin: plugin.to_owned(),
            name,
            disabled,
            settings: plain,
            secrets,
        })
    }

    fn decrypt(&self, row: ConfigurationRow) -> Configuration {
        let mut settings = Settings(row.settings);
        for (key, sealed) in &row.secrets {
            match self.secrets.unseal(key, sealed) {
                Ok(plain) => settings.set(key, plain),
                Err(e) => tracing::error!(configuration = %row.name, setting = %key, "{e}"),
            }
        }
        Configuration {
            id: row.id,
            plugin: row.plugin,
            name: row.name,
            disabled: row.disabled,
            settings,
            secret_keys: row.secrets.into_keys().collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    async fn apply(&self, config: &Configuration) -> Status {
        let status = self.live.apply(&self.registry, config).await;
        self.wakeup.configuration_changed(config.id);
        status
    }
}

fn failed_check(name: &str, detail: String) -> TestReport {
    let mut report = TestReport::default();
    report.push(name, Err(detail));
    report
}
