//! The dashboard: server-rendered pages (askama templates, `templates/`) under `/ui/`, kept current by htmx
//! polling a page's live part (the same route answers an htmx request with that part alone). htmx and the
//! stylesheet are compiled in and served from `/ui/static/`; nothing is fetched from elsewhere.
//!
//! Who may see what is decided as for the REST API: the caller's token (a `drover_session` cookie set by
//! the login form, or `Authorization: Bearer`) is authenticated by `http::authenticate`, and its role
//! checked against `http::ROUTE_ROLES`, where every `/ui/` route has its line (see `session`).

mod assets;
mod audit;
mod charts;
mod fleet;
mod manifests;
mod node;
mod session;
mod tasks;
mod view;

use askama::Template;
use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

pub use session::LoginCodes;

use crate::http::HttpState;

/// The dashboard's routes and `/`. Those that show the fleet need a caller (see `session::require`).
pub fn router(state: HttpState) -> Router<HttpState> {
    let pages = Router::new()
        .route("/ui/", get(fleet::page))
        .route("/ui/nodes/{id}", get(node::page))
        .route("/ui/tasks", get(tasks::list))
        .route("/ui/tasks/{id}", get(tasks::page))
        .route("/ui/tasks/{id}/cancel", post(tasks::cancel))
        .route("/ui/manifests", get(manifests::page))
        .route("/ui/manifests/{name}", get(manifests::nodes))
        .route("/ui/audit", get(audit::page))
        .route("/ui/login-link", post(session::login_link))
        // Every route above needs a line in `http::ROUTE_ROLES`.
        .route_layer(middleware::from_fn_with_state(state, session::require));
    Router::new()
        .route("/", get(root))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/static/{file}", get(assets::file))
        .merge(pages)
}

/// `GET /`: the dashboard for a browser (a request that accepts `text/html`), else what this server is.
#[utoipa::path(
    get,
    path = "/",
    tag = "meta",
    operation_id = "root",
    responses(
        (status = 200, description = "`{\"name\": \"drover\", \"version\": \"…\"}` (MIaaS's root answer)", body = Object),
        (status = 303, description = "a browser (`Accept: text/html`) is sent to the dashboard at `/ui/`")
    )
)]
pub(crate) async fn root(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        Redirect::to("/ui/").into_response()
    } else {
        root_json().into_response()
    }
}

/// `GET /` for a program (the MIaaS control plane's contract): `{"name", "version"}`.
fn root_json() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"name": "drover", "version": drover_types::VERSION}))
}

/// Renders a template; a failure (a bug, never the data) is logged and answered with a plain 500.
fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => view::html(html),
        Err(e) => {
            tracing::error!("cannot render a dashboard page: {e}");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error; see the server's log",
            )
                .into_response()
        }
    }
}
