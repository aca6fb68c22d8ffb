//! Everything served over HTTP on the REST address, in one place: the shared state, who the caller is and
//! what their role allows (`auth`), the error every handler answers with, the listener (`serve`, `tls`) and
//! the one router that mounts the REST API (`api`, under /api/v1), the dashboard (`ui`, under /ui/) and
//! `/metrics` (`metrics`). `api` and `ui` are siblings that never import each other: what both need lives
//! here. Every route is registered once, with its role, through `routes` (`routes()` gathers them); the
//! router, the role table and the OpenAPI document (`openapi`) are all built from those registrations.

pub mod api;
mod auth;
mod error;
pub(crate) mod metrics;
mod openapi;
mod routes;
mod serve;
mod tls;
mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header::AUTHORIZATION;
use axum::middleware;
use drover_types::operator::Role;
use sha2::{Digest, Sha256};

pub use auth::{Caller, ROUTE_ROLES, authenticate, check_role, required_role};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use routes::{Access, Route, RouteTable};
pub use serve::{HANDSHAKE_DEADLINE, HEADER_DEADLINE, serve};
pub use tls::{ApiTls, ApiTlsError, server_config as tls_config};

use crate::Fleet;

/// Bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct HttpState {
    pub fleet: Arc<Fleet>,
    /// SHA-256 of the admin token; comparing digests keeps the check constant-time in the secret.
    admin_token_sha256: [u8; 32],
    /// The dashboard's login links waiting to be used.
    login_codes: Arc<ui::LoginCodes>,
    /// Whether the API is served over TLS (the dashboard's cookie is then `Secure`).
    tls: bool,
    /// Where agents reach this server (`--advertise-url`), told to HTTP agents when they register.
    advertise_url: Arc<str>,
}

impl HttpState {
    pub fn new(fleet: Arc<Fleet>, admin_token: &str) -> Self {
        Self {
            fleet,
            admin_token_sha256: Sha256::digest(admin_token.as_bytes()).into(),
            login_codes: Arc::default(),
            tls: false,
            advertise_url: "http://localhost:8080".into(),
        }
    }

    /// Says the API is served over TLS.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    pub(crate) fn ui_secure(&self) -> bool {
        self.tls
    }

    pub(crate) fn ui_codes(&self) -> &ui::LoginCodes {
        &self.login_codes
    }

    /// The URL registering HTTP agents are told to use (see [`advertise_url`]).
    pub fn with_advertise_url(mut self, url: &str) -> Self {
        self.advertise_url = url.into();
        self
    }
}

/// The URL HTTP agents are told to reach the server at when none is configured: `localhost` for a loopback
/// listen address (what MIaaS answers), else the listen address itself; `https` when the API is served over TLS.
pub fn advertise_url(listen: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if listen.ip().is_loopback() {
        format!("{scheme}://localhost:{}", listen.port())
    } else {
        // SocketAddr's Display brackets IPv6 addresses, as URLs need.
        format!("{scheme}://{listen}")
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such API route; see docs/api.md".into())
}

/// Every route of the HTTP surface, registered with who may call it: the REST API and its agent routes,
/// `/metrics`, the OpenAPI document and the dashboard.
fn routes() -> routes::Routes {
    let r = routes::Routes::default()
        .open(openapi::__path_openapi_json, openapi::openapi_json)
        // An operator route like those of `api`, registered here as it is not REST.
        .op(Role::Viewer, metrics::__path_scrape, metrics::scrape);
    ui::routes(api::routes(r))
}

/// The whole HTTP surface (see `routes()`), timed per route and with every body bounded.
pub fn router(state: HttpState) -> Router {
    let operators = state.clone();
    let pages = state.clone();
    routes()
        .into_router(
            |r| r.route_layer(middleware::from_fn_with_state(operators, auth::authorize)),
            |r| r.route_layer(middleware::from_fn_with_state(pages, ui::require)),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_advertised_url_follows_the_listen_address() {
        assert_eq!(
            advertise_url(([127, 0, 0, 1], 8080).into(), false),
            "http://localhost:8080"
        );
        assert_eq!(
            advertise_url("[::1]:9000".parse().unwrap(), true),
            "https://localhost:9000"
        );
        assert_eq!(
            advertise_url(([10, 0, 0, 7], 8080).into(), false),
            "http://10.0.0.7:8080"
        );
        assert_eq!(
            advertise_url("[fd00::7]:8080".parse().unwrap(), true),
            "https://[fd00::7]:8080"
        );
    }
}
