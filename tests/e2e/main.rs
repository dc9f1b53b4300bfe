//! End-to-end tests: one test binary, shared helpers in `helpers`.

mod admin_api;
mod admin_security;
mod browser;
mod dynamics;
mod events;
mod helpers;
mod hostile;
mod plugin_loading;
mod readiness;
