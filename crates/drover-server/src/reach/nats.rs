//! Replicas connected over NATS (`drover server --nats`): what one replica must send to an agent attached
//! to another goes to the replica that holds the agent's stream, and task followers learn of output that
//! another replica stored. PostgreSQL stays the source of truth: NATS carries commands and pokes, and the
//! JetStream KV copies of each node's state that `state_kv` derives from the store (docs/scale-out.md).
//!
//! Subjects (ids are the server's own UUIDs; anything else is never put in a subject):
//! - `drover.node.<node>.send`: request; the payload is one encoded `ServerMessage` (a task's start or
//!   cancel; desired state goes through the `desired-state` KV bucket instead). Only the replica that
//!   holds the node's stream subscribes (while it holds it) and answers `sent` once the message is in the
//!   stream; it stays silent otherwise, so the asker sees "no responders" at once, or times out.
//! - `drover.node.<node>.held`: request; the holder answers `held`.
//! - `drover.node.<node>.call`: request; the payload is a [`Call`] as JSON; the holder starts the
//!   action call on the stream and answers its outcome (`Result<Value, ActionError>` as JSON).
//! - `drover.node.<node>.ask`: request; the payload is an [`Ask`] as JSON (the node's actions, sessions, a
//!   dry-run plan, cancelling a call); the holder answers as it would for its own callers (ask.rs).
//! - `drover.task.<task>.stored`: published (empty) by the replica that stored output or a run's end, so
//!   followers on other replicas re-read the store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::ask::ROUTE_PATIENCE;

use drover_proto::v1::ServerMessage;
use drover_types::action::ActionError;
use futures_util::StreamExt;
use prost::Message as _;

mod state_kv;

use super::message::ToAgent;
use super::{Ask, Call, Links, Reach, wire};
pub use state_kv::{Bucket, KvError, Record, StateKv, StateObserver, put_newer};

/// The longest deadline a routed call may ask for (`MAX_ACTION_DEADLINE`, as the asker checked it).
const MAX_CALL_DEADLINE_MS: u64 = 3_600_000;

/// How long a start at connect may take before the server gives up with a clear error.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// How long a routed message may wait for the holder's answer.
/// How often a follower of a task re-reads the store while it follows through another replica: in case a
/// poke was lost (NATS reconnecting), it is late by this much at most.
const FOLLOW_RECHECK: Duration = Duration::from_secs(3);

/// The margin a routed action call waits beyond its deadline, for the answer to travel back twice.
const CALL_MARGIN: Duration = Duration::from_secs(4);

const SENT: &[u8] = b"sent";
const HELD: &[u8] = b"held";

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {reason} (is nats-server running there?)")]
    Connect { url: String, reason: String },
    #[error(
        "nats-server at {url} requires TLS: pass --nats-ca FILE, the CA that signed its certificate ({reason})"
    )]
    TlsRequired { url: String, reason: String },
    #[error(
        "TLS to nats-server at {url} failed: {reason} (its certificate must be signed by the CA in --nats-ca and name the host in --nats)"
    )]
    Tls { url: String, reason: String },
    #[error(
        "nats-server at {url} requires credentials: pass --nats-creds FILE (a user's .creds file) or --nats-nkey FILE (a user's nkey seed) ({reason})"
    )]
    CredentialsRequired { url: String, reason: String },
    #[error(
        "nats-server at {url} refused the credentials in {flag}: {reason} (is the user known to the server, and allowed the replicas' subjects? docs/scale-out.md)"
    )]
    Refused {
        url: String,
        flag: &'static str,
        reason: String,
    },
    #[error("cannot use {flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "cannot make the JetStream KV bucket {bucket:?}: {reason} (replicas keep node state in JetStream: run nats-server with JetStream on, `nats-server -js`)"
    )]
    Buckets {
        bucket: &'static str,
        reason: String,
    },
}

/// How a replica proves itself to nats-server and checks it (`--nats-ca`, `--nats-creds`, `--nats-nkey`);
/// all empty: a plain connection, as before (loopback tests and benchmarks).
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// PEM CA that signed nats-server's certificate: TLS is then required.
    pub ca: Option<PathBuf>,
    /// A user's JWT `.creds` file (operator mode).
    pub creds: Option<PathBuf>,
    /// A file holding a user's nkey seed (`SU...`), for `authorization { users = [{ nkey: U... }] }`.
    pub nkey: Option<PathBuf>,
}

