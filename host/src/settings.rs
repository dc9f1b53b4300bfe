//! The host's own settings: read once from a TOML file, environment variables and
//! flags (in rising precedence), validated once, then trusted.
//!
//! Every setting is declared once, in the `settings!` table: its file key, flag, environment variable, kind of value, default and
//! help. From that one table come the flags (`--help` included), the environment and
//! file readers, the range checks, the README's reference table ([`reference_markdown`])
//! and the example file ([`example_toml`]). Three layers, as in ripgrep's flags:
//!
//! - [`SETTINGS`]: the declarations ([`Setting`]);
//! - [`SettingsArgs`]: the low-level values, one `Option` per setting, as given by one
//!   source (flags and environment, the file, the defaults) and merged field by field;
//! - [`HostSettings`]: the validated, trusted type the rest of the host reads.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};

/// Where the original product listens for its admin tool.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:53231";
/// Where the appliance sends outbound events by default.
pub const DEFAULT_EVENT_LISTEN: &str = "0.0.0.0:8180";
/// The flag and the environment variable naming the settings file.
const CONFIG_FLAG: &str = "config";
const CONFIG_ENV: &str = "MWE_CONFIG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per record.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The names a file, a flag or a variable may give, in declaration order.
    pub const NAMES: &'static [&'static str] = &["human", "json"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "human" => Some(Self::Human),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// What kind of value a setting takes: how it is parsed, checked and documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file or folder; relative in the file means relative to the file.
    Path,
    /// An IP address and port.
    Addr,
    /// A whole number in `min..=max` (`max` of `u64::MAX`: no upper bound).
    Int { min: u64, max: u64 },
    /// A duration, as a whole number of seconds, at least `min`.
    Seconds { min: u64 },
    /// A duration, as a whole number of milliseconds, at least `min`.
    Millis { min: u64 },
    /// `true` or `false`.
    Bool,
    /// A list of text values (a TOML array; comma-separated in a flag or variable).
    List,
    /// Free text.
    Text,
    /// One of these names.
    Enum(&'static [&'static str]),
    /// Text that is never shown: redacted in Debug, hidden in `--help`.
    Secret,
}

impl Kind {
    pub fn is_secret(&self) -> bool {
        matches!(self, Kind::Secret)
    }

    /// The value in a few words, for the reference table and the example file.
    pub fn describe(&self) -> String {
        match self {
            Kind::Path => "path".into(),
            Kind::Addr => "address:port".into(),
            Kind::Int { min, max } if *max == u64::MAX => format!("integer, at least {min}"),
            Kind::Int { min, max } => format!("integer, {min} to {max}"),
            Kind::Seconds { min: 0 } => "seconds".into(),
            Kind::Seconds { min } => format!("seconds, at least {min}"),
            Kind::Millis { min: 0 } => "milliseconds".into(),
            Kind::Millis { min } => format!("milliseconds, at least {min}"),
            Kind::Bool => "`true` or `false`".into(),
            Kind::List => "list".into(),
            Kind::Text => "text".into(),
            Kind::Enum(names) => names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            Kind::Secret => "secret".into(),
        }
    }

    /// What `--help` adds after the help text, for values whose form it does not say.
    fn help_note(&self) -> Option<String> {
        match self {
            Kind::Path | Kind::Addr | Kind::Text | Kind::Secret => None,
            Kind::List => Some("comma-separated".into()),
            Kind::Bool => Some("true or false".into()),
            Kind::Enum(names) => Some(names.join(" or ")),
            _ => Some(self.describe()),
        }
    }

    /// What a file value of this kind must be, for error messages.
    fn expected(&self) -> String {
        match self {
            Kind::Path => "a path (a string)".into(),
            Kind::Addr => "an address and port (a string such as \"127.0.0.1:8180\")".into(),
            Kind::Int { .. } => "a whole number".into(),
            Kind::Seconds { .. } => "a whole number of seconds".into(),
            Kind::Millis { .. } => "a whole number of milliseconds".into(),
            Kind::Bool => "true or false".into(),
            Kind::List => "a list of strings".into(),
            Kind::Text | Kind::Secret => "a string".into(),
            Kind::Enum(names) => format!("one of the strings {}", quoted_list(names)),
        }
    }
}

/// A setting's value when no source gives one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, written as a flag would give it.
    Value(&'static str),
    /// No value; the text says what that means ("none", "any").
    Unset(&'static str),
}

/// One setting's declaration.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key in the settings file.
    pub key: &'static str,
    /// The long flag, without its dashes.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The placeholder of the value in `--help`.
    pub value_name: &'static str,
    pub kind: Kind,
    pub default: Fallback,
    pub help: &'static str,
}

impl Setting {
    /// The default as the docs show it: `` `120` `` or "none".
    pub fn default_shown(&self) -> String {
        match self.default {
            Fallback::Value(v) => format!("`{v}`"),
            Fallback::Unset(text) => text.to_owned(),
        }
    }

    /// The help line of the flag: the help, the value's form, the default, the variable.
    pub fn help_line(&self) -> String {
        let mut line = self.help.to_owned();
        if let Some(note) = self.kind.help_note() {
            line.push_str(&format!(" ({note})"));
        }
        let default = match self.default {
            Fallback::Value(v) | Fallback::Unset(v) => v,
        };
        line.push_str(&format!(" [default: {default}] [env: {}]", self.env));
        line
    }

    /// The default as a TOML value, when it has one a file can write.
    fn example_value(&self) -> Option<String> {
        match (self.default, self.kind) {
            (Fallback::Value(v), Kind::Int { .. } | Kind::Seconds { .. } | Kind::Millis { .. })
            | (Fallback::Value(v), Kind::Bool) => Some(v.to_owned()),
            (Fallback::Value(v), Kind::List) => Some(
                toml::Value::Array(split_list(v).into_iter().map(toml::Value::String).collect())
                    .to_string(),
            ),
            (Fallback::Value(v), _) => Some(toml::Value::String(v.to_owned()).to_string()),
            (Fallback::Unset(_), Kind::List) => Some("[]".into()),
            (Fallback::Unset(_), Kind::Text | Kind::Secret) => Some("\"\"".into()),
            (Fallback::Unset(_), _) => None,
        }
    }
}

/// A setting's value type: parsed from text (a flag, a variable, a default) or from a
/// file value, and checked against its kind.
trait SettingValue: Sized + Clone + Send + Sync + 'static {
    /// From a flag, an environment variable or a declared default. The message never
    /// repeats the text (it may be a secret).
    fn parse(kind: &Kind, text: &str) -> Result<Self, String>;

    /// From the settings file; relative paths are joined to `base`.
    fn from_toml(kind: &Kind, value: &toml::Value, base: &Path) -> Result<Self, String>;

    /// The kind's range rule; the message follows the key ("must be ...").
    fn check(&self, _kind: &Kind) -> Result<(), String> {
        Ok(())
    }

    /// The flag.
    fn arg(setting: &'static Setting) -> Arg {
        base_arg(setting)
            .action(ArgAction::Set)
            .value_parser(move |text: &str| Self::parse(&setting.kind, text))
    }

    /// The flag's value, if given.
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.try_get_one::<Self>(id).ok().flatten().cloned()
    }
}

