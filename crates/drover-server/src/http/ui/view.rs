//! What every page shares: the layout, headers, and the small formatting helpers templates use.

use askama::Template;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::http::Caller;

/// Scripts and styles come from this server only (htmx and the stylesheet under /ui/static); no page
/// may be framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An HTML answer with the dashboard's security headers.
pub fn html(body: String) -> Response {
    let mut response = axum::response::Html(body).into_response();
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Whether htmx sent the request (it then wants a page's live part alone).
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers
        .get("hx-request")
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Tasks,
    Manifests,
    Rollouts,
    Audit,
    None,
}

#[derive(Template)]
#[template(path = "layout.html")]
pub struct Layout<'a> {
    pub title: &'a str,
    pub nav: Nav,
    pub caller: Option<&'a Caller>,
    pub body: String,
}

/// A whole page: the layout around a rendered body.
pub fn page(title: &str, nav: Nav, caller: &Caller, body: &impl Template) -> Response {
    match body.render() {
        Ok(body) => super::render(&Layout {
            title,
            nav,
            caller: Some(caller),
            body,
        }),
        Err(e) => {
            tracing::error!("cannot render a dashboard page: {e}");
            super::render(&Layout {
                title: "Error",
                nav,
                caller: Some(caller),
                body: "<p>This page could not be drawn; see the server's log.</p>".into(),
            })
        }
    }
}

/// The live part alone (htmx polling), or the whole page around it.
pub fn live_or_page(
    headers: &HeaderMap,
    title: &str,
    nav: Nav,
    caller: &Caller,
    page_body: &impl Template,
    live: &impl Template,
) -> Response {
    if is_htmx(headers) {
        super::render(live)
    } else {
        page(title, nav, caller, page_body)
    }
}

/// How long ago, short: "4s", "12m", "3h", "2d"; "never" for none.
pub fn ago(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// A time as people read it, in UTC.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Megabytes, in the largest unit that keeps a number of at least 1.
pub fn mb(v: u64) -> String {
    match v {
        0..1024 => format!("{v} MB"),
        1024..1_048_576 => format!("{:.1} GB", v as f64 / 1024.0),
        _ => format!("{:.1} TB", v as f64 / 1_048_576.0),
    }
}

/// A percentage for a bar's width: 0-100, whatever came in.
pub fn pct(v: f64) -> u32 {
    if v.is_finite() {
        v.clamp(0.0, 100.0).round() as u32
    } else {
        0
    }
}

/// The first characters of an id, for tables.
pub fn short(id: &str) -> &str {
    let mut end = id.len().min(8);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    text: &'a str,
}

/// A page that says why nothing else is shown.
pub fn message(status: StatusCode, caller: Option<&Caller>, text: &str) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Cannot do that",
        _ => "Error",
    };
    let body = Message { title, text }.render().unwrap_or_default();
    let mut response = super::render(&Layout {
        title,
        nav: Nav::None,
        caller,
        body,
    });
    *response.status_mut() = status;
    response
}

/// A page for an error of the fleet: what the REST API would answer, as a page.
pub fn failed(caller: &Caller, e: crate::http::ApiError) -> Response {
    use crate::http::ApiError as E;
    let status = match &e {
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::BadRequest { .. } | E::Conflict(_) => StatusCode::BAD_REQUEST,
        E::Forbidden(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    message(status, Some(caller), &e.to_string())
}

/// A count at the top of a page, linking to the rows it counts.
pub struct Count {
    pub name: String,
    pub class: &'static str,
    pub n: usize,
    pub href: String,
    pub active: bool,
}

/// "first–last of total", and the neighbouring pages' addresses (`href(page)`).
pub struct Pager {
    pub range: String,
    pub prev: Option<String>,
    pub next: Option<String>,
}

impl Pager {
    pub fn new(
        page: usize,
        per_page: usize,
        shown: usize,
        total: usize,
        href: impl Fn(usize) -> String,
    ) -> Self {
        let first = page.saturating_mul(per_page).saturating_add(1);
        let last = page.saturating_mul(per_page).saturating_add(shown);
        Self {
            range: if shown == 0 {
                format!("0 of {total}")
            } else {
                format!("{first}–{last} of {total}")
            },
            prev: (page > 0).then(|| href(page - 1)),
            next: (last < total).then(|| href(page + 1)),
        }
    }
}

/// A page's address with its query: `base?k=v&…` (values percent-encoded), leaving out empty values and
/// page 0.
pub fn href(base: &str, params: &[(&str, &str)], page: usize) -> String {
    let page = page.to_string();
    let parts: Vec<String> = params
        .iter()
        .copied()
        .chain((page != "0").then_some(("page", page.as_str())))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", drover_types::url::percent_encode(v)))
        .collect();
    if parts.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", parts.join("&"))
    }
}

/// The largest page number a query may ask for: enough for any fleet, small enough for no overflow.
pub const MAX_PAGE_NO: usize = 1_000_000;
