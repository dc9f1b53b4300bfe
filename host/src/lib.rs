//! The middleware engine host: settings, plugin loading and calling, the store, the
//! configurations and the admin API and page (and, as the engine grows, event intake
//! and processing).

pub mod admin;
pub mod alerts;
pub mod app;
pub mod backfill_cli;
pub mod cli;
pub mod config_cli;
pub mod configurations;
pub mod engine;
pub mod intake;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod plugins;
pub mod readiness;
pub mod secrets;
pub mod serve;
pub mod settings;
pub mod store;
pub mod tls;
/// Resolves on Ctrl-C or SIGTERM (how a service manager stops the engine).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
