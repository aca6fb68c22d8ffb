//! `/api/v1/blobs/{sha256}`: content a manifest names by digest, uploaded before the manifest that uses it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_types::audit::AuditAction;

use crate::http::{ApiError, Caller, HttpState};

#[utoipa::path(put, path = "/api/v1/blobs/{sha256}", tag = "manifests", operation_id = "manifests_put_blob", request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the raw content, up to 64 MiB"), params(("sha256" = String, Path, description = "hex SHA-256 of the content")), responses((status = 201, description = "stored"), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn put(
    State(s): State<HttpState>,
    caller: Caller,
    Path(sha256): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let bytes = body.len();
    s.fleet.desired.put_blob(&sha256, body.to_vec()).await?;
    s.fleet
        .access
        .audit(
            &caller.name,
            AuditAction::BlobPut,
            &sha256,
            serde_json::json!({"bytes": bytes}),
        )
        .await;
    Ok(StatusCode::CREATED)
}
