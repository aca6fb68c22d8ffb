//! `/metrics` over HTTP: on the REST address behind an operator token (the `authorize` layer and
//! `ROUTE_ROLES` guard it like any operator route), or on `--metrics-listen` without one; and the layer
//! that times REST requests.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Fleet;
use crate::http::{ApiError, HttpState};

/// The OpenMetrics text format that `prometheus-client` writes, served to scrapers that ask for it
/// (Prometheus does).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format, served to everyone else (`curl | promtool check metrics`).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn exposition(fleet: &Fleet, headers: &HeaderMap) -> Result<Response, ApiError> {
    let metrics = fleet.metrics();
    let observed = fleet.nodes.observe(metrics.per_node()).await?;
    // From the store, as every replica reads it: the leader drives rollouts, any replica may report them.
    let rollouts = fleet.rollouts.rollouts().await?;
    let body = metrics.encode(&observed, &rollouts).map_err(|e| {
        tracing::error!("cannot encode metrics: {e}");
        ApiError::Internal
    })?;
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            prometheus_text(&body),
        )
            .into_response()
    })
}

/// OpenMetrics text as the Prometheus text format (0.0.4): there a counter's family is named with its
/// `_total` suffix, as its samples are, and `# UNIT` and `# EOF` do not exist. Without this, a reader of
/// the older format (promtool) finds counter samples without help text.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match family {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `GET /metrics` on the REST address (viewer role).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus metrics in the OpenMetrics text format (docs/operations.md)", content_type = "application/openmetrics-text", body = String))
)]
pub async fn scrape(State(s): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    exposition(&s.fleet, &headers).await
}

/// Times every REST request until its response head, labelled by the route pattern that matched (never the
/// raw path: ids would make a series per node and task).
pub async fn track_requests(State(s): State<HttpState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method()).to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    s.fleet
        .metrics()
        .request(route, method, response.status().as_u16(), start.elapsed());
    response
}

/// A request's method as a label: the standard ones by name, anything else as `OTHER`. HTTP lets a client
/// invent methods, and a label per invented one would grow `/metrics` without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(m, _)| m == method)
        .map_or("OTHER", |(_, name)| name)
}

/// Serves `/metrics` without a token on its own listener (`--metrics-listen`), until `shutdown` changes.
pub async fn serve_open(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(
                |State(fleet): State<Arc<Fleet>>, headers: HeaderMap| async move {
                    exposition(&fleet, &headers).await
                },
            ),
        )
        .fallback(|| async { ApiError::NotFound("this address serves /metrics only".into()) })
        .with_state(fleet);
    crate::http::serve(listener, router, None, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn counters_are_named_with_their_suffix_in_the_prometheus_text_format() {
        let om = "# HELP drover_runs_lost Runs lost.\n# TYPE drover_runs_lost counter\n\
                  drover_runs_lost_total 3\n# HELP drover_nodes Nodes.\n# TYPE drover_nodes gauge\n\
                  drover_nodes 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP drover_runs_lost_total Runs lost.\n# TYPE drover_runs_lost_total counter\n\
             drover_runs_lost_total 3\n# HELP drover_nodes Nodes.\n# TYPE drover_nodes gauge\n\
             drover_nodes 1\n"
        );
    }

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let odd = Method::from_bytes(b"M12345").unwrap();
        assert_eq!(method_label(&odd), "OTHER");
    }
}
