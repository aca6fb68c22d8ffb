//! Who calls an operator route, and whether their role lets them. A route's role is given once, where it
//! is registered (`Routes::op`, `Routes::page` in `http::routes`), with its path and OpenAPI entry;
//! [`ROUTE_ROLES`] is the table built from those same registrations, and `authorize` (and the dashboard's
//! gate, `ui::require`) check each request against it. A route served behind either gate without a line
//! there is refused to every caller, the admin included: the registrations cannot make one, so such a
//! refusal (logged as an error) means a route was added around them.

use std::sync::LazyLock;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use drover_types::operator::Role;
use sha2::{Digest, Sha256};

use super::routes::{Access, RouteTable};
use super::{ApiError, HttpState, bearer};
use crate::fleet::BOOTSTRAP_ADMIN;

/// Every route the server serves and who may call it, built once from the registrations that build the
/// router (`super::routes`), so the two cannot disagree.
pub static ROUTE_ROLES: LazyLock<RouteTable> = LazyLock::new(|| super::routes().into_table());

/// The role a route needs; `None` for an open route, and for a method or route nobody registered with a
/// role (refused to all).
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    // HEAD is served by the GET handler, so it needs what GET needs.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTE_ROLES
        .iter()
        .find(|r| r.method == *method && r.path == route)
        .and_then(|r| match r.access {
            Access::Needs(role) => Some(role),
            Access::Open => None,
        })
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
    match state.fleet.access.operator_for_token(token).await? {
        Some(op) => Ok(Caller {
            name: op.name,
            role: op.role,
        }),
        None => Err(ApiError::Unauthorized(
            "the operator token is unknown or revoked".into(),
        )),
    }
}

/// Whether the caller's role allows the request's route (by [`ROUTE_ROLES`]).
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
        if ROUTE_ROLES.iter().any(|r| r.path == route) {
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
    use axum::body::Body;

    use super::*;

    #[test]
    fn every_route_is_named_once_and_head_needs_what_get_needs() {
        let routes: Vec<_> = ROUTE_ROLES.iter().collect();
        for (i, a) in routes.iter().enumerate() {
            assert!(
                !routes[i + 1..]
                    .iter()
                    .any(|b| b.method == a.method && b.path == a.path),
                "{} {} is registered twice",
                a.method,
                a.path
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
        assert_eq!(
            required_role(&Method::POST, "/ui/tasks/{id}/cancel"),
            Some(Role::Operator)
        );
        assert_eq!(required_role(&Method::PATCH, "/api/v1/nodes"), None);
        assert_eq!(required_role(&Method::GET, "/health"), None);
    }

    #[test]
    fn a_route_without_a_role_is_refused_even_to_the_admin() {
        let admin = Caller {
            name: BOOTSTRAP_ADMIN.to_string(),
            role: Role::Admin,
        };
        // No `MatchedPath`: a route the table does not know.
        let request = Request::new(Body::empty());
        assert!(matches!(
            check_role(&admin, &request),
            Err(ApiError::Forbidden(_))
        ));
    }
}