fn base_arg(setting: &'static Setting) -> Arg {
    Arg::new(setting.key)
        .long(setting.flag)
        .global(true)
        .value_name(setting.value_name)
        .help(setting.help_line())
}

/// The found type of a file value, for "expected ..., found a string".
fn found(value: &toml::Value) -> String {
    let kind = value.type_str();
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

fn mismatch(kind: &Kind, value: &toml::Value) -> String {
    format!("expected {}, found {}", kind.expected(), found(value))
}

fn toml_str<'a>(kind: &Kind, value: &'a toml::Value) -> Result<&'a str, String> {
    value.as_str().ok_or_else(|| mismatch(kind, value))
}

fn toml_u64(kind: &Kind, value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| format!("expected {}, not below 0", kind.expected()))
        }
        other => Err(mismatch(kind, other)),
    }
}

fn parse_u64(kind: &Kind, text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("expected {}", kind.expected()))
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(str::to_owned).collect()
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SettingValue for PathBuf {
    fn parse(_kind: &Kind, text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("expected a path, found nothing".into());
        }
        Ok(PathBuf::from(text))
    }

    fn from_toml(kind: &Kind, value: &toml::Value, base: &Path) -> Result<Self, String> {
        // Relative paths in the file are relative to the file, so a service started
        // from anywhere finds the same folders.
        Self::parse(kind, toml_str(kind, value)?).map(|p| base.join(p))
    }
}

impl SettingValue for SocketAddr {
    fn parse(kind: &Kind, text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|e| format!("{e}: expected {}", kind.expected()))
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        Self::parse(kind, toml_str(kind, value)?)
    }
}

impl SettingValue for u64 {
    fn parse(kind: &Kind, text: &str) -> Result<Self, String> {
        parse_u64(kind, text)
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        toml_u64(kind, value)
    }

    fn check(&self, kind: &Kind) -> Result<(), String> {
        match *kind {
            Kind::Int { min, max } if !(min..=max).contains(self) => Err(if max == u64::MAX {
                format!("must be at least {min}")
            } else {
                format!("must be between {min} and {max}")
            }),
            _ => Ok(()),
        }
    }
}

impl SettingValue for Duration {
    fn parse(kind: &Kind, text: &str) -> Result<Self, String> {
        let n = parse_u64(kind, text)?;
        Ok(match kind {
            Kind::Millis { .. } => Duration::from_millis(n),
            _ => Duration::from_secs(n),
        })
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        let n = toml_u64(kind, value)?;
        Ok(match kind {
            Kind::Millis { .. } => Duration::from_millis(n),
            _ => Duration::from_secs(n),
        })
    }

    fn check(&self, kind: &Kind) -> Result<(), String> {
        match *kind {
            Kind::Seconds { min } if self.as_secs() < min => Err(format!(
                "must be at least {min} second{}",
                if min == 1 { "" } else { "s" }
            )),
            Kind::Millis { min } if self.as_millis() < u128::from(min) => {
                Err(format!("must be at least {min} ms"))
            }
            _ => Ok(()),
        }
    }
}

impl SettingValue for bool {
    fn parse(kind: &Kind, text: &str) -> Result<Self, String> {
        match text.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("expected {}", kind.expected())),
        }
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        value.as_bool().ok_or_else(|| mismatch(kind, value))
    }
}

impl SettingValue for String {
    fn parse(_kind: &Kind, text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        toml_str(kind, value).map(str::to_owned)
    }
}

impl SettingValue for Vec<String> {
    fn parse(_kind: &Kind, text: &str) -> Result<Self, String> {
        Ok(split_list(text))
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("expected {}, found another kind of item", kind.expected())),
            other => Err(mismatch(kind, other)),
        }
    }

    /// A list flag may be given more than once, each time comma-separated.
    fn arg(setting: &'static Setting) -> Arg {
        base_arg(setting)
            .action(ArgAction::Append)
            .value_parser(move |text: &str| Self::parse(&setting.kind, text))
    }

    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        let given = matches.try_get_many::<Self>(id).ok().flatten()?;
        Some(given.flatten().cloned().collect())
    }
}

impl SettingValue for LogFormat {
    fn parse(kind: &Kind, text: &str) -> Result<Self, String> {
        LogFormat::from_name(text.trim()).ok_or_else(|| format!("expected {}", kind.expected()))
    }

    fn from_toml(kind: &Kind, value: &toml::Value, _base: &Path) -> Result<Self, String> {
        Self::parse(kind, toml_str(kind, value)?)
    }
}

/// The Rust type of a kind's low-level value.
macro_rules! setting_type {
    (Path) => { PathBuf };
    (Addr) => { SocketAddr };
    (Int $($range:tt)*) => { u64 };
    (Seconds $($min:tt)*) => { Duration };
    (Millis $($min:tt)*) => { Duration };
    (Bool) => { bool };
    (List) => { Vec<String> };
    (Text) => { String };
    (Secret) => { String };
    (Enum($t:ident)) => { $t };
}

/// The [`Kind`] value of a declaration's `kind:`.
macro_rules! setting_kind {
    (Path) => {
        Kind::Path
    };
    (Addr) => {
        Kind::Addr
    };
    (Int($min:tt)) => {
        Kind::Int {
            min: $min,
            max: u64::MAX,
        }
    };
    (Int($min:tt, $max:tt)) => {
        Kind::Int {
            min: $min,
            max: $max,
        }
    };
    (Seconds) => {
        Kind::Seconds { min: 0 }
    };
    (Seconds($min:tt)) => {
        Kind::Seconds { min: $min }
    };
    (Millis) => {
        Kind::Millis { min: 0 }
    };
    (Millis($min:tt)) => {
        Kind::Millis { min: $min }
    };
    (Bool) => {
        Kind::Bool
    };
    (List) => {
        Kind::List
    };
    (Text) => {
        Kind::Text
    };
    (Secret) => {
        Kind::Secret
    };
    (Enum($t:ident)) => {
        Kind::Enum($t::NAMES)
    };
}

/// `default: "x"` or `unset: "what unset means"`, exactly one of them.
macro_rules! setting_default {
    ($value:expr ;) => {
        Fallback::Value($value)
    };
    (; $unset:expr) => {
        Fallback::Unset($unset)
    };
}

