//! The agent gateway: the gRPC `AgentLink` service. It turns wire messages into fleet calls and fleet
//! errors into gRPC statuses; decisions stay in `Fleet`.

pub mod limits;
pub mod tls;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use drover_proto::v1::{
    self, AgentMessage, Blob, EnrollRequest, EnrollResponse, FetchBlobRequest, ServerMessage,
    agent_message::Msg, server_message,
};
use drover_types::action::ActionInfo;
use drover_types::limits::{MAX_OPEN_TASKS, check_count};
use drover_types::version::{self, Skew, Version};
use drover_types::{Labels, PROTOCOL_VERSION, VERSION};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{AgentHello, Fleet, FleetError, MAX_HEARTBEAT_INTERVAL};
use crate::reach::message::ToAgent;
use crate::reach::wire;
use tls::Peer;

const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Gateway {
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
}

impl Gateway {
    pub fn new(fleet: Arc<Fleet>, shutdown: watch::Receiver<bool>) -> Self {
        Self { fleet, shutdown }
    }
}

fn status(e: FleetError) -> Status {
    match e {
        FleetError::TokenFormat(_) | FleetError::TokenRefused(_) | FleetError::TokenRequired => {
            Status::unauthenticated(e.to_string())
        }
        FleetError::NodeNotFound(_) => Status::permission_denied(
            "this node was deleted from the server: enroll it again with a new join token (remove the agent's state dir first)",
        ),
        FleetError::Invalid { .. } | FleetError::Pki(crate::pki::PkiError::BadCsr(_)) => {
            Status::invalid_argument(e.to_string())
        }
        other => {
            tracing::error!("internal error serving an agent: {other}");
            Status::internal("internal server error; see the server's log")
        }
    }
}

fn peer(req: &Request<impl Sized>) -> Option<Peer> {
    req.extensions().get::<Peer>().cloned()
}

/// The stream's first message, which must be a Hello and come within `HELLO_TIMEOUT`.
async fn first_hello(
    inbound: &mut Streaming<AgentMessage>,
    metrics: &crate::metrics::ServerMetrics,
) -> Result<v1::Hello, Status> {
    match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(AgentMessage {
            msg: Some(Msg::Hello(h)),
        }))) => Ok(h),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            metrics.agent_connection("hello_timeout");
            Err(Status::invalid_argument(
                "the first message on a stream must be Hello",
            ))
        }
        _ => Err(Status::invalid_argument(
            "the first message on a stream must be Hello",
        )),
    }
}

/// The skew policy (`drover_types::version`): an agent older than this server serves is refused, with
/// what to do (a refusal, which agents of every version print); one newer works at this server's level. An
/// agent that names no version it can be judged by is served.
fn check_skew(
    hello: &v1::Hello,
    server: Version,
    node_id: &str,
    addr: Option<std::net::SocketAddr>,
) -> Result<(), Status> {
    let Some(agent) = hello
        .capabilities
        .as_ref()
        .and_then(|c| c.agent_version.parse::<Version>().ok())
    else {
        return Ok(());
    };
    match version::skew(server, agent) {
        Skew::TooOld => {
            let why = version::too_old(server, agent);
            tracing::warn!(node = %node_id, peer = ?addr, "refused a stream: {why}");
            Err(Status::permission_denied(why))
        }
        Skew::Newer => {
            tracing::info!(node = %node_id, agent = %agent, server = %server, "the agent is newer than this server: it works at the server's level");
            Ok(())
        }
        Skew::Same | Skew::Older => Ok(()),
    }
}

