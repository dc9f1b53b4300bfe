//! The plugin author's kit: a safe trait, its adapter to the FFI layer, panic
//! containment, the host logger and the plugin's own async runtime.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RStr, RString};
use serde::{Deserialize, Serialize};

use crate::abi::{
    FfiError, FfiResult, InstanceBox, InstanceFfi, InstanceFfi_TO, LogSinkBox, PluginModule,
    PluginModuleRef, RBoxError, TD_CanDowncast,
};
use crate::manifest::Manifest;
use crate::model::{
    EndedSessions, EndedSessionsRequest, ErrorKind, Event, FieldError, LogLevel, Outcome,
    PluginError, PollRequest, PollResult, Settings, TestReport,
};

/// What a plugin implements. Every call may block: the host calls it from a worker
/// thread, with its own time limit, and never from an async context.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// Identity, settings and event types. Called when the library is loaded.
    fn manifest() -> Manifest;

    /// Checks beyond what the declarations express (URL shapes, cross-field rules).
    /// The host has already checked types, required fields and ranges.
    fn validate(_settings: &Settings) -> Vec<FieldError> {
        Vec::new()
    }

    /// Opens one configuration. Keep it cheap: no network calls here.
    fn open(ctx: OpenContext) -> Result<Self, PluginError>;

    /// Checks each piece the configuration depends on.
    fn test(&self) -> TestReport;

    /// Processes one event. Must be idempotent: after a crash it may run again.
    fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError>;

    /// Finds events that happened since the cursor.
    fn poll(&self, _request: &PollRequest) -> Result<PollResult, PluginError> {
        Err(PluginError::configuration(
            "this plugin does not support polling",
        ))
    }

    /// Whether [`Plugin::ended_sessions`] is implemented: the host reconciles and
    /// backfills only the configurations of plugins that say so.
    const LISTS_ENDED_SESSIONS: bool = false;

    /// The sessions that ended in the request's window, found with one cheap call
    /// (e.g. a session listing), never a call per session. Reconciliation and backfill
    /// compare them with what the host already has.
    fn ended_sessions(
        &self,
        _request: &EndedSessionsRequest,
    ) -> Result<EndedSessions, PluginError> {
        Err(PluginError::configuration(
            "this plugin does not list ended sessions",
        ))
    }

    /// Processes several events at once (a backfill, a reconciliation or a poll that
    /// found many), e.g. in one bulk write: one result per event, in their order; a
    /// failing event fails alone. The default handles them one by one.
    fn handle_batch(&self, events: &[Event]) -> Vec<Result<Outcome, PluginError>> {
        events.iter().map(|e| self.handle_event(e)).collect()
    }

    /// Runs one of the actions the manifest declares, on an instance opened for it.
    /// Progress goes to `progress` (the admin sees it as it happens).
    fn run_action(&self, action: &str, _progress: &Logger) -> Result<TestReport, PluginError> {
        Err(PluginError::configuration(format!(
            "this plugin has no action {action:?}"
        )))
    }
}

/// The JSON the host sends to `run_action`.
#[derive(Serialize, Deserialize)]
pub(crate) struct ActionRequest {
    pub configuration_name: String,
    pub settings: Settings,
    pub action: String,
}

/// Everything an instance gets when it is opened.
pub struct OpenContext {
    /// The configuration's name, as the admin named it.
    pub configuration_name: String,
    /// Settings already validated by the host against the manifest.
    pub settings: Settings,
    /// Records go to the host's log, tagged with the configuration's name.
    pub log: Logger,
}

/// The JSON the host sends to `open`.
#[derive(Serialize, Deserialize)]
pub(crate) struct OpenRequest {
    pub configuration_name: String,
    pub settings: Settings,
}

/// A function that receives log records.
pub type LogFn = Arc<dyn Fn(LogLevel, &str) + Send + Sync>;

