//! The link to the server: enroll when needed, then hold one mTLS stream, say Hello, send heartbeats,
//! and reconnect with backoff whenever the stream breaks.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use drover_proto::v1::{
    self, AgentMessage, Heartbeat, Hello, ServerMessage, action_result, agent_message::Msg,
    server_message,
};
use drover_types::PROTOCOL_VERSION;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::actions::{self, ActionCtx, Calls};
use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::converge::{Blobs, ConvergeCtx, Converger};
use crate::daemon::{self, Control};
use crate::identity::{self, Identity, IdentityError};
use crate::inventory::Collector;
use crate::servers::Servers;
use crate::tasks::TaskManager;
// Re-exported: the simulator (drover-sim) describes its own transport errors through the link.
use crate::transport_error::REST_PORT_HINT;
pub use crate::transport_error::describe_transport_error;

const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot read system information: {0}")]
    Inventory(#[from] sysinfo::Error),
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Refused(String),
    #[error("the server closed the stream")]
    Closed,
    #[error("{0}")]
    Broken(String),
}

fn describe_status(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            status.message().to_string()
        }
        _ => describe_transport_error(status),
    }
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    config: AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let Some(identity) = load_or_enroll(&config, &mut shutdown).await? else {
        return Ok(());
    };
    let mut servers = Servers::new(&identity, &config.servers)?;
    tracing::info!(node = %identity.info.name, id = %identity.info.node_id, server = %servers.url(), servers = servers.len(), "starting");
    let mut collector = Collector::new()?;
    let mut backoff = Backoff::default();
    let services = Services::start(&config, &identity)?;
    loop {
        let end = tokio::select! {
            end = session(servers.endpoint(), &config, &mut collector, &mut backoff, &services) => end,
            _ = shutdown.changed() => return Ok(()),
        };
        crate::metrics_listen::link(false);
        // A refused client certificate often surfaces only as a closed connection (TLS 1.3 sends the alert
        // after the handshake, racing the first request). Ask the server plainly before calling it a network
        // problem.
        let end = match end {
            SessionEnd::Broken(_) | SessionEnd::Closed => {
                match identity.probe_refusal(servers.url()).await {
                    Some(refusal) => SessionEnd::Refused(describe_transport_error(&refusal)),
                    None => end,
                }
            }
            other => other,
        };
        let delay = backoff.next_delay();
        let server = servers.url().to_string();
        // The next attempt goes to the next replica: this one may be gone for good. The identity stays.
        let next = servers.advance().then(|| servers.url().to_string());
        let then = next.map(|n| format!(" at {n}")).unwrap_or_default();
        log_link_down(&end, &server, &then, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Says why the link went down and when it tries again: loudly where retrying alone cannot help.
fn log_link_down(end: &SessionEnd, server: &str, then: &str, delay: Duration) {
    match end {
        SessionEnd::Refused(m) => {
            tracing::error!(%server, "the server refused this agent: {m}; retrying{then} in {delay:.1?}")
        }
        // Pointed at the wrong port, retrying never helps: say so loudly (it still retries, in case
        // the address is fixed behind it).
        SessionEnd::Connect(m) if m.contains(REST_PORT_HINT) => {
            tracing::error!(%server, "cannot connect: {m}; retrying{then} in {delay:.1?}")
        }
        other => tracing::warn!(%server, "link down: {other}; retrying{then} in {delay:.1?}"),
    }
}

/// The node's identity, enrolling first when the state dir has none. `None` when shut down meanwhile.
async fn load_or_enroll(
    config: &AgentConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Identity>, LinkError> {
    if let Some(identity) = Identity::load(&config.state_dir)? {
        if config.token.is_some() {
            tracing::info!(node = %identity.info.name, "already enrolled; the join token is not needed any more");
        }
        return Ok(Some(identity));
    }
    let token = config.token.as_deref().ok_or(IdentityError::NotEnrolled)?;
    if config.servers.is_empty() {
        return Err(IdentityError::NoServer.into());
    }
    // Any replica enrolls (they share one CA); an unreachable one is skipped for the next.
    let mut attempt = 0usize;
    let name = config
        .name
        .clone()
        .or_else(|| sysinfo::System::host_name().ok())
        .unwrap_or_else(|| "node".to_string());
    let mut backoff = Backoff::default();
    loop {
        let server = &config.servers[attempt % config.servers.len()];
        attempt = attempt.wrapping_add(1);
        match identity::enroll(&config.state_dir, server, token, &name, &config.labels).await {
            Ok(identity) => {
                let got = &identity.info.name;
                if *got != name {
                    // The server gives a taken name a suffix; the operator looks for the node by the new one.
                    tracing::warn!(node = %got, id = %identity.info.node_id, "enrolled as {got} ({name} was taken by another node; pass --name to choose one); certificate kept in {}", config.state_dir.display());
                } else {
                    tracing::info!(node = %got, id = %identity.info.node_id, "enrolled as {got}; certificate kept in {}", config.state_dir.display());
                }
                return Ok(Some(identity));
            }
            // The server may simply not be up yet; everything else is final.
            Err(IdentityError::Unreachable { url, message }) => {
                let delay = backoff.next_delay();
                if message.contains(REST_PORT_HINT) {
                    tracing::error!("cannot enroll at {url}: {message}; retrying in {delay:.1?}");
                } else {
                    tracing::warn!(
                        "cannot reach {url} to enroll: {message}; retrying in {delay:.1?}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn session(
    endpoint: &Endpoint,
    config: &AgentConfig,
    collector: &mut Collector,
    backoff: &mut Backoff,
    services: &Services,
) -> SessionEnd {
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return SessionEnd::Connect(describe_transport_error(&e)),
    };
    let hello = HelloInfo {
        capabilities: collector.capabilities().await,
        metrics: collector.metrics().await,
        labels: config.labels.clone(),
        heartbeat_interval: config.heartbeat_interval,
        actions: actions::advertised(),
        daemon_plugins: config.plugins.iter().map(|p| p.name.to_string()).collect(),
        open_tasks: services.tasks.open_tasks(),
    };
    let Attached {
        tx,
        mut inbound,
        welcome,
    } = match attach(channel, hello.into_hello()).await {
        Ok(a) => a,
        Err(end) => return end,
    };
    tracing::info!(node = %welcome.name, server_version = %welcome.server_version, "connected");
    backoff.reset();
    crate::metrics_listen::link(true);

    // One task per daemon plugin; dropping the set when the stream ends stops them all.
    let mut plugins = tokio::task::JoinSet::new();
    let mut controls: HashMap<&'static str, mpsc::Sender<Control>> = HashMap::new();
    for plugin in &config.plugins {
        let (ctl_tx, ctl_rx) = mpsc::channel(8);
        controls.insert(plugin.name, ctl_tx);
        plugins.spawn(daemon::run(plugin.clone(), ctl_rx, tx.clone()));
    }

    services.tasks.connected(tx.clone());
    services.blobs.fetcher.connected(tx.clone());
    services.converger.connected(tx.clone()).await;
    let end = stream(config, collector, services, &controls, &tx, &mut inbound).await;
    services.tasks.disconnected();
    services.blobs.fetcher.disconnected();
    services.converger.disconnected();
    end
}

async fn stream(
    config: &AgentConfig,
    collector: &mut Collector,
    services: &Services,
    controls: &HashMap<&'static str, mpsc::Sender<Control>>,
    tx: &mpsc::Sender<AgentMessage>,
    inbound: &mut tonic::Streaming<ServerMessage>,
) -> SessionEnd {
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; Hello carried those metrics
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if tx.send(heartbeat(collector.metrics().await)).await.is_err() {
                    return SessionEnd::Closed;
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(ServerMessage { msg: Some(m) })) => dispatch(m, services, controls, tx).await,
                Ok(Some(ServerMessage { msg: None })) => {} // a newer server's message this agent does not know
                Ok(None) => return SessionEnd::Closed,
                Err(status) => return refused_or_broken(&status),
            },
        }
    }
}

/// What handles the server's messages; outlives connections.
struct Services {
    ctx: ActionCtx,
    calls: Arc<Calls>,
    tasks: Arc<TaskManager>,
    converger: Converger,
    blobs: Blobs,
}

impl Services {
    /// The task manager, converger and blob store over the state dir, and the action bookkeeping.
    fn start(config: &AgentConfig, identity: &Identity) -> Result<Self, LinkError> {
        let ctx = ActionCtx {
            policy: Arc::new(config.policy.clone()),
        };
        // Outlives connections, so a call redelivered after a reconnect is recognised.
        let calls = Arc::new(Calls::default());
        let tasks_dir = config.state_dir.join("tasks");
        let gate = Arc::new(crate::commands::CommandGate::new(
            ctx.policy.clone(),
            &identity.info.node_id,
            &identity.info.name,
            &config.state_dir,
        ));
        let tasks = TaskManager::new(
            tasks_dir.clone(),
            ctx.policy.clone(),
            gate.clone(),
            config.max_tasks,
        )
        .map_err(|source| IdentityError::Io {
            path: tasks_dir,
            source,
        })?;
        let blobs = Blobs::new(config.state_dir.join("blobs"));
        let converger = Converger::start(
            config.state_dir.clone(),
            ConvergeCtx {
                policy: ctx.policy.clone(),
                blobs: blobs.clone(),
            },
            config.resync_interval,
        );
        Ok(Self {
            ctx,
            calls,
            tasks,
            converger,
            blobs,
        })
    }
}

/// Routes one message from the server.
async fn dispatch(
    m: server_message::Msg,
    services: &Services,
    controls: &HashMap<&'static str, mpsc::Sender<Control>>,
    tx: &mpsc::Sender<AgentMessage>,
) {
    use server_message::Msg as M;
    let Services {
        calls,
        tasks,
        converger,
        blobs,
        ..
    } = services;
    match m {
        M::Welcome(_) => {}
        M::ActionCall(call) => spawn_action_call(call, services, tx),
        M::CancelAction(c) => {
            calls.cancel(&c.call_id);
        }
        M::SessionCreated(c) => to_plugin(
            controls,
            &c.plugin,
            Control::Created {
                session_id: c.session_id,
            },
        ),
        M::TerminateSession(t) => terminate_sessions(t, controls),
        M::TaskStart(t) => tasks.start(t.task_id, t.spec_json, t.signature_json),
        M::DesiredState(d) => {
            blobs.keep_inline(&d.blobs, &d.state_json);
            converger.desired(d).await
        }
        M::PlanRequest(p) => {
            // A plan waits for the converger; the stream (and heartbeats) must not.
            let (converger, tx) = (converger.clone(), tx.clone());
            tokio::spawn(async move {
                let answer = converger.plan(p).await;
                let _ = tx.send(answer).await;
            });
        }
        M::TaskCancel(t) => tasks.cancel(&t.task_id),
        M::TaskAck(a) => tasks.acknowledged(&a.task_id, a.exit),
        M::BlobData(d) => blobs.fetcher.data(d),
        M::SessionMessage(m) => match serde_json::from_str(&m.body_json) {
            Ok(body) => to_plugin(controls, &m.plugin, Control::Message { body }),
            Err(e) => {
                tracing::warn!(plugin = %m.plugin, "ignored a session message that is not JSON: {e}")
            }
        },
    }
}

/// Hands a control message to a daemon plugin's task, if this agent runs that plugin.
fn to_plugin(controls: &HashMap<&'static str, mpsc::Sender<Control>>, plugin: &str, c: Control) {
    if let Some(ctl) = controls.get(plugin) {
        // A full control queue means the plugin task is stuck; dropping a control message is safe:
        // the server re-terminates or the agent recreates.
        let _ = ctl.try_send(c);
    }
}

/// Ends one session, or every session of every plugin when the message names no plugin.
fn terminate_sessions(
    t: v1::TerminateSession,
    controls: &HashMap<&'static str, mpsc::Sender<Control>>,
) {
    tracing::info!(plugin = %t.plugin, reason = %t.reason, "server terminated session(s)");
    if t.plugin.is_empty() {
        for name in controls.keys() {
            to_plugin(
                controls,
                name,
                Control::Terminate {
                    session_id: String::new(),
                },
            );
        }
    } else {
        to_plugin(
            controls,
            &t.plugin,
            Control::Terminate {
                session_id: t.session_id,
            },
        );
    }
}

/// Runs an action call in its own task and sends its result; a redelivered call is ignored.
fn spawn_action_call(call: v1::ActionCall, services: &Services, tx: &mpsc::Sender<AgentMessage>) {
    let Some(cancel) = services.calls.begin(&call.call_id) else {
        tracing::info!(call = %call.call_id, "ignored a redelivered action call");
        return;
    };
    let (ctx, calls, tx, tasks) = (
        services.ctx.clone(),
        services.calls.clone(),
        tx.clone(),
        services.tasks.clone(),
    );
    tokio::spawn(async move {
        let deadline = Duration::from_millis(call.deadline_ms.max(1));
        let result = match admitted_args(&call, tasks.gate()) {
            Ok(args) => actions::run(ctx, &call.name, args, deadline, cancel).await,
            Err(e) => Err(e),
        };
        calls.finish(&call.call_id);
        let _ = tx.send(action_result(call.call_id, result)).await;
    });
}

/// An action call's arguments as JSON, once the node's command gate admits the call.
fn admitted_args(
    call: &v1::ActionCall,
    gate: &crate::commands::CommandGate,
) -> Result<serde_json::Value, drover_types::action::ActionError> {
    let args = if call.args_json.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&call.args_json).map_err(|e| {
            drover_types::action::ActionError::invalid(None, format!("arguments are not JSON: {e}"))
        })?
    };
    // On a node that pins keys, an action that changes the node needs a signature like a task.
    if !actions::changes_node(&call.name) {
        return Ok(args);
    }
    let command = serde_json::json!({"action": call.name, "args": args});
    gate.admit(
        &format!("action {}", call.name),
        &command,
        &call.signature_json,
    )
    .map(|()| args)
    .map_err(drover_types::action::ActionError::denied)
}

/// How a stream error ends a session: refusals (the certificate, a deleted node) apart from breakage.
pub fn refused_or_broken(status: &tonic::Status) -> SessionEnd {
    let text = describe_status(status);
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => SessionEnd::Refused(text),
        _ if text.contains("refused this node's certificate") => SessionEnd::Refused(text),
        _ => SessionEnd::Broken(text),
    }
}

/// What a Hello says, in the shared model's types; the real agent and `drover-sim` both build theirs here.
pub struct HelloInfo {
    pub capabilities: drover_types::Capabilities,
    pub metrics: drover_types::Metrics,
    pub labels: drover_types::Labels,
    pub heartbeat_interval: Duration,
    pub actions: Vec<drover_types::action::ActionInfo>,
    pub daemon_plugins: Vec<String>,
    /// Tasks running here or finished without the server's acknowledgement (protocol 2).
    pub open_tasks: Vec<String>,
}

impl HelloInfo {
    pub fn into_hello(self) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            capabilities: Some(self.capabilities.into()),
            labels: self.labels.into_iter().collect(),
            heartbeat_interval_ms: self.heartbeat_interval.as_millis().min(u64::MAX as u128) as u64,
            metrics: Some(self.metrics.into()),
            actions: self
                .actions
                .into_iter()
                .map(|a| v1::ActionInfo {
                    name: a.name,
                    version: a.version,
                })
                .collect(),
            daemon_plugins: self.daemon_plugins,
            open_tasks: self.open_tasks,
        }
    }
}

