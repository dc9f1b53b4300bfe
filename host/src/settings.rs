//! The host's own settings: read once from a TOML file, environment variables and
//! flags (in rising precedence), validated once, then trusted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Where the original product listens for its admin tool.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:53231";
/// Where the appliance sends outbound events by default.
pub const DEFAULT_EVENT_LISTEN: &str = "0.0.0.0:8180";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per record.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Options shared by every command. Each also reads an `MWE_*` environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML file of host settings (keys as the long flags, with '_' for '-').
    #[arg(long, global = true, env = "MWE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding one subfolder per plugin [default: ./Plugins]
    #[arg(long, global = true, env = "MWE_PLUGINS_DIR", value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Folder for the host's database and key file, created if missing [default: ./data]
    #[arg(long, global = true, env = "MWE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the admin page and API [default: 127.0.0.1:53231]
    #[arg(long, global = true, env = "MWE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Address the appliance posts outbound events to [default: 0.0.0.0:8180]
    #[arg(long, global = true, env = "MWE_EVENT_LISTEN", value_name = "ADDR")]
    pub event_listen: Option<SocketAddr>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info]
    #[arg(long, global = true, env = "MWE_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format [default: human]
    #[arg(long, global = true, env = "MWE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Longest a single plugin call may take, in seconds [default: 120]
    #[arg(
        long,
        global = true,
        env = "MWE_PLUGIN_CALL_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub plugin_call_timeout: Option<u64>,
    /// Plugin calls in flight at once per configuration [default: 4]
    #[arg(long, global = true, env = "MWE_PLUGIN_CONCURRENCY", value_name = "N")]
    pub plugin_concurrency: Option<usize>,
    /// Token every admin API request must carry (Authorization: Bearer ...);
    /// required when the admin address is not loopback. Prefer the environment variable.
    #[arg(
        long,
        global = true,
        env = "MWE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Extra host names the admin page may be reached by (comma-separated), besides
    /// localhost and the listen address
    #[arg(
        long,
        global = true,
        env = "MWE_ADMIN_HOSTNAMES",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub admin_hostnames: Option<Vec<String>>,
    /// Shared token the appliance must send as the form field outbound_event_token.
    /// Prefer the environment variable.
    #[arg(
        long,
        global = true,
        env = "MWE_EVENT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub event_token: Option<String>,
    /// Addresses or networks (CIDR) allowed to post events, comma-separated [default: any]
    #[arg(
        long,
        global = true,
        env = "MWE_EVENT_ALLOWED_SOURCES",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub event_allowed_sources: Option<Vec<String>>,
    /// Shortest delay before the first retry, in milliseconds [default: 30000]
    #[arg(
        long,
        global = true,
        env = "MWE_RETRY_BACKOFF_MIN_MS",
        value_name = "MS"
    )]
    pub retry_backoff_min_ms: Option<u64>,
    /// Longest delay between retries, in milliseconds [default: 1800000]
    #[arg(
        long,
        global = true,
        env = "MWE_RETRY_BACKOFF_MAX_MS",
        value_name = "MS"
    )]
    pub retry_backoff_max_ms: Option<u64>,
    /// Finished events older than this many days are removed from the history [default: 30]
    #[arg(long, global = true, env = "MWE_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u32>,
    /// On shutdown, how long plugin calls in flight may take to finish, in seconds [default: 30]
    #[arg(
        long,
        global = true,
        env = "MWE_SHUTDOWN_GRACE",
        value_name = "SECONDS"
    )]
    pub shutdown_grace: Option<u64>,
    /// Connections the event address keeps open at once; more wait [default: 1024]
    #[arg(
        long,
        global = true,
        env = "MWE_EVENT_MAX_CONNECTIONS",
        value_name = "N"
    )]
    pub event_max_connections: Option<usize>,
    /// Connections the admin address keeps open at once; more wait [default: 128]
    #[arg(
        long,
        global = true,
        env = "MWE_ADMIN_MAX_CONNECTIONS",
        value_name = "N"
    )]
    pub admin_max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers, from the connection's start
    /// or the previous answer; a silent or idle connection is closed then [default: 10]
    #[arg(
        long,
        global = true,
        env = "MWE_CLIENT_HEADER_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub client_header_timeout: Option<u64>,
    /// Seconds a client has to send a request's whole body (408 past it) [default: 30]
    #[arg(
        long,
        global = true,
        env = "MWE_CLIENT_BODY_TIMEOUT",
        value_name = "SECONDS"
    )]
    pub client_body_timeout: Option<u64>,
}

