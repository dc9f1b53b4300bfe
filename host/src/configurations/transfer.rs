//! Configurations exported and imported as one JSON document, to move them to
//! another engine (or keep them under version control). Secrets are left out unless
//! asked for, and then only sealed: an engine holding the same key file opens them,
//! any other reports them as still to be given. Secrets are never exported in clear.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::validate::ConfigurationInput;
use super::{ConfigError, Configurations};
use crate::store::now_ms;

/// The document's `format`, so that another JSON file is refused by name.
pub const FORMAT: &str = "middleware-engine-configurations";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    pub format: String,
    pub version: u32,
    #[serde(default)]
    pub exported_at: Option<String>,
    pub configurations: Vec<Exported>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exported {
    pub plugin: String,
    pub name: String,
    #[serde(default)]
    pub disabled: bool,
    /// Every setting but the secrets.
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// The secrets that are set, by name.
    #[serde(default)]
    pub secrets_set: Vec<String>,
    /// With `secrets=sealed`: each secret sealed with the exporting engine's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_sealed: Option<std::collections::BTreeMap<String, String>>,
}

/// What became of one configuration of an import.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Invalid,
}

#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub plugin: String,
    pub name: String,
    pub result: Outcome,
    pub id: Option<i64>,
    /// Secrets the plugin declares that the document did not bring (or that this
    /// engine's key cannot open) and the configuration does not hold: give them on its
    /// page; until then a new configuration stays disabled.
    pub secrets_to_give: Vec<String>,
    /// For `invalid`: what to fix, per field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
}

impl Configurations {
    /// Every configuration, secrets left out, or sealed when `sealed` is true.
    pub async fn export(&self, sealed: bool) -> Result<Document, ConfigError> {
        let rows = self.store.list_configurations().await?;
        let configurations = rows
            .into_iter()
            .map(|row| Exported {
                plugin: row.plugin,
                name: row.name,
                disabled: row.disabled,
                settings: row.settings,
                secrets_set: row.secrets.keys().cloned().collect(),
                secrets_sealed: sealed.then_some(row.secrets),
            })
            .collect();
        Ok(Document {
            format: FORMAT.into(),
            version: VERSION,
            exported_at: chrono::DateTime::from_timestamp_millis(now_ms())
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            configurations,
        })
    }

    /// Creates or updates each configuration of `document` by plugin and name.
    pub async fn import(&self, document: Document) -> Result<Vec<Imported>, ConfigError> {
        if document.format != FORMAT {
            return Err(super::invalid(
                "format",
                format!(
                    "is {:?}: this is not a configurations export (format {FORMAT:?})",
                    document.format
                ),
            ));
        }
        if document.version > VERSION {
            return Err(super::invalid(
                "version",
                format!(
                    "{} is newer than this engine reads ({VERSION}): import it with a newer engine",
                    document.version
                ),
            ));
        }
        let existing = self.list().await?;
        let mut report = Vec::with_capacity(document.configurations.len());
        for entry in document.configurations {
            report.push(self.import_one(&existing, entry).await);
        }
        Ok(report)
    }

    async fn import_one(&self, existing: &[super::Configuration], entry: Exported) -> Imported {
        let current = existing
            .iter()
            .find(|c| c.plugin == entry.plugin && c.name == entry.name);
        let mut imported = Imported {
            plugin: entry.plugin.clone(),
            name: entry.name.clone(),
            result: Outcome::Invalid,
            id: current.map(|c| c.id),
            secrets_to_give: Vec::new(),
            errors: None,
        };
        let manifest = match self.manifest(&entry.plugin) {
            Ok(m) => m,
            Err(e) => {
                imported.errors = Some(errors_of(&e));
                return imported;
            }
        };
        // The sealed secrets this engine's key opens; the others are to be given.
        let mut settings = entry.settings.clone();
        for decl in manifest.settings.iter().filter(|d| d.is_secret()) {
            // A secret in clear in the document is not taken: exports never hold one.
            settings.remove(&decl.key);
            let opened = entry
                .secrets_sealed
                .as_ref()
                .and_then(|s| s.get(&decl.key))
                .and_then(|sealed| self.secrets.unseal(&decl.key, sealed).ok());
            match opened {
                Some(plain) => {
                    settings.insert(decl.key.clone(), Value::String(plain));
                }
                None => {
                    let held = current
                        .is_some_and(|c| c.settings.str(&decl.key).is_some_and(|v| !v.is_empty()));
                    if !held {
                        imported.secrets_to_give.push(decl.key.clone());
                    }
                }
            }
        }
        let outcome = match current {
            Some(config) => {
                let plain_now: Map<String, Value> = config
                    .settings
                    .0
                    .iter()
                    .filter(|(k, _)| {
                        !manifest
                            .settings
                            .iter()
                            .any(|d| d.is_secret() && &d.key == *k)
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let brings_secrets = settings.keys().any(|k| {
                    manifest
                        .settings
                        .iter()
                        .any(|d| d.is_secret() && &d.key == k)
                        && settings.get(k) != config.settings.0.get(k)
                });
                // One the import left disabled for want of its secrets stays so, and
                // is unchanged, until they are given.
                let wanted_disabled = entry.disabled || !imported.secrets_to_give.is_empty();
                if plain_now == entry.settings
                    && config.disabled == wanted_disabled
                    && !brings_secrets
                {
                    Ok((config.id, Outcome::Unchanged))
                } else {
                    let input = ConfigurationInput {
                        plugin: entry.plugin.clone(),
                        name: entry.name.clone(),
                        disabled: Some(wanted_disabled),
                        settings,
                    };
                    self.update(config.id, input)
                        .await
                        .map(|c| (c.id, Outcome::Updated))
                }
            }
            None => {
                let input = ConfigurationInput {
                    plugin: entry.plugin.clone(),
                    name: entry.name.clone(),
                    // Without its secrets it cannot run: disabled until they are given.
                    disabled: Some(entry.disabled || !imported.secrets_to_give.is_empty()),
                    settings,
                };
                self.create_missing_secrets(input, &imported.secrets_to_give)
                    .await
                    .map(|c| (c.id, Outcome::Created))
            }
        };
        match outcome {
            Ok((id, result)) => {
                imported.id = Some(id);
                imported.result = result;
            }
            Err(e) => imported.errors = Some(errors_of(&e)),
        }
        imported
    }
}

fn errors_of(e: &ConfigError) -> Value {
    match e {
        ConfigError::Invalid(fields) => serde_json::to_value(fields).unwrap_or(Value::Null),
        other => serde_json::json!({ "configuration": other.to_string() }),
    }
}