pub fn heartbeat(metrics: drover_types::Metrics) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::Heartbeat(Heartbeat {
            metrics: Some(metrics.into()),
        })),
    }
}

/// An action's outcome as it travels.
pub fn action_result(
    call_id: String,
    result: Result<serde_json::Value, drover_types::action::ActionError>,
) -> AgentMessage {
    let outcome = match result {
        Ok(v) => action_result::Outcome::OkJson(v.to_string()),
        Err(e) => action_result::Outcome::ErrorJson(serde_json::to_string(&e).unwrap_or_default()),
    };
    AgentMessage {
        msg: Some(Msg::ActionResult(v1::ActionResult {
            call_id,
            outcome: Some(outcome),
        })),
    }
}

/// An open stream after the server's Welcome: `tx` feeds it, `inbound` is what the server sends.
pub struct Attached {
    pub tx: mpsc::Sender<AgentMessage>,
    pub inbound: tonic::Streaming<ServerMessage>,
    pub welcome: v1::Welcome,
}

/// Opens the `Attach` stream on a connected channel, says Hello first and waits for Welcome.
pub async fn attach(channel: Channel, hello: Hello) -> Result<Attached, SessionEnd> {
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    // Fresh channel with room: cannot fail.
    let _ = tx.try_send(AgentMessage {
        msg: Some(Msg::Hello(hello)),
    });
    let mut client = drover_proto::AgentLinkClient::new(channel);
    let outbound = ReceiverStream::new(rx).map(|m| {
        crate::metrics_listen::sent(&m);
        m
    });
    let mut inbound = match client.attach(outbound).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(refused_or_broken(&status)),
    };
    match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(ServerMessage {
            msg: Some(server_message::Msg::Welcome(welcome)),
        }))) => Ok(Attached {
            tx,
            inbound,
            welcome,
        }),
        Ok(Err(status)) => Err(refused_or_broken(&status)),
        Ok(Ok(_)) => Err(SessionEnd::Broken("the server did not send Welcome".into())),
        Err(_) => Err(SessionEnd::Broken(
            "no Welcome from the server in time".into(),
        )),
    }
}
