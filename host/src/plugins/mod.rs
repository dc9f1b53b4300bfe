//! Plugins: finding and loading them ([`registry`]) and calling them safely ([`runner`]).

pub mod install;
pub mod registry;
pub mod runner;

pub use registry::{PluginEntry, Registry, Verdict};
pub use runner::PluginRunner;