/// The one table: each entry declares a setting, and everything else is generated from
/// it: the declaration statics and [`SETTINGS`], the fields of [`SettingsArgs`], its flags,
/// its environment, file and default readers, its merge and its range checks.
macro_rules! settings {
    ($(
        $key:ident {
            kind: $kind:ident $(( $($karg:tt),* ))?,
            flag: $flag:literal,
            env: $env:literal,
            value_name: $value_name:literal,
            $(default: $default:expr,)?
            $(unset: $unset:expr,)?
            help: $help:expr $(,)?
        }
    ),* $(,)?) => {
        /// One static per setting, named as its key.
        #[allow(non_upper_case_globals)]
        pub mod decl {
            use super::*;
            $(
                pub static $key: Setting = Setting {
                    key: stringify!($key),
                    flag: $flag,
                    env: $env,
                    value_name: $value_name,
                    kind: setting_kind!($kind $(( $($karg),* ))?),
                    default: setting_default!($($default)? ; $($unset)?),
                    help: $help,
                };
            )*
        }

        /// Every setting, in the order `--help`, the README and the example file show.
        pub static SETTINGS: &[&Setting] = &[$(&decl::$key),*];

        /// Low-level settings from one source, or merged: each `None` when not given.
        /// From the command line, [`clap::Args`] fills it with the flags over the
        /// `MWE_*` environment variables.
        #[derive(Clone, Default)]
        pub struct SettingsArgs {
            /// The TOML settings file (`--config`, `MWE_CONFIG`).
            pub config: Option<PathBuf>,
            $(pub $key: Option<setting_type!($kind $(( $($karg),* ))?)>,)*
        }

        impl SettingsArgs {
            /// The flags of every setting.
            fn setting_args() -> Vec<Arg> {
                vec![$(<setting_type!($kind $(( $($karg),* ))?) as SettingValue>::arg(&decl::$key)),*]
            }

            /// Each setting's flag, or else its environment variable.
            pub fn from_parts(
                matches: &ArgMatches,
                env: &dyn Fn(&str) -> Option<OsString>,
            ) -> Result<Self, String> {
                Ok(Self {
                    config: match matches.try_get_one::<PathBuf>(CONFIG_FLAG).ok().flatten() {
                        Some(path) => Some(path.clone()),
                        None => env_text(CONFIG_ENV, env)?.map(PathBuf::from),
                    },
                    $($key: {
                        type T = setting_type!($kind $(( $($karg),* ))?);
                        match <T as SettingValue>::from_matches(matches, decl::$key.key) {
                            Some(value) => Some(value),
                            None => from_env::<T>(&decl::$key, env)?,
                        }
                    },)*
                })
            }

            /// Sets the setting of this file key; `None` for a key no setting has.
            fn set_from_toml(
                &mut self,
                key: &str,
                value: &toml::Value,
                base: &Path,
            ) -> Option<Result<(), String>> {
                $(
                    if key == decl::$key.key {
                        type T = setting_type!($kind $(( $($karg),* ))?);
                        return Some(
                            <T as SettingValue>::from_toml(&decl::$key.kind, value, base)
                                .map(|v| self.$key = Some(v)),
                        );
                    }
                )*
                None
            }

            /// Every declared default.
            pub fn defaults() -> Result<Self, SettingsError> {
                Ok(Self {
                    config: None,
                    $($key: {
                        type T = setting_type!($kind $(( $($karg),* ))?);
                        match decl::$key.default {
                            Fallback::Value(text) => Some(
                                <T as SettingValue>::parse(&decl::$key.kind, text).map_err(|e| {
                                    SettingsError::Invalid(format!(
                                        "the default of {} ({text}) is not valid: {e}",
                                        decl::$key.key
                                    ))
                                })?,
                            ),
                            Fallback::Unset(_) => None,
                        }
                    },)*
                })
            }

            /// Each value of `self`, or else of `lower`.
            pub fn or(self, lower: Self) -> Self {
                Self {
                    config: self.config.or(lower.config),
                    $($key: self.$key.or(lower.$key),)*
                }
            }

            /// Each given value against its kind's range.
            fn check_values(&self) -> Result<(), SettingsError> {
                $(
                    if let Some(value) = &self.$key {
                        SettingValue::check(value, &decl::$key.kind).map_err(|rule| {
                            SettingsError::Invalid(format!("{} {rule}", decl::$key.key))
                        })?;
                    }
                )*
                Ok(())
            }
        }

        impl std::fmt::Debug for SettingsArgs {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut out = f.debug_struct("SettingsArgs");
                out.field("config", &self.config);
                $(
                    if decl::$key.kind.is_secret() {
                        out.field(decl::$key.key, &self.$key.as_ref().map(|_| "[redacted]"));
                    } else {
                        out.field(decl::$key.key, &self.$key);
                    }
                )*
                out.finish()
            }
        }
    };
}

