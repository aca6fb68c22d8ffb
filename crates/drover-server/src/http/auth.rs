//! Who calls an operator route, and whether their role lets them. The role each route needs is named
//! in one table, [`ROUTE_ROLES`]: adding a route means adding its line there, and a route without one is
//! refused to every caller (the admin included), so a forgotten line shows up at once in any test.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use drover_types::operator::Role;
use sha2::{Digest, Sha256};

use super::{ApiError, HttpState, bearer};
use crate::fleet::BOOTSTRAP_ADMIN;

/// The role each operator route needs, by method and route pattern. Viewers read; operators change what
/// runs on nodes; admins manage who may do anything (join tokens, operators) and remove nodes.
pub const ROUTE_ROLES: &[(&str, &str, Role)] = &[
    ("GET", "/api/v1/whoami", Role::Viewer),
    ("GET", "/api/v1/nodes", Role::Viewer),
    ("GET", "/api/v1/nodes/{id}", Role::Viewer),
    ("GET", "/api/v1/nodes/{id}/metrics", Role::Viewer),
    ("GET", "/api/v1/nodes/{id}/status", Role::Viewer),
    ("GET", "/api/v1/nodes/{id}/actions", Role::Viewer),
    ("GET", "/api/v1/nodes/{id}/sessions", Role::Viewer),
    ("GET", "/api/v1/nodes/{id}/sessions/{plugin}", Role::Viewer),
    (
        "GET",
        "/api/v1/nodes/{id}/sessions/{plugin}/history",
        Role::Viewer,
    ),
    ("GET", "/api/v1/tasks", Role::Viewer),
    ("GET", "/api/v1/tasks/{id}", Role::Viewer),
    ("GET", "/api/v1/tasks/{id}/runs", Role::Viewer),
    ("GET", "/api/v1/tasks/{id}/output", Role::Viewer),
    ("GET", "/api/v1/audit", Role::Viewer),
    ("GET", "/api/v1/manifests", Role::Viewer),
    ("GET", "/api/v1/manifests/{name}", Role::Viewer),
    ("GET", "/api/v1/status", Role::Viewer),
    ("GET", "/api/v1/status/events", Role::Viewer),
    ("GET", "/metrics", Role::Viewer),
    ("POST", "/api/v1/nodes/{id}/actions/{name}", Role::Operator),
    (
        "POST",
        "/api/v1/nodes/{id}/actions/calls/{call_id}/cancel",
        Role::Operator,
    ),
    ("DELETE", "/api/v1/nodes/{id}/sessions", Role::Operator),
    (
        "DELETE",
        "/api/v1/nodes/{id}/sessions/{plugin}",
        Role::Operator,
    ),
    (
        "POST",
        "/api/v1/nodes/{id}/sessions/{plugin}/messages",
        Role::Operator,
    ),
    ("POST", "/api/v1/nodes/{id}/labels", Role::Operator),
    ("POST", "/api/v1/tasks", Role::Operator),
    ("POST", "/api/v1/tasks/{id}/cancel", Role::Operator),
    ("POST", "/api/v1/manifests", Role::Operator),
    ("DELETE", "/api/v1/manifests/{name}", Role::Operator),
    ("PUT", "/api/v1/blobs/{sha256}", Role::Operator),
    ("DELETE", "/api/v1/nodes/{id}", Role::Admin),
    ("POST", "/api/v1/nodes/{id}/labels/accept", Role::Admin),
    ("GET", "/api/v1/tokens", Role::Admin),
    ("POST", "/api/v1/tokens", Role::Admin),
    ("DELETE", "/api/v1/tokens/{id}", Role::Admin),
    ("GET", "/api/v1/operators", Role::Admin),
    ("POST", "/api/v1/operators", Role::Admin),
    ("DELETE", "/api/v1/operators/{name}", Role::Admin),
    // Only in test builds with the `tamper` feature (see fleet::tamper); no such route exists otherwise.
    ("POST", "/api/v1/tamper/desired", Role::Admin),
    ("POST", "/api/v1/tamper/manifest", Role::Admin),
    ("POST", "/api/v1/tamper/replay/{id}", Role::Admin),
    // The dashboard (`crate::http::ui`): its pages read, as the routes above they show do.
    ("GET", "/ui/", Role::Viewer),
    ("GET", "/ui/nodes/{id}", Role::Viewer),
    ("GET", "/ui/tasks", Role::Viewer),
    ("GET", "/ui/tasks/{id}", Role::Viewer),
    ("GET", "/ui/manifests", Role::Viewer),
    ("GET", "/ui/manifests/{name}", Role::Viewer),
    ("GET", "/ui/audit", Role::Viewer),
    ("POST", "/ui/login-link", Role::Viewer),
    ("POST", "/ui/tasks/{id}/cancel", Role::Operator),
];