/// Sends log records to the host (or, outside a host, to a local function).
#[derive(Clone)]
pub struct Logger(LoggerInner);

#[derive(Clone)]
enum LoggerInner {
    Host(LogSinkBox),
    Local(LogFn),
}

impl Logger {
    /// A logger for in-process use (tests, tools) that calls `f` for each record.
    pub fn from_fn(f: impl Fn(LogLevel, &str) + Send + Sync + 'static) -> Self {
        Self(LoggerInner::Local(Arc::new(f)))
    }

    /// A logger that drops every record.
    pub fn discard() -> Self {
        Self::from_fn(|_, _| {})
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        match &self.0 {
            LoggerInner::Host(sink) => sink.log(level.code(), message.into()),
            LoggerInner::Local(f) => f(level, message),
        }
    }

    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }
}

/// The plugin's own async runtime, shared by its instances and created on first use.
///
/// A host's tokio runtime cannot be used from a plugin library (each library has its
/// own copy of tokio's thread-locals), so a plugin drives its futures here.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, PluginError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("plugin-runtime")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the plugin's async runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| PluginError::retryable(e.clone()))
}

/// Runs a future to completion on the plugin's runtime.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, PluginError> {
    Ok(runtime()?.block_on(future))
}

/// Prefix of a constructor error that came from a panic, so the host can say so.
pub(crate) const PANIC_PREFIX: &str = "panicked: ";

thread_local! {
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the library's panic hook (the plugin's copy of std has its own) with one
/// that keeps the panic's location for the error message instead of printing it.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            LAST_PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
        }));
    });
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    match LAST_PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}