settings! {
    plugins_dir {
        kind: Path,
        flag: "plugins-dir",
        env: "MWE_PLUGINS_DIR",
        value_name: "DIR",
        default: "Plugins",
        help: "Folder holding one subfolder per plugin",
    },
    data_dir {
        kind: Path,
        flag: "data-dir",
        env: "MWE_DATA_DIR",
        value_name: "DIR",
        default: "data",
        help: "Folder for the host's database and key file, created if missing",
    },
    database_url {
        kind: Secret,
        flag: "database-url",
        env: "MWE_DATABASE_URL",
        value_name: "URL",
        unset: "none (the embedded SQLite store in data_dir)",
        help: "A postgres:// URL: the PostgreSQL database several engines share (configurations, \
               queue, history). Every engine on it needs the same secret_key_file. Prefer the \
               environment variable (the URL may hold a password)",
    },
    secret_key_file {
        kind: Path,
        flag: "secret-key-file",
        env: "MWE_SECRET_KEY_FILE",
        value_name: "FILE",
        unset: "secret.key in data_dir",
        help: "Key file that seals the configurations' secrets, created owner-only when missing; \
               engines sharing a database must each hold a copy of the same file",
    },
    engine_name {
        kind: Text,
        flag: "engine-name",
        env: "MWE_ENGINE_NAME",
        value_name: "NAME",
        unset: "the host name and the event port",
        help: "How this engine is named in the list of engines on a shared database",
    },
    lease_seconds {
        kind: Seconds(3),
        flag: "lease-seconds",
        env: "MWE_LEASE_SECONDS",
        value_name: "SECONDS",
        default: "30",
        help: "On a shared database: how long an engine that stopped answering keeps the jobs \
               and the polling it took before another engine takes them over",
    },
    admin_listen {
        kind: Addr,
        flag: "admin-listen",
        env: "MWE_ADMIN_LISTEN",
        value_name: "ADDR",
        default: DEFAULT_ADMIN_LISTEN,
        help: "Address of the admin page and API",
    },
    event_listen {
        kind: Addr,
        flag: "event-listen",
        env: "MWE_EVENT_LISTEN",
        value_name: "ADDR",
        default: DEFAULT_EVENT_LISTEN,
        help: "Address the appliance posts outbound events to",
    },
    log_level {
        kind: Text,
        flag: "log-level",
        env: "MWE_LOG_LEVEL",
        value_name: "LEVEL",
        default: "info",
        help: "Log filter: error, warn, info, debug, trace, or a tracing directive",
    },
    log_format {
        kind: Enum(LogFormat),
        flag: "log-format",
        env: "MWE_LOG_FORMAT",
        value_name: "FORMAT",
        default: "human",
        help: "Log format: one readable line per record, or one JSON object per line",
    },
    plugin_call_timeout {
        kind: Seconds(1),
        flag: "plugin-call-timeout",
        env: "MWE_PLUGIN_CALL_TIMEOUT",
        value_name: "SECONDS",
        default: "120",
        help: "Longest a single plugin call may take",
    },
    plugin_concurrency {
        kind: Int(1, 64),
        flag: "plugin-concurrency",
        env: "MWE_PLUGIN_CONCURRENCY",
        value_name: "N",
        default: "4",
        help: "Plugin calls in flight at once per configuration",
    },
    admin_token {
        kind: Secret,
        flag: "admin-token",
        env: "MWE_ADMIN_TOKEN",
        value_name: "TOKEN",
        unset: "none (required off loopback)",
        help: "Token every admin API request must carry (Authorization: Bearer ...), at least \
               16 characters; required when the admin address is not loopback. Prefer the \
               environment variable",
    },
    admin_hostnames {
        kind: List,
        flag: "admin-hostnames",
        env: "MWE_ADMIN_HOSTNAMES",
        value_name: "NAMES",
        unset: "none",
        help: "Extra host names the admin page may be reached by, besides localhost and the \
               listen address",
    },
    event_token {
        kind: Secret,
        flag: "event-token",
        env: "MWE_EVENT_TOKEN",
        value_name: "TOKEN",
        unset: "none",
        help: "Shared token the appliance must send as the form field outbound_event_token. \
               Prefer the environment variable",
    },
    event_allowed_sources {
        kind: List,
        flag: "event-allowed-sources",
        env: "MWE_EVENT_ALLOWED_SOURCES",
        value_name: "LIST",
        unset: "any",
        help: "Addresses or networks (CIDR) allowed to post events",
    },
    retry_backoff_min_ms {
        kind: Millis,
        flag: "retry-backoff-min-ms",
        env: "MWE_RETRY_BACKOFF_MIN_MS",
        value_name: "MS",
        default: "30000",
        help: "Shortest delay before the first retry; above 0, not above retry_backoff_max_ms",
    },
    retry_backoff_max_ms {
        kind: Millis,
        flag: "retry-backoff-max-ms",
        env: "MWE_RETRY_BACKOFF_MAX_MS",
        value_name: "MS",
        default: "1800000",
        help: "Longest delay between retries",
    },
    retention_days {
        kind: Int(1),
        flag: "retention-days",
        env: "MWE_RETENTION_DAYS",
        value_name: "DAYS",
        default: "30",
        help: "Finished events older than this many days are removed from the history",
    },
    shutdown_grace {
        kind: Seconds,
        flag: "shutdown-grace",
        env: "MWE_SHUTDOWN_GRACE",
        value_name: "SECONDS",
        default: "30",
        help: "On shutdown, how long plugin calls in flight may take to finish",
    },
    event_max_connections {
        kind: Int(1, 1_000_000),
        flag: "event-max-connections",
        env: "MWE_EVENT_MAX_CONNECTIONS",
        value_name: "N",
        default: "1024",
        help: "Connections the event address keeps open at once; more wait",
    },
    admin_max_connections {
        kind: Int(1, 1_000_000),
        flag: "admin-max-connections",
        env: "MWE_ADMIN_MAX_CONNECTIONS",
        value_name: "N",
        default: "128",
        help: "Connections the admin address keeps open at once; more wait",
    },
    client_header_timeout {
        kind: Seconds(1),
        flag: "client-header-timeout",
        env: "MWE_CLIENT_HEADER_TIMEOUT",
        value_name: "SECONDS",
        default: "10",
        help: "Time a client has to send a request's headers, from the connection's start or \
               the previous answer; a silent or idle connection is closed then",
    },
    client_body_timeout {
        kind: Seconds(1),
        flag: "client-body-timeout",
        env: "MWE_CLIENT_BODY_TIMEOUT",
        value_name: "SECONDS",
        default: "30",
        help: "Time a client has to send a request's whole body (408 past it)",
    },
    event_tls_cert {
        kind: Path,
        flag: "event-tls-cert",
        env: "MWE_EVENT_TLS_CERT",
        value_name: "FILE",
        unset: "none (plain HTTP)",
        help: "PEM certificate chain of the event address; with event_tls_key it serves HTTPS \
               only. Reloaded on SIGHUP and when the file changes",
    },
    event_tls_key {
        kind: Path,
        flag: "event-tls-key",
        env: "MWE_EVENT_TLS_KEY",
        value_name: "FILE",
        unset: "none",
        help: "PEM private key (PKCS#8, PKCS#1 or SEC1) of event_tls_cert",
    },
    admin_tls_cert {
        kind: Path,
        flag: "admin-tls-cert",
        env: "MWE_ADMIN_TLS_CERT",
        value_name: "FILE",
        unset: "none (plain HTTP)",
        help: "PEM certificate chain of the admin address; with admin_tls_key it serves HTTPS \
               only. Reloaded on SIGHUP and when the file changes",
    },
    admin_tls_key {
        kind: Path,
        flag: "admin-tls-key",
        env: "MWE_ADMIN_TLS_KEY",
        value_name: "FILE",
        unset: "none",
        help: "PEM private key (PKCS#8, PKCS#1 or SEC1) of admin_tls_cert",
    },
}

/// An environment variable's text; unset, empty or absent alike.
fn env_text(name: &str, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Option<String>, String> {
    match env(name) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| format!("the environment variable {name} is not UTF-8 text")),
    }
}

/// A setting's value from its environment variable; the error names the variable (and
/// the value, unless it is a secret).
fn from_env<T: SettingValue>(
    setting: &'static Setting,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<T>, String> {
    let Some(text) = env_text(setting.env, env)? else {
        return Ok(None);
    };
    T::parse(&setting.kind, &text).map(Some).map_err(|e| {
        if setting.kind.is_secret() {
            format!(
                "invalid value for the environment variable {}: {e}",
                setting.env
            )
        } else {
            format!(
                "invalid value {text:?} for the environment variable {}: {e}",
                setting.env
            )
        }
    })
}

impl clap::FromArgMatches for SettingsArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Self::from_parts(matches, &|name| std::env::var_os(name))
            .map_err(|message| clap::Error::raw(clap::error::ErrorKind::ValueValidation, message))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let given = Self::from_arg_matches(matches)?;
        *self = given.or(std::mem::take(self));
        Ok(())
    }
}

impl clap::Args for SettingsArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new(CONFIG_FLAG)
                .long(CONFIG_FLAG)
                .global(true)
                .value_name("FILE")
                .action(ArgAction::Set)
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!(
                    "TOML file of host settings (keys as the long flags, with '_' for '-') \
                     [env: {CONFIG_ENV}]"
                )),
        )
        .args(Self::setting_args())
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// A secret host setting: compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Validated host settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    pub plugins_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The store: PostgreSQL with `database_url`, else SQLite in the data folder.
    pub store: crate::store::Location,
    pub secret_key_file: PathBuf,
    pub engine_name: Option<String>,
    pub lease: Duration,
    pub admin_listen: SocketAddr,
    pub event_listen: SocketAddr,
    pub log_level: String,
    pub log_format: LogFormat,
    pub plugin_call_timeout: Duration,
    pub plugin_concurrency: usize,
    pub admin_token: Option<SecretString>,
    pub admin_hostnames: Vec<String>,
    pub event_token: Option<SecretString>,
    pub event_allowed_sources: Vec<IpNet>,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub retention: Duration,
    pub shutdown_grace: Duration,
    pub event_max_connections: usize,
    pub admin_max_connections: usize,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    /// The event address' certificate and key: HTTPS when set.
    pub event_tls: Option<TlsFiles>,
    /// The admin address' certificate and key: HTTPS when set.
    pub admin_tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Both files or neither: one alone is a mistake worth stopping for.