/// The hello checked against the limits and translated, with the tasks the agent says it has open
/// (`None` from agents that do not list them).
fn agent_hello(
    hello: v1::Hello,
    node_id: &str,
    addr: Option<std::net::SocketAddr>,
) -> Result<(AgentHello, Option<HashSet<String>>), Status> {
    if hello.protocol_version != PROTOCOL_VERSION {
        tracing::info!(node = %node_id, version = hello.protocol_version, "agent speaks another protocol version");
    }
    check_skew(&hello, Version::current(), node_id, addr)?;
    if let Err(e) = check_count("open_tasks", hello.open_tasks.len(), MAX_OPEN_TASKS) {
        tracing::warn!(node = %node_id, peer = ?addr, "refused a stream: {e}");
        return Err(status(e.into()));
    }
    let interval = Duration::from_millis(hello.heartbeat_interval_ms.max(1));
    if interval > MAX_HEARTBEAT_INTERVAL {
        tracing::warn!(node = %node_id, peer = ?addr, "refused a stream: heartbeat interval {interval:?} is too long");
        return Err(Status::invalid_argument(format!(
            "field `heartbeat_interval_ms`: {} is above the maximum of {} ms",
            hello.heartbeat_interval_ms,
            MAX_HEARTBEAT_INTERVAL.as_millis()
        )));
    }
    // Agents before protocol 2 do not list their open tasks, so their silence proves nothing.
    let open_tasks =
        (hello.protocol_version >= 2).then(|| hello.open_tasks.into_iter().collect::<HashSet<_>>());
    let agent_hello = AgentHello {
        capabilities: hello.capabilities.unwrap_or_default().into(),
        labels: hello.labels.into_iter().collect(),
        heartbeat_interval: interval,
        metrics: hello.metrics.map(Into::into),
        ip: addr.map(|a| a.ip().to_string()),
        actions: hello
            .actions
            .into_iter()
            .map(|a| ActionInfo {
                name: a.name,
                version: a.version,
            })
            .collect(),
    };
    Ok((agent_hello, open_tasks))
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl drover_proto::AgentLink for Gateway {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let addr = peer(&request).and_then(|p| p.addr);
        let req = request.into_inner();
        let labels: Labels = req.labels.into_iter().collect();
        match self
            .fleet
            .nodes
            .enroll(&req.token, &req.csr_pem, &req.name, labels)
            .await
        {
            Ok(e) => {
                tracing::info!(node = %e.name, id = %e.node_id, peer = ?addr, "node enrolled");
                Ok(Response::new(EnrollResponse {
                    node_id: e.node_id,
                    name: e.name,
                    cert_pem: e.cert_pem,
                    ca_pem: self.fleet.pki().ca_pem().to_string(),
                }))
            }
            Err(e) => {
                tracing::warn!(peer = ?addr, "refused an enrollment: {e}");
                Err(status(e))
            }
        }
    }

    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<Blob>, Status> {
        let Some(node_id) = peer(&request).and_then(|p| p.node_id) else {
            return Err(Status::unauthenticated(
                "a client certificate issued by this server is required",
            ));
        };
        let sha = request.into_inner().sha256;
        match self.fleet.desired.blob_for_node(&node_id, &sha).await {
            Ok(Some(data)) => Ok(Response::new(Blob { data })),
            Ok(None) => Err(Status::not_found(format!(
                "no blob {sha} in this node's desired state"
            ))),
            Err(e) => Err(status(e)),
        }
    }

    type AttachStream = AttachStream;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<AttachStream>, Status> {
        let peer = peer(&request);
        let addr = peer.as_ref().and_then(|p| p.addr);
        let Some(node_id) = peer.and_then(|p| p.node_id) else {
            tracing::warn!(peer = ?addr, "refused a stream without a client certificate");
            return Err(Status::unauthenticated(
                "a client certificate issued by this server is required: enroll with a join token first",
            ));
        };
        let metrics = self.fleet.metrics();
        let opened = std::time::Instant::now();
        let mut inbound = request.into_inner();
        let hello = first_hello(&mut inbound, metrics).await?;
        let (agent_hello, open_tasks) = agent_hello(hello, &node_id, addr)?;
        // A read decides whether the node may attach; the Welcome waits for nothing else. Writing the hello
        // and registering the stream happen in the stream's own task: under a reconnect storm the store's
        // writes queue up, and an agent waiting on them would give up on Welcome and back off.
        let node = self
            .fleet
            .nodes
            .admit(&node_id, &agent_hello)
            .await
            .map_err(|e| {
                metrics.agent_connection("attach_refused");
                tracing::warn!(node = %node_id, peer = ?addr, "refused a stream: {e}");
                status(e)
            })?;
        // The fleet sends to the node through `link_tx`; the response stream reads that channel itself
        // (no forwarding task, one channel per stream: both cost memory on every idle connection).
        let (link_tx, link_rx) = mpsc::channel::<Box<ToAgent>>(64);
        let (end_tx, end_rx) = oneshot::channel();
        let welcome = ServerMessage {
            msg: Some(server_message::Msg::Welcome(v1::Welcome {
                protocol_version: PROTOCOL_VERSION,
                node_id: node.id.clone(),
                name: node.name.clone(),
                server_version: VERSION.to_string(),
            })),
        };
        let outbound = Outbound {
            welcome: Some(welcome),
            link: link_rx,
            end: Some(end_rx),
        };
        metrics.agent_connect("welcome", opened.elapsed());
        let stream = AgentStream {
            fleet: self.fleet.clone(),
            shutdown: self.shutdown.clone(),
            node_id,
            addr,
            link_tx,
            end_tx,
            inbound,
            opened,
        };
        tokio::spawn(stream.run(Box::new(agent_hello), open_tasks));
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// One agent's stream after its Welcome.
struct AgentStream {
    fleet: Arc<Fleet>,
    shutdown: watch::Receiver<bool>,
    node_id: String,
    addr: Option<std::net::SocketAddr>,
    link_tx: crate::reach::local::LinkSender,
    /// Ends the response stream with a status (see `Outbound`).
    end_tx: oneshot::Sender<Status>,
    inbound: Streaming<AgentMessage>,
    opened: std::time::Instant,
}

impl AgentStream {
    /// Records the hello and registers the stream, then serves it until either side ends it. Messages the
    /// agent sends meanwhile wait in the stream.
    /// The hello comes boxed: an async fn's arguments stay in its future for its whole life, and this one
    /// lives as long as the agent is connected.
    async fn run(self, hello: Box<AgentHello>, open_tasks: Option<HashSet<String>>) {
        let AgentStream {
            fleet,
            mut shutdown,
            node_id,
            addr,
            link_tx,
            mut end_tx,
            mut inbound,
            opened,
        } = self;
        let metrics = fleet.metrics();
        // Taken before the stream is registered: a run dispatched once it is goes through this stream and
        // starts after this instant, so the hello's list cannot name it (it must not end Lost for that).
        let hello_at = chrono::Utc::now();
        // Held until the refusal is handed over: the response stream ends when its link closes, and a
        // refused attach drops the link it was given.
        let keep = link_tx.clone();
        // Boxed, and only the node's name kept from its record: a future holds room for everything any of
        // its awaits holds, and this task lives as long as the agent is connected.
        let attached = Box::pin(async {
            let (node, attachment) = fleet.nodes.attach(&node_id, *hello, link_tx).await?;
            Ok::<_, FleetError>((node.name, attachment))
        })
        .await;
        let (name, _attachment) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                metrics.agent_connection("attach_refused");
                tracing::warn!(node = %node_id, peer = ?addr, "refused a stream: {e}");
                let _ = end_tx.send(status(e));
                return;
            }
        };
        // From now on the stream ends when the fleet drops its link (detached, replaced, node deleted).
        drop(keep);
        metrics.agent_connection("attached");
        metrics.agent_connect("attach", opened.elapsed());
        tracing::info!(node = %name, id = %node_id, peer = ?addr, "agent attached");
        {
            let (fleet, id, name) = (fleet.clone(), node_id.clone(), name.clone());
            tokio::spawn(async move {
                fleet.attached(&id, &name, open_tasks, hello_at).await;
            });
        }
        let failure = serve(
            &fleet,
            &node_id,
            &name,
            &mut inbound,
            &mut end_tx,
            &mut shutdown,
        )
        .await;
        if let Some(s) = failure {
            let _ = end_tx.send(s);
        }
        tracing::info!(node = %name, id = %node_id, "agent detached");
    }
}