impl NatsOptions {
    /// The flag that gave this replica's credentials, if any.
    fn credentials_flag(&self) -> Option<&'static str> {
        match (&self.creds, &self.nkey) {
            (Some(_), _) => Some("--nats-creds"),
            (None, Some(_)) => Some("--nats-nkey"),
            (None, None) => None,
        }
    }

    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, NatsError> {
        let file_error = |flag, path: &PathBuf, reason: String| NatsError::File {
            flag,
            path: path.clone(),
            reason,
        };
        if let Some(ca) = &self.ca {
            // async-nats reads it only at connect, where a missing file reads as a TLS failure.
            std::fs::metadata(ca).map_err(|e| file_error("--nats-ca", ca, e.to_string()))?;
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| file_error("--nats-creds", creds, e.to_string()))?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| file_error("--nats-nkey", path, e.to_string()))?;
            let seed = seed.trim();
            if !seed.starts_with("SU") || seed.contains(char::is_whitespace) {
                return Err(file_error(
                    "--nats-nkey",
                    path,
                    "it must hold one user nkey seed (SU..., as `nk -gen user` prints)".into(),
                ));
            }
            options = options.nkey(seed.to_string());
        }
        Ok(options)
    }

    /// The error for a failed first connection, naming the flag that fixes it.
    fn explain(&self, url: String, e: &async_nats::ConnectError) -> NatsError {
        use async_nats::ConnectErrorKind as Kind;
        let reason = e.to_string();
        // The handshake's own failures come back as IO errors ("invalid peer certificate: ...").
        let tls = e.kind() == Kind::Tls
            || (e.kind() == Kind::Io
                && ["certificate", "TLS", "tls", "handshake"]
                    .iter()
                    .any(|w| reason.contains(w)));
        match (e.kind(), self.credentials_flag()) {
            // Without --nats-ca the client still upgrades when the server says TLS is required, and
            // then fails on its certificate (unless a system root signed it).
            _ if tls && self.ca.is_none() => NatsError::TlsRequired { url, reason },
            _ if tls => NatsError::Tls { url, reason },
            (Kind::AuthorizationViolation | Kind::Authentication, None) => {
                NatsError::CredentialsRequired { url, reason }
            }
            (Kind::AuthorizationViolation | Kind::Authentication, Some(flag)) => {
                NatsError::Refused { url, flag, reason }
            }
            _ => NatsError::Connect { url, reason },
        }
    }
}

/// A connection to NATS shared by the whole server.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    /// The node-state buckets (made at connect).
    state: Arc<StateKv>,
}

/// Cancels a routed action call on the node when its caller leaves before the answer.
struct RoutedCallGuard {
    nats: Nats,
    node_id: String,
    call_id: String,
    done: bool,
}

impl Drop for RoutedCallGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (nats, node_id) = (self.nats.clone(), std::mem::take(&mut self.node_id));
        let ask = Ask::CancelCall {
            call_id: std::mem::take(&mut self.call_id),
        };
        // A destructor cannot wait; the agent's own deadline stops the call if this is lost.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { nats.route_ask(&node_id, &ask).await });
        }
    }
}

