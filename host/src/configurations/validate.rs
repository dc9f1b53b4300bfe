//! Raw configuration input checked against the plugin's declarations, once, when it
//! is saved. What passes is a [`Validated`] configuration the rest of the host trusts.

use std::collections::BTreeMap;

use plugin_api::manifest::{Manifest, SettingDecl, SettingKind};
use plugin_api::Settings;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Field key -> message, shown next to each field.
pub type FieldErrors = BTreeMap<String, String>;

/// The body of `POST /api/configurations` and `PUT /api/configurations/{id}`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationInput {
    pub plugin: String,
    pub name: String,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub settings: Map<String, Value>,
}

/// A configuration whose every field is well typed, defaults filled in, secrets
/// included; `errors` holds what the cross-field rules found (empty when valid).
pub struct Validated {
    pub name: String,
    pub disabled: bool,
    pub settings: Settings,
    pub errors: FieldErrors,
}

/// Names the settings given, never their values (secrets are among them).
impl std::fmt::Debug for ConfigurationInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigurationInput")
            .field("plugin", &self.plugin)
            .field("name", &self.name)
            .field("disabled", &self.disabled)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

const MAX_NAME: usize = 100;
const MAX_TEXT: usize = 4096;

/// Checks `input` against `manifest`: field by field (an error there is returned at
/// once), then the common section's cross-field rules (returned in `errors`, so the
/// plugin's own checks can add theirs). `stored_secrets` holds the secrets of the
/// configuration being edited: a secret left out (or null) keeps its stored value.
pub fn validate(
    manifest: &Manifest,
    input: &ConfigurationInput,
    stored_secrets: &Settings,
) -> Result<Validated, FieldErrors> {
    let mut errors = FieldErrors::new();
    let name = input.name.trim().to_owned();
    if name.is_empty() {
        errors.insert("name".into(), "is required".into());
    } else if name.chars().count() > MAX_NAME {
        errors.insert(
            "name".into(),
            format!("must be at most {MAX_NAME} characters"),
        );
    } else if name.chars().any(char::is_control) {
        errors.insert("name".into(), "must not contain control characters".into());
    }
    for key in input.settings.keys() {
        if manifest.setting(key).is_none() {
            errors.insert(
                key.clone(),
                format!("unknown setting: {} has no setting {key:?}", manifest.name),
            );
        }
    }
    let mut settings = Settings::default();
    for decl in &manifest.settings {
        let given = input.settings.get(&decl.key).filter(|v| !v.is_null());
        let value = match given {
            None if decl.is_secret() && stored_secrets.get(&decl.key).is_some() => {
                stored_secrets.get(&decl.key).cloned()
            }
            None => decl.default.clone(),
            Some(raw) => match check_value(decl, raw) {
                Ok(v) => v,
                Err(message) => {
                    errors.insert(decl.key.clone(), message);
                    continue;
                }
            },
        };
        match value {
            Some(v) => settings.set(&decl.key, v),
            None if decl.required => {
                errors.insert(decl.key.clone(), "is required".into());
            }
            None => {}
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if let Err(faults) = plugin_api::CommonSettings::parse(&settings) {
        for e in faults {
            errors.entry(e.key).or_insert(e.message);
        }
    }
    Ok(Validated {
        name,
        disabled: input.disabled.unwrap_or(false),
        settings,
        errors,
    })
}

/// Checks one given value against its declaration; `Ok(None)` means "empty".
fn check_value(decl: &SettingDecl, raw: &Value) -> Result<Option<Value>, String> {
    match &decl.kind {
        SettingKind::Text | SettingKind::Secret => {
            let Some(text) = raw.as_str() else {
                return Err("must be text".into());
            };
            // Secrets are kept as typed; surrounding spaces in other text are noise.
            let text = if decl.is_secret() { text } else { text.trim() };
            if text.chars().count() > MAX_TEXT {
                return Err(format!("must be at most {MAX_TEXT} characters"));
            }
            if text.is_empty() {
                Ok(None)
            } else {
                Ok(Some(Value::from(text)))
            }
        }
        SettingKind::Bool => raw
            .as_bool()
            .map(|b| Some(Value::from(b)))
            .ok_or_else(|| "must be true or false".into()),
        SettingKind::Integer { min, max } => {
            let Some(n) = raw.as_i64() else {
                return Err("must be a whole number".into());
            };
            if let Some(min) = min.filter(|min| n < *min) {
                return Err(format!("must be at least {min}"));
            }
            if let Some(max) = max.filter(|max| n > *max) {
                return Err(format!("must be at most {max}"));
            }
            Ok(Some(Value::from(n)))
        }
        SettingKind::Choice { allowed } => {
            let one_of = || {
                let values: Vec<&str> = allowed.iter().map(|c| c.value.as_str()).collect();
                format!("must be one of: {}", values.join(", "))
            };
            match raw.as_str() {
                Some("") => Ok(None),
                Some(s) if allowed.iter().any(|c| c.value == s) => Ok(Some(Value::from(s))),
                _ => Err(one_of()),
            }
        }
        SettingKind::MultiChoice { allowed } => {
            let Some(items) = raw.as_array() else {
                return Err("must be a list".into());
            };
            let mut chosen: Vec<String> = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) if allowed.iter().any(|c| c.value == s) => {
                        if !chosen.iter().any(|c| c == s) {
                            chosen.push(s.to_owned());
                        }
                    }
                    _ => {
                        let values: Vec<&str> = allowed.iter().map(|c| c.value.as_str()).collect();
                        return Err(format!(
                            "{item} is not one of the choices: {}",
                            if values.is_empty() {
                                "(none)".to_owned()
                            } else {
                                values.join(", ")
                            }
                        ));
                    }
                }
            }
            Ok(Some(Value::from(chosen)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::{EventTypeDecl, SettingDecl};
    use serde_json::json;

    fn manifest() -> Manifest {
        let end = EventTypeDecl::new("support_conference_end", "Support Session End");
        Manifest::new(
            "sample",
            "Sample",
            "1",
            "",
            vec![end.clone()],
            vec![end],
            vec![
                SettingDecl::text("target", "Target").required(),
                SettingDecl::choice("mode", "Mode", &[("fast", "Fast"), ("safe", "Safe")])
                    .default("safe"),
            ],
        )
    }

    fn input(settings: Value) -> ConfigurationInput {
        ConfigurationInput {
            plugin: "sample".into(),
            name: " Production ".into(),
            disabled: None,
            settings: settings.as_object().cloned().unwrap_or_default(),
        }
    }

    fn good() -> Value {
        json!({
            "bt_hostname": "bt.example.com", "bt_client_id": "client",
            "bt_client_secret": "s3cret", "target": "x",
            "outbound_event_types": ["support_conference_end"],
        })
    }

    #[test]
    fn valid_input_gets_defaults_and_a_trimmed_name() {
        let v = validate(&manifest(), &input(good()), &Settings::default()).expect("valid");
        assert!(v.errors.is_empty());
        assert_eq!(v.name, "Production");
        assert!(!v.disabled);
        assert_eq!(v.settings.str("appliance_id"), Some("Default"));
        assert_eq!(v.settings.str("bt_locale"), Some("en-us"));
        assert_eq!(v.settings.str("mode"), Some("safe"));
        assert_eq!(v.settings.int("retry_attempt_limit"), Some(3));
        assert_eq!(v.settings.str("bt_client_secret"), Some("s3cret"));
    }

    #[test]
    fn each_field_gets_its_own_message() {
        let mut bad = good();
        bad["bt_client_secret"] = Value::Null;
        bad["target"] = json!("");
        bad["mode"] = json!("reckless");
        bad["retry_attempt_limit"] = json!(500);
        bad["allow_invalid_certificates"] = json!("yes");
        bad["outbound_event_types"] = json!(["support_conference_begin"]);
        bad["nonsense"] = json!(1);
        let mut i = input(bad);
        i.name = "  ".into();
        let errors = validate(&manifest(), &i, &Settings::default())
            .err()
            .expect("invalid");
        let expected: FieldErrors = [
            ("allow_invalid_certificates", "must be true or false"),
            ("bt_client_secret", "is required"),
            ("mode", "must be one of: fast, safe"),
            ("name", "is required"),
            (
                "nonsense",
                "unknown setting: Sample has no setting \"nonsense\"",
            ),
            (
                "outbound_event_types",
                "\"support_conference_begin\" is not one of the choices: support_conference_end",
            ),
            ("retry_attempt_limit", "must be at most 100"),
            ("target", "is required"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(errors, expected);
    }

    #[test]
    fn a_secret_left_out_keeps_the_stored_one() {
        let mut without = good();
        without
            .as_object_mut()
            .map(|o| o.remove("bt_client_secret"));
        let mut stored = Settings::default();
        stored.set("bt_client_secret", "kept");
        let v = validate(&manifest(), &input(without), &stored).expect("valid");
        assert_eq!(v.settings.str("bt_client_secret"), Some("kept"));
    }

    #[test]
    fn common_rules_run_once_the_fields_are_well_typed() {
        let mut bad = good();
        bad["bt_hostname"] = json!("https://bt.example.com/");
        bad["polling_event_types"] = json!(["support_conference_end"]);
        let errors = validate(&manifest(), &input(bad), &Settings::default())
            .expect("well typed")
            .errors;
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            vec!["bt_hostname", "polling_interval_seconds"]
        );
        let mut short = good();
        short["polling_event_types"] = json!(["support_conference_end"]);
        short["polling_interval_seconds"] = json!(10);
        let errors = validate(&manifest(), &input(short), &Settings::default())
            .err()
            .expect("ill typed");
        assert_eq!(
            errors.get("polling_interval_seconds").map(String::as_str),
            Some("must be at least 30")
        );
    }
}

/// Fuzzing the settings validation: any JSON for any key gives field errors or a
/// valid configuration, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use plugin_api::{EventTypeDecl, SettingDecl};
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,300}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_settings_get_a_verdict(
            name in ".{0,150}",
            values in proptest::collection::vec((0usize..20, json_value()), 0..20),
        ) {
            let end = EventTypeDecl::new("support_conference_end", "Support Session End");
            let manifest = Manifest::new("f", "F", "1", "", vec![end.clone()], vec![end], vec![SettingDecl::text("target", "Target")]);
            let keys: Vec<String> = manifest.settings.iter().map(|s| s.key.clone()).chain(["unknown".to_owned()]).collect();
            let settings: Map<String, Value> = values.into_iter().map(|(i, v)| (keys[i % keys.len()].clone(), v)).collect();
            let input = ConfigurationInput { plugin: "f".into(), name, disabled: None, settings };
            match validate(&manifest, &input, &Settings::default()) {
                Ok(v) => prop_assert!(v.errors.values().all(|m| !m.is_empty())),
                Err(errors) => prop_assert!(!errors.is_empty() && errors.values().all(|m| !m.is_empty())),
            }
        }
    }
}
