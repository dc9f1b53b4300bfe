//! The host's side of the boundary: load a plugin library, open instances, call them.
//!
//! Every failure to load is turned into a [`LoadError`] whose text an admin can act on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use abi_stable::std_types::{RArc, RResult, RStr, RString};

use crate::abi::{
    FfiError, InstanceBox, LibraryError, LogSinkBox, LogSinkFfi, LogSinkFfi_TO, PluginModuleRef,
    RootModuleError, TD_Opaque,
};
pub use crate::kit::LogFn;
use crate::kit::{ActionRequest, OpenRequest, PANIC_PREFIX};
use crate::manifest::Manifest;
use crate::model::{
    EndedSessions, EndedSessionsRequest, Event, FieldError, LogLevel, Outcome, PluginError,
    PollRequest, PollResult, Settings, TestReport,
};

/// Why a plugin library did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a loadable library: {0}")]
    NotALibrary(String),
    #[error("not a middleware engine plugin: the library exports no plugin entry point")]
    NotAPlugin,
    #[error("built against plugin-api {plugin}, but this host uses plugin-api {host}; rebuild the plugin against plugin-api {host}")]
    IncompatibleVersion { plugin: String, host: String },
    #[error("ABI layout mismatch: the plugin's plugin-api types differ from this host's; rebuild the plugin against this host's plugin-api ({0})")]
    AbiMismatch(String),
    #[error("its constructor failed: {0}")]
    ConstructorFailed(String),
    #[error("its constructor panicked: {0}")]
    ConstructorPanicked(String),
    #[error("its manifest is unreadable: {0}")]
    BadManifest(String),
    #[error("the library file is truncated or damaged: its {part} ends at byte {} but the file has {} bytes; copy the plugin again", grouped(*.end), grouped(*.size))]
    Truncated { part: String, end: u64, size: u64 },
    #[error("the library file is damaged: {0}; copy the plugin again")]
    Damaged(String),
    #[error("not a shared library: it is {kind}; a plugin is built as a cdylib (crate-type = [\"cdylib\"])")]
    NotASharedLibrary { kind: String },
    #[error(
        "built for {library}, but this host runs on {host}; install the plugin built for {host}"
    )]
    WrongArchitecture { library: String, host: String },
    #[error("a {library_bits}-bit library, but this host is a {host_bits}-bit program; install the plugin's {host_bits}-bit build")]
    WrongWordSize { library_bits: u8, host_bits: u8 },
    #[error("its byte order is {library}, but this host is {host}; install the plugin built for this host")]
    WrongByteOrder { library: String, host: String },
    #[error("the library has no dynamic segment (PT_DYNAMIC), so it cannot be loaded; rebuild the plugin as a cdylib")]
    NoDynamicSection,
}

/// `1234567` as `1,234,567`, for byte counts an admin reads (verdicts write them so).
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    // The first group takes 1 to 3 digits, every later one exactly 3.
    let head = (digits.len() - 1) % 3 + 1;
    let (mut text, mut rest) = match digits.split_at_checked(head) {
        Some((first, rest)) => (first.to_owned(), rest),
        None => return digits,
    };
    while let Some((group, tail)) = rest.split_at_checked(3) {
        text.push(',');
        text.push_str(group);
        rest = tail;
    }
    text
}

impl LoadError {
    fn from_library_error(e: LibraryError) -> Self {
        match e {
            LibraryError::OpenError { err, .. } => Self::NotALibrary(err.to_string()),
            LibraryError::GetSymbolError { .. } => Self::NotAPlugin,
            LibraryError::IncompatibleVersionNumber {
                expected_version,
                actual_version,
                ..
            } => Self::IncompatibleVersion {
                plugin: actual_version.to_string(),
                host: expected_version.to_string(),
            },
            LibraryError::ParseVersionError(e) => {
                Self::AbiMismatch(format!("unreadable plugin-api version: {e}"))
            }
            LibraryError::AbiInstability(e) => Self::AbiMismatch(first_line(&e.to_string())),
            LibraryError::InvalidAbiHeader(header) => Self::AbiMismatch(format!(
                "built with abi_stable ABI {}.{}",
                header.abi_major, header.abi_minor
            )),
            LibraryError::InvalidCAbi { .. } => {
                Self::AbiMismatch("built by an incompatible Rust compiler".into())
            }
            LibraryError::RootModule { err, .. } => match err {
                RootModuleError::Returned(e) => {
                    let text = e.to_string();
                    match text.strip_prefix(PANIC_PREFIX) {
                        Some(message) => Self::ConstructorPanicked(message.to_owned()),
                        None => Self::ConstructorFailed(text),
                    }
                }
                RootModuleError::Unwound => Self::ConstructorPanicked(
                    "no message (the panic was not caught by the plugin kit)".into(),
                ),
            },
            LibraryError::Many(errors) => errors
                .into_iter()
                .next()
                .map(Self::from_library_error)
                .unwrap_or_else(|| Self::AbiMismatch("unknown loading error".into())),
        }
    }
}