fn tls_pair(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cert_key: &str,
    key_key: &str,
) -> Result<Option<TlsFiles>, SettingsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(SettingsError::Invalid(format!(
            "{cert_key} is set but {key_key} is not: set both for HTTPS, or neither for plain HTTP"
        ))),
        (None, Some(_)) => Err(SettingsError::Invalid(format!(
            "{key_key} is set but {cert_key} is not: set both for HTTPS, or neither for plain HTTP"
        ))),
    }
}

/// An address or a network in CIDR form (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(net), std::net::IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (std::net::IpAddr::V6(net), std::net::IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A TOML syntax error, a value of the wrong type or an unknown key, with where.
    #[error("the settings file {path} is not valid{}: {message}", place(.line, .column, .key))]
    Parse {
        path: PathBuf,
        /// 1-based line and column (in characters) of the error, when known.
        line: Option<usize>,
        column: Option<usize>,
        /// The key the error is about, when known.
        key: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

fn place(line: &Option<usize>, column: &Option<usize>, key: &Option<String>) -> String {
    let mut text = String::new();
    if let (Some(line), Some(column)) = (line, column) {
        text.push_str(&format!(" at line {line}, column {column}"));
    }
    if let Some(key) = key {
        text.push_str(&format!(" (key `{key}`)"));
    }
    text
}

/// 1-based line and column (in characters) of a byte offset in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The key of the `key = value` line holding `offset`, for a syntax error's message.
fn key_of_line(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    bare.then(|| key.to_owned())
}

/// The nearest declared key to an unknown one, if it looks like a typo.
fn nearest_key(unknown: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let current = row[j + 1];
                row[j + 1] = if ca == *cb {
                    previous
                } else {
                    1 + previous.min(row[j]).min(current)
                };
                previous = current;
            }
        }
        row[b.len()]
    }
    SETTINGS
        .iter()
        .map(|s| (distance(unknown, s.key), s.key))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, key)| key)
}

impl SettingsArgs {
    /// The settings file's values. Relative paths are relative to the file.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml_text(&text, path, &base)
    }

    /// `text` as a settings file named `path` in the folder `base`.
    pub fn from_toml_text(text: &str, path: &Path, base: &Path) -> Result<Self, SettingsError> {
        let error = |offset: Option<usize>, key: Option<String>, message: String| {
            let (line, column) = offset.map(|o| line_column(text, o)).unzip();
            SettingsError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                key,
                message,
            }
        };
        type Entries =
            std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
        let entries: Entries = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|span| span.start);
            let key = offset.and_then(|o| key_of_line(text, o));
            error(offset, key, e.message().trim().replace('\n', "; "))
        })?;
        // Report the first problem in the file's order.
        let mut entries: Vec<_> = entries.into_iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        let mut args = Self::default();
        for (key, value) in &entries {
            let name = key.get_ref();
            match args.set_from_toml(name, value.get_ref(), base) {
                Some(Ok(())) => {}
                Some(Err(message)) => {
                    return Err(error(Some(value.span().start), Some(name.clone()), message));
                }
                None => {
                    let hint = match nearest_key(name) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!(
                            "expected one of {}",
                            SETTINGS
                                .iter()
                                .map(|s| format!("`{}`", s.key))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    return Err(error(
                        Some(key.span().start),
                        Some(name.clone()),
                        format!("unknown field `{name}`, {hint}"),
                    ));
                }
            }
        }
        Ok(args)
    }
}

/// A value every declared default gives (a missing one is a declaration without a
/// default read as if it had one: a bug, reported rather than panicking).
fn given<T>(value: Option<T>, key: &str) -> Result<T, SettingsError> {
    value.ok_or_else(|| SettingsError::Invalid(format!("{key} has no value and no default")))
}

fn count(value: u64, key: &str) -> Result<usize, SettingsError> {
    usize::try_from(value).map_err(|_| SettingsError::Invalid(format!("{key} is too large")))
}

impl HostSettings {
    /// Flags and environment (already merged in `args`) over the file over defaults.
    pub fn resolve(args: &SettingsArgs) -> Result<Self, SettingsError> {
        let file = match &args.config {
            Some(path) => SettingsArgs::from_file(path)?,
            None => SettingsArgs::default(),
        };
        let low = args.clone().or(file).or(SettingsArgs::defaults()?);
        low.check_values()?;
        let settings = Self::from_low(low)?;
        settings.check()?;
        Ok(settings)
    }

    /// The trusted type from the merged low-level values (each in its kind's range).
    fn from_low(low: SettingsArgs) -> Result<Self, SettingsError> {
        let secret = |token: Option<String>| token.filter(|t| !t.is_empty()).map(SecretString::new);
        let data_dir: PathBuf = given(low.data_dir, "data_dir")?;
        let store = match low.database_url.filter(|u| !u.trim().is_empty()) {
            Some(url) => crate::store::Location::Postgres(Box::new(
                crate::store::PostgresUrl::parse(url.trim()).map_err(SettingsError::Invalid)?,
            )),
            None => crate::store::Location::Sqlite(data_dir.clone()),
        };
        Ok(Self {
            plugins_dir: given(low.plugins_dir, "plugins_dir")?,
            secret_key_file: low
                .secret_key_file
                .unwrap_or_else(|| data_dir.join(crate::secrets::KEY_FILE)),
            engine_name: low
                .engine_name
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty()),
            lease: given(low.lease_seconds, "lease_seconds")?,
            store,
            data_dir,
            admin_listen: given(low.admin_listen, "admin_listen")?,
            event_listen: given(low.event_listen, "event_listen")?,
            log_level: given(low.log_level, "log_level")?,
            log_format: given(low.log_format, "log_format")?,
            plugin_call_timeout: given(low.plugin_call_timeout, "plugin_call_timeout")?,
            plugin_concurrency: count(
                given(low.plugin_concurrency, "plugin_concurrency")?,
                "plugin_concurrency",
            )?,
            admin_token: secret(low.admin_token),
            admin_hostnames: low
                .admin_hostnames
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            event_token: secret(low.event_token),
            event_allowed_sources: low
                .event_allowed_sources
                .unwrap_or_default()
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.parse::<IpNet>())
                .collect::<Result<_, _>>()
                .map_err(|e| SettingsError::Invalid(format!("event_allowed_sources: {e}")))?,
            retry_backoff_min: given(low.retry_backoff_min_ms, "retry_backoff_min_ms")?,
            retry_backoff_max: given(low.retry_backoff_max_ms, "retry_backoff_max_ms")?,
            retention: Duration::from_secs(
                given(low.retention_days, "retention_days")?.saturating_mul(86_400),
            ),
            shutdown_grace: given(low.shutdown_grace, "shutdown_grace")?,
            event_max_connections: count(
                given(low.event_max_connections, "event_max_connections")?,
                "event_max_connections",
            )?,
            admin_max_connections: count(
                given(low.admin_max_connections, "admin_max_connections")?,
                "admin_max_connections",
            )?,
            client_header_timeout: given(low.client_header_timeout, "client_header_timeout")?,
            client_body_timeout: given(low.client_body_timeout, "client_body_timeout")?,
            event_tls: tls_pair(
                low.event_tls_cert,
                low.event_tls_key,
                "event_tls_cert",
                "event_tls_key",
            )?,
            admin_tls: tls_pair(
                low.admin_tls_cert,
                low.admin_tls_key,
                "admin_tls_cert",
                "admin_tls_key",
            )?,
        })
    }

    /// The rules across settings or beyond a kind's range (each kind's range, e.g.
    /// `plugin_concurrency` 1 to 64, is checked from its declaration).
    fn check(&self) -> Result<(), SettingsError> {
        if let Some(token) = &self.admin_token {
            if token.expose().chars().count() < 16 {
                return Err(SettingsError::Invalid(
                    "admin_token must be at least 16 characters".into(),
                ));
            }
            // A header value loses its outer spaces in transit, and a token of
            // spaces is no secret: printable characters only.
            if token
                .expose()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SettingsError::Invalid(
                    "admin_token must not contain spaces or control characters".into(),
                ));
            }
        }
        if let Some(token) = &self.event_token {
            if token
                .expose()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SettingsError::Invalid(
                    "event_token must not contain spaces or control characters".into(),
                ));
            }
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_min > self.retry_backoff_max {
            return Err(SettingsError::Invalid(
                "retry_backoff_min_ms must be above 0 and not above retry_backoff_max_ms".into(),
            ));
        }
        if !self.admin_listen.ip().is_loopback() && self.admin_token.is_none() {
            return Err(SettingsError::Invalid(format!(
                "the admin address {} is reachable from other machines: set an admin token (MWE_ADMIN_TOKEN or admin_token, at least 16 characters), or listen on 127.0.0.1",
                self.admin_listen
            )));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            SettingsError::Invalid(format!(
                "log_level {:?} is not a log filter (try info or debug): {e}",
                self.log_level
            ))
        })?;
        Ok(())
    }
}