/// Serves a node's subjects on this replica while the node's stream is here; stops when dropped.
pub struct Held(tokio::task::JoinHandle<()>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether `id` can stand in a subject: the server's ids are UUIDs, and nothing else is routed.
pub(crate) fn subject_token(id: &str) -> Option<&str> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

impl Nats {
    /// Connects and makes (or opens) the node-state buckets, or fails at once with a clear error (no retry
    /// before the first connection: a replica that cannot reach NATS must not start as if it could route).
    pub async fn connect(url: &str, name: &str, access: &NatsOptions) -> Result<Self, NatsError> {
        let shown = crate::store::redact_url(url);
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_PATIENCE)
            .request_timeout(Some(ROUTE_PATIENCE));
        let options = access.apply(options).await?;
        let client = tokio::time::timeout(CONNECT_PATIENCE, options.connect(url))
            .await
            .map_err(|_| NatsError::Connect {
                url: shown.clone(),
                reason: "no answer in time".into(),
            })?
            .map_err(|e| access.explain(shown.clone(), &e))?;
        let state = Arc::new(StateKv::open(&client).await?);
        Ok(Self { client, state })
    }

    pub fn state_kv(&self) -> &StateKv {
        &self.state
    }

    /// Watches the node-state buckets for other replicas' changes while `observer` lives (`state_kv`).
    pub fn watch_state(
        &self,
        observer: std::sync::Weak<dyn StateObserver>,
        store: Arc<dyn crate::store::DesiredStateStore>,
    ) {
        state_kv::watch(self.state.clone(), observer, store);
    }

    /// Whether requests can go out now. While the connection is down they would only wait in the
    /// client's buffer until their timeout; failing at once says the same sooner ("node unavailable").
    fn up(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Asks the replica that holds `node_id` to send `msg` on its stream; true once it did.
    async fn route_send(&self, node_id: &str, msg: ToAgent) -> bool {
        let Some(node) = subject_token(node_id).filter(|_| self.up()) else {
            return false;
        };
        let payload = ServerMessage::from(msg).encode_to_vec();
        let asked = self
            .client
            .request(format!("drover.node.{node}.send"), payload.into());
        match tokio::time::timeout(ROUTE_PATIENCE, asked).await {
            Ok(Ok(reply)) => reply.payload.as_ref() == SENT,
            Ok(Err(e)) => {
                if e.kind() != async_nats::client::RequestErrorKind::NoResponders {
                    tracing::warn!(node = %node_id, "cannot route a message to the node's replica: {e}");
                }
                false
            }
            Err(_) => false,
        }
    }

    /// Runs an action call through the replica holding `node_id`; `None` when no replica holds it.
    async fn route_call(
        &self,
        node_id: &str,
        call: &Call,
    ) -> Option<Result<serde_json::Value, ActionError>> {
        let node = subject_token(node_id).filter(|_| self.up())?;
        let payload = serde_json::to_vec(call).ok()?;
        let patience = Duration::from_millis(call.deadline_ms).saturating_add(CALL_MARGIN);
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(patience));
        let asked = self
            .client
            .send_request(format!("drover.node.{node}.call"), request);
        match tokio::time::timeout(patience, asked).await {
            Ok(Ok(reply)) => Some(serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
                Err(ActionError::failed(format!(
                    "the node's replica sent an unreadable answer: {e}"
                )))
            })),
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => None,
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
                Some(Err(ActionError::DeadlineExceeded {
                    deadline_ms: call.deadline_ms,
                }))
            }
            Ok(Err(e)) => Some(Err(ActionError::failed(format!(
                "cannot reach the node's replica: {e}"
            )))),
            Err(_) => Some(Err(ActionError::DeadlineExceeded {
                deadline_ms: call.deadline_ms,
            })),
        }
    }

    /// Asks the replica holding `node_id` about its stream; `None` when none holds it or none answered.
    async fn route_ask(&self, node_id: &str, ask: &Ask) -> Option<serde_json::Value> {
        let node = subject_token(node_id).filter(|_| self.up())?;
        let payload = serde_json::to_vec(ask).ok()?;
        let patience = ask.patience();
        let request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(Some(patience));
        let asked = self
            .client
            .send_request(format!("drover.node.{node}.ask"), request);
        match tokio::time::timeout(patience, asked).await {
            Ok(Ok(reply)) => serde_json::from_slice(&reply.payload)
                .inspect_err(|e| tracing::warn!(node = %node_id, "unreadable answer from the node's replica: {e}"))
                .ok(),
            Ok(Err(e)) => {
                if e.kind() != async_nats::client::RequestErrorKind::NoResponders {
                    tracing::warn!(node = %node_id, "cannot ask the node's replica: {e}");
                }
                None
            }
            Err(_) => None,
        }
    }

    /// Whether some replica holds `node_id`'s stream.
    pub async fn held(&self, node_id: &str) -> bool {
        let Some(node) = subject_token(node_id).filter(|_| self.up()) else {
            return false;
        };
        let asked = self
            .client
            .request(format!("drover.node.{node}.held"), Vec::new().into());
        matches!(
            tokio::time::timeout(ROUTE_PATIENCE, asked).await,
            Ok(Ok(reply)) if reply.payload.as_ref() == HELD
        )
    }

    /// Tells other replicas that the store has news for `task_id` (output, a run's end).
    pub fn poke(&self, task_id: &str) {
        let Some(task) = subject_token(task_id) else {
            return;
        };
        let client = self.client.clone();
        let subject = format!("drover.task.{task}.stored");
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, Vec::new().into()).await {
                tracing::debug!("cannot tell other replicas of stored task output: {e}");
            }
        });
    }
}

impl Nats {
    /// Why this replica cannot route to the others now; the client reconnects by itself, so this clears
    /// when NATS is back.
    pub fn problem(&self) -> Option<String> {
        let state = self.client.connection_state();
        (state != async_nats::connection::State::Connected)
            .then(|| format!("cannot reach NATS: the connection is {state}"))
    }

