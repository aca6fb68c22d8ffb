//! A JSON body extractor whose errors name the offending field and answer 400, as the API promises.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::http::ApiError;
use crate::http::MAX_BODY_BYTES;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
        parse(&bytes).map(ApiJson)
    }
}

/// Reads and parses a body the handler took unread: for routes that authenticate from the body's sender
/// first, so that nothing an unauthenticated caller sends is read, let alone parsed.
pub async fn read<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
    parse(&bytes)
}

/// Reads a body like [`read`], but a missing required field is 422 (as in the MIaaS contract, whose agents
/// expect it) rather than 400; a malformed or mistyped one stays 400.
pub async fn read_contract<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
    parse_classified(&bytes).map_err(|e| match e {
        Problem::Missing { message, field } => ApiError::Unprocessable { message, field },
        Problem::Other(e) => e,
    })
}

/// Parses a body, naming the field path of the first problem.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_classified(bytes).map_err(|e| match e {
        Problem::Missing { message, field } => ApiError::bad_request(message, Some(field)),
        Problem::Other(e) => e,
    })
}

/// Why a body did not parse: a required field is absent, or anything else (already an [`ApiError`]).
enum Problem {
    Missing { message: String, field: String },
    Other(ApiError),
}

fn parse_classified<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::Other(ApiError::bad_request(
            "the request body is empty; send a JSON object",
            None,
        )));
    }
    classify(
        &mut serde_json::Deserializer::from_slice(bytes),
        &|path: String| path,
    )
}

/// Parses an already parsed body (a manifest unwrapped from its envelope, say); `rename` turns a field's
/// path in `value` into its path in what the client sent.
pub fn from_value<T: DeserializeOwned>(
    value: serde_json::Value,
    rename: &dyn Fn(String) -> String,
) -> Result<T, ApiError> {
    classify(value, rename).map_err(|e| match e {
        Problem::Missing { message, field } => ApiError::bad_request(message, Some(field)),
        Problem::Other(e) => e,
    })
}

fn classify<'de, D, T>(de: D, rename: &dyn Fn(String) -> String) -> Result<T, Problem>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        ) {
            return Problem::Other(ApiError::bad_request(
                format!("the request body is not valid JSON: {inner}"),
                None,
            ));
        }
        // A missing field is reported at its parent's path; name the field itself.
        if let Some(name) = missing_field(&inner.to_string()) {
            let field = rename(match path.as_str() {
                "." => name,
                parent => format!("{parent}.{name}"),
            });
            return Problem::Missing {
                message: format!("field `{field}` is required"),
                field,
            };
        }
        let field = (path != ".").then(|| rename(path));
        let message = match &field {
            Some(f) => format!("field `{f}`: {inner}"),
            None => format!("invalid request body: {inner}"),
        };
        Problem::Other(ApiError::bad_request(message, field))
    })
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::Metrics;

    fn field_of(body: &str) -> Option<String> {
        match parse::<Metrics>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("expected a bad request, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn names_missing_and_mistyped_fields() {
        assert_eq!(
            field_of(r#"{"cpu_usage":1,"mem_usage":2}"#).as_deref(),
            Some("disk_free_mb")
        );
        assert_eq!(
            field_of(r#"{"cpu_usage":"high","mem_usage":2,"disk_free_mb":1}"#).as_deref(),
            Some("cpu_usage")
        );
        assert_eq!(field_of("{not json"), None);
        assert_eq!(field_of(""), None);
    }
}