/// Every setting as a Markdown table: the README's reference (a test keeps them equal).
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "| key (file) | flag | environment | value | default | meaning |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "| `{}` | `--{}` | `{}` | {} | {} | {} |\n",
            s.key,
            s.flag,
            s.env,
            s.kind.describe(),
            s.default_shown(),
            s.help.replace('|', "\\|"),
        ));
    }
    out
}

/// `text` as `# ` comment lines of at most about 88 columns.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > 88 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// An example settings file: every setting commented out at its default, with its help.
pub fn example_toml() -> String {
    settings_file(
        "Host settings of the middleware engine (middleware-engine --config engine.toml). \
         Every key is optional: each is shown commented out at its default. MWE_* \
         environment variables override this file, and flags override both. Relative \
         paths are relative to this file; unknown keys are refused.",
        &[],
        &[],
    )
}

/// Where the Debian package keeps the engine's state (the unit's `StateDirectory=`).
pub const PACKAGED_DATA_DIR: &str = "/var/lib/middleware-engine";
/// Where the Debian package's engine looks for plugins: owned by root, read-only to
/// the service (packaging/README.md says why).
pub const PACKAGED_PLUGINS_DIR: &str = "/usr/local/lib/middleware-engine/Plugins";

/// The settings file the Debian package installs as /etc/middleware-engine/engine.toml
/// (packaging/engine.toml; a test keeps them equal): the example with the install
/// layout's folders set, and the files `tls init` makes suggested.
pub fn packaged_toml() -> String {
    let quoted = |path: &str| toml::Value::String(path.to_owned()).to_string();
    let tls = |file: &str| quoted(&format!("{PACKAGED_DATA_DIR}/tls/{file}"));
    settings_file(
        "Host settings of the middleware engine service (systemctl restart \
         middleware-engine after a change; `middleware-engine check-config` checks this \
         file). Every other key is optional: each is shown commented out at its default. \
         Secrets (admin_token, event_token) are best given as MWE_* variables in \
         /etc/middleware-engine/environment (mode 0600), which the service reads; they and \
         flags override this file. Unknown keys are refused.",
        &[
            ("plugins_dir", quoted(PACKAGED_PLUGINS_DIR)),
            ("data_dir", quoted(PACKAGED_DATA_DIR)),
        ],
        &[
            ("event_tls_cert", tls("server.crt")),
            ("event_tls_key", tls("server.key")),
            ("admin_tls_cert", tls("server.crt")),
            ("admin_tls_key", tls("server.key")),
        ],
    )
}

