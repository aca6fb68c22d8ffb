//! The one place errors become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_types::api::ErrorBody;

use crate::fleet::FleetError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("internal server error; see the server's log")]
    Internal,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, field: Option<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field,
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::NodeNotFound(_) | FleetError::TokenNotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            FleetError::TokenFormat(_)
            | FleetError::TokenRefused(_)
            | FleetError::TokenRequired
            | FleetError::BadNodeToken => ApiError::Unauthorized(e.to_string()),
            FleetError::NameOwnedByAgent(_) => ApiError::Conflict(e.to_string()),
            FleetError::Invalid { field, .. } => ApiError::BadRequest {
                message: e.to_string(),
                field: Some(field.to_string()),
            },
            other => {
                tracing::error!("internal error in the REST API: {other}");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            field,
        };
        (code, Json(body)).into_response()
    }
}
