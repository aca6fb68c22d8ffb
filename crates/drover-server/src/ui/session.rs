//! Logging in to the dashboard, and who calls its pages.
//!
//! The login form posts an operator token; the server checks it and sets it as the `drover_session`
//! cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` when the API is served over TLS, 12 hours).
//! The cookie is the token itself, checked on every request as a bearer token is: revoking the operator
//! ends its sessions at once, and the server keeps no session state. Scripts send
//! `Authorization: Bearer` instead.
//!
//! A one-time login link (`POST /ui/login-link` with a token; `GET /ui/login?code=`) opens the dashboard
//! logged in without the token appearing in a URL: the code is random, used once, and lives a minute.
//!
//! A change made with the cookie (cancelling a task) must come from htmx on this dashboard: it needs the
//! `HX-Request` header, which no cross-site form can send, and an `Origin` (when the browser sends one)
//! naming this server's `Host`. `SameSite=Strict` already keeps the cookie off cross-site requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::view::{self, Layout, Nav};
use crate::api::{ApiError, ApiState, authenticate, bearer, check_role};

const COOKIE_NAME: &str = "drover_session";
/// How long a login lasts in the browser.
const SESSION_SECONDS: u64 = 12 * 3600;
/// How long a login link's code may wait to be used.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Codes waiting at once; more are refused until some are used or expire.
const MAX_CODES: usize = 1024;
/// The longest token the login form accepts (operator tokens are far shorter).
const MAX_TOKEN: usize = 512;

/// A login link's code, waiting: the token it stands for, the page it opens, when it was made.
struct Waiting {
    token: String,
    next: String,
    at: Instant,
}

/// Login links' codes not used yet.
#[derive(Default)]
pub struct LoginCodes(Mutex<HashMap<String, Waiting>>);

impl LoginCodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        crate::sync::lock(&self.0)
    }

    fn issue(&self, token: &str, next: &str) -> Option<String> {
        let mut codes = self.lock();
        codes.retain(|_, w| w.at.elapsed() < CODE_LIFETIME);
        if codes.len() >= MAX_CODES {
            return None;
        }
        let code = hex::encode(rand::random::<[u8; 24]>());
        let waiting = Waiting {
            token: token.to_string(),
            next: next.to_string(),
            at: Instant::now(),
        };
        codes.insert(code.clone(), waiting);
        Some(code)
    }

    /// The token a code stands for and the page it opens, once: the code is gone afterwards.
    fn redeem(&self, code: &str) -> Option<(String, String)> {
        let w = self.lock().remove(code)?;
        (w.at.elapsed() < CODE_LIFETIME).then_some((w.token, w.next))
    }
}

/// A page of this dashboard to go to after logging in: a path under `/ui/` and nothing that could lead
/// elsewhere (no `//`, no backslash, printable ASCII only).
fn dashboard_path(next: &str) -> Option<&str> {
    let ok = next.starts_with("/ui/")
        && next.len() <= 512
        && !next.contains("//")
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    ok.then_some(next)
}

/// A token as a cookie value can carry it (printable ASCII without separators), or none.
fn cookie_safe(token: &str) -> Option<&str> {
    let token = token.trim();
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    ok.then_some(token)
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .and_then(|(_, value)| cookie_safe(value))
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("drover_session=; Path=/ui; Max-Age=0"))
}

/// Back to the login form: a redirect for a page, `HX-Redirect` for htmx (which would otherwise put the
/// form inside the page).
fn to_login(headers: &HeaderMap) -> Response {
    let clear = set_cookie("", 0, false);
    if view::is_htmx(headers) {
        (
            StatusCode::UNAUTHORIZED,
            [
                ("hx-redirect", HeaderValue::from_static("/ui/login")),
                (SET_COOKIE.as_str(), clear),
            ],
        )
            .into_response()
    } else {
        ([(SET_COOKIE, clear)], Redirect::to("/ui/login")).into_response()
    }
}

/// Whether a change sent with the cookie comes from this dashboard (see the module's notes).
fn same_origin(headers: &HeaderMap) -> bool {
    if !view::is_htmx(headers) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return false;
    }
    match headers.get(ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers.get(HOST).and_then(|h| h.to_str().ok());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, rest)| rest);
            host.is_some() && origin_host == host
        }
    }
}