/// A settings file: the `header`, then each setting with its help: set to the value
/// given in `set`, else commented out at its default, else commented out at the value
/// `suggest` gives.
fn settings_file(header: &str, set: &[(&str, String)], suggest: &[(&str, String)]) -> String {
    let find = |list: &[(&str, String)], key: &str| {
        list.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    };
    let mut out = comment(header);
    for s in SETTINGS {
        out.push('\n');
        out.push_str(&comment(&format!("{}.", s.help)));
        out.push_str(&comment(&format!(
            "Value: {}. Default: {}. Flag --{}, environment {}.",
            s.kind.describe().replace('`', ""),
            s.default_shown().replace('`', ""),
            s.flag,
            s.env
        )));
        if let Some(value) = find(set, s.key) {
            out.push_str(&format!("{} = {value}\n", s.key));
        } else if let Some(value) = s.example_value().or_else(|| find(suggest, s.key)) {
            out.push_str(&format!("# {} = {value}\n", s.key));
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_original_product() {
        let s = HostSettings::resolve(&SettingsArgs::default()).expect("defaults are valid");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:53231");
        assert_eq!(s.event_listen.to_string(), "0.0.0.0:8180");
        assert_eq!(s.plugins_dir, PathBuf::from("Plugins"));
        assert_eq!(s.log_format, LogFormat::Human);
    }

    #[test]
    fn flags_win_over_the_file_and_file_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("engine.toml");
        std::fs::write(
            &file,
            "plugins_dir = \"plugins\"\ndata_dir = \"/var/lib/mwe\"\nlog_format = \"json\"\nadmin_listen = \"127.0.0.1:9000\"\n",
        )
        .expect("write");
        let args = SettingsArgs {
            config: Some(file),
            admin_listen: Some("127.0.0.1:9100".parse().expect("addr")),
            ..SettingsArgs::default()
        };
        let s = HostSettings::resolve(&args).expect("valid");
        assert_eq!(s.plugins_dir, dir.path().join("plugins"));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/mwe"));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9100");
    }

    #[test]
    fn allowed_sources_match_addresses_and_networks() {
        let net: IpNet = "10.1.0.0/16".parse().expect("cidr");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("mapped")));
        let one: IpNet = "::1".parse().expect("ip");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("example.com".parse::<IpNet>().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("engine.toml");
        std::fs::write(&file, "plugin_dir = \"x\"\n").expect("write");
        let args = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        };
        let err = HostSettings::resolve(&args).expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `plugin_dir`"),
            "{err}"
        );

        let args = SettingsArgs {
            admin_token: Some(" ".repeat(16)),
            ..SettingsArgs::default()
        };
        let err = HostSettings::resolve(&args).expect_err("a token of spaces");
        assert_eq!(
            err.to_string(),
            "admin_token must not contain spaces or control characters"
        );

        let args = SettingsArgs {
            plugin_concurrency: Some(0),
            ..SettingsArgs::default()
        };
        let err = HostSettings::resolve(&args).expect_err("zero concurrency");
        assert_eq!(
            err.to_string(),
            "plugin_concurrency must be between 1 and 64"
        );
    }

    use std::collections::HashMap;

    use clap::Args as _;

    fn command() -> clap::Command {
        SettingsArgs::augment_args(clap::Command::new("middleware-engine"))
    }

    /// Flags and the given environment, as the command line reads them.
    fn parse(argv: &[&str], env: &[(&str, &str)]) -> Result<SettingsArgs, String> {
        let matches = command()
            .try_get_matches_from(std::iter::once("middleware-engine").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        let env: HashMap<String, OsString> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        SettingsArgs::from_parts(&matches, &|name| env.get(name).cloned())
    }

    fn file_error(text: &str) -> SettingsError {
        SettingsArgs::from_toml_text(
            text,
            Path::new("/etc/mwe/engine.toml"),
            Path::new("/etc/mwe"),
        )
        .expect_err("refused")
    }

    /// A valid value other than the default, as a flag gives it and as the file does.
    fn sample(setting: &Setting) -> (String, String) {
        let quoted = |s: &str| (s.to_owned(), format!("{s:?}"));
        if setting.key == "database_url" {
            return quoted("postgres://engine:sample@db.example.net:5432/middleware");
        }
        match setting.kind {
            Kind::Path => quoted("/srv/sample"),
            Kind::Addr => quoted("127.0.0.2:4321"),
            Kind::Int { min, .. } => ((min + 1).to_string(), (min + 1).to_string()),
            Kind::Seconds { .. } => ("7".into(), "7".into()),
            Kind::Millis { .. } => ("40000".into(), "40000".into()),
            Kind::Bool => ("true".into(), "true".into()),
            Kind::List => (
                "10.9.0.0/16,192.0.2.1".into(),
                "[\"10.9.0.0/16\", \"192.0.2.1\"]".into(),
            ),
            Kind::Text => quoted("debug"),
            Kind::Enum(names) => {
                let other = names
                    .iter()
                    .find(|n| setting.default != Fallback::Value(n))
                    .expect("another name");
                quoted(other)
            }
            Kind::Secret => quoted("sample-token-0123456789"),
        }
    }

    #[test]
    fn every_setting_can_be_set_by_its_flag_its_variable_and_its_file_key() {
        let defaults = HostSettings::resolve(&SettingsArgs::default()).expect("defaults");
        let dir = tempfile::tempdir().expect("tempdir");
        // A TLS file is set with its partner (one alone is refused), the same way.
        let partner = |key: &str| {
            let other = match key.rsplit_once('_') {
                Some((stem, "cert")) if stem.ends_with("_tls") => format!("{stem}_key"),
                Some((stem, "key")) if stem.ends_with("_tls") => format!("{stem}_cert"),
                _ => return None,
            };
            SETTINGS.iter().copied().find(|s| s.key == other)
        };
        for setting in SETTINGS {
            let (text, toml_value) = sample(setting);
            let flag = format!("--{}", setting.flag);
            let (mut flags, mut env, mut lines) = (
                vec![flag, text.clone()],
                vec![(setting.env, text.as_str())],
                format!("{} = {toml_value}\n", setting.key),
            );
            if let Some(other) = partner(setting.key) {
                flags.extend([format!("--{}", other.flag), "/srv/partner".into()]);
                env.push((other.env, "/srv/partner"));
                lines.push_str(&format!("{} = \"/srv/partner\"\n", other.key));
            }
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let by_flag = parse(&flags, &[]).expect("flag parses");
            let by_env = parse(&[], &env).expect("variable parses");
            let file = dir.path().join(format!("{}.toml", setting.key));
            std::fs::write(&file, lines).expect("write");
            let by_file = SettingsArgs {
                config: Some(file),
                ..SettingsArgs::default()
            };
            let resolved: Vec<HostSettings> = [by_flag, by_env, by_file]
                .iter()
                .map(|args| HostSettings::resolve(args).expect(setting.key))
                .collect();
            assert_ne!(resolved[0], defaults, "{} by its flag", setting.key);
            assert_eq!(resolved[0], resolved[1], "{} by its variable", setting.key);
            assert_eq!(resolved[0], resolved[2], "{} by its file key", setting.key);
        }
    }

    #[test]
    fn flags_win_over_the_environment_and_empty_variables_are_unset() {
        let args = parse(
            &["--log-level", "warn"],
            &[
                ("MWE_LOG_LEVEL", "debug"),
                ("MWE_DATA_DIR", ""),
                ("MWE_CONFIG", "/x.toml"),
            ],
        )
        .expect("parses");
        assert_eq!(args.log_level.as_deref(), Some("warn"));
        assert_eq!(args.data_dir, None);
        assert_eq!(args.config, Some(PathBuf::from("/x.toml")));
        let args = parse(
            &[
                "--admin-hostnames",
                "a.example,b.example",
                "--admin-hostnames",
                "c.example",
            ],
            &[],
        )
        .expect("parses");
        assert_eq!(
            args.admin_hostnames,
            Some(vec![
                "a.example".into(),
                "b.example".into(),
                "c.example".into()
            ])
        );
    }

    #[test]
    fn a_bad_variable_is_named_and_a_secret_is_never_shown() {
        let err = parse(&[], &[("MWE_PLUGIN_CONCURRENCY", "many")]).expect_err("refused");
        assert_eq!(
            err,
            "invalid value \"many\" for the environment variable MWE_PLUGIN_CONCURRENCY: expected a whole number"
        );
        let err = parse(&["--client-header-timeout", "soon"], &[]).expect_err("refused");
        assert!(err.contains("--client-header-timeout"), "{err}");
        let args = parse(&[], &[("MWE_ADMIN_TOKEN", "do-not-print-this-token")]).expect("parses");
        let shown = format!("{args:?}");
        assert!(!shown.contains("do-not-print"), "{shown}");
        assert!(
            shown.contains("admin_token: Some(\"[redacted]\")"),
            "{shown}"
        );
    }

    #[test]
    fn a_toml_error_names_the_file_the_line_the_column_and_the_key() {
        let err = file_error("plugins_dir = \"p\"\nplugin_call_timeout = \"soon\"\n");
        assert_eq!(
            err.to_string(),
            "the settings file /etc/mwe/engine.toml is not valid at line 2, column 23 (key `plugin_call_timeout`): expected a whole number of seconds, found a string"
        );

        let err = file_error("log_level = \"info\nlog_format = \"json\"\n");
        let SettingsError::Parse {
            line, column, key, ..
        } = &err
        else {
            panic!("a parse error: {err}");
        };
        assert_eq!((*line, *column), (Some(1), Some(18)), "{err}");
        assert_eq!(key.as_deref(), Some("log_level"), "{err}");

        let err = file_error("\n  admin_listen = \"nowhere\"\n");
        assert!(
            err.to_string().starts_with(
                "the settings file /etc/mwe/engine.toml is not valid at line 2, column 18 (key `admin_listen`): "
            ),
            "{err}"
        );

        let err = file_error("retention_days = 30\nplugin_dir = \"x\"\n");
        assert_eq!(
            err.to_string(),
            "the settings file /etc/mwe/engine.toml is not valid at line 2, column 1 (key `plugin_dir`): unknown field `plugin_dir`, did you mean `plugins_dir`?"
        );

        let err = file_error("event_max_connections = -1\n");
        assert!(err.to_string().contains("line 1, column 25"), "{err}");
        let err = file_error("admin_hostnames = \"a.example\"\n");
        assert!(
            err.to_string()
                .ends_with("expected a list of strings, found a string"),
            "{err}"
        );
    }

    #[test]
    fn each_kind_reads_its_text_and_its_file_value_and_checks_its_range() {
        let base = Path::new("/etc/mwe");
        assert_eq!(bool::parse(&Kind::Bool, "true"), Ok(true));
        assert!(bool::parse(&Kind::Bool, "yes").is_err());
        assert_eq!(
            bool::from_toml(&Kind::Bool, &toml::Value::Boolean(false), base),
            Ok(false)
        );
        let millis = Kind::Millis { min: 5 };
        let d = Duration::parse(&millis, "4").expect("ms");
        assert_eq!(d, Duration::from_millis(4));
        assert_eq!(d.check(&millis), Err("must be at least 5 ms".into()));
        let relative = PathBuf::from_toml(&Kind::Path, &toml::Value::String("p".into()), base);
        assert_eq!(relative, Ok(PathBuf::from("/etc/mwe/p")));
        assert_eq!(
            u64::from_toml(
                &Kind::Int { min: 0, max: 9 },
                &toml::Value::Float(1.5),
                base
            ),
            Err("expected a whole number, found a float".into())
        );
    }

    #[test]
    fn the_declarations_are_consistent_and_their_defaults_valid() {
        let mut keys = std::collections::HashSet::new();
        for s in SETTINGS {
            assert!(keys.insert(s.key), "{} declared twice", s.key);
            assert_eq!(s.flag, s.key.replace('_', "-"), "{}", s.key);
            assert_eq!(
                s.env,
                format!("MWE_{}", s.key.to_ascii_uppercase()),
                "{}",
                s.key
            );
        }
        SettingsArgs::defaults().expect("every default parses");
        for name in LogFormat::NAMES {
            assert!(LogFormat::from_name(name).is_some(), "{name}");
        }
        command().debug_assert();
    }

    #[test]
    fn help_shows_each_default_and_variable() {
        let help = command().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for s in SETTINGS {
            let default = match s.default {
                Fallback::Value(v) | Fallback::Unset(v) => v,
            };
            assert!(
                help.contains(&format!("--{} <{}>", s.flag, s.value_name)),
                "{help}"
            );
            assert!(
                help.contains(&format!("[default: {default}] [env: {}]", s.env)),
                "{} in {help}",
                s.key
            );
        }
        assert!(help.contains("[env: MWE_CONFIG]"), "{help}");
    }

    #[test]
    fn the_readme_table_is_the_generated_reference() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Running the engine"))
            .expect("the section Running the engine");
        let table: String = section
            .lines()
            .skip_while(|l| !l.starts_with("| key (file)"))
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            table,
            reference_markdown(),
            "README.md's settings table differs from reference_markdown(); replace it with:\n{}",
            reference_markdown()
        );
    }

    #[test]
    fn the_packaged_settings_file_is_the_generated_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/engine.toml");
        if std::env::var_os("MWE_WRITE_PACKAGED_TOML").is_some() {
            std::fs::write(&path, packaged_toml()).expect("write packaging/engine.toml");
        }
        let shipped = std::fs::read_to_string(&path).expect("packaging/engine.toml");
        assert!(
            shipped == packaged_toml(),
            "packaging/engine.toml differs from packaged_toml(); rewrite it with \
             MWE_WRITE_PACKAGED_TOML=1 cargo test -p host packaged_settings"
        );
        let settings = HostSettings::resolve(&SettingsArgs {
            config: Some(path),
            ..SettingsArgs::default()
        })
        .expect("the packaged file is valid");
        assert_eq!(settings.plugins_dir, PathBuf::from(PACKAGED_PLUGINS_DIR));
        assert_eq!(settings.data_dir, PathBuf::from(PACKAGED_DATA_DIR));
        assert_eq!(
            settings.event_tls, None,
            "plain HTTP until the admin sets a pair"
        );
        // Uncommenting the suggested pair gives HTTPS on both addresses.
        let https: String = shipped
            .lines()
            .map(|line| {
                let suggested = line.strip_prefix("# ").filter(|l| {
                    l.split_once(" = ")
                        .is_some_and(|(key, _)| key.contains("_tls_"))
                });
                format!("{}\n", suggested.unwrap_or(line))
            })
            .collect();
        let args = SettingsArgs::from_toml_text(&https, Path::new("engine.toml"), Path::new("/"))
            .expect("valid");
        let settings = HostSettings::resolve(&args).expect("valid");
        assert_eq!(
            settings.event_tls.map(|t| t.key),
            Some(PathBuf::from("/var/lib/middleware-engine/tls/server.key"))
        );
    }

    #[test]
    fn one_file_of_a_tls_pair_alone_is_refused() {
        let args = SettingsArgs {
            event_tls_cert: Some("server.crt".into()),
            ..SettingsArgs::default()
        };
        let error = HostSettings::resolve(&args)
            .expect_err("half a pair")
            .to_string();
        assert_eq!(
            error,
            "event_tls_cert is set but event_tls_key is not: set both for HTTPS, or neither for plain HTTP"
        );
        let args = SettingsArgs {
            admin_tls_key: Some("server.key".into()),
            ..SettingsArgs::default()
        };
        let error = HostSettings::resolve(&args)
            .expect_err("half a pair")
            .to_string();
        assert!(
            error.starts_with("admin_tls_key is set but admin_tls_cert is not"),
            "{error}"
        );
    }

    #[test]
    fn the_example_file_uncommented_gives_the_defaults() {
        let example = example_toml();
        let uncommented: String = example
            .lines()
            .map(|line| {
                let setting = line.strip_prefix("# ").filter(|rest| {
                    SETTINGS
                        .iter()
                        .any(|s| rest.starts_with(&format!("{} = ", s.key)))
                });
                format!("{}\n", setting.unwrap_or(line))
            })
            .collect();
        // Files with no default (the TLS pairs) have no line to uncomment.
        for s in SETTINGS.iter().filter(|s| s.example_value().is_some()) {
            assert!(example.contains(&format!("# {} = ", s.key)), "{}", s.key);
            assert!(
                uncommented.contains(&format!("\n{} = ", s.key)),
                "{}",
                s.key
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("engine.toml");
        std::fs::write(&file, &uncommented).expect("write");
        let from_file = HostSettings::resolve(&SettingsArgs {
            config: Some(file),
            ..SettingsArgs::default()
        })
        .expect("the example is a valid settings file");
        let mut defaults = HostSettings::resolve(&SettingsArgs::default()).expect("defaults");
        defaults.plugins_dir = dir.path().join(&defaults.plugins_dir);
        defaults.data_dir = dir.path().join(&defaults.data_dir);
        defaults.store = crate::store::Location::Sqlite(defaults.data_dir.clone());
        defaults.secret_key_file = defaults.data_dir.join(crate::secrets::KEY_FILE);
        assert_eq!(from_file, defaults);
    }
}
