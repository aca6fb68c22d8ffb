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
//! Opening the link sets nothing: it shows a page naming the operator the code logs in as, and only its
//! button (a same-origin `POST /ui/login` with the code in the body) sets the cookie. So a link someone
//! else made cannot log a visitor in as that someone without the visitor reading whose name it is.
//!
//! `POST /ui/login` itself refuses a request another site's page sent (an `Origin` other than this
//! server's own scheme and host, or `Sec-Fetch-Site` other than `same-origin`/`none`): otherwise any page
//! could plant its author's session in a visitor's browser (login CSRF). A request with neither header
//! (curl, scripts) is accepted: every browser the dashboard supports sends `Origin` on a form `POST`.
//!
//! A change made with the cookie (cancelling a task) must come from htmx on this dashboard: it needs the
//! `HX-Request` header, which no cross-site form can send, and an `Origin` (when the browser sends one)
//! naming this server's scheme and `Host`. `SameSite=Strict` already keeps the cookie off cross-site
//! requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::view::{self, Layout, Nav};
use crate::http::{ApiError, Caller, HttpState, authenticate, bearer, check_role};
use crate::percent::percent_decode;

const COOKIE_NAME: &str = "drover_session";
/// How long a login lasts in the browser.
const SESSION_SECONDS: u64 = 12 * 3600;
/// How long a login link's code may wait to be used.
const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// Codes one operator may have waiting at once: a person opens one link at a time, a script a few; eight
/// leave room for retries and tabs while keeping any one operator far from the total below.
const MAX_CODES_PER_OPERATOR: usize = 8;
/// Codes waiting at once in all, a bound on memory (each under 1.2 KB: a token and a path of at most 512
/// bytes): reaching it takes 128 operators each at their own cap.
const MAX_CODES: usize = 1024;
/// The longest token the login form accepts (operator tokens are far shorter).
const MAX_TOKEN: usize = 512;

/// A login link's code, waiting: whose it is, the token it stands for, the page it opens, when it was made.
struct Waiting {
    operator: String,
    token: String,
    next: String,
    at: Instant,
}

/// Why no login link was made.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// The caller has `MAX_CODES_PER_OPERATOR` waiting.
    Operator,
    /// `MAX_CODES` are waiting in all.
    Server,
}

/// Login links' codes not used yet.
#[derive(Default)]
pub struct LoginCodes(Mutex<HashMap<String, Waiting>>);

impl LoginCodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        crate::sync::lock(&self.0)
    }

    fn issue(&self, operator: &str, token: &str, next: &str) -> Result<String, Refused> {
        let mut codes = self.lock();
        codes.retain(|_, w| w.at.elapsed() < CODE_LIFETIME);
        // The operator's own cap first, so one operator never fills the shared one.
        let own = codes.values().filter(|w| w.operator == operator).count();
        if own >= MAX_CODES_PER_OPERATOR {
            return Err(Refused::Operator);
        }
        if codes.len() >= MAX_CODES {
            return Err(Refused::Server);
        }
        let code = hex::encode(rand::random::<[u8; 24]>());
        let waiting = Waiting {
            operator: operator.to_string(),
            token: token.to_string(),
            next: next.to_string(),
            at: Instant::now(),
        };
        codes.insert(code.clone(), waiting);
        Ok(code)
    }

    /// The token a code stands for, if it is waiting, leaving it waiting (the confirmation page).
    fn peek(&self, code: &str) -> Option<String> {
        let codes = self.lock();
        let w = codes.get(code)?;
        (w.at.elapsed() < CODE_LIFETIME).then(|| w.token.clone())
    }

    /// The token a code stands for and the page it opens, once: the code is gone afterwards.
    fn redeem(&self, code: &str) -> Option<(String, String)> {
        let w = self.lock().remove(code)?;
        (w.at.elapsed() < CODE_LIFETIME).then_some((w.token, w.next))
    }
}

/// A page of this dashboard to go to after logging in: a path under `/ui/` and nothing that could lead
/// elsewhere (no `//`, no backslash, printable ASCII only), nor back to the login pages (a link to the
/// login page would be a way to hand a visitor someone else's login link).
fn dashboard_path(next: &str) -> Option<&str> {
    let ok = next.starts_with("/ui/")
        && next.len() <= 512
        && !next.contains("//")
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && !leads_to_login(next);
    ok.then_some(next)
}

