//! `--metrics-listen ADDR`: the agent's own process metrics for Prometheus at `http://ADDR/metrics` (off by
//! default; no token, so bind it to an address only the scraper reaches). Messages sent to the server by
//! type, reconnects, whether connected, tasks run by final state, the resources of the latest convergence
//! report by state, and each daemon plugin's call durations and deadline misses.
//!
//! Nothing is counted unless the listener was started: every recording function is a no-op until then, so
//! an agent without the flag pays one atomic load per event. Built without the `metrics-listen` feature
//! (tiny nodes), the flag is refused and these functions compile to nothing.

use std::time::Duration;

use drover_proto::v1::AgentMessage;
use drover_types::manifest::NodeConvergence;

#[cfg(feature = "metrics-listen")]
mod imp {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::{TokioIo, TokioTimer};
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;
    use tokio::net::TcpListener;

    type Labels = [(&'static str, String); 1];

    /// Plugin call durations, in seconds: 1 ms to 10 s.
    const PLUGIN_BUCKETS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    /// Scrapes served at once; more wait in the kernel's backlog.
    const MAX_CONNECTIONS: usize = 8;
    /// How long a scraper has to send its request head.
    const HEADER_DEADLINE: Duration = Duration::from_secs(10);

    pub struct AgentMetrics {
        registry: Registry,
        pub sent: Family<Labels, Counter>,
        pub reconnects: Counter,
        pub connected: Gauge,
        pub tasks: Family<Labels, Counter>,
        pub resources: Family<Labels, Gauge>,
        pub plugin_runs: Family<Labels, Histogram>,
        pub plugin_misses: Family<Labels, Counter>,
    }

    fn plugin_histogram() -> Histogram {
        Histogram::new(PLUGIN_BUCKETS.iter().copied())
    }

    impl AgentMetrics {
        fn new() -> Self {
            let mut r = Registry::with_prefix("drover_agent");
            let sent = Family::<Labels, Counter>::default();
            r.register(
                "messages_sent",
                "Messages sent to the server, by type",
                sent.clone(),
            );
            let reconnects = Counter::default();
            r.register(
                "reconnects",
                "Times the link to the server went down and was tried again",
                reconnects.clone(),
            );
            let connected = Gauge::default();
            r.register(
                "connected",
                "1 while the link to the server is up",
                connected.clone(),
            );
            let tasks = Family::<Labels, Counter>::default();
            r.register(
                "tasks_run",
                "Tasks run on this node, by final state",
                tasks.clone(),
            );
            let resources = Family::<Labels, Gauge>::default();
            r.register(
                "resources",
                "Desired-state resources by state, in the latest convergence report",
                resources.clone(),
            );
            let plugin_runs: Family<Labels, Histogram> =
                Family::new_with_constructor(plugin_histogram);
            r.register(
                "plugin_run_duration_seconds",
                "Daemon plugin calls, by plugin",
                plugin_runs.clone(),
            );
            let plugin_misses = Family::<Labels, Counter>::default();
            r.register(
                "plugin_deadline_misses",
                "Daemon plugin calls cancelled at their deadline, by plugin",
                plugin_misses.clone(),
            );
            Self {
                registry: r,
                sent,
                reconnects,
                connected,
                tasks,
                resources,
                plugin_runs,
                plugin_misses,
            }
        }
    }

    static METRICS: OnceLock<AgentMetrics> = OnceLock::new();

    pub fn with<T>(f: impl FnOnce(&AgentMetrics) -> T) {
        if let Some(m) = METRICS.get() {
            let _ = f(m);
        }
    }

    fn respond(req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, kind: &'static str, body: String| {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            if let Ok(v) = kind.parse() {
                resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            resp
        };
        if req.uri().path() != "/metrics" {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "this address serves /metrics only\n".into(),
            );
        }
        let mut body = String::new();
        match METRICS.get().map(|m| encode(&mut body, &m.registry)) {
            Some(Ok(())) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            _ => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "cannot encode metrics\n".into(),
            ),
        }
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        METRICS.get_or_init(AgentMetrics::new);
        Ok((listener, local))
    }

    pub async fn serve(listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("cannot accept a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(respond(&req))
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_DEADLINE)
                    .serve_connection(TokioIo::new(tcp), service);
                if let Err(e) = conn.await {
                    tracing::debug!("metrics connection closed: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// Why the metrics listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} (--metrics-listen): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "this drover-agent was built without the `metrics-listen` feature; --metrics-listen is not available"
    )]
    NotBuilt,
}

/// Binds `--metrics-listen` and serves it in the background; returns the address bound.
pub async fn start(addr: std::net::SocketAddr) -> Result<std::net::SocketAddr, ListenError> {
    #[cfg(feature = "metrics-listen")]
    {
        let (listener, local) = imp::bind(addr)
            .await
            .map_err(|source| ListenError::Bind { addr, source })?;
        tokio::spawn(imp::serve(listener));
        Ok(local)
    }
    #[cfg(not(feature = "metrics-listen"))]
    {
        let _ = addr;
        Err(ListenError::NotBuilt)
    }
}

/// A message went to the server's stream.
pub fn sent(_msg: &AgentMessage) {
    #[cfg(feature = "metrics-listen")]
    if let Some(m) = &_msg.msg {
        imp::with(|x| {
            x.sent
                .get_or_create(&[("type", m.kind().to_string())])
                .inc()
        });
    }
}

/// The link came up (`true`) or went down (`false`: a reconnect follows).
pub fn link(_up: bool) {
    #[cfg(feature = "metrics-listen")]
    imp::with(|x| {
        x.connected.set(i64::from(_up));
        if !_up {
            x.reconnects.inc();
        }
    });
}

/// A task ended in this state (Succeeded, Failed, Cancelled, TimedOut, Refused, Error).
pub fn task_finished(_state: &str) {
    #[cfg(feature = "metrics-listen")]
    imp::with(|x| {
        x.tasks
            .get_or_create(&[("state", _state.to_string())])
            .inc()
    });
}

/// A convergence report went out: its resources by state become the gauges.
pub fn converge_report(_report: &NodeConvergence) {
    #[cfg(feature = "metrics-listen")]
    imp::with(|x| {
        x.resources.clear();
        for r in &_report.resources {
            let state = serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            x.resources.get_or_create(&[("state", state)]).inc();
        }
    });
}

/// A daemon plugin call took `took`; `missed` when it was cancelled at its deadline.
pub fn plugin_call(_plugin: &'static str, _took: Duration, _missed: bool) {
    #[cfg(feature = "metrics-listen")]
    imp::with(|x| {
        let labels = [("plugin", _plugin.to_string())];
        x.plugin_runs
            .get_or_create(&labels)
            .observe(_took.as_secs_f64());
        if _missed {
            x.plugin_misses.get_or_create(&labels).inc();
        }
    });
}