/// The settings file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    plugins_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
    event_listen: Option<SocketAddr>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    plugin_call_timeout: Option<u64>,
    plugin_concurrency: Option<usize>,
    admin_token: Option<String>,
    admin_hostnames: Option<Vec<String>>,
    event_token: Option<String>,
    event_allowed_sources: Option<Vec<String>>,
    retry_backoff_min_ms: Option<u64>,
    retry_backoff_max_ms: Option<u64>,
    retention_days: Option<u32>,
    shutdown_grace: Option<u64>,
    event_max_connections: Option<usize>,
    admin_max_connections: Option<usize>,
    client_header_timeout: Option<u64>,
    client_body_timeout: Option<u64>,
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
    #[error("the settings file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl HostSettings {
    /// Flags and environment (already merged by clap) over the file over defaults.
    pub fn resolve(args: &SettingsArgs) -> Result<Self, SettingsError> {
        let (file, base) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file: FileSettings =
                    toml::from_str(&text).map_err(|e| SettingsError::Parse {
                        path: path.clone(),
                        message: e.message().to_owned(),
                    })?;
                // Relative paths in the file are relative to the file, so a service
                // started from anywhere finds the same folders.
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, base)
            }
            None => (FileSettings::default(), PathBuf::new()),
        };
        let from_file = |p: Option<PathBuf>| p.map(|p| base.join(p));
        let parse_addr = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|e| SettingsError::Invalid(e.to_string()))
        };

        let settings = Self {
            plugins_dir: args
                .plugins_dir
                .clone()
                .or_else(|| from_file(file.plugins_dir))
                .unwrap_or_else(|| PathBuf::from("Plugins")),
            data_dir: args
                .data_dir
                .clone()
                .or_else(|| from_file(file.data_dir))
                .unwrap_or_else(|| PathBuf::from("data")),
            admin_listen: match args.admin_listen.or(file.admin_listen) {
                Some(a) => a,
                None => parse_addr(DEFAULT_ADMIN_LISTEN)?,
            },
            event_listen: match args.event_listen.or(file.event_listen) {
                Some(a) => a,
                None => parse_addr(DEFAULT_EVENT_LISTEN)?,
            },
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_owned()),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            plugin_call_timeout: Duration::from_secs(
                args.plugin_call_timeout
                    .or(file.plugin_call_timeout)
                    .unwrap_or(120),
            ),
            plugin_concurrency: args
                .plugin_concurrency
                .or(file.plugin_concurrency)
                .unwrap_or(4),
            admin_token: args
                .admin_token
                .clone()
                .or(file.admin_token)
                .filter(|t| !t.is_empty())
                .map(SecretString::new),
            admin_hostnames: args
                .admin_hostnames
                .clone()
                .or(file.admin_hostnames)
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            event_token: args
                .event_token
                .clone()
                .or(file.event_token)
                .filter(|t| !t.is_empty())
                .map(SecretString::new),
            event_allowed_sources: args
                .event_allowed_sources
                .clone()
                .or(file.event_allowed_sources)
                .unwrap_or_default()
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.parse::<IpNet>())
                .collect::<Result<_, _>>()
                .map_err(|e| SettingsError::Invalid(format!("event_allowed_sources: {e}")))?,
            retry_backoff_min: Duration::from_millis(
                args.retry_backoff_min_ms
                    .or(file.retry_backoff_min_ms)
                    .unwrap_or(30_000),
            ),
            retry_backoff_max: Duration::from_millis(
                args.retry_backoff_max_ms
                    .or(file.retry_backoff_max_ms)
                    .unwrap_or(1_800_000),
            ),
            retention: Duration::from_secs(
                u64::from(args.retention_days.or(file.retention_days).unwrap_or(30)) * 86_400,
            ),
            shutdown_grace: Duration::from_secs(
                args.shutdown_grace.or(file.shutdown_grace).unwrap_or(30),
            ),
            event_max_connections: args
                .event_max_connections
                .or(file.event_max_connections)
                .unwrap_or(1024),
            admin_max_connections: args
                .admin_max_connections
                .or(file.admin_max_connections)
                .unwrap_or(128),
            client_header_timeout: Duration::from_secs(
                args.client_header_timeout
                    .or(file.client_header_timeout)
                    .unwrap_or(10),
            ),
            client_body_timeout: Duration::from_secs(
                args.client_body_timeout
                    .or(file.client_body_timeout)
                    .unwrap_or(30),
            ),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), SettingsError> {
        if self.plugin_call_timeout.is_zero() {
            return Err(SettingsError::Invalid(
                "plugin_call_timeout must be at least 1 second".into(),
            ));
        }
        if !(1..=64).contains(&self.plugin_concurrency) {
            return Err(SettingsError::Invalid(
                "plugin_concurrency must be between 1 and 64".into(),
            ));
        }
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
        for (key, value) in [
            ("event_max_connections", self.event_max_connections),
            ("admin_max_connections", self.admin_max_connections),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(SettingsError::Invalid(format!(
                    "{key} must be between 1 and 1000000"
                )));
            }
        }
        for (key, value) in [
            ("client_header_timeout", self.client_header_timeout),
            ("client_body_timeout", self.client_body_timeout),
        ] {
            if value.is_zero() {
                return Err(SettingsError::Invalid(format!(
                    "{key} must be at least 1 second"
                )));
            }
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_min > self.retry_backoff_max {
            return Err(SettingsError::Invalid(
                "retry_backoff_min_ms must be above 0 and not above retry_backoff_max_ms".into(),
            ));
        }
        if self.retention.is_zero() {
            return Err(SettingsError::Invalid(
                "retention_days must be at least 1".into(),
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
}
