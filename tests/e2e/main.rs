//! End-to-end tests: one test binary, shared helpers in `helpers`.

mod helpers;
mod plugin_loading;
