//! The dashboard: server-rendered pages (askama templates, `templates/`) under `/ui/`, kept current by htmx
//! polling a page's live part (the same route answers an htmx request with that part alone). htmx and the
//! stylesheet are compiled in and served from `/ui/static/`; nothing is fetched from elsewhere.
//!
//! Who may see what is decided as for the REST API: the caller's token (a `drover_session` cookie set by
//! the login form, or `Authorization: Bearer`) is authenticated by `http::authenticate`, and its role
//! checked against `http::ROUTE_ROLES`, built from the registrations in [`routes`] (see `session`).

mod assets;
mod audit;
mod charts;
mod fleet;
mod manifests;
mod node;
mod rollouts;
mod session;
mod tasks;
mod view;

use askama::Template;
use axum::http::header::ACCEPT;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use drover_types::operator::Role::{Operator, Viewer};

pub use session::LoginCodes;
pub(super) use session::require;

use super::routes::Routes;

/// Registers the dashboard's routes and `/`. Its pages, each with the role it needs, are behind
/// `session::require`; the pages read, as the REST routes they show do.
pub(super) fn routes(r: Routes) -> Routes {
    r.open(__path_root, root)
        .open_undocumented(Method::GET, "/ui", || async { Redirect::to("/ui/") })
        .open_undocumented(Method::GET, "/ui/login", session::login_form)
        .open_undocumented(Method::POST, "/ui/login", session::login)
        .open_undocumented(Method::POST, "/ui/logout", session::logout)
        .open_undocumented(Method::GET, "/ui/static/{file}", assets::file)
        .page(Method::GET, "/ui/", Viewer, fleet::page)
        .page(Method::GET, "/ui/nodes/{id}", Viewer, node::page)
        .page(Method::GET, "/ui/tasks", Viewer, tasks::list)
        .page(Method::GET, "/ui/tasks/{id}", Viewer, tasks::page)
        .page(Method::GET, "/ui/manifests", Viewer, manifests::page)
        .page(
            Method::GET,
            "/ui/manifests/{name}",
            Viewer,
            manifests::nodes,
        )
        .page(Method::GET, "/ui/rollouts", Viewer, rollouts::list)
        .page(Method::GET, "/ui/rollouts/{name}", Viewer, rollouts::page)
        .page(Method::GET, "/ui/audit", Viewer, audit::page)
        .page(Method::POST, "/ui/login-link", Viewer, session::login_link)
        .page(
            Method::POST,
            "/ui/tasks/{id}/cancel",
            Operator,
            tasks::cancel,
        )
        .page(
            Method::POST,
            "/ui/rollouts/{name}/{command}",
            Operator,
            rollouts::command,
        )
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
