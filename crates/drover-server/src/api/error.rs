//! The one place errors become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_types::action::ActionError;
use drover_types::api::ErrorBody;

use crate::fleet::FleetError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    /// A field the MIaaS contract requires is missing: MIaaS answers 422 there, and its agents expect it.
    #[error("{message}")]
    Unprocessable { message: String, field: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("internal server error; see the server's log")]
    Internal,
    #[error(transparent)]
    Action(ActionError),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, field: Option<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field,
        }
    }

    pub fn missing_field(field: impl Into<String>) -> Self {
        let field = field.into();
        ApiError::Unprocessable {
            message: format!("field `{field}` is required"),
            field,
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::NodeNotFound(_)
            | FleetError::TokenNotFound(_)
            | FleetError::OperatorNotFound(_)
            | FleetError::CallNotFound(_)
            | FleetError::TaskNotFound(_)
            | FleetError::ManifestNotFound(_)
            | FleetError::SessionNotFound { .. } => ApiError::NotFound(e.to_string()),
            FleetError::Action(a) => ApiError::Action(a),
            FleetError::ManifestInvalid(ref errors) => ApiError::BadRequest {
                field: errors.first().map(|e| e.field.clone()),
                message: e.to_string(),
            },
            FleetError::TokenFormat(_)
            | FleetError::TokenRefused(_)
            | FleetError::TokenRequired
            | FleetError::BadNodeToken => ApiError::Unauthorized(e.to_string()),
            FleetError::NameOwnedByAgent(_) | FleetError::OperatorExists(_) => {
                ApiError::Conflict(e.to_string())
            }
            FleetError::Invalid { ref field, .. } => ApiError::BadRequest {
                field: Some(field.clone()),
                message: e.to_string(),
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
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Action(a) => match a {
                ActionError::InvalidArgs { .. } => StatusCode::BAD_REQUEST,
                ActionError::UnknownAction { .. } => StatusCode::NOT_FOUND,
                ActionError::NodeUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                ActionError::Cancelled => StatusCode::CONFLICT,
                ActionError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
                ActionError::Denied { .. } => StatusCode::FORBIDDEN,
                ActionError::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            },
        };
        let field = match &self {
            ApiError::BadRequest { field, .. } => field.clone(),
            ApiError::Unprocessable { field, .. } => Some(field.clone()),
            ApiError::Action(ActionError::InvalidArgs { field, .. }) => field.clone(),
            _ => None,
        };
        let action_error = match &self {
            ApiError::Action(a) => Some(a.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            field,
            action_error,
        };
        (code, Json(body)).into_response()
    }
}
