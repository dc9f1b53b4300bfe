//! Assembles the engine from its parts and runs it until shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::configurations::{ConfigError, Configurations, Live};
use crate::plugins::runner::CallLimits;
use crate::plugins::Registry;
use crate::secrets::{SecretBox, SecretsError};
use crate::settings::HostSettings;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Configurations(#[from] ConfigError),
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {what} server failed: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

/// Runs the engine until Ctrl-C or SIGTERM.
pub async fn run(settings: HostSettings) -> Result<(), StartError> {
    let plugins_dir = settings.plugins_dir.clone();
    let registry = tokio::task::spawn_blocking(move || Registry::scan(&plugins_dir))
        .await
        .unwrap_or_default();
    if let Some(problem) = &registry.problem {
        tracing::warn!("{problem}; starting with no plugins");
    }
    let store = Store::open(&settings.data_dir)?;
    let secrets = SecretBox::open_or_create(&settings.data_dir)?;
    let limits = CallLimits {
        timeout: settings.plugin_call_timeout,
        concurrency: settings.plugin_concurrency,
    };
    let configurations = Arc::new(Configurations::new(
        store,
        secrets,
        Arc::new(registry),
        Live::new(limits),
    ));
    configurations.start_all().await?;

    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|source| StartError::Listen {
            what: "admin page",
            addr: settings.admin_listen,
            source,
        })?;
    let admin_addr = admin.local_addr().unwrap_or(settings.admin_listen);
    announce(&format!("admin page: http://{admin_addr}/"));
    tracing::info!(
        plugins = configurations.registry().loaded().count(),
        failed = configurations.registry().failed_count(),
        %admin_addr,
        "engine ready"
    );

    let router = crate::admin::router(Arc::clone(&configurations), &settings);
    axum::serve(admin, router)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .map_err(|source| StartError::Serve {
            what: "admin",
            source,
        })?;
    tracing::info!("stopped");
    Ok(())
}

/// One line on stdout for whoever started the engine (the demo, the tests).
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
