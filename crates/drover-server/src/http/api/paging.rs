//! The headers of a paged list: `X-Total-Count` (how many match) and, unless this is the last page,
//! `Link: <…>; rel="next"` with the same filters.

use axum::http::header::LINK;
use axum::http::{HeaderMap, HeaderValue};
use drover_types::url::percent_encode;

/// Headers for a page of `shown` items at `offset` (of `limit` at most) out of `total`; `filters` are the
/// query's other parameters, repeated in the next page's link (empty values left out).
pub fn headers(
    path: &str,
    filters: &[(&str, String)],
    offset: usize,
    limit: usize,
    shown: usize,
    total: usize,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", HeaderValue::from(total));
    let next = offset.saturating_add(shown);
    if shown > 0 && next < total {
        let mut link = format!("{path}?limit={limit}&offset={next}");
        for (k, v) in filters.iter().filter(|(_, v)| !v.is_empty()) {
            link.push_str(&format!("&{k}={}", percent_encode(v)));
        }
        if let Ok(value) = HeaderValue::from_str(&format!("<{link}>; rel=\"next\"")) {
            headers.insert(LINK, value);
        }
    }
    headers
}
