//! The `middleware-engine` command line.

use std::io::Write;
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
    Plugins,
    /// Run a plugin's action on a configuration, e.g. `action Production provision`;
    /// prints its progress and report, exits 1 when a check failed.
    Action {
        /// The configuration's name
        configuration: String,
        /// The action's name (the admin page lists each plugin's actions)
        action: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match HostSettings::resolve(&cli.settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("middleware-engine: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Plugins => list_plugins(&settings),
        Command::Serve => serve(&settings),
        Command::Action {
            configuration,
            action,
        } => run_action(&settings, &configuration, &action),
    }
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
    let store = crate::store::Store::open(&settings.data_dir).map_err(|e| e.to_string())?;
    let secrets =
        crate::secrets::SecretBox::open_or_create(&settings.data_dir).map_err(|e| e.to_string())?;
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