/// Serves an attached agent's messages until it ends the stream, the fleet drops its link, the server
/// shuts down or the node is deleted (then the status to end the stream with).
async fn serve(
    fleet: &Arc<Fleet>,
    node_id: &str,
    name: &str,
    inbound: &mut Streaming<AgentMessage>,
    end_tx: &mut oneshot::Sender<Status>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Status> {
    let metrics = fleet.metrics();
    let mut failure = None;
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(AgentMessage { msg: Some(Msg::Heartbeat(hb)) })) => {
                    metrics.heartbeat("grpc");
                    let beat = hb.metrics.unwrap_or_default().into();
                    if let Err(e) = fleet.nodes.stream_heartbeat(node_id, beat) {
                        tracing::warn!(node = %name, "ignored a heartbeat: {e}");
                        if matches!(e, FleetError::NodeNotFound(_)) {
                            failure = Some(status(e));
                            break;
                        }
                    }
                }
                Ok(Some(AgentMessage { msg: Some(Msg::Hello(_)) })) => {
                    tracing::warn!(node = %name, "ignored a second Hello on one stream");
                }
                // Boxed: handling a message takes a large future, which an idle stream's task
                // would otherwise carry for as long as the agent stays connected.
                Ok(Some(AgentMessage { msg: Some(other) })) => {
                    if let Some(msg) = wire::from_agent(other) {
                        Box::pin(fleet.agent_message(node_id, name, msg)).await
                    }
                }
                Ok(Some(AgentMessage { msg: None })) => {
                    tracing::debug!(node = %name, "ignored an empty or unknown message");
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(node = %name, "stream ended: {e}");
                    break;
                }
            },
            _ = end_tx.closed() => break,
            _ = shutdown.changed() => break,
        }
    }
    failure
}

