//! The contract between the middleware engine (the host) and its plugins.
//!
//! Plugin authors implement [`Plugin`] in plain safe Rust and export it with
//! [`export_plugin!`]; they never see an FFI type. The host loads a plugin library
//! with [`loader::load`] and talks to it through [`loader::LoadedPlugin`] and
//! [`loader::Instance`]. Everything that crosses the boundary goes through the
//! `abi` module, the only place that names `abi_stable`, so that the ABI crate could
//! be swapped without touching the host or any plugin.
//!
//! The boundary is deliberately narrow: settings, events and results cross as JSON
//! of the types in [`model`] and [`manifest`]; errors cross as a small typed struct.

mod abi;
pub mod common;
#[cfg(target_os = "linux")]
mod elf;
pub mod kit;
pub mod loader;
pub mod manifest;
pub mod model;

pub use common::{
    check_common_settings, check_host_name, common_bt_settings, ApplianceAccess, CommonSettings,
};
pub use kit::{runtime, Logger, OpenContext, Plugin};
pub use manifest::{ActionDecl, EventTypeDecl, Manifest, SettingDecl, SettingKind, BT_SECTION};
pub use model::{
    Check, EndedSession, EndedSessions, EndedSessionsRequest, ErrorKind, Event, EventSource,
    FieldError, LogLevel, Outcome, PluginError, PollRequest, PollResult, PolledEvent, Settings,
    TestReport,
};
/// Secrets held by plugins: no `Debug` or `Display` of the value, zeroized on drop.
pub use secrecy::{ExposeSecret, SecretString};

/// The plugin-api version a plugin was built against; the host refuses plugins
/// whose version is not compatible with its own (see `loader::LoadError`).
pub const PLUGIN_API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Items the [`export_plugin!`] macro needs; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::export::*;
}

/// Exports a [`Plugin`] implementation as this library's plugin entry point.
///
/// Use it once, at the root of a `cdylib` crate:
///
/// ```text
/// plugin_api::export_plugin!(MyPlugin);
/// ```
///
/// `examples/file-sink-plugin` shows a whole plugin.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // The symbol name is the one abi_stable's loader looks up; a unit test in
        // plugin-api checks it against abi_stable's own constant.
        #[doc(hidden)]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn __plugin_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::call_root_module_loader($crate::__private::root_module::<$plugin>)
            }
            // SAFETY: the constructor returns the root module type named here, which is
            // what the loader checks the library's layout against.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::__private::PluginModuleRef>(
                    __plugin_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