/// The dashboard's gate: authenticates the caller (bearer, else cookie) as the REST API does, checks the
/// route's role in `ROUTE_ROLES`, and refuses a change sent with the cookie from elsewhere.
pub async fn require(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let (token, by_cookie) = match bearer(headers) {
        Some(t) => (t.to_string(), false),
        None => match session_cookie(headers) {
            Some(t) => (t.to_string(), true),
            None => return to_login(headers),
        },
    };
    let caller = match authenticate(&state, &token).await {
        Ok(c) => c,
        Err(ApiError::Unauthorized(_)) if by_cookie => return to_login(request.headers()),
        Err(e) => return e.into_response(),
    };
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    if by_cookie && !reading && !same_origin(request.headers()) {
        return view::message(
            StatusCode::FORBIDDEN,
            Some(&caller),
            "This change did not come from the dashboard's own page, so it was refused.",
        );
    }
    if let Err(e) = check_role(&caller, &request) {
        return view::message(StatusCode::FORBIDDEN, Some(&caller), &e.to_string());
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    error: &'a str,
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let body = LoginPage { error }.render().unwrap_or_default();
    let mut response = super::render(&Layout {
        title: "Log in",
        nav: Nav::None,
        caller: None,
        body,
    });
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
pub struct CodeQuery {
    code: Option<String>,
}

/// Logs in and goes to `next` (a checked dashboard path).
fn logged_in(state: &ApiState, token: &str, next: &str) -> Response {
    (
        [(
            SET_COOKIE,
            set_cookie(token, SESSION_SECONDS, state.ui_secure()),
        )],
        Redirect::to(next),
    )
        .into_response()
}

/// `GET /ui/login`: the form, or a login link's code traded for the session.
pub async fn login_form(
    State(state): State<ApiState>,
    query: Result<Query<CodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let code = query.ok().and_then(|Query(q)| q.code);
    match code {
        None => login_page(StatusCode::OK, ""),
        Some(code) => match state.ui_codes().redeem(&code) {
            Some((token, next)) if authenticate(&state, &token).await.is_ok() => {
                logged_in(&state, &token, &next)
            }
            _ => login_page(
                StatusCode::UNAUTHORIZED,
                "That login link is used, expired or unknown. Log in with your token.",
            ),
        },
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /ui/login`: checks the token and keeps it in the session cookie.
pub async fn login(
    State(state): State<ApiState>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, "Paste an operator token.");
    };
    let Some(token) = cookie_safe(&form.token) else {
        return login_page(StatusCode::UNAUTHORIZED, "That is not an operator token.");
    };
    match authenticate(&state, token).await {
        Ok(caller) => {
            tracing::info!(operator = %caller.name, "logged in to the dashboard");
            logged_in(&state, token, "/ui/")
        }
        Err(ApiError::Unauthorized(_)) => {
            login_page(StatusCode::UNAUTHORIZED, "The token is unknown or revoked.")
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /ui/logout`: forgets the session cookie.
pub async fn logout() -> Response {
    (
        [(SET_COOKIE, set_cookie("", 0, false))],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LinkQuery {
    next: Option<String>,
}

/// `POST /ui/login-link[?next=/ui/...]`: a one-time link that opens the dashboard (at `next`, a dashboard
/// page) logged in as the caller.
pub async fn login_link(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next);
    let next = match next.as_deref().map(dashboard_path) {
        None => "/ui/",
        Some(Some(path)) => path,
        Some(None) => {
            return ApiError::bad_request(
                "`next` must be a dashboard path, starting with /ui/",
                Some("next".into()),
            )
            .into_response();
        }
    };
    let token = bearer(&headers)
        .or_else(|| session_cookie(&headers))
        .and_then(cookie_safe);
    let Some(code) = token.and_then(|t| state.ui_codes().issue(t, next)) else {
        return ApiError::Conflict(
            "too many login links are waiting; try again in a minute".into(),
        )
        .into_response();
    };
    axum::Json(serde_json::json!({
        "path": format!("/ui/login?code={code}"),
        "expires_in_s": CODE_LIFETIME.as_secs(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_code_works_once_and_only_the_cookie_named_is_read() {
        let codes = LoginCodes::default();
        let code = codes.issue("drvop.secret", "/ui/tasks").unwrap();
        assert_eq!(
            codes.redeem(&code),
            Some(("drvop.secret".into(), "/ui/tasks".into()))
        );
        assert_eq!(codes.redeem(&code), None);
        assert_eq!(codes.redeem("guess"), None);

        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("other=1; drover_session=drvop.abc; x=y"),
        );
        assert_eq!(session_cookie(&headers), Some("drvop.abc"));
        headers.insert(COOKIE, HeaderValue::from_static("drover_session=\"bad\""));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn a_login_link_opens_only_dashboard_pages() {
        assert_eq!(dashboard_path("/ui/tasks/abc"), Some("/ui/tasks/abc"));
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil",
            "/api/v1/nodes",
            "/ui/\\x",
            "/ui/ x",
        ] {
            assert_eq!(dashboard_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_change_must_come_from_htmx_on_this_origin() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!same_origin(&h), "a plain form post");
        h.insert("hx-request", HeaderValue::from_static("true"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }
}
