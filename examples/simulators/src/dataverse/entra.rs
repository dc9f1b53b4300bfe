//! Entra ID's v2.0 token endpoint, client credentials flow only, with Entra's error
//! answers (`error`, `error_description` with its AADSTS code, `error_codes`, ...).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use super::{State, Token};
use crate::common::{broken_response, lock, random_guid, random_hex, slow, Fault};

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .with_state(state)
}

fn entra_error(status: StatusCode, error: &str, code: u32, description: String) -> Response {
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ");
    let trace_id = random_guid();
    let correlation_id = random_guid();
    let body = json!({
        "error": error,
        // Entra separates these parts with CR LF.
        "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"),
        "error_codes": [code],
        "timestamp": timestamp.to_string(),
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

async fn token(
    AxState(state): AxState<Arc<State>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    match state.entra.call("token") {
        Some(Fault::Status { status }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return entra_error(
                status,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.".into(),
            );
        }
        Some(Fault::Slow { millis }) => slow(millis).await,
        Some(Fault::Reset) => return broken_response(),
        Some(Fault::Error { message }) => {
            return entra_error(StatusCode::BAD_REQUEST, "invalid_request", 90000, message)
        }
        None => {}
    }
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if !tenant.eq_ignore_ascii_case(&state.options.tenant_id) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!(
                "The app requested an unsupported grant type '{}'.",
                field("grant_type")
            ),
        );
    }
    if field("client_id") != state.options.client_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.",
                field("client_id")
            ),
        );
    }
    if field("client_secret") != lock(&state.secret).as_str() {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                state.options.client_id
            ),
        );
    }
    if *lock(&state.secret_expired) {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000222,
            format!("The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app.", state.options.client_id),
        );
    }
    let url = lock(&state.url).clone();
    let scope = field("scope");
    let Some(resource) = scope.strip_suffix("/.default") else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        );
    };
    if resource.trim_end_matches('/') != url {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            format!("The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
        );
    }
    let lifetime = *lock(&state.token_lifetime);
    let access_token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.sim.{}",
        random_hex(24)
    );
    lock(&state.tokens).insert(
        access_token.clone(),
        Token {
            client_id: state.options.client_id.clone(),
            audience: url,
            expires_at: Instant::now() + lifetime,
        },
    );
    let seconds = lifetime.as_secs();
    Json(json!({
        "token_type": "Bearer",
        "expires_in": seconds,
        "ext_expires_in": seconds,
        "access_token": access_token,
    }))
    .into_response()
}