/// Runs plugin code, turning a panic into an error so it never crosses the boundary.
fn contain<T>(what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(PluginError::new(
            ErrorKind::Panicked,
            format!(
                "the plugin panicked in {what}: {}",
                panic_message(&*payload)
            ),
        )),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<RString, PluginError> {
    serde_json::to_string(value)
        .map(RString::from)
        .map_err(|e| PluginError::permanent(format!("cannot encode the plugin's answer: {e}")))
}

fn from_json<'a, T: Deserialize<'a>>(what: &str, json: &'a str) -> Result<T, PluginError> {
    serde_json::from_str(json)
        .map_err(|e| PluginError::permanent(format!("the host sent an unreadable {what}: {e}")))
}

fn ffi<T>(result: Result<T, PluginError>) -> FfiResult<T> {
    match result {
        Ok(v) => RResult::ROk(v),
        Err(e) => RResult::RErr(FfiError::from(e)),
    }
}

/// The root-module constructor `export_plugin!` exports: checks the manifest once so
/// that a plugin with a broken manifest fails to load with a clear reason.
pub fn root_module<P: Plugin>() -> Result<PluginModuleRef, RBoxError> {
    let manifest = match catch_unwind(P::manifest) {
        Ok(m) => m,
        Err(payload) => {
            return Err(RBoxError::from_fmt(&format!(
                "{PANIC_PREFIX}{}",
                panic_message(&*payload)
            )))
        }
    };
    if let Err(problem) = manifest.check() {
        return Err(RBoxError::from_fmt(&format!(
            "its manifest is invalid: {problem}"
        )));
    }
    let module = PluginModule {
        manifest: ffi_manifest::<P>,
        validate: ffi_validate::<P>,
        open: ffi_open::<P>,
        #[cfg(not(feature = "pre-actions-abi"))]
        run_action: ffi_run_action::<P>,
        #[cfg(not(feature = "pre-actions-abi"))]
        instance_call: ffi_instance_call::<P>,
    };
    Ok(module.leak_into_prefix())
}

extern "C" fn ffi_manifest<P: Plugin>() -> FfiResult<RString> {
    ffi(contain("manifest", || {
        let mut manifest = P::manifest();
        manifest.plugin_api_version = crate::PLUGIN_API_VERSION.to_owned();
        manifest.lists_ended_sessions = P::LISTS_ENDED_SESSIONS;
        to_json(&manifest)
    }))
}

extern "C" fn ffi_validate<P: Plugin>(settings: RStr<'_>) -> FfiResult<RString> {
    ffi(contain("validate", || {
        let settings: Settings = from_json("settings", settings.as_str())?;
        to_json(&P::validate(&settings))
    }))
}

extern "C" fn ffi_open<P: Plugin>(request: RStr<'_>, log: LogSinkBox) -> FfiResult<InstanceBox> {
    ffi(contain("open", || {
        let request: OpenRequest = from_json("open request", request.as_str())?;
        let plugin = P::open(OpenContext {
            configuration_name: request.configuration_name,
            settings: request.settings,
            log: Logger(LoggerInner::Host(log)),
        })?;
        // Downcastable, so that `instance_call` can find the plugin's own type again.
        Ok(InstanceFfi_TO::from_value(
            Contained(Some(plugin)),
            TD_CanDowncast,
        ))
    }))
}

#[cfg(not(feature = "pre-actions-abi"))]
extern "C" fn ffi_run_action<P: Plugin>(request: RStr<'_>, log: LogSinkBox) -> FfiResult<RString> {
    ffi(contain("run_action", || {
        let request: ActionRequest = from_json("action request", request.as_str())?;
        let logger = Logger(LoggerInner::Host(log));
        let plugin = Contained(Some(P::open(OpenContext {
            configuration_name: request.configuration_name,
            settings: request.settings,
            log: logger.clone(),
        })?));
        let report = match &plugin.0 {
            Some(p) => p.run_action(&request.action, &logger)?,
            None => return Err(PluginError::permanent("the instance is closed")),
        };
        to_json(&report)
    }))
}

/// Calls on an open instance added after 0.1.1, by name (see `abi::PluginModule`).
#[cfg(not(feature = "pre-actions-abi"))]
extern "C" fn ffi_instance_call<P: Plugin>(
    instance: &InstanceBox,
    method: RStr<'_>,
    payload: RStr<'_>,
) -> FfiResult<RString> {
    let Ok(contained) = instance.obj.downcast_as::<Contained<P>>() else {
        return ffi(Err(PluginError::permanent(
            "the instance was not opened by this plugin",
        )));
    };
    match method.as_str() {
        methods::ENDED_SESSIONS => contained.call(methods::ENDED_SESSIONS, |p| {
            let request: EndedSessionsRequest =
                from_json("ended sessions request", payload.as_str())?;
            p.ended_sessions(&request)
        }),
        methods::HANDLE_BATCH => contained.call(methods::HANDLE_BATCH, |p| {
            let events: Vec<Event> = from_json("batch", payload.as_str())?;
            let results = p.handle_batch(&events);
            if results.len() != events.len() {
                return Err(PluginError::permanent(format!(
                    "the plugin answered {} results for a batch of {} events",
                    results.len(),
                    events.len()
                )));
            }
            Ok(results
                .into_iter()
                .map(BatchResult::from)
                .collect::<Vec<_>>())
        }),
        other => ffi(Err(PluginError::configuration(format!(
            "this plugin has no instance call {other:?}; it was built against an older plugin-api"
        )))),
    }
}

/// The names `instance_call` takes.
pub(crate) mod methods {
    pub const ENDED_SESSIONS: &str = "ended_sessions";
    pub const HANDLE_BATCH: &str = "handle_batch";
}

/// One event's result in a batch, as JSON.
#[derive(Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum BatchResult {
    Ok {
        outcome: Outcome,
    },
    Err {
        kind: ErrorKind,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

impl From<Result<Outcome, PluginError>> for BatchResult {
    fn from(result: Result<Outcome, PluginError>) -> Self {
        match result {
            Ok(outcome) => Self::Ok { outcome },
            Err(e) => Self::Err {
                kind: e.kind,
                message: e.message,
                retry_after_ms: e
                    .retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
        }
    }
}

impl From<BatchResult> for Result<Outcome, PluginError> {
    fn from(result: BatchResult) -> Self {
        match result {
            BatchResult::Ok { outcome } => Ok(outcome),
            BatchResult::Err {
                kind,
                message,
                retry_after_ms,
            } => Err(PluginError {
                kind,
                message,
                retry_after: retry_after_ms.map(std::time::Duration::from_millis),
            }),
        }
    }
}

/// An open instance whose every call, drop included, is panic-contained.
struct Contained<P>(Option<P>);

impl<P: Plugin> Contained<P> {
    fn call<T: Serialize>(
        &self,
        what: &str,
        f: impl FnOnce(&P) -> Result<T, PluginError>,
    ) -> FfiResult<RString> {
        ffi(contain(what, || match &self.0 {
            Some(plugin) => to_json(&f(plugin)?),
            None => Err(PluginError::permanent("the instance is closed")),
        }))
    }
}

impl<P: Plugin> InstanceFfi for Contained<P> {
    fn test(&self) -> FfiResult<RString> {
        self.call("test", |p| Ok(p.test()))
    }

    fn handle_event(&self, event: RStr<'_>) -> FfiResult<RString> {
        self.call("handle_event", |p| {
            let event: Event = from_json("event", event.as_str())?;
            p.handle_event(&event)
        })
    }

    fn poll(&self, request: RStr<'_>) -> FfiResult<RString> {
        self.call("poll", |p| {
            let request: PollRequest = from_json("poll request", request.as_str())?;
            p.poll(&request)
        })
    }
}

impl<P> Drop for Contained<P> {
    fn drop(&mut self) {
        let plugin = self.0.take();
        // A panic in the plugin's own Drop must not unwind into the host.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(plugin)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::EventTypeDecl;

    struct Panicky;

    impl Plugin for Panicky {
        fn manifest() -> Manifest {
            Manifest::new(
                "panicky",
                "Panicky",
                "0.1.0",
                "panics on request",
                vec![EventTypeDecl::new(
                    "support_conference_end",
                    "Support Session End",
                )],
                vec![],
                vec![],
            )
        }
        fn open(_ctx: OpenContext) -> Result<Self, PluginError> {
            Ok(Panicky)
        }
        fn test(&self) -> TestReport {
            panic!("test exploded")
        }
        fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError> {
            Ok(Outcome::Done {
                detail: format!("saw {}", event.event_type),
            })
        }
    }

    #[test]
    fn a_panic_in_a_call_comes_back_as_a_panicked_error() {
        let module = root_module::<Panicky>().expect("module");
        let open = module.open();
        let sink = crate::loader::host_log_sink(Arc::new(|_, _| {}));
        let request = r#"{"configuration_name":"c","settings":{}}"#;
        let instance = match open(request.into(), sink) {
            RResult::ROk(i) => i,
            RResult::RErr(e) => panic!("open failed: {e:?}"),
        };
        let err = PluginError::from(instance.test().unwrap_err());
        assert_eq!(err.kind, ErrorKind::Panicked);
        assert!(
            err.message
                .starts_with("the plugin panicked in test: test exploded"),
            "{}",
            err.message
        );
        // The instance still answers after the panic.
        let event = r#"{"id":1,"source":"outbound","event_type":"support_conference_end",
            "appliance_id":"Default","timestamp":1,"lsid":null}"#;
        let outcome = instance.handle_event(event.into()).unwrap();
        assert_eq!(
            outcome.as_str(),
            r#"{"outcome":"done","detail":"saw support_conference_end"}"#
        );
    }

    #[test]
    fn unreadable_input_is_a_permanent_error_not_a_panic() {
        let module = root_module::<Panicky>().expect("module");
        let err = PluginError::from((module.validate())("not json".into()).unwrap_err());
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err
            .message
            .starts_with("the host sent an unreadable settings"));
    }
}
