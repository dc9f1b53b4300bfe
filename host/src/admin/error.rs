//! The admin API's one error type, and the one place it becomes an HTTP answer.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::configurations::{ConfigError, FieldErrors};
use crate::engine::bulk::BackfillError;
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
    #[error("the alert settings are not valid")]
    AlertSettings(FieldErrors),
    /// A well-formed request the engine cannot carry out as asked (422).
    #[error("{0}")]
    Unprocessable(String),
    /// Logged with its whole chain of causes; the client gets generic text, never
    /// SQL or file paths.
    #[error("internal error; the engine's log has the details")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The shared database cannot be reached (a failover, a cut): nothing the
    /// request did is wrong, and the same request may be sent again.
    #[error("the database cannot be reached just now; send the request again shortly")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let e = e.into();
        if crate::store::unreachable(e.as_ref()) {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }

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
            Self::Validation(_) | Self::AlertSettings(_) | Self::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(e) => {
                tracing::error!("admin API: internal error: {}", chain(e.as_ref()))
            }
            Self::Unavailable(e) => tracing::warn!("admin API: {}", chain(e.as_ref())),
            _ => {}
        }
        let body = match &self {
            Self::Validation(errors) | Self::AlertSettings(errors) => {
                json!({ "error": self.to_string(), "errors": errors })
            }
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::Unavailable(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// An error and its causes, outermost first: "a: b: c".
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // thiserror's `transparent` and `{0}` repeat the cause in the outer text.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::NotFound(_) | ConfigError::UnknownAction(_) => {
                Self::NotFound(e.to_string())
            }
            ConfigError::Invalid(errors) => Self::Validation(errors),
            ConfigError::DuplicateName(_) => Self::Conflict(e.to_string()),
            ConfigError::Store(_) | ConfigError::Secrets(_) | ConfigError::Worker(_) => {
                Self::internal(e)
            }
        }
    }
}

impl From<crate::alerts::AlertError> for ApiError {
    fn from(e: crate::alerts::AlertError) -> Self {
        use crate::alerts::AlertError;
        match e {
            AlertError::Invalid(errors) => Self::AlertSettings(errors),
            AlertError::NoChannel => Self::Unprocessable(e.to_string()),
            AlertError::Store(_) | AlertError::Secrets(_) | AlertError::Configurations(_) => {
                Self::internal(e)
            }
        }
    }
}

impl From<BackfillError> for ApiError {
    fn from(e: BackfillError) -> Self {
        match e {
            BackfillError::NoConfiguration(_) => Self::NotFound(e.to_string()),
            // The configuration's state, not the request, is what must change.
            BackfillError::NotRunning(_) => Self::Conflict(e.to_string()),
            BackfillError::Unsupported(_) | BackfillError::EmptyRange | BackfillError::Future => {
                Self::Unprocessable(e.to_string())
            }
            BackfillError::Store(e) => Self::internal(e),
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
            other => Self::internal(other),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_is_logged_whole_and_answered_generically() {
        let sql = crate::store::StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(1),
            Some("no such table: jobs".into()),
        ));
        let error = ApiError::internal(sql);
        let ApiError::Internal(inner) = &error else {
            panic!("internal");
        };
        assert!(chain(inner.as_ref()).contains("no such table: jobs"));
        assert_eq!(
            error.to_string(),
            "internal error; the engine's log has the details"
        );
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn backfill_errors_map_to_what_the_admin_must_change() {
        let cases = [
            (
                BackfillError::NoConfiguration(7),
                StatusCode::NOT_FOUND,
                "no configuration has the id 7",
            ),
            (
                BackfillError::NotRunning("Prod".into()),
                StatusCode::CONFLICT,
                "the configuration \"Prod\" is disabled or not running: enable it first",
            ),
            (
                BackfillError::Unsupported("Prod".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "the plugin of \"Prod\" cannot list ended sessions, which a backfill needs",
            ),
            (
                BackfillError::EmptyRange,
                StatusCode::UNPROCESSABLE_ENTITY,
                "the range is empty: since must be before until",
            ),
            (
                BackfillError::Future,
                StatusCode::UNPROCESSABLE_ENTITY,
                "the range starts in the future",
            ),
            (
                BackfillError::Store(crate::store::StoreError::NotFound),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the engine's log has the details",
            ),
        ];
        for (error, status, text) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status(), status, "{api}");
            assert_eq!(api.to_string(), text);
        }
    }
}
