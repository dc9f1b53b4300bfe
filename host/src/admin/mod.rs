//! The admin address: the JSON API under `/api`, the admin page, `/healthz`.

mod alerts_api;
mod api;
mod audit;
mod backfill_api;
pub mod error;
mod events_api;
mod guard;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::settings::HostSettings;
pub use api::AdminState;
pub use backfill_api::parse_time;
use error::ApiError;
pub use guard::constant_time_eq;

/// Every time the API answers, as RFC 3339 in UTC with milliseconds (one precision
/// for all, so that clients can compare them as text).
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Largest request body the admin API takes.
pub const BODY_LIMIT: usize = 256 * 1024;

/// The admin router; `bound` is the address the admin page listens on, and
/// `scheme` is `https` when it serves TLS (the guard checks the Origin against it).
pub fn router(
    state: Arc<AdminState>,
    settings: &HostSettings,
    bound: SocketAddr,
    scheme: &'static str,
) -> Router {
    let guard = Arc::new(guard::Guard::new(
        bound,
        scheme,
        &settings.admin_hostnames,
        settings.admin_token.clone(),
    ));
    let body_timeout = settings.client_body_timeout;
    let api = Router::new()
        .route("/plugins", get(api::list_plugins))
        .route(
            "/configurations",
            get(api::list_configurations).post(api::create_configuration),
        )
        .route("/configurations/export", get(api::export_configurations))
        .route("/configurations/import", post(api::import_configurations))
        .route(
            "/configurations/{id}",
            get(api::get_configuration)
                .put(api::update_configuration)
                .delete(api::delete_configuration),
        )
        .route("/configurations/{id}/copy", post(api::copy_configuration))
        .route("/configurations/{id}/test", post(api::test_configuration))
        .route(
            "/configurations/{id}/enable",
            post(api::enable_configuration),
        )
        .route(
            "/configurations/{id}/disable",
            post(api::disable_configuration),
        )
        .route("/configurations/{id}/actions", get(api::list_actions))
        .route(
            "/configurations/{id}/actions/{action}",
            post(api::run_action),
        )
        .route(
            "/configurations/{id}/backfill",
            post(backfill_api::start_backfill),
        )
        .route(
            "/configurations/{id}/reconcile",
            post(backfill_api::reconcile_now),
        )
        .route(
            "/configurations/{id}/backfills",
            get(backfill_api::list_backfills),
        )
        .route(
            "/backfills/{id}",
            get(backfill_api::get_backfill).delete(backfill_api::cancel_backfill),
        )
        .route("/engines", get(api::list_engines))
        .route("/audit", get(audit::list))
        .route(
            "/alerts",
            get(alerts_api::get_alerts).put(alerts_api::put_alerts),
        )
        .route("/alerts/test", post(alerts_api::test_alert))
        .route("/events", get(events_api::list_events))
        .route("/events/export.csv", get(events_api::export_events))
        .route("/events/counts", get(events_api::count_events))
        .route(
            "/configurations/{id}/retry-failed",
            post(events_api::retry_failed),
        )
        .route("/events/{id}", get(events_api::get_event))
        .route("/events/{id}/retry", post(events_api::retry_event))
        // Every change made through these routes is written to the audit log.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            audit::record,
        ))
        .fallback(|| async { ApiError::NotFound("no such API endpoint".into()) })
        .with_state(Arc::clone(&state));
    Router::new()
        .nest("/api", api)
        .merge(page::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(app): State<Arc<AdminState>>| async move { app.readiness.answer().await })
                .with_state(Arc::clone(&state)),
        )
        .route("/metrics", get(events_api::metrics).with_state(state))
        .fallback(|| async { ApiError::NotFound("not found".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            read_whole_body,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
}

/// After the guard: the body is read whole, within the size limit and the body
/// timeout, before any handler runs.
async fn read_whole_body(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match crate::serve::read_body(request, BODY_LIMIT, timeout).await {
        Ok(request) => next.run(request).await,
        Err(e) => crate::serve::closing(ApiError::from(e).into_response()),
    }
}
