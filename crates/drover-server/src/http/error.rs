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
    MethodNotAllowed(String),
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
            | FleetError::RolloutNotFound(_)
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

/// The most of an error message or field name a response carries. Messages may quote what the caller
/// sent; echoing a megabyte back helps no one and costs the server the copy.
const MAX_ERROR_BYTES: usize = 1024;

fn clip(mut text: String) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let mut end = MAX_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let more = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({more} more bytes)"));
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
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
            error: clip(self.to_string()),
            field: field.map(clip),
            action_error,
        };
        (code, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_clipped_on_a_char_boundary() {
        assert_eq!(clip("short".into()), "short");
        let long = format!("bad value: {}", "é".repeat(600_000));
        let clipped = clip(long);
        assert!(clipped.len() < MAX_ERROR_BYTES + 40, "{}", clipped.len());
        assert!(clipped.ends_with("more bytes)"), "{clipped}");
    }
}
