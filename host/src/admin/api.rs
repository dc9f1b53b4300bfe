//! The admin JSON API. The admin page uses it too.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::audit::{audited, Audited};
use super::error::ApiError;
use super::rfc3339;
use crate::configurations::{Configuration, ConfigurationInput, Configurations, Status};
use crate::plugins::Verdict;
use crate::store::bulk::ReconcileState;

/// What the admin handlers share.
pub struct AdminState {
    pub configurations: Arc<Configurations>,
    pub store: crate::store::Store,
    pub engine: Arc<crate::engine::Engine>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// History listings run one at a time: on a small machine a loop of large ones
    /// must leave CPU to intake, whose commits they no longer block.
    pub history_slots: tokio::sync::Semaphore,
    pub readiness: Arc<crate::readiness::Readiness>,
    pub alerts: Arc<crate::alerts::Alerter>,
}

pub type AppState = Arc<AdminState>;

/// A JSON body whose rejections are answered as [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// A path parameter whose rejection (`/api/configurations/abc`) is answered as an
/// [`ApiError`], in JSON like every other answer.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    Path<T>: FromRequestParts<S, Rejection = axum::extract::rejection::PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A query string whose rejection (a repeated or malformed field) is answered as an
/// [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = axum::extract::rejection::QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// `GET /api/plugins`: every plugin found, loaded or not, with its declarations.
/// `GET /api/engines`: every engine on this engine's database (one on the embedded
/// store), with its heartbeat, the jobs it runs, and how its plugins differ.
pub async fn list_engines(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engines = app.engine.engines().await.map_err(ApiError::internal)?;
    let identity = app.engine.identity();
    Ok(Json(json!({
        "store": if app.store.is_shared() { "postgres" } else { "sqlite" },
        "lease_seconds": identity.lease.as_secs(),
        "this_engine": identity.id,
        "engines": engines,
    })))
}

pub async fn list_plugins(State(app): State<AppState>) -> Json<Vec<Value>> {
    let registry = app.configurations.registry();
    let plugins = registry
        .entries
        .iter()
        .map(|entry| match &entry.verdict {
            Verdict::Loaded(p) => json!({
                "id": p.manifest.id,
                "name": p.manifest.name,
                "version": p.manifest.version,
                "description": p.manifest.description,
                "status": "loaded",
                "folder": entry.folder,
                "settings": p.manifest.settings,
                "outbound_event_types": p.manifest.outbound_event_types,
                "polling_event_types": p.manifest.polling_event_types,
                "actions": p.manifest.actions,
                "lists_ended_sessions": p.manifest.lists_ended_sessions,
            }),
            Verdict::Failed(reason) => json!({
                "id": entry.folder,
                "name": entry.folder,
                "version": null,
                "status": "failed",
                "error": reason,
                "folder": entry.folder,
                "settings": [],
                "outbound_event_types": [],
                "polling_event_types": [],
                "actions": [],
                "lists_ended_sessions": false,
            }),
        })
        .collect();
    Json(plugins)
}

/// A configuration as the API shows it: secrets only as `{"set": bool}`.
#[derive(Serialize)]
pub struct ConfigurationView {
    id: i64,
    plugin: String,
    name: String,
    disabled: bool,
    status: Status,
    settings: Map<String, Value>,
    created_at: String,
    updated_at: String,
    /// Its last reconciliation; null before the first (or when it does not reconcile).
    reconciliation: Option<ReconcileState>,
    /// Last success and failure, the queue, the oldest waiting event, a throttle
    /// pause, the last poll, and what needs attention.
    health: Value,
}

/// The health as the API shows it: times as RFC 3339.
fn health_json(health: &crate::engine::health::Health) -> Value {
    let time = |t: Option<i64>| t.map(rfc3339);
    let s = &health.stored;
    json!({
        "last_success_at": time(s.last_success_at),
        "last_failure_at": time(s.last_failure_at),
        "last_failure_error": s.last_failure_error,
        "pending": s.pending,
        "running": s.running,
        "retrying": s.retrying,
        "failed": s.failed,
        "oldest_waiting_at": time(s.oldest_waiting_at),
        "throttled_until": time(health.throttled_until),
        "last_poll_at": time(s.last_poll_at),
        "last_poll_error": s.last_poll_error,
        "attention": health.attention,
    })
}

