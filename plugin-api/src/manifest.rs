//! What a plugin declares about itself: identity, settings, event types.
//!
//! Settings are declared once, here, and the host derives the admin form, the
//! validation and the API's description from the declarations.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Kept here too for plugins that named them from this module.
pub use crate::common::{check_host_name, is_domain_name};

/// The section every BeyondTrust plugin shares, declared once by [`common_bt_settings`].
pub const BT_SECTION: &str = "BeyondTrust Appliance B Series";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Stable identifier, e.g. `dynamics365`: lowercase letters, digits, `_`, `-`, `.`.
    pub id: String,
    /// What the admin page shows, e.g. "Microsoft Dynamics 365".
    pub name: String,
    pub version: String,
    pub description: String,
    /// Every setting, the common B Series section first (see [`Manifest::new`]).
    pub settings: Vec<SettingDecl>,
    /// Appliance outbound events the plugin can handle.
    pub outbound_event_types: Vec<EventTypeDecl>,
    /// Events the plugin can find by polling.
    pub polling_event_types: Vec<EventTypeDecl>,
    /// The plugin-api version the plugin was built against (filled in by the kit).
    #[serde(default)]
    pub plugin_api_version: String,
    /// Operations an admin can run on a configuration (e.g. provisioning).
    #[serde(default)]
    pub actions: Vec<ActionDecl>,
    /// Whether the plugin lists ended sessions (`Plugin::ended_sessions`), which
    /// reconciliation and backfill need. Filled in by the kit from
    /// `Plugin::LISTS_ENDED_SESSIONS`.
    #[serde(default)]
    pub lists_ended_sessions: bool,
}

/// An action a plugin offers on each of its configurations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDecl {
    /// Stable name, used in the API and the CLI, e.g. `provision`.
    pub name: String,
    pub label: String,
    pub description: String,
    /// Whether it changes anything (the admin page asks to confirm those).
    pub changes_things: bool,
}

impl ActionDecl {
    pub fn new(name: &str, label: &str, description: &str, changes_things: bool) -> Self {
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
            description: description.to_owned(),
            changes_things,
        }
    }
}