/// The role a route needs; `None` for a route nobody named (refused to all).
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    // HEAD is served by the GET handler, so it needs what GET needs.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTE_ROLES
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, role)| *role)
}

/// The authenticated caller of an operator route: its name is the audit log's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            tracing::error!("an operator route ran without the authorize layer");
            ApiError::Internal
        })
    }
}

/// Authenticates the bearer token (the bootstrap admin token, or an operator's), then checks the
/// route's role, before any of the request is parsed.
pub async fn authorize(
    State(state): State<HttpState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = bearer(request.headers()) else {
        return Err(ApiError::Unauthorized(
            "an operator token is required: pass `Authorization: Bearer <token>` (the bootstrap admin token is in the server's data dir, admin.token; `drover operator create` makes others)".into(),
        ));
    };
    let caller = authenticate(&state, token).await?;
    check_role(&caller, &request)?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Who holds this token: the bootstrap admin, or an active operator.
pub async fn authenticate(state: &HttpState, token: &str) -> Result<Caller, ApiError> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if digest == state.admin_token_sha256 {
        return Ok(Caller {
            name: BOOTSTRAP_ADMIN.to_string(),
            role: Role::Admin,
        });
    }
    match state.fleet.operator_for_token(token).await? {
        Some(op) => Ok(Caller {
            name: op.name,
            role: op.role,
        }),
        None => Err(ApiError::Unauthorized(
            "the operator token is unknown or revoked".into(),
        )),
    }
}

/// Whether the caller's role allows the request's route (by `ROUTE_ROLES`).
pub fn check_role(caller: &Caller, request: &Request) -> Result<(), ApiError> {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let method = request.method();
    let Some(needed) = required_role(method, &route) else {
        // A method the route does not serve is the caller's mistake (any token holder can send one: no
        // log line for it); a served route with no role is ours.
        if ROUTE_ROLES.iter().any(|(_, r, _)| *r == route) {
            tracing::debug!(route, "refused a method this route does not serve");
            return Err(ApiError::MethodNotAllowed(format!(
                "{route} does not serve this method"
            )));
        }
        tracing::error!(%method, route, "no role is assigned to this route; refused");
        return Err(ApiError::Forbidden(format!(
            "{method} {route} has no role assigned on this server, so nobody may call it"
        )));
    };
    if caller.role < needed {
        return Err(ApiError::Forbidden(format!(
            "{method} {route} needs the `{needed}` role; {} has the `{}` role",
            caller.name, caller.role
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_named_once_and_head_needs_what_get_needs() {
        for (i, (m, r, _)) in ROUTE_ROLES.iter().enumerate() {
            assert!(
                !ROUTE_ROLES[i + 1..]
                    .iter()
                    .any(|(m2, r2, _)| m2 == m && r2 == r),
                "{m} {r} is listed twice"
            );
        }
        assert_eq!(
            required_role(&Method::HEAD, "/api/v1/nodes"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/v1/nodes/{id}"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&Method::PATCH, "/api/v1/nodes"), None);
    }
}