async fn view(state: &AdminState, config: Configuration) -> Result<ConfigurationView, ApiError> {
    let app = &state.configurations;
    let mut secret_keys = config.secret_keys.clone();
    if let Some(plugin) = app.registry().plugin(&config.plugin) {
        secret_keys.extend(
            plugin
                .manifest
                .settings
                .iter()
                .filter(|d| d.is_secret())
                .map(|d| d.key.clone()),
        );
    }
    secret_keys.sort();
    secret_keys.dedup();
    let mut settings = config.settings.0;
    for key in secret_keys {
        // A secret that could not be decrypted reads as not set: it must be entered again.
        let set = settings
            .remove(&key)
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        settings.insert(key, json!({ "set": set }));
    }
    let reconciliation = state
        .engine
        .reconcile_state(config.id)
        .await
        .map_err(ApiError::internal)?;
    let status = app.status(config.id).await;
    let health = state
        .engine
        .health(config.id, &status, state.alerts.after_ms())
        .await
        .map_err(ApiError::internal)?;
    Ok(ConfigurationView {
        status,
        health: health_json(&health),
        reconciliation,
        id: config.id,
        plugin: config.plugin,
        name: config.name,
        disabled: config.disabled,
        settings,
        created_at: rfc3339(config.created_at),
        updated_at: rfc3339(config.updated_at),
    })
}

fn created(view: ConfigurationView) -> Response {
    let location = format!("/api/configurations/{}", view.id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response()
}

pub async fn list_configurations(
    State(app): State<AppState>,
) -> Result<Json<Vec<ConfigurationView>>, ApiError> {
    let mut views = Vec::new();
    for config in app.configurations.list().await? {
        views.push(view(&app, config).await?);
    }
    Ok(Json(views))
}

pub async fn get_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ConfigurationView>, ApiError> {
    let config = app.configurations.get(id).await?;
    Ok(Json(view(&app, config).await?))
}

/// For the audit log: the configuration a change is about.
fn about(config: &Configuration, detail: Value) -> Audited {
    Audited {
        configuration_id: Some(config.id),
        configuration_name: Some(config.name.clone()),
        detail,
    }
}

pub async fn create_configuration(
    State(app): State<AppState>,
    ApiJson(input): ApiJson<ConfigurationInput>,
) -> Result<Response, ApiError> {
    let config = app.configurations.create(input).await?;
    tracing::info!(configuration = %config.name, plugin = %config.plugin, "configuration created");
    let audit = about(&config, json!({ "plugin": config.plugin }));
    Ok(audited(created(view(&app, config).await?), audit))
}

/// The settings an edit changed, by name: a plain one with its old and new values, a
/// secret only as "changed".
fn changes(app: &AdminState, before: &Configuration, after: &Configuration) -> Value {
    let secret = |key: &str| {
        before
            .secret_keys
            .iter()
            .chain(&after.secret_keys)
            .any(|k| k == key)
            || app
                .configurations
                .registry()
                .plugin(&after.plugin)
                .is_some_and(|p| {
                    p.manifest
                        .settings
                        .iter()
                        .any(|d| d.key == key && d.is_secret())
                })
    };
    let mut changed =
        crate::store::audit::setting_changes(&before.settings.0, &after.settings.0, secret);
    if before.name != after.name {
        changed.insert(
            "name".into(),
            json!({ "from": before.name, "to": after.name }),
        );
    }
    if before.disabled != after.disabled {
        changed.insert(
            "disabled".into(),
            json!({ "from": before.disabled, "to": after.disabled }),
        );
    }
    json!({ "changed": changed })
}

pub async fn update_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(input): ApiJson<ConfigurationInput>,
) -> Result<Response, ApiError> {
    let before = app.configurations.get(id).await?;
    let config = app.configurations.update(id, input).await?;
    tracing::info!(configuration = %config.name, plugin = %config.plugin, "configuration saved");
    let audit = about(&config, changes(&app, &before, &config));
    Ok(audited(Json(view(&app, config).await?), audit))
}

