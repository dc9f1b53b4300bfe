//! Calls into one open plugin instance from async code.
//!
//! Plugin calls block and own their runtime, so each runs on a blocking worker
//! thread. A semaphore bounds the calls in flight per configuration, and a time limit
//! bounds how long the host waits. A call that overruns keeps its slot until it really
//! returns (a blocking thread cannot be stopped), so a stuck plugin cannot pile up
//! threads without bound.

use std::sync::Arc;
use std::time::Duration;

use plugin_api::loader::{Instance, LoadedPlugin, LogFn};
use plugin_api::{
    EndedSessions, EndedSessionsRequest, ErrorKind, Event, LogLevel, Outcome, PluginError,
    PollRequest, PollResult, Settings, TestReport,
};
use tokio::sync::Semaphore;

/// Limits that apply to every call of one configuration's instance.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub timeout: Duration,
    pub concurrency: usize,
}

/// An open instance, shareable across tasks.
#[derive(Clone)]
pub struct PluginRunner {
    instance: Arc<Instance>,
    permits: Arc<Semaphore>,
    limits: CallLimits,
    /// The plugin lists ended sessions (reconciliation and backfill need it).
    lists_ended_sessions: bool,
}

impl PluginRunner {
    /// Opens an instance for `configuration_name`; its log records go to the host's
    /// log tagged with the configuration's name and the plugin's id.
    pub async fn open(
        plugin: &LoadedPlugin,
        configuration_name: &str,
        settings: &Settings,
        limits: CallLimits,
    ) -> Result<Self, PluginError> {
        let lists_ended_sessions = plugin.manifest.lists_ended_sessions;
        let plugin = plugin.clone();
        let name = configuration_name.to_owned();
        let settings = settings.clone();
        let log = plugin_logger(&plugin.manifest.id, &name);
        let instance =
            run_blocking(limits.timeout, move || plugin.open(&name, &settings, log)).await?;
        Ok(Self {
            instance: Arc::new(instance),
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            limits,
            lists_ended_sessions,
        })
    }

    pub fn lists_ended_sessions(&self) -> bool {
        self.lists_ended_sessions
    }

    pub async fn ended_sessions(
        &self,
        request: EndedSessionsRequest,
    ) -> Result<EndedSessions, PluginError> {
        self.call(move |i| i.ended_sessions(&request)).await
    }

    /// Several events in one call; one result per event. The call's time limit grows
    /// with the batch (each event gets the limit of one call).
    pub async fn handle_batch(&self, events: Vec<Event>) -> Vec<Result<Outcome, PluginError>> {
        let count = events.len();
        let timeout = self
            .limits
            .timeout
            .saturating_mul(u32::try_from(count.max(1)).unwrap_or(u32::MAX));
        let answer = self
            .call_within(timeout, move |i| Ok(i.handle_batch(&events)))
            .await;
        match answer {
            Ok(results) => results,
            Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
        }
    }

    pub async fn test(&self) -> Result<TestReport, PluginError> {
        self.call(|i| i.test()).await
    }

    pub async fn handle_event(&self, event: Event) -> Result<Outcome, PluginError> {
        self.call(move |i| i.handle_event(&event)).await
    }

    pub async fn poll(&self, request: PollRequest) -> Result<PollResult, PluginError> {
        self.call(move |i| i.poll(&request)).await
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Instance) -> Result<T, PluginError> + Send + 'static,
    ) -> Result<T, PluginError> {
        self.call_within(self.limits.timeout, f).await
    }

    async fn call_within<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&Instance) -> Result<T, PluginError> + Send + 'static,
    ) -> Result<T, PluginError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| PluginError::retryable("the configuration is closing"))?;
        let instance = Arc::clone(&self.instance);
        run_blocking(timeout, move || {
            let _permit = permit;
            f(&instance)
        })
        .await
    }
}

pub async fn run_blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> Result<T, PluginError> + Send + 'static,
) -> Result<T, PluginError> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        // The kit catches plugin panics; this is a panic in the host's own glue.
        Ok(Err(join_error)) => Err(PluginError::new(
            ErrorKind::Panicked,
            format!("the plugin call failed: {join_error}"),
        )),
        Err(_) => Err(PluginError::new(
            ErrorKind::TimedOut,
            format!(
                "the plugin did not answer within {} s",
                timeout.as_secs_f64()
            ),
        )),
    }
}

fn plugin_logger(plugin: &str, configuration: &str) -> LogFn {
    let plugin = plugin.to_owned();
    let configuration = configuration.to_owned();
    Arc::new(move |level, message| {
        let (p, c) = (plugin.as_str(), configuration.as_str());
        match level {
            LogLevel::Error => tracing::error!(plugin = p, configuration = c, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin = p, configuration = c, "{message}"),
            LogLevel::Info => tracing::info!(plugin = p, configuration = c, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin = p, configuration = c, "{message}"),
            LogLevel::Trace => tracing::trace!(plugin = p, configuration = c, "{message}"),
        }
    })
}
