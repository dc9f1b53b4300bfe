//! End-to-end tests: one test binary, shared helpers in `helpers`.

mod admin_api;
mod admin_security;
mod alerts;
mod audit;
mod backfill_api;
mod browser;
mod bulk;
mod cluster;
mod dynamics;
mod events;
mod helpers;
mod history;
mod hostile;
mod packaging;
mod plugin_loading;
mod plugins_install;
mod readiness;
mod tls;
mod tls_init;
mod transfer;