pub async fn delete_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let before = app.configurations.get(id).await?;
    app.configurations.delete(id).await?;
    Ok(audited(StatusCode::NO_CONTENT, about(&before, json!({}))))
}

pub async fn copy_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let config = app.configurations.copy(id).await?;
    let audit = Audited {
        configuration_id: Some(id),
        configuration_name: None,
        detail: json!({ "copy_id": config.id, "copy_name": config.name }),
    };
    Ok(audited(created(view(&app, config).await?), audit))
}

pub async fn enable_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let config = app.configurations.set_disabled(id, false).await?;
    let audit = about(&config, json!({}));
    Ok(audited(Json(view(&app, config).await?), audit))
}

pub async fn disable_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let config = app.configurations.set_disabled(id, true).await?;
    let audit = about(&config, json!({}));
    Ok(audited(Json(view(&app, config).await?), audit))
}

pub async fn test_configuration(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let report = app.configurations.test(id).await?;
    Ok(Json(json!({ "ok": report.ok(), "checks": report.checks })))
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    secrets: Option<String>,
}

/// `GET /api/configurations/export?secrets=none|sealed`: every configuration as one
/// JSON document; secrets left out, or sealed with this engine's key (never in
/// clear).
pub async fn export_configurations(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let sealed = match q.secrets.as_deref().map(str::trim) {
        None | Some("") | Some("none") => false,
        Some("sealed") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "secrets={other:?}: give none (the default: secrets left out) or sealed (sealed with this engine's key, for engines holding the same key file)"
            )))
        }
    };
    let document = app.configurations.export(sealed).await?;
    Ok((
        [(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"configurations.json\"",
        )],
        Json(document),
    )
        .into_response())
}

/// `POST /api/configurations/import`: an export's document; per configuration,
/// `created`, `updated`, `unchanged` or `invalid` (with `errors`), and the secrets
/// still to be given.
pub async fn import_configurations(
    State(app): State<AppState>,
    ApiJson(document): ApiJson<crate::configurations::transfer::Document>,
) -> Result<Response, ApiError> {
    let report = app.configurations.import(document).await?;
    let summary: Vec<Value> = report
        .iter()
        .map(|r| json!({ "plugin": r.plugin, "name": r.name, "result": r.result }))
        .collect();
    Ok(audited(
        Json(json!({ "configurations": report })),
        Audited {
            configuration_id: None,
            configuration_name: None,
            detail: json!({ "configurations": summary }),
        },
    ))
}

/// `GET /api/configurations/{id}/actions`: what the configuration's plugin offers.
pub async fn list_actions(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.configurations.actions(id).await?)))
}

/// `POST /api/configurations/{id}/actions/{action}`: a report like the test's, with
/// the progress lines the plugin wrote while it ran.
pub async fn run_action(
    State(app): State<AppState>,
    ApiPath((id, action)): ApiPath<(i64, String)>,
) -> Result<Response, ApiError> {
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = std::sync::Arc::clone(&progress);
    let log: plugin_api::loader::LogFn = std::sync::Arc::new(move |_, line: &str| {
        tracing::info!(configuration_id = id, "{line}");
        if let Ok(mut lines) = sink.lock() {
            lines.push(line.to_owned());
        }
    });
    let report = app.configurations.run_action(id, &action, log).await?;
    let lines = progress.lock().map(|l| l.clone()).unwrap_or_default();
    let audit = Audited {
        configuration_id: Some(id),
        configuration_name: None,
        detail: json!({ "action": action, "ok": report.ok() }),
    };
    Ok(audited(
        Json(json!({ "ok": report.ok(), "checks": report.checks, "progress": lines })),
        audit,
    ))
}
