//! The FFI layer: the only module that names `abi_stable`.
//!
//! The root module is a prefix type, so later plugin-api versions can append
//! functions after `open` (read back as `Option` from older plugins) without breaking
//! plugins built earlier. Payloads are JSON strings of the `model`/`manifest` types.
// `#[sabi_trait]` expands to impls that trip this lint on current Rust.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

pub(crate) use abi_stable::library::{LibraryError, RootModuleError};
pub(crate) use abi_stable::sabi_trait::{TD_CanDowncast, TD_Opaque};
pub(crate) use abi_stable::std_types::RBoxError;

use crate::model::{ErrorKind, PluginError};

/// A typed error as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiError {
    pub kind: u8,
    pub message: RString,
    pub retry_after_ms: ROption<u64>,
}

impl From<PluginError> for FfiError {
    fn from(e: PluginError) -> Self {
        Self {
            kind: e.kind.code(),
            message: e.message.into(),
            retry_after_ms: e
                .retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .into(),
        }
    }
}

impl From<FfiError> for PluginError {
    fn from(e: FfiError) -> Self {
        Self {
            kind: ErrorKind::from_code(e.kind),
            message: e.message.into(),
            retry_after: e
                .retry_after_ms
                .into_option()
                .map(std::time::Duration::from_millis),
        }
    }
}

pub type FfiResult<T> = RResult<T, FfiError>;

/// One open configuration inside the plugin. Dropping it closes it.
#[sabi_trait]
pub trait InstanceFfi: Send + Sync {
    /// -> JSON `TestReport`
    fn test(&self) -> FfiResult<RString>;
    /// JSON `Event` -> JSON `Outcome`
    fn handle_event(&self, event: RStr<'_>) -> FfiResult<RString>;
    /// JSON `PollRequest` -> JSON `PollResult`
    #[sabi(last_prefix_field)]
    fn poll(&self, request: RStr<'_>) -> FfiResult<RString>;
}

pub type InstanceBox = InstanceFfi_TO<'static, RBox<()>>;

/// The host's log callback, handed to each instance; implemented by the host.
#[sabi_trait]
pub trait LogSinkFfi: Send + Sync + Clone {
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, message: RStr<'_>);
}

pub type LogSinkBox = LogSinkFfi_TO<'static, RArc<()>>;

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(option))]
pub struct PluginModule {
    /// -> JSON `Manifest`
    pub manifest: extern "C" fn() -> FfiResult<RString>,
    /// JSON `Settings` -> JSON `Vec<FieldError>` (plugin-specific checks only)
    pub validate: extern "C" fn(settings: RStr<'_>) -> FfiResult<RString>,
    /// JSON `OpenRequest` + log sink -> instance
    #[sabi(last_prefix_field)]
    pub open: extern "C" fn(request: RStr<'_>, log: LogSinkBox) -> FfiResult<InstanceBox>,
    /// Added in 0.1.1 (plugins built before read back as `None`):
    /// JSON `ActionRequest` + log sink for progress -> JSON `TestReport`.
    #[cfg(not(feature = "pre-actions-abi"))]
    pub run_action: extern "C" fn(request: RStr<'_>, log: LogSinkBox) -> FfiResult<RString>,
    /// Added in 0.1.2 (plugins built before read back as `None`): a call on an open
    /// instance by method name (`ended_sessions`, `handle_batch`), JSON in and out, so
    /// that later instance calls need no change of layout. (The instance's own vtable
    /// cannot grow: the host checks every library against the 0.1.0 layout of it.)
    #[cfg(not(feature = "pre-actions-abi"))]
    pub instance_call: extern "C" fn(
        instance: &InstanceBox,
        method: RStr<'_>,
        payload: RStr<'_>,
    ) -> FfiResult<RString>,
}

/// The root module as plugin-api 0.1.0 defined it. abi_stable lets a library's prefix
/// type have more fields than the host's view, never fewer, so the host checks every
/// library against this frozen view (plugins built before 0.1.1 pass), then reads it
/// through [`PluginModuleRef`], whose accessors for later fields consult the
/// library's own field count and answer `None` when it lacks them.
#[allow(dead_code)] // its field accessors: the host reads fields through the full view
pub mod v0_1_0 {
    use super::{FfiResult, InstanceBox, LogSinkBox};
    use abi_stable::library::RootModule;
    use abi_stable::sabi_types::VersionStrings;
    use abi_stable::std_types::{RStr, RString};
    use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

    #[repr(C)]
    #[derive(StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
    #[sabi(missing_field(option))]
    pub struct PluginModule {
        pub manifest: extern "C" fn() -> FfiResult<RString>,
        pub validate: extern "C" fn(settings: RStr<'_>) -> FfiResult<RString>,
        #[sabi(last_prefix_field)]
        pub open: extern "C" fn(request: RStr<'_>, log: LogSinkBox) -> FfiResult<InstanceBox>,
    }

    impl RootModule for PluginModuleRef {
        declare_root_module_statics! {PluginModuleRef}
        const BASE_NAME: &'static str = "middleware_engine_plugin";
        const NAME: &'static str = "middleware_engine_plugin";
        const VERSION_STRINGS: VersionStrings = package_version_strings!();
    }

    impl PluginModuleRef {
        /// The full view of the same library module.
        pub fn upgrade(self) -> super::PluginModuleRef {
            // SAFETY: the current PluginModule starts with exactly these fields (same
            // types, same order, checked against the library at load); its later
            // fields are only read through accessors that check the library's
            // prefix metadata for their presence first.
            super::PluginModuleRef(unsafe { self.0.cast() })
        }
    }
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "middleware_engine_plugin";
    const NAME: &'static str = "middleware_engine_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What `export_plugin!` expands to needs.
pub mod export {
    pub use super::PluginModuleRef;
    pub use crate::kit::root_module;
    pub use abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};

    /// Runs the plugin's root-module constructor with the kit's panic hook installed,
    /// so that panic messages reach the host as errors instead of the process' stderr.
    pub fn call_root_module_loader(
        constructor: fn() -> Result<PluginModuleRef, abi_stable::std_types::RBoxError>,
    ) -> RootModuleResult {
        crate::kit::install_panic_hook();
        abi_stable::library::__call_root_module_loader(constructor)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exported_symbol_name_is_the_one_the_loader_looks_up() {
        // export_plugin! spells this name out; it must follow abi_stable's.
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