fn first_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    line.unwrap_or("no detail").chars().take(300).collect()
}

/// A plugin library that loaded and passed every check. Libraries are never
/// unloaded: replacing a plugin means restarting the host.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub manifest: Manifest,
    module: PluginModuleRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("id", &self.manifest.id)
            .finish()
    }
}

/// Loads the plugin library at `path`, checks it against this plugin-api, runs its
/// constructor and reads its manifest.
pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
    // The dynamic loader maps segments without checking that the file holds them: a
    // truncated library would kill the host with SIGBUS, so its headers are checked first.
    #[cfg(target_os = "linux")]
    crate::elf::check(path)?;
    let header =
        abi_stable::library::lib_header_from_path(path).map_err(LoadError::from_library_error)?;
    // Checked against the 0.1.0 view, so that plugins built before later additions load.
    let module = header
        .init_root_module::<crate::abi::v0_1_0::PluginModuleRef>()
        .map_err(LoadError::from_library_error)?
        .upgrade();
    let json = answer((module.manifest())()).map_err(|e| LoadError::BadManifest(e.message))?;
    let manifest: Manifest =
        serde_json::from_str(&json).map_err(|e| LoadError::BadManifest(e.to_string()))?;
    manifest.check().map_err(LoadError::BadManifest)?;
    Ok(LoadedPlugin {
        path: path.to_owned(),
        manifest,
        module,
    })
}

impl LoadedPlugin {
    /// The plugin's own checks of a configuration's settings.
    pub fn validate(&self, settings: &Settings) -> Result<Vec<FieldError>, PluginError> {
        let json = encode(settings)?;
        let answer = answer((self.module.validate())(RStr::from_str(&json)))?;
        decode(&answer)
    }

    /// Opens an instance for one configuration.
    pub fn open(
        &self,
        configuration_name: &str,
        settings: &Settings,
        log: LogFn,
    ) -> Result<Instance, PluginError> {
        let request = encode(&OpenRequest {
            configuration_name: configuration_name.to_owned(),
            settings: settings.clone(),
        })?;
        match (self.module.open())(RStr::from_str(&request), host_log_sink(log)) {
            RResult::ROk(inner) => Ok(Instance {
                inner,
                #[cfg(not(feature = "pre-actions-abi"))]
                call: self.module.instance_call(),
            }),
            RResult::RErr(e) => Err(e.into()),
        }
    }
}

impl LoadedPlugin {
    /// Runs an action on an instance opened for it; progress goes to `log`.
    pub fn run_action(
        &self,
        configuration_name: &str,
        settings: &Settings,
        action: &str,
        log: LogFn,
    ) -> Result<TestReport, PluginError> {
        if !self.manifest.actions.iter().any(|a| a.name == action) {
            let offered: Vec<&str> = self
                .manifest
                .actions
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            return Err(PluginError::configuration(format!(
                "the plugin {} has no action {action:?} (it offers: {})",
                self.manifest.id,
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                }
            )));
        }
        #[cfg(feature = "pre-actions-abi")]
        let run: Option<
            extern "C" fn(RStr<'_>, LogSinkBox) -> crate::abi::FfiResult<RString>,
        > = None;
        #[cfg(not(feature = "pre-actions-abi"))]
        let run = self.module.run_action();
        let Some(run) = run else {
            return Err(PluginError::configuration(format!(
                "the plugin {} was built before actions existed; rebuild it",
                self.manifest.id
            )));
        };
        let request = encode(&ActionRequest {
            configuration_name: configuration_name.to_owned(),
            settings: settings.clone(),
            action: action.to_owned(),
        })?;
        decode(&answer(run(RStr::from_str(&request), host_log_sink(log)))?)
    }
}

/// An open configuration inside a plugin. Calls block; dropping it closes it.
pub struct Instance {
    inner: InstanceBox,
    /// The library's `instance_call`; `None` for plugins built before 0.1.2.
    #[cfg(not(feature = "pre-actions-abi"))]
    call: Option<InstanceCall>,
}

#[cfg(not(feature = "pre-actions-abi"))]
type InstanceCall =
    extern "C" fn(&InstanceBox, RStr<'_>, RStr<'_>) -> crate::abi::FfiResult<RString>;

impl Instance {
    pub fn test(&self) -> Result<TestReport, PluginError> {
        decode(&answer(self.inner.test())?)
    }