/// Whether a path, as a browser or the router may read it (percent-decoded, dot segments resolved, any
/// case), names `/ui/login...` or `/ui/logout`.
fn leads_to_login(next: &str) -> bool {
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_decode(path).to_ascii_lowercase();
    decoded.split('/').any(|seg| seg == "." || seg == "..") || decoded.starts_with("/ui/log")
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

/// This server's own origin as a browser names it: the scheme it serves the API with and the `Host` the
/// request was sent to (HTTP/2 carries it in the URI's authority instead).
fn own_origin(headers: &HeaderMap, uri: &Uri, secure: bool) -> Option<String> {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    let scheme = if secure { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

/// Why a request looks sent by another site's page, if it does: `Origin`, when sent, must be this
/// server's own (scheme included: an `http://` page must not act on an `https://` dashboard), and
/// `Sec-Fetch-Site`, when sent, one of `allowed_sites`. Neither header sent (curl, scripts) passes.
fn from_elsewhere(
    headers: &HeaderMap,
    uri: &Uri,
    secure: bool,
    allowed_sites: &[&str],
) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !allowed_sites
            .iter()
            .any(|a| site.as_bytes() == a.as_bytes())
    {
        return Some("the browser says it came from another site (Sec-Fetch-Site)");
    }
    let origin = headers.get(ORIGIN)?;
    let own = own_origin(headers, uri, secure);
    if own.is_some_and(|own| origin.as_bytes().eq_ignore_ascii_case(own.as_bytes())) {
        None
    } else {
        Some("it came from a page of another origin (Origin)")
    }
}

/// Whether a change sent with the cookie comes from this dashboard (see the module's notes).
fn same_origin(headers: &HeaderMap, uri: &Uri, secure: bool) -> bool {
    view::is_htmx(headers) && from_elsewhere(headers, uri, secure, &["same-origin"]).is_none()
}

/// The dashboard's gate: authenticates the caller (bearer, else cookie) as the REST API does, checks the
/// route's role in `ROUTE_ROLES`, and refuses a change sent with the cookie from elsewhere.
pub async fn require(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
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
    if by_cookie && !reading && !same_origin(request.headers(), request.uri(), state.ui_secure()) {
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
fn logged_in(state: &HttpState, token: &str, next: &str) -> Response {
    (
        [(
            SET_COOKIE,
            set_cookie(token, SESSION_SECONDS, state.ui_secure()),
        )],
        Redirect::to(next),
    )
        .into_response()
}

/// What opening a login link shows: whose login it is, and a button that confirms it.
#[derive(Template)]
#[template(path = "login_confirm.html")]
struct ConfirmPage<'a> {
    code: &'a str,
    caller: &'a Caller,
}

const LINK_GONE: &str = "That login link is used, expired or unknown. Log in with your token.";

/// `GET /ui/login`: the form, or for a login link's code a page naming the operator it logs in as, whose
/// button posts the code back. Nothing is set here: a GET can be triggered by any page.
pub async fn login_form(
    State(state): State<HttpState>,
    query: Result<Query<CodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let code = query.ok().and_then(|Query(q)| q.code);
    let Some(code) = code else {
        return login_page(StatusCode::OK, "");
    };
    let Some(token) = state.ui_codes().peek(&code) else {
        return login_page(StatusCode::UNAUTHORIZED, LINK_GONE);
    };
    match authenticate(&state, &token).await {
        Ok(caller) => {
            let body = ConfirmPage {
                code: &code,
                caller: &caller,
            }
            .render()
            .unwrap_or_default();
            super::render(&Layout {
                title: "Log in with a link",
                nav: Nav::None,
                caller: None,
                body,
            })
        }
        Err(ApiError::Unauthorized(_)) => login_page(StatusCode::UNAUTHORIZED, LINK_GONE),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    /// An operator token pasted into the form.
    token: Option<String>,
    /// A login link's code, from its confirmation page.
    code: Option<String>,
}

/// `POST /ui/login`: checks the token (or a login link's code) and keeps the token in the session cookie.
/// Refused when another site's page sent it (see the module's notes).
pub async fn login(
    State(state): State<HttpState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Some(why) = from_elsewhere(&headers, &uri, state.ui_secure(), &["same-origin", "none"]) {
        // Debug only: anyone can send these, and the log must not be theirs to fill.
        tracing::debug!("a dashboard login was refused: {why}");
        return login_page(
            StatusCode::FORBIDDEN,
            &format!(
                "This login was refused: {why}. Open /ui/login on this server yourself and log in there."
            ),
        );
    }
    let Ok(Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, "Paste an operator token.");
    };
    if let Some(code) = form.code {
        return match state.ui_codes().redeem(&code) {
            Some((token, next)) => match authenticate(&state, &token).await {
                Ok(caller) => {
                    tracing::info!(operator = %caller.name, "logged in to the dashboard with a login link");
                    logged_in(&state, &token, &next)
                }
                Err(ApiError::Unauthorized(_)) => login_page(StatusCode::UNAUTHORIZED, LINK_GONE),
                Err(e) => e.into_response(),
            },
            None => login_page(StatusCode::UNAUTHORIZED, LINK_GONE),
        };
    }
    let Some(token) = form.token.as_deref().and_then(cookie_safe) else {
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
/// page other than the login pages) logged in as the caller, once its confirmation page's button is
/// pressed.
pub async fn login_link(
    State(state): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next);
    let next = match next.as_deref().map(dashboard_path) {
        None => "/ui/",
        Some(Some(path)) => path,
        Some(None) => {
            return ApiError::bad_request(
                "`next` must be a dashboard page, starting with /ui/ and not a login page",
                Some("next".into()),
            )
            .into_response();
        }
    };
    let Some(token) = bearer(&headers)
        .or_else(|| session_cookie(&headers))
        .and_then(cookie_safe)
    else {
        return ApiError::bad_request("this token cannot be carried by a login link", None)
            .into_response();
    };
    let code = match state.ui_codes().issue(&caller.name, token, next) {
        Ok(code) => code,
        Err(Refused::Operator) => {
            return ApiError::Conflict(format!(
                "{} already has {MAX_CODES_PER_OPERATOR} login links waiting; use one, or try again in a minute when they expire",
                caller.name
            ))
            .into_response();
        }
        Err(Refused::Server) => {
            tracing::warn!(
                operator = %caller.name,
                "a login link was refused: {MAX_CODES} are waiting"
            );
            return ApiError::Conflict(
                "too many login links are waiting on this server; try again in a minute".into(),
            )
            .into_response();
        }
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
        let code = codes.issue("ann", "drvop.secret", "/ui/tasks").unwrap();
        assert_eq!(codes.peek(&code), Some("drvop.secret".into()));
        assert_eq!(
            codes.redeem(&code),
            Some(("drvop.secret".into(), "/ui/tasks".into()))
        );
        assert_eq!(codes.redeem(&code), None);
        assert_eq!(codes.peek(&code), None);
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
    fn one_operator_cannot_fill_the_login_codes() {
        let codes = LoginCodes::default();
        for _ in 0..MAX_CODES_PER_OPERATOR {
            codes.issue("vera", "drvop.v", "/ui/").unwrap();
        }
        assert_eq!(
            codes.issue("vera", "drvop.v", "/ui/"),
            Err(Refused::Operator)
        );
        // Others still get theirs, up to the shared bound.
        let others = MAX_CODES - MAX_CODES_PER_OPERATOR;
        for i in 0..others {
            codes.issue(&format!("op{i}"), "drvop.o", "/ui/").unwrap();
        }
        assert_eq!(codes.issue("admin", "a", "/ui/"), Err(Refused::Server));
    }

    #[test]
    fn a_login_link_opens_only_dashboard_pages() {
        assert_eq!(dashboard_path("/ui/tasks/abc"), Some("/ui/tasks/abc"));
        assert_eq!(
            dashboard_path("/ui/nodes/a%20b?x=1"),
            Some("/ui/nodes/a%20b?x=1")
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/ui//evil",
            "/api/v1/nodes",
            "/ui/\\x",
            "/ui/ x",
            "/ui/login",
            "/ui/login?code=abc",
            "/ui/LOGIN",
            "/ui/%6cogin",
            "/ui/logout",
            "/ui/x/../login",
            "/ui/x/%2e%2e/login",
            "/ui/./login",
        ] {
            assert_eq!(dashboard_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_change_must_come_from_htmx_on_this_origin_and_scheme() {
        let uri = Uri::from_static("/ui/tasks/x/cancel");
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(!same_origin(&h, &uri, false), "a plain form post");
        h.insert("hx-request", HeaderValue::from_static("true"));
        assert!(same_origin(&h, &uri, false));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h, &uri, false));
        assert!(!same_origin(&h, &uri, true), "http page, https dashboard");
        h.insert(ORIGIN, HeaderValue::from_static("https://127.0.0.1:8080"));
        assert!(same_origin(&h, &uri, true));
        assert!(!same_origin(&h, &uri, false), "https page, http dashboard");
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h, &uri, true));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, &uri, false));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, &uri, false));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(!same_origin(&h, &uri, false));
    }

    #[test]
    fn a_login_must_not_come_from_another_site() {
        let uri = Uri::from_static("/ui/login");
        let login = ["same-origin", "none"];
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("drover.lab:8443"));
        assert_eq!(from_elsewhere(&h, &uri, true, &login), None, "curl");
        h.insert(ORIGIN, HeaderValue::from_static("https://drover.lab:8443"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert_eq!(from_elsewhere(&h, &uri, true, &login), None);
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(from_elsewhere(&h, &uri, true, &login).is_some());
        h.remove(ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(from_elsewhere(&h, &uri, true, &login).is_some());
        // HTTP/2: no Host header, the authority is in the URI.
        let h2 = Uri::from_static("https://drover.lab:8443/ui/login");
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://drover.lab:8443"));
        assert_eq!(from_elsewhere(&h, &h2, true, &login), None);
    }
}
