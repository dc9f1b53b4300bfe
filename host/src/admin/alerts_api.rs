//! `GET /api/alerts` (the settings, their declarations for the form, the alerts
//! open now), `PUT /api/alerts` (an edit) and `POST /api/alerts/test`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::api::{ApiJson, AppState};
use super::audit::{audited, Audited};
use super::error::ApiError;
use crate::alerts::settings::FIELDS;

async fn answer(app: &AppState, settings: Map<String, Value>) -> Result<Value, ApiError> {
    let open = app.alerts.open().await.map_err(ApiError::internal)?;
    Ok(json!({ "settings": settings, "fields": FIELDS, "open": open }))
}

pub async fn get_alerts(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let settings = app.alerts.view().await.map_err(ApiError::internal)?;
    Ok(Json(answer(&app, settings).await?))
}

/// The body is `{"settings": {...}}`, or the settings object itself. A setting left
/// out keeps its value; `""` or null clears it (a secret only with `""`).
pub async fn put_alerts(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let input = match body.get("settings") {
        Some(Value::Object(settings)) if body.len() == 1 => settings.clone(),
        Some(_) if body.len() == 1 => {
            return Err(ApiError::BadRequest(
                "settings must be an object of alert settings".into(),
            ))
        }
        _ => body,
    };
    let (changed, settings) = app.alerts.save(&input).await?;
    tracing::info!(
        changed = ?changed.keys().collect::<Vec<_>>(),
        "alert settings saved"
    );
    let audit = Audited {
        detail: json!({ "changed": changed }),
        ..Audited::default()
    };
    Ok(audited(Json(answer(&app, settings).await?), audit))
}

/// Sends a test alert through every channel set: 200 when each delivered, 502
/// (with each channel's result) when one did not.
pub async fn test_alert(State(app): State<AppState>) -> Result<Response, ApiError> {
    let deliveries = app.alerts.send_test().await?;
    let all_ok = deliveries.iter().all(|d| d.ok);
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    let body = if all_ok {
        json!({ "deliveries": deliveries })
    } else {
        let failed: Vec<String> = deliveries
            .iter()
            .filter_map(|d| Some(format!("{}: {}", d.channel.as_str(), d.error.as_deref()?)))
            .collect();
        json!({ "error": format!("the test alert was not delivered: {}", failed.join("; ")), "deliveries": deliveries })
    };
    let audit = Audited {
        detail: json!({ "channels": deliveries.iter().map(|d| d.channel.as_str()).collect::<Vec<_>>() }),
        ..Audited::default()
    };
    Ok(audited((status, Json(body)).into_response(), audit))
}
