//! The `middleware-engine` command line.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::plugins::{Registry, Verdict};
use crate::settings::{HostSettings, SettingsArgs};

/// BeyondTrust middleware engine: hosts integration plugins, receives the appliance's
/// outbound events and hands them to each matching plugin configuration.
#[derive(Debug, Parser)]
#[command(name = "middleware-engine", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine (the default): load plugins, serve the admin page and the event address.
    Serve,
    /// List the plugins in the Plugins folder with their verdict; exits 1 when any failed.
    /// `plugins install FILE.zip` installs a plugin archive.
    Plugins {
        #[command(subcommand)]
        command: Option<PluginsCommand>,
    },
    /// Run a plugin's action on a configuration, e.g. `action Production provision`;
    /// prints its progress and report, exits 1 when a check failed.
    Action {
        /// The configuration's name
        configuration: String,
        /// The action's name (the admin page lists each plugin's actions)
        action: String,
    },
    /// The configurations as one JSON document, through the running engine: `config
    /// export [--secrets sealed] [--out FILE]`, `config import FILE`.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The store: `store copy --to postgres://...` copies the embedded store into an
    /// empty PostgreSQL database.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Certificates for the HTTPS addresses.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Check the settings, the TLS files and the plugins, as `nginx -t` does; exits 1 on
    /// any problem.
    CheckConfig,
    /// Import the sessions that ended in a range and were never imported, through the
    /// running engine (its admin API); shows the progress. Exits 0 when done, 1 when
    /// the backfill failed or was cancelled, 2 on bad input.
    Backfill {
        /// The configuration's name
        configuration: String,
        /// Sessions that ended at or after DATE: RFC 3339 (2026-11-01T00:00:00Z or with
        /// an offset), YYYY-MM-DD (midnight UTC) or Unix seconds
        #[arg(long, value_name = "DATE", value_parser = crate::admin::parse_time)]
        since: i64,
        /// ... and before DATE (default: now), in the same forms
        #[arg(long, value_name = "DATE", value_parser = crate::admin::parse_time)]
        until: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// Install a plugin archive (a ZIP holding `<folder>/<library>`) into the Plugins
    /// folder; the service must be restarted to load it.
    Install {
        /// The plugin's ZIP file
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write every configuration as JSON (to standard output, or --out FILE, made
    /// owner-only). Secrets are left out unless --secrets sealed: then they are
    /// sealed with this engine's key, for engines holding the same key file.
    Export {
        /// none (the default) or sealed
        #[arg(long, value_name = "HOW", default_value = "none", value_parser = ["none", "sealed"])]
        secrets: String,
        /// The file to write
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// Create or update the configurations of an export, by plugin and name; prints
    /// created / updated / unchanged / invalid for each, and the secrets still to be
    /// given. Exits 1 when one was invalid.
    Import {
        /// The export's file
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy the embedded store of the data folder (configurations, sealed secrets,
    /// history, polling cursors, reconciliation and backfills) into an empty
    /// PostgreSQL database, for several engines to share. Stop the engine first.
    Copy {
        /// The PostgreSQL database: postgres://USER:PASSWORD@HOST:PORT/DATABASE
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Create a private CA and a server certificate it signs under `<data>/tls/`.
    Init {
        /// A DNS name the appliance reaches the engine by (repeat for more)
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// An IP address the appliance reaches the engine by (repeat for more)
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<std::net::IpAddr>,
        /// Replace the files of an earlier `tls init`
        #[arg(long)]
        force: bool,
    },
}

/// Where the Debian package puts the settings file; read when no other is named.
pub const SYSTEM_CONFIG: &str = "/etc/middleware-engine/engine.toml";

pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.settings.config.is_none() && Path::new(SYSTEM_CONFIG).is_file() {
        cli.settings.config = Some(SYSTEM_CONFIG.into());
    }
    let settings = match HostSettings::resolve(&cli.settings) {
        Ok(s) => s,
        Err(e) if matches!(cli.command, Some(Command::CheckConfig)) => {
            println!("FAILED  settings: {e}");
            println!("the configuration has problems");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("middleware-engine: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Plugins { command: None } => list_plugins(&settings),
        Command::Plugins {
            command: Some(PluginsCommand::Install { file }),
        } => crate::plugins::install::cli(&settings, &file),
        Command::Tls {
            command:
                TlsCommand::Init {
                    hostnames,
                    ips,
                    force,
                },
        } => crate::tls::init::cli(&settings, &hostnames, &ips, force),
        Command::CheckConfig => check_config(&settings, cli.settings.config.as_deref()),
        Command::Store {
            command: StoreCommand::Copy { to },
        } => store_copy(&settings, &to),
        Command::Config {
            command: ConfigCommand::Export { secrets, out },
        } => crate::config_cli::export(&settings, secrets == "sealed", out.as_deref()),
        Command::Config {
            command: ConfigCommand::Import { file },
        } => crate::config_cli::import(&settings, &file),
        Command::Serve => serve(&settings),
        Command::Action {
            configuration,
            action,
        } => run_action(&settings, &configuration, &action),
        Command::Backfill {
            configuration,
            since,
            until,
        } => crate::backfill_cli::run(&settings, &configuration, since, until),
    }
}

/// `store copy --to URL`: prints what it copied, and what to do next.
fn store_copy(settings: &HostSettings, to: &str) -> ExitCode {
    let target = match crate::store::PostgresUrl::parse(to) {
        Ok(url) => url,
        Err(e) => {
            eprintln!("{}", e.replace("database_url", "--to"));
            return ExitCode::from(2);
        }
    };
    match crate::store::copy::copy(&settings.data_dir, &target) {
        Ok(copied) => {
            for (table, rows) in copied {
                println!("{table:>16}: {rows} rows");
            }
            println!("copied {} into {target}", settings.data_dir.display());
            println!(
                "next: give every engine database_url = the same URL, and a copy of the key file {} (owner-only) as secret_key_file",
                settings.secret_key_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("store copy failed, nothing was copied: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: one line per part, `ok` or `FAILED`, then the verdict.
fn check_config(settings: &HostSettings, file: Option<&Path>) -> ExitCode {
    let mut lines = Vec::new();
    let mut failed = false;
    let mut line = |ok: bool, text: String| {
        failed |= !ok;
        lines.push(format!("{}  {text}", if ok { "ok    " } else { "FAILED" }));
    };
    line(
        true,
        match file {
            Some(path) => format!("settings: {}", path.display()),
            None => "settings: no settings file; defaults, MWE_* variables and flags".into(),
        },
    );
    for (what, addr, files) in [
        ("event address", settings.event_listen, &settings.event_tls),
        ("admin address", settings.admin_listen, &settings.admin_tls),
    ] {
        match files {
            None => line(true, format!("{what} {addr}: plain HTTP")),
            Some(files) => match crate::tls::check(files) {
                Ok(summary) => line(true, format!("{what} {addr}: HTTPS, {summary}")),
                Err(e) => line(false, format!("{what} {addr}: {e}")),
            },
        }
    }
    match check_data_dir(&settings.data_dir) {
        Ok(state) => line(
            true,
            format!("data folder {}: {state}", settings.data_dir.display()),
        ),
        Err(e) => line(
            false,
            format!("data folder {}: {e}", settings.data_dir.display()),
        ),
    }
    let registry = Registry::scan(&settings.plugins_dir);
    let plugins_ok = registry.problem.is_none() && registry.failed_count() == 0;
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(&render_plugin_list(&registry));
    failed |= !plugins_ok;
    text.push_str(if failed {
        "the configuration has problems\n"
    } else {
        "the configuration is good\n"
    });
    if std::io::stdout().lock().write_all(text.as_bytes()).is_err() || failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether the engine could keep its database in `dir`, without creating anything.
fn check_data_dir(dir: &Path) -> Result<&'static str, String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err("is not a folder".into()),
        Ok(_) => {
            let probe = tempfile_in(dir).map_err(|e| format!("cannot be written: {e}"))?;
            let _ = std::fs::remove_file(probe);
            Ok("writable")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|a| a.as_os_str().is_empty() || a.exists())
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        a
                    }
                })
                .unwrap_or(Path::new("/"));
            let probe = tempfile_in(parent).map_err(|e| {
                format!(
                    "does not exist and cannot be created in {}: {e}",
                    parent.display()
                )
            })?;
            let _ = std::fs::remove_file(probe);
            Ok("will be created at start")
        }
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

/// Creates an empty file of a fresh name in `dir` and returns it.
fn tempfile_in(dir: &Path) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join(format!(".check-config-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok(path)
}

fn list_plugins(settings: &HostSettings) -> ExitCode {
    let registry = Registry::scan(&settings.plugins_dir);
    let mut out = std::io::stdout().lock();
    let text = render_plugin_list(&registry);
    if out.write_all(text.as_bytes()).is_err() {
        return ExitCode::FAILURE;
    }
    if registry.problem.is_some() || registry.failed_count() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One line per library (or empty folder), then a count.
pub fn render_plugin_list(registry: &Registry) -> String {
    let mut text = format!("Plugins folder: {}\n", registry.dir.display());
    if let Some(problem) = &registry.problem {
        text.push_str(&format!("error: {problem}\n"));
        return text;
    }
    for entry in &registry.entries {
        let file = entry
            .file
            .as_deref()
            .and_then(|f| f.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let location = if file.is_empty()
            || entry
                .file
                .as_deref()
                .is_some_and(|f| f.parent() == Some(registry.dir.as_path()))
        {
            entry.folder.clone()
        } else {
            format!("{}/{file}", entry.folder)
        };
        match &entry.verdict {
            Verdict::Loaded(p) => text.push_str(&format!(
                "ok      {location}: {} \"{}\" {}\n",
                p.manifest.id, p.manifest.name, p.manifest.version
            )),
            Verdict::Failed(reason) => text.push_str(&format!("FAILED  {location}: {reason}\n")),
        }
    }
    let loaded = registry.entries.len() - registry.failed_count();
    text.push_str(&format!(
        "{loaded} loaded, {} failed\n",
        registry.failed_count()
    ));
    text
}

/// The async runtime every command that needs one runs on.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn serve(settings: &HostSettings) -> ExitCode {
    crate::logging::init(settings);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::app::run(settings.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("middleware-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_action(settings: &HostSettings, configuration: &str, action: &str) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("middleware-engine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(action_report(settings, configuration, action)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("middleware-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn action_report(
    settings: &HostSettings,
    configuration: &str,
    action: &str,
) -> Result<bool, String> {
    let registry = Registry::scan(&settings.plugins_dir);
    if let Some(problem) = &registry.problem {
        return Err(problem.clone());
    }
    let store = crate::store::Store::open_async(&settings.store)
        .await
        .map_err(|e| e.to_string())?;
    let secrets = crate::secrets::SecretBox::open_or_create(&settings.secret_key_file)
        .map_err(|e| e.to_string())?;
    let limits = crate::plugins::runner::CallLimits {
        timeout: settings.plugin_call_timeout,
        concurrency: settings.plugin_concurrency,
    };
    let configurations = crate::configurations::Configurations::new(
        store,
        secrets,
        std::sync::Arc::new(registry),
        crate::configurations::Live::new(limits),
        // No engine runs here: nobody waits for its wake-ups.
        std::sync::Arc::new(crate::engine::Wakeup::default()),
    );
    let found = configurations
        .by_name(configuration)
        .await
        .map_err(|e| e.to_string())?;
    let config = match found.as_slice() {
        [one] => one,
        [] => return Err(format!("no configuration is named {configuration:?}")),
        many => {
            let plugins: Vec<&str> = many.iter().map(|c| c.plugin.as_str()).collect();
            return Err(format!(
                "several configurations are named {configuration:?} (plugins {}); rename one",
                plugins.join(", ")
            ));
        }
    };
    println!("{action} on {:?} ({}):", config.name, config.plugin);
    let progress: plugin_api::loader::LogFn = std::sync::Arc::new(|_, line: &str| {
        println!("  .. {line}");
    });
    let report = configurations
        .run_action(config.id, action, progress)
        .await
        .map_err(|e| e.to_string())?;
    for check in &report.checks {
        println!(
            "{} {}: {}",
            if check.ok { "ok     " } else { "FAILED " },
            check.name,
            check.detail
        );
    }
    Ok(report.ok())
}