/// An agent's response stream: Welcome first, then what the fleet sends through the node's link, until
/// the link closes (the stream was detached or replaced) or the stream's reader ends it with a status.
struct Outbound {
    welcome: Option<ServerMessage>,
    link: mpsc::Receiver<Box<ToAgent>>,
    /// A status to end the stream with; `None` once the reader has ended (what is queued still goes out).
    end: Option<oneshot::Receiver<Status>>,
}

impl Stream for Outbound {
    type Item = Result<ServerMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(welcome) = this.welcome.take() {
            return Poll::Ready(Some(Ok(welcome)));
        }
        if let Some(end) = this.end.as_mut()
            && let Poll::Ready(ended) = Pin::new(end).poll(cx)
        {
            this.end = None;
            if let Ok(status) = ended {
                this.link.close();
                return Poll::Ready(Some(Err(status)));
            }
        }
        this.link
            .poll_recv(cx)
            .map(|m| m.map(|m| Ok(ServerMessage::from(*m))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(agent_version: Option<&str>) -> v1::Hello {
        v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval_ms: 1000,
            capabilities: Some(v1::Capabilities {
                agent_version: agent_version.unwrap_or_default().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn agents_older_than_served_are_refused_saying_how_to_upgrade_and_the_rest_are_served() {
        let server: Version = "0.4.1".parse().unwrap();
        let check = |agent: Option<&str>| check_skew(&hello(agent), server, "n1", None);
        let refused = check(Some("0.1.7")).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused
                .message()
                .starts_with("agent 0.1.7 is too old for server 0.4.1, which serves agents 0.2 and newer: upgrade"),
            "{refused:?}"
        );
        for served in [
            Some("0.4.0"),
            Some("0.2.0"),
            Some("0.5.0"),
            None,
            Some("custom"),
        ] {
            assert!(check(served).is_ok(), "{served:?}");
        }
        // The whole hello goes through the same check.
        assert!(agent_hello(hello(Some(VERSION)), "n1", None).is_ok());
    }
}
