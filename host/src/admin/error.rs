//! The admin API's one error type, and the one place it becomes an HTTP answer.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::configurations::{ConfigError, FieldErrors};
use crate::serve::BodyError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("an admin token is required: send the header Authorization: Bearer <token>")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("send the body as JSON, with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    RequestTimeout(String),
    #[error("the configuration is not valid")]
    Validation(FieldErrors),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("admin API error: {self}");
        }
        let body = match &self {
            Self::Validation(errors) => json!({ "error": self.to_string(), "errors": errors }),
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::NotFound(_) | ConfigError::UnknownAction(_) => {
                Self::NotFound(e.to_string())
            }
            ConfigError::Invalid(errors) => Self::Validation(errors),
            ConfigError::DuplicateName(_) => Self::Conflict(e.to_string()),
            ConfigError::Store(_) | ConfigError::Secrets(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::JsonDataError(e) => Self::BadRequest(format!(
                "the body does not have the expected fields: {}",
                e.body_text()
            )),
            JsonRejection::JsonSyntaxError(e) => {
                Self::BadRequest(format!("the body is not valid JSON: {}", e.body_text()))
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge(super::BODY_LIMIT)
            }
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(limit) => Self::PayloadTooLarge(limit),
            BodyError::TimedOut(_) => Self::RequestTimeout(e.to_string()),
            BodyError::Broken(_) => Self::BadRequest(e.to_string()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(e) => {
                Self::BadRequest(format!("the path is not valid: {}", e.body_text()))
            }
            other => Self::Internal(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!(
            "the query string is not valid: {}",
            rejection.body_text()
        ))
    }
}