    /// Answers for `node_id` on NATS while the returned guard lives (the node's stream `serial` is in
    /// `links`, this server's).
    pub async fn hold(&self, links: Arc<Links>, node_id: &str, serial: u64) -> Option<Held> {
        let node = subject_token(node_id)?.to_string();
        // Subscribed before the attach completes, so a replica routing to the node at once finds it.
        let mut sub = match self.client.subscribe(format!("drover.node.{node}.*")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(node = %node, "cannot serve the node's subjects on NATS; other replicas cannot reach it: {e}");
                return None;
            }
        };
        let client = self.client.clone();
        Some(Held(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                // A newer stream of the node (here) serves it with its own subscription: one answer only.
                if links.serial(&node) != Some(serial) {
                    continue;
                }
                serve_routed(&client, &links, &node, msg, reply).await;
            }
        })))
    }

    /// While `on_stored` says someone here still follows `task_id`, calls it again whenever another
    /// replica stored something for the task (and every `FOLLOW_RECHECK`, in case a poke was lost).
    pub fn watch_task(&self, task_id: &str, mut on_stored: impl FnMut() -> bool + Send + 'static) {
        let Some(task) = subject_token(task_id) else {
            return;
        };
        let client = self.client.clone();
        let subject = format!("drover.task.{task}.stored");
        tokio::spawn(async move {
            let mut sub = client.subscribe(subject).await.ok();
            // Whatever was stored before the subscription counts too.
            let mut tick = tokio::time::interval(FOLLOW_RECHECK);
            loop {
                if !on_stored() {
                    return;
                }
                match sub.as_mut() {
                    Some(s) => tokio::select! {
                        poked = s.next() => if poked.is_none() { sub = None },
                        _ = tick.tick() => {}
                    },
                    None => {
                        tick.tick().await;
                    }
                }
            }
        });
    }
}

/// Answers one message another replica routed to a node whose stream is here. Questions and calls wait
/// for the agent, so they are answered on their own and the node's other subjects go on.
async fn serve_routed(
    client: &async_nats::Client,
    links: &Arc<Links>,
    node: &str,
    msg: async_nats::Message,
    reply: async_nats::Subject,
) {
    let subject = msg.subject.as_str();
    if subject.ends_with(".ask") || subject.ends_with(".call") {
        let (client, links, node) = (client.clone(), links.clone(), node.to_string());
        let is_ask = subject.ends_with(".ask");
        tokio::spawn(async move {
            let answer = if is_ask {
                let ask = match serde_json::from_slice::<Ask>(&msg.payload) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(node = %node, "ignored an unreadable question from another replica: {e}");
                        return;
                    }
                };
                let Some(answer) = links.ask_json(&node, ask).await else {
                    return;
                };
                serde_json::to_vec(&answer).unwrap_or_default()
            } else {
                let Some(outcome) = routed_call(&links, &node, &msg.payload).await else {
                    return;
                };
                serde_json::to_vec(&outcome).unwrap_or_default()
            };
            if let Err(e) = client.publish(reply, answer.into()).await {
                tracing::debug!("cannot answer another replica: {e}");
            }
        });
        return;
    }
    let answer = match subject.rsplit('.').next() {
        Some("held") => Some(HELD),
        Some("send") => match ServerMessage::decode(msg.payload.as_ref())
            .ok()
            .and_then(wire::to_agent)
        {
            Some(m) => links.send(node, m).await.then_some(SENT),
            None => {
                tracing::warn!(node = %node, "ignored a routed message that is not a ServerMessage");
                None
            }
        },
        _ => None,
    };
    // Silence when not sent: the asker then fails fast or times out, never sees a false "sent".
    if let Some(answer) = answer
        && let Err(e) = client.publish(reply, answer.to_vec().into()).await
    {
        tracing::debug!("cannot answer a routed message: {e}");
    }
}

/// Runs a call another replica routed here; `None` (silence) when the node's stream is not here.
async fn routed_call(
    links: &Links,
    node_id: &str,
    payload: &[u8],
) -> Option<Result<serde_json::Value, ActionError>> {
    links.actions(node_id)?;
    let mut call: Call = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            return Some(Err(ActionError::failed(format!(
                "the replica that took the call sent it unreadable: {e}"
            ))));
        }
    };
    call.deadline_ms = call.deadline_ms.min(MAX_CALL_DEADLINE_MS);
    links.call(node_id, &call).await
}

impl Reach for Nats {
    async fn holds(&self, node_id: &str) -> bool {
        self.held(node_id).await
    }

    async fn send(&self, node_id: &str, msg: ToAgent) -> bool {
        self.route_send(node_id, msg).await
    }

    async fn ask_json(&self, node_id: &str, ask: Ask) -> Option<serde_json::Value> {
        self.route_ask(node_id, &ask).await
    }

    async fn call(
        &self,
        node_id: &str,
        call: &Call,
    ) -> Option<Result<serde_json::Value, ActionError>> {
        // A caller that leaves before the answer stops the call on the node, as it does for a node here.
        let mut guard = RoutedCallGuard {
            nats: self.clone(),
            node_id: node_id.to_string(),
            call_id: call.call_id.clone(),
            done: false,
        };
        let outcome = self.route_call(node_id, call).await;
        guard.done = true;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_go_into_subjects() {
        let id = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b";
        assert_eq!(subject_token(id), Some(id));
        for bad in ["", "a.b", "a*", ">", "a b", "a\nb", &"x".repeat(65)] {
            assert_eq!(subject_token(bad), None, "{bad:?}");
        }
    }
}