    pub fn handle_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        let json = encode(event)?;
        decode(&answer(self.inner.handle_event(RStr::from_str(&json)))?)
    }

    pub fn poll(&self, request: &PollRequest) -> Result<PollResult, PluginError> {
        let json = encode(request)?;
        decode(&answer(self.inner.poll(RStr::from_str(&json)))?)
    }

    /// The sessions that ended in the window (for reconciliation and backfill).
    pub fn ended_sessions(
        &self,
        request: &EndedSessionsRequest,
    ) -> Result<EndedSessions, PluginError> {
        let json = encode(request)?;
        let answer = self.instance_call(crate::kit::methods::ENDED_SESSIONS, &json)?;
        decode(&answer)
    }

    /// Several events at once: one result per event, in order. A plugin built before
    /// 0.1.2 gets them one by one.
    pub fn handle_batch(&self, events: &[Event]) -> Vec<Result<Outcome, PluginError>> {
        if !self.has_instance_call() {
            return events.iter().map(|e| self.handle_event(e)).collect();
        }
        let answer = encode(&events)
            .and_then(|json| self.instance_call(crate::kit::methods::HANDLE_BATCH, &json))
            .and_then(|answer| decode::<Vec<crate::kit::BatchResult>>(&answer));
        match answer {
            Ok(results) if results.len() == events.len() => {
                results.into_iter().map(Into::into).collect()
            }
            Ok(results) => {
                let e = PluginError::permanent(format!(
                    "the plugin answered {} results for a batch of {} events",
                    results.len(),
                    events.len()
                ));
                events.iter().map(|_| Err(e.clone())).collect()
            }
            // The whole call failed (throttled, a panic, ...): each event shares it.
            Err(e) => events.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    fn has_instance_call(&self) -> bool {
        #[cfg(not(feature = "pre-actions-abi"))]
        return self.call.is_some();
        #[cfg(feature = "pre-actions-abi")]
        return false;
    }

    fn instance_call(&self, method: &str, payload: &str) -> Result<String, PluginError> {
        #[cfg(not(feature = "pre-actions-abi"))]
        if let Some(call) = self.call {
            return answer(call(
                &self.inner,
                RStr::from_str(method),
                RStr::from_str(payload),
            ));
        }
        Err(PluginError::configuration(format!(
            "the plugin was built against a plugin-api older than 0.1.2: it has no {method:?}; rebuild it"
        )))
    }
}

fn answer(result: RResult<RString, FfiError>) -> Result<String, PluginError> {
    match result {
        RResult::ROk(s) => Ok(s.into()),
        RResult::RErr(e) => Err(e.into()),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, PluginError> {
    serde_json::to_string(value)
        .map_err(|e| PluginError::permanent(format!("cannot encode the request: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    serde_json::from_str(json)
        .map_err(|e| PluginError::permanent(format!("the plugin sent an unreadable answer: {e}")))
}

#[derive(Clone)]
struct HostLogSink(LogFn);

impl LogSinkFfi for HostLogSink {
    fn log(&self, level: u8, message: RStr<'_>) {
        // Runs on the host's side of the boundary: a panic here must not unwind into the plugin.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            (self.0)(LogLevel::from_code(level), message.as_str())
        }));
    }
}

pub(crate) fn host_log_sink(log: LogFn) -> LogSinkBox {
    LogSinkFfi_TO::from_ptr(RArc::new(HostLogSink(log)), TD_Opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_library_is_reported_as_such() {
        let dir = std::env::temp_dir().join(format!("plugin-api-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("readme.so");
        std::fs::write(&path, "not a library").expect("write");
        let err = load(&path).expect_err("must not load");
        assert!(
            matches!(&err, LoadError::NotALibrary(detail) if detail.contains("readme.so")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn byte_counts_are_grouped_by_thousands() {
        let cases = [(0, "0"), (999, "999"), (1000, "1,000"), (4096, "4,096")];
        for (n, text) in cases {
            assert_eq!(grouped(n), text);
        }
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }

    /// Loading a truncated copy of a real shared library gives the verdict instead of
    /// SIGBUS inside the dynamic loader (which would end this test process).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_truncated_library_is_refused_before_the_loader_maps_it() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let library = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|p| p.starts_with('/') && p.contains(".so"))
            .expect("a mapped shared library");
        let bytes = std::fs::read(library).expect("read the library");
        let dir = std::env::temp_dir().join(format!("plugin-api-trunc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for cut in [4096, bytes.len() / 2] {
            let path = dir.join(format!("libcut{cut}.so"));
            std::fs::write(&path, &bytes[..cut]).expect("write");
            let err = load(&path).expect_err("must not load");
            assert!(
                matches!(&err, LoadError::Truncated { size, .. } if *size == cut as u64),
                "{err:?}"
            );
            assert!(
                err.to_string().ends_with("; copy the plugin again"),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn constructor_errors_tell_panics_from_failures() {
        let panicked = LoadError::from_library_error(LibraryError::RootModule {
            err: RootModuleError::Returned(crate::abi::RBoxError::from_fmt(&format!(
                "{PANIC_PREFIX}boom (at src/lib.rs:3)"
            ))),
            module_name: "m",
            version: abi_stable::package_version_strings!(),
        });
        assert_eq!(
            panicked.to_string(),
            "its constructor panicked: boom (at src/lib.rs:3)"
        );
        let failed = LoadError::from_library_error(LibraryError::RootModule {
            err: RootModuleError::Returned(crate::abi::RBoxError::from_fmt(&"no way")),
            module_name: "m",
            version: abi_stable::package_version_strings!(),
        });
        assert_eq!(failed.to_string(), "its constructor failed: no way");
    }
}