impl Manifest {
    /// A manifest whose settings start with the common B Series section, followed
    /// by `own_settings`.
    pub fn new(
        id: &str,
        name: &str,
        version: &str,
        description: &str,
        outbound_event_types: Vec<EventTypeDecl>,
        polling_event_types: Vec<EventTypeDecl>,
        own_settings: Vec<SettingDecl>,
    ) -> Self {
        let mut settings =
            crate::common::common_bt_settings(&outbound_event_types, &polling_event_types);
        settings.extend(own_settings);
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            settings,
            outbound_event_types,
            polling_event_types,
            plugin_api_version: crate::PLUGIN_API_VERSION.to_owned(),
            actions: Vec::new(),
            lists_ended_sessions: false,
        }
    }

    /// Declares the actions the plugin offers.
    pub fn with_actions(mut self, actions: Vec<ActionDecl>) -> Self {
        self.actions = actions;
        self
    }

    pub fn setting(&self, key: &str) -> Option<&SettingDecl> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// Checks the declarations themselves; the kit refuses to load a plugin whose
    /// manifest fails here, so that the host can trust every manifest it holds.
    pub fn check(&self) -> Result<(), String> {
        if !is_identifier(&self.id, true) {
            return Err(format!(
                "plugin id {:?} must be lowercase letters, digits, '_', '-' or '.'",
                self.id
            ));
        }
        if self.name.trim().is_empty() {
            return Err("plugin name is empty".into());
        }
        if self.version.trim().is_empty() {
            return Err("plugin version is empty".into());
        }
        let mut keys = std::collections::HashSet::new();
        for setting in &self.settings {
            if !is_identifier(&setting.key, false) {
                return Err(format!(
                    "setting key {:?} must be lowercase letters, digits or '_'",
                    setting.key
                ));
            }
            if matches!(setting.key.as_str(), "name" | "plugin" | "disabled") {
                return Err(format!(
                    "setting key {:?} is reserved for the configuration itself",
                    setting.key
                ));
            }
            if !keys.insert(setting.key.as_str()) {
                return Err(format!("setting {:?} is declared twice", setting.key));
            }
            setting.check()?;
        }
        let mut action_names = std::collections::HashSet::new();
        for action in &self.actions {
            if !is_identifier(&action.name, true) || !action_names.insert(&action.name) {
                return Err(format!(
                    "action {:?} is not a valid name or is declared twice",
                    action.name
                ));
            }
        }
        for list in [&self.outbound_event_types, &self.polling_event_types] {
            let mut names = std::collections::HashSet::new();
            for event_type in list {
                if event_type.name.trim().is_empty() || !names.insert(&event_type.name) {
                    return Err(format!(
                        "event type {:?} is empty or declared twice",
                        event_type.name
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_identifier(s: &str, allow_dash_dot: bool) -> bool {
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '_'
                || (allow_dash_dot && (c == '-' || c == '.'))
        })
}

/// An event type by its BeyondTrust name, with the label the admin page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeDecl {
    pub name: String,
    pub label: String,
}

impl EventTypeDecl {
    pub fn new(name: &str, label: &str) -> Self {
        Self {
            name: name.to_owned(),
            label: label.to_owned(),
        }
    }
}

/// One allowed value of a choice setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SettingKind {
    Text,
    /// Never shown back, logged or returned by the API; encrypted at rest.
    Secret,
    Bool,
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    Choice {
        allowed: Vec<Choice>,
    },
    MultiChoice {
        allowed: Vec<Choice>,
    },
}

/// The declaration of one setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingDecl {
    pub key: String,
    pub label: String,
    #[serde(flatten)]
    pub kind: SettingKind,
    pub default: Option<Value>,
    pub required: bool,
    pub help: String,
    pub section: String,
}

impl SettingDecl {
    fn new(key: &str, label: &str, kind: SettingKind) -> Self {
        Self {
            key: key.to_owned(),
            label: label.to_owned(),
            kind,
            default: None,
            required: false,
            help: String::new(),
            section: String::new(),
        }
    }

    pub fn text(key: &str, label: &str) -> Self {
        Self::new(key, label, SettingKind::Text)
    }

    pub fn secret(key: &str, label: &str) -> Self {
        Self::new(key, label, SettingKind::Secret)
    }

    pub fn bool(key: &str, label: &str) -> Self {
        Self::new(key, label, SettingKind::Bool).default(false)
    }

    pub fn integer(key: &str, label: &str, min: Option<i64>, max: Option<i64>) -> Self {
        Self::new(key, label, SettingKind::Integer { min, max })
    }

    pub fn choice(key: &str, label: &str, allowed: &[(&str, &str)]) -> Self {
        Self::new(
            key,
            label,
            SettingKind::Choice {
                allowed: choices(allowed),
            },
        )
    }

    pub fn multi_choice(key: &str, label: &str, allowed: &[(&str, &str)]) -> Self {
        Self::new(
            key,
            label,
            SettingKind::MultiChoice {
                allowed: choices(allowed),
            },
        )
        .default(Value::Array(Vec::new()))
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    pub fn help(mut self, help: &str) -> Self {
        self.help = help.to_owned();
        self
    }

    pub fn section(mut self, section: &str) -> Self {
        self.section = section.to_owned();
        self
    }

    pub fn is_secret(&self) -> bool {
        matches!(self.kind, SettingKind::Secret)
    }

    fn check(&self) -> Result<(), String> {
        if self.label.trim().is_empty() {
            return Err(format!("setting {:?} has no label", self.key));
        }
        let allowed = match &self.kind {
            SettingKind::Choice { allowed } | SettingKind::MultiChoice { allowed } => allowed,
            SettingKind::Integer {
                min: Some(min),
                max: Some(max),
            } if min > max => {
                return Err(format!("setting {:?}: min is above max", self.key));
            }
            _ => return Ok(()),
        };
        let known = |v: &Value| {
            v.as_str()
                .is_some_and(|s| allowed.iter().any(|c| c.value == s))
        };
        let default_ok = match (&self.kind, &self.default) {
            (_, None) => true,
            (SettingKind::Choice { .. }, Some(v)) => known(v),
            (_, Some(Value::Array(items))) => items.iter().all(known),
            _ => false,
        };
        if default_ok {
            Ok(())
        } else {
            Err(format!(
                "setting {:?}: default is not among its allowed values",
                self.key
            ))
        }
    }
}

fn choices(allowed: &[(&str, &str)]) -> Vec<Choice> {
    allowed
        .iter()
        .map(|(value, label)| Choice {
            value: (*value).to_owned(),
            label: (*label).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::new(
            "sample",
            "Sample",
            "1.0.0",
            "",
            vec![EventTypeDecl::new(
                "support_conference_end",
                "Support Session End",
            )],
            vec![],
            vec![SettingDecl::text("target", "Target").section("Sample")],
        )
    }

    #[test]
    fn common_section_comes_first_with_the_plugins_event_types() {
        let m = sample();
        assert_eq!(m.settings[0].key, "appliance_id");
        assert_eq!(m.settings.last().map(|s| s.key.as_str()), Some("target"));
        let outbound = m.setting("outbound_event_types").expect("declared");
        assert_eq!(outbound.section, BT_SECTION);
        match &outbound.kind {
            SettingKind::MultiChoice { allowed } => {
                assert_eq!(allowed.len(), 1);
                assert_eq!(allowed[0].value, "support_conference_end");
            }
            other => panic!("unexpected kind {other:?}"),
        }
        assert!(m
            .setting("bt_client_secret")
            .is_some_and(SettingDecl::is_secret));
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn check_refuses_bad_declarations() {
        let mut m = sample();
        m.id = "Bad Id".into();
        assert!(m.check().is_err_and(|e| e.contains("plugin id")));

        let mut m = sample();
        m.settings.push(SettingDecl::text("target", "Again"));
        assert_eq!(
            m.check(),
            Err("setting \"target\" is declared twice".to_owned())
        );

        let mut m = sample();
        m.settings
            .push(SettingDecl::choice("mode", "Mode", &[("a", "A")]).default("b"));
        assert!(m.check().is_err_and(|e| e.contains("default is not among")));
    }

    #[test]
    fn declarations_serialize_with_their_type() {
        let decl = SettingDecl::integer("n", "N", Some(1), None).required();
        let json = serde_json::to_value(&decl).expect("serialize");
        assert_eq!(json["type"], "integer");
        assert_eq!(json["min"], 1);
        let back: SettingDecl = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, decl);
    }
}
