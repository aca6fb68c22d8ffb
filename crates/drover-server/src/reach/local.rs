//! Live agent streams on this server: how to reach each attached node, the action calls waiting for an
//! answer, and the daemon-plugin sessions with their latest payloads. All in memory: a stream, a call and a
//! session cannot outlive the process, and agents recreate their sessions when they reconnect.

mod history;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use drover_types::action::{ActionError, ActionInfo};
use drover_types::limits::{MAX_SESSION_HISTORY_BYTES, MAX_SESSION_PAYLOAD, MAX_SESSIONS_PER_NODE};
use drover_types::session::{SessionDetail, SessionInfo, SessionSample, SessionState};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::message::{ActionCall, SessionData, SessionStatus, ToAgent};
use super::{Ask, Call, Reach, ask::NoPlan, ask::PLAN_PATIENCE};
use crate::sync::lock;
use history::{History, Payload};

/// Payloads kept per session. Small on purpose: every node holds a few sessions, and a fleet holds
/// thousands of nodes (metrics history lives in the store).
pub const SESSION_HISTORY: usize = 10;

/// What the fleet sends a node through. Boxed: a channel allocates its first block of 32 slots at once,
/// and every attached node has one, so a slot holds a pointer rather than a whole message.
pub type LinkSender = mpsc::Sender<Box<ToAgent>>;

struct Link {
    serial: u64,
    tx: LinkSender,
    actions: Arc<[ActionInfo]>,
}

struct Pending {
    node_id: String,
    reply: oneshot::Sender<Result<Value, ActionError>>,
}

struct Session {
    info: SessionInfo,
    history: History,
}

/// One node's sessions in plugin order, keyed by `info.plugin`. A sorted Vec sized to fit: a node holds
/// a handful, every connected node has one, and a BTreeMap allocates room for eleven at once.
#[derive(Default)]
struct NodeSessions(Vec<Session>);

impl NodeSessions {
    fn find(&self, plugin: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|s| s.info.plugin.as_str().cmp(plugin))
    }

    fn get(&self, plugin: &str) -> Option<&Session> {
        self.find(plugin).ok().map(|i| &self.0[i])
    }

    fn get_mut(&mut self, plugin: &str) -> Option<&mut Session> {
        self.find(plugin).ok().map(|i| &mut self.0[i])
    }

    /// Adds the session, or replaces the one of the same plugin.
    fn insert(&mut self, session: Session) {
        match self.find(&session.info.plugin) {
            Ok(i) => self.0[i] = session,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, session);
            }
        }
    }

    fn remove(&mut self, plugin: &str) -> Option<Session> {
        self.find(plugin).ok().map(|i| self.0.remove(i))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Session> {
        self.0.iter()
    }
}

fn parse(p: &Payload) -> Value {
    serde_json::from_str(&p.json).unwrap_or(Value::Null)
}

/// Why session data was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionRejected {
    #[error("no session {0} for this plugin on this server")]
    Unknown(String),
    #[error("the payload is not JSON")]
    BadPayload,
    #[error("the payload has {0} bytes; at most {MAX_SESSION_PAYLOAD} are accepted")]
    TooLarge(usize),
    #[error("the node has {MAX_SESSIONS_PER_NODE} sessions, as many as one node may hold")]
    TooMany,
}

#[derive(Default)]
pub struct Links {
    links: Mutex<HashMap<String, Link>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Node id -> plugin -> session. Kept when a stream ends, so the last payload stays visible.
    sessions: Mutex<HashMap<String, NodeSessions>>,
    /// Dry runs waiting for their node's plan: request id -> (node id, reply).
    plans: Mutex<HashMap<String, (String, oneshot::Sender<String>)>>,
    next_serial: AtomicU64,
    /// The action list the last attached node sent: nodes of one agent version send the same list, and
    /// sharing it saves a copy per node. One entry, so no outsider can grow it.
    last_actions: Mutex<Option<Arc<[ActionInfo]>>>,
}

impl Links {
    /// Registers a node's stream; returns its serial (a newer stream for the node replaces an older one).
    pub fn attach(&self, node_id: &str, tx: LinkSender, actions: Vec<ActionInfo>) -> u64 {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let actions = {
            let mut last = lock(&self.last_actions);
            match &*last {
                Some(shared) if **shared == *actions => shared.clone(),
                _ => last.insert(Arc::from(actions)).clone(),
            }
        };
        lock(&self.links).insert(
            node_id.to_string(),
            Link {
                serial,
                tx,
                actions,
            },
        );
        serial
    }

    /// Forgets a stream, if it is still the node's current one, and fails the calls waiting on it.
    pub fn detach(&self, node_id: &str, serial: u64) {
        let mut links = lock(&self.links);
        if links.get(node_id).is_some_and(|l| l.serial == serial) {
            links.remove(node_id);
            drop(links);
            let mut pending = lock(&self.pending);
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.node_id == node_id)
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(p) = pending.remove(&id) {
                    let _ = p.reply.send(Err(ActionError::NodeUnavailable));
                }
            }
        }
    }

    /// The serial of the node's current stream, if it has one.
    pub fn serial(&self, node_id: &str) -> Option<u64> {
        lock(&self.links).get(node_id).map(|l| l.serial)
    }

    pub fn is_attached(&self, node_id: &str) -> bool {
        lock(&self.links).contains_key(node_id)
    }

    /// How many nodes have a live stream.
    pub fn attached_count(&self) -> usize {
        lock(&self.links).len()
    }

    /// Every node's latest payload of `plugin`, as its JSON text: for `/metrics`, which parses only these.
    pub fn latest_payloads(&self, plugin: &str) -> Vec<(String, Box<str>)> {
        lock(&self.sessions)
            .iter()
            .filter_map(|(node, sessions)| {
                let latest = sessions.get(plugin)?.history.latest()?;
                Some((node.clone(), latest.json.clone()))
            })
            .collect()
    }

    pub fn actions(&self, node_id: &str) -> Option<Vec<ActionInfo>> {
        lock(&self.links).get(node_id).map(|l| l.actions.to_vec())
    }

    fn sender(&self, node_id: &str) -> Option<LinkSender> {
        lock(&self.links).get(node_id).map(|l| l.tx.clone())
    }

    /// Sends to a node's stream; false when it has none.
    pub async fn send(&self, node_id: &str, msg: ToAgent) -> bool {
        match self.sender(node_id) {
            Some(tx) => tx.send(Box::new(msg)).await.is_ok(),
            None => false,
        }
    }

    // ---- actions ----

    /// Starts a call and returns the receiver of its outcome.
    pub async fn start_call(
        &self,
        node_id: &str,
        call_id: &str,
        name: &str,
        args: &Value,
        deadline_ms: u64,
        signature_json: &str,
    ) -> Result<oneshot::Receiver<Result<Value, ActionError>>, ActionError> {
        let (reply, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.contains_key(call_id) {
                return Err(ActionError::invalid(
                    Some("call_id"),
                    format!("call {call_id} is already running"),
                ));
            }
            pending.insert(
                call_id.to_string(),
                Pending {
                    node_id: node_id.to_string(),
                    reply,
                },
            );
        }
        let call = ActionCall {
            call_id: call_id.to_string(),
            name: name.to_string(),
            args_json: args.to_string(),
            deadline_ms,
            signature_json: signature_json.to_string(),
        };
        if !self.send(node_id, ToAgent::ActionCall(call)).await {
            lock(&self.pending).remove(call_id);
            return Err(ActionError::NodeUnavailable);
        }
        Ok(rx)
    }

    /// Delivers an agent's answer; only the node a call went to can answer it.
    pub fn finish_call(&self, node_id: &str, call_id: &str, outcome: Result<Value, ActionError>) {
        let mut pending = lock(&self.pending);
        if pending.get(call_id).is_some_and(|p| p.node_id == node_id)
            && let Some(p) = pending.remove(call_id)
        {
            let _ = p.reply.send(outcome);
        }
    }

    /// Asks the agent to stop a call; the agent answers it with Cancelled. False when no such call runs
    /// on that node.
    pub async fn cancel_call(&self, node_id: &str, call_id: &str) -> bool {
        if lock(&self.pending)
            .get(call_id)
            .is_none_or(|p| p.node_id != node_id)
        {
            return false;
        }
        let cancel = ToAgent::CancelAction {
            call_id: call_id.to_string(),
        };
        self.send(node_id, cancel).await
    }

    /// Gives up on a call locally (its caller left or its deadline passed) and tells the agent to stop it.
    /// Never waits, so it can run in a destructor; a full stream queue only loses the courtesy cancel,
    /// and the agent's own deadline still stops the call.
    pub fn abandon_call(&self, call_id: &str) {
        let node_id = lock(&self.pending).remove(call_id).map(|p| p.node_id);
        if let Some(tx) = node_id.and_then(|n| self.sender(&n)) {
            let cancel = ToAgent::CancelAction {
                call_id: call_id.to_string(),
            };
            let _ = tx.try_send(Box::new(cancel));
        }
    }

    // ---- dry runs ----

    /// Asks a node what it would change for `state_json`; the receiver gets its plan (JSON).
    pub async fn start_plan(
        &self,
        node_id: &str,
        state_json: String,
    ) -> Option<(String, oneshot::Receiver<String>)> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.plans).insert(request_id.clone(), (node_id.to_string(), tx));
        let req = ToAgent::PlanRequest {
            request_id: request_id.clone(),
            state_json,
        };
        if self.send(node_id, req).await {
            Some((request_id, rx))
        } else {
            lock(&self.plans).remove(&request_id);
            None
        }
    }

    pub fn finish_plan(&self, node_id: &str, request_id: &str, plan_json: String) {
        let mut plans = lock(&self.plans);
        if plans.get(request_id).is_some_and(|(n, _)| n == node_id)
            && let Some((_, tx)) = plans.remove(request_id)
        {
            let _ = tx.send(plan_json);
        }
    }

    pub fn forget_plan(&self, request_id: &str) {
        lock(&self.plans).remove(request_id);
    }

    // ---- sessions ----

    /// Creates (or replaces) the node's session for a plugin and returns its id; refused when the node
    /// already holds `MAX_SESSIONS_PER_NODE` sessions for other plugins.
    pub fn create_session(
        &self,
        node_id: &str,
        plugin: &str,
        interval: std::time::Duration,
        deadline: std::time::Duration,
    ) -> Result<String, SessionRejected> {
        let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let session_id = uuid::Uuid::new_v4().to_string();
        let info = SessionInfo {
            plugin: plugin.to_string(),
            session_id: session_id.clone(),
            state: SessionState::Pending,
            created_at: Utc::now(),
            last_update: None,
            seq: 0,
            deadline_misses: 0,
            interval_ms: millis(interval),
            deadline_ms: millis(deadline),
        };
        let mut sessions = lock(&self.sessions);
        let node = sessions.entry(node_id.to_string()).or_default();
        if node.len() >= MAX_SESSIONS_PER_NODE && node.get(plugin).is_none() {
            return Err(SessionRejected::TooMany);
        }
        node.insert(Session {
            info,
            history: History::default(),
        });
        Ok(session_id)
    }

    fn with_session<T>(
        &self,
        node_id: &str,
        plugin: &str,
        session_id: &str,
        f: impl FnOnce(&mut Session) -> T,
    ) -> Result<T, SessionRejected> {
        let mut sessions = lock(&self.sessions);
        match sessions.get_mut(node_id).and_then(|s| s.get_mut(plugin)) {
            Some(s) if s.info.session_id == session_id => Ok(f(s)),
            _ => Err(SessionRejected::Unknown(session_id.to_string())),
        }
    }

    /// Records a payload for a session this server knows.
    pub fn session_data(&self, node_id: &str, data: &SessionData) -> Result<(), SessionRejected> {
        if data.payload_json.len() > MAX_SESSION_PAYLOAD {
            return Err(SessionRejected::TooLarge(data.payload_json.len()));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&data.payload_json)
            .map_err(|_| SessionRejected::BadPayload)?;
        self.with_session(node_id, &data.plugin, &data.session_id, |s| {
            let now = Utc::now();
            s.info.state = SessionState::Active;
            s.info.last_update = Some(now);
            s.info.seq = data.seq;
            s.info.deadline_misses = data.deadline_misses;
            let payload = Payload {
                at: now,
                seq: data.seq,
                json: data.payload_json.as_str().into(),
            };
            s.history
                .push(payload, SESSION_HISTORY, MAX_SESSION_HISTORY_BYTES);
        })
    }

    pub fn session_status(
        &self,
        node_id: &str,
        status: &SessionStatus,
    ) -> Result<(), SessionRejected> {
        self.with_session(node_id, &status.plugin, &status.session_id, |s| {
            s.info.deadline_misses = status.deadline_misses;
        })
    }

    pub fn sessions(&self, node_id: &str) -> Vec<SessionInfo> {
        lock(&self.sessions)
            .get(node_id)
            .map(|s| s.iter().map(|s| s.info.clone()).collect())
            .unwrap_or_default()
    }

    pub fn session(&self, node_id: &str, plugin: &str) -> Option<SessionDetail> {
        lock(&self.sessions)
            .get(node_id)
            .and_then(|s| s.get(plugin))
            .map(|s| SessionDetail {
                info: s.info.clone(),
                payload: s.history.latest().map(parse),
            })
    }

    pub fn session_history(&self, node_id: &str, plugin: &str) -> Option<Vec<SessionSample>> {
        lock(&self.sessions)
            .get(node_id)
            .and_then(|s| s.get(plugin))
            .map(|s| {
                s.history
                    .samples()
                    .iter()
                    .map(|p| SessionSample {
                        at: p.at,
                        seq: p.seq,
                        payload: parse(p),
                    })
                    .collect()
            })
    }

    /// Forgets sessions (one plugin's, or all) and tells the agent, which recreates them.
    /// Returns how many were terminated.
    pub async fn terminate_sessions(
        &self,
        node_id: &str,
        plugin: Option<&str>,
        reason: &str,
    ) -> usize {
        let removed: Vec<(String, String)> = {
            let mut sessions = lock(&self.sessions);
            let Some(node) = sessions.get_mut(node_id) else {
                return 0;
            };
            let gone: Vec<Session> = match plugin {
                Some(p) => node.remove(p).into_iter().collect(),
                None => std::mem::take(&mut node.0),
            };
            gone.into_iter()
                .map(|s| (s.info.plugin, s.info.session_id))
                .collect()
        };
        let message = match plugin {
            Some(_) => removed.first().map(|(p, id)| ToAgent::TerminateSession {
                plugin: p.clone(),
                session_id: id.clone(),
                reason: reason.to_string(),
            }),
            None => Some(ToAgent::TerminateSession {
                plugin: String::new(),
                session_id: String::new(),
                reason: reason.to_string(),
            }),
        };
        if let Some(m) = message {
            self.send(node_id, m).await;
        }
        removed.len()
    }

    /// Tells the agent that data arrived for a session this server does not know, so it recreates it.
    pub async fn reject_session(&self, node_id: &str, plugin: &str, session_id: &str) {
        let m = ToAgent::TerminateSession {
            plugin: plugin.to_string(),
            session_id: session_id.to_string(),
            reason: "unknown session".to_string(),
        };
        self.send(node_id, m).await;
    }

    /// Forgets everything about a node (it was deleted).
    pub fn forget(&self, node_id: &str) {
        lock(&self.sessions).remove(node_id);
    }
}

/// The margin the server waits beyond a call's deadline, for the agent's answer to travel back.
const REPLY_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Gives up on an action call when its caller goes away before the answer.
struct CallGuard<'a> {
    links: &'a Links,
    call_id: String,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.links.abandon_call(&self.call_id);
        }
    }
}

impl Links {
    /// Asks a node attached here what it would change for `state_json`.
    async fn plan(&self, node_id: &str, state_json: String) -> Result<String, NoPlan> {
        let Some((request_id, rx)) = self.start_plan(node_id, state_json).await else {
            return Err(NoPlan("not connected".into()));
        };
        let answer = tokio::time::timeout(PLAN_PATIENCE, rx).await;
        self.forget_plan(&request_id);
        match answer {
            Ok(Ok(json)) => Ok(json),
            _ => Err(NoPlan("no plan in time".into())),
        }
    }

    /// Runs a call on a node attached here and waits for its outcome (or gives up with the caller).
    async fn run_call(&self, node_id: &str, call: &Call) -> Result<Value, ActionError> {
        let reply = self
            .start_call(
                node_id,
                &call.call_id,
                &call.name,
                &call.args,
                call.deadline_ms,
                &call.signature_json,
            )
            .await?;
        let mut guard = CallGuard {
            links: self,
            call_id: call.call_id.clone(),
            done: false,
        };
        let deadline = std::time::Duration::from_millis(call.deadline_ms);
        // The agent enforces the deadline; the margin covers the trip there and back.
        let outcome = match tokio::time::timeout(deadline.saturating_add(REPLY_MARGIN), reply).await
        {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ActionError::NodeUnavailable),
            Err(_) => {
                self.abandon_call(&call.call_id);
                Err(ActionError::DeadlineExceeded {
                    deadline_ms: call.deadline_ms,
                })
            }
        };
        guard.done = true;
        outcome
    }
}

impl Reach for Links {
    async fn holds(&self, node_id: &str) -> bool {
        self.is_attached(node_id)
    }

    async fn send(&self, node_id: &str, msg: ToAgent) -> bool {
        Links::send(self, node_id, msg).await
    }

    async fn ask_json(&self, node_id: &str, ask: Ask) -> Option<Value> {
        if !self.is_attached(node_id) {
            return None;
        }
        Some(match ask {
            Ask::Actions => json!(self.actions(node_id)?),
            Ask::Sessions => json!(self.sessions(node_id)),
            Ask::Session { plugin } => json!(self.session(node_id, &plugin)),
            Ask::SessionHistory { plugin } => json!(self.session_history(node_id, &plugin)),
            Ask::TerminateSessions { plugin } => json!(
                self.terminate_sessions(node_id, plugin.as_deref(), "terminated by an operator")
                    .await
            ),
            Ask::SessionMessage { plugin, body_json } => {
                let sent = match self.session(node_id, &plugin) {
                    None => None,
                    Some(detail) => {
                        let m = ToAgent::SessionMessage {
                            plugin,
                            session_id: detail.info.session_id,
                            body_json,
                        };
                        Some(Links::send(self, node_id, m).await)
                    }
                };
                json!(sent)
            }
            Ask::Plan { state_json } => json!(self.plan(node_id, state_json).await),
            Ask::CancelCall { call_id } => json!(self.cancel_call(node_id, &call_id).await),
        })
    }

    /// `None` when the node is not attached here; an action it does not offer is refused naming those it does.
    async fn call(&self, node_id: &str, call: &Call) -> Option<Result<Value, ActionError>> {
        let known = self.actions(node_id)?;
        if !known.iter().any(|a| a.name == call.name) {
            return Some(Err(ActionError::UnknownAction {
                name: call.name.clone(),
                known: known.into_iter().map(|a| a.name).collect(),
            }));
        }
        Some(self.run_call(node_id, call).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(plugin: &str, session_id: &str, seq: u64) -> SessionData {
        SessionData {
            plugin: plugin.into(),
            session_id: session_id.into(),
            seq,
            payload_json: format!("{{\"seq\":{seq}}}"),
            deadline_misses: 0,
        }
    }

    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);
    const TENTH: std::time::Duration = std::time::Duration::from_millis(100);

    #[test]
    fn sessions_accept_only_their_own_data_and_bound_history() {
        let links = Links::default();
        assert_eq!(
            links.session_data("n", &data("p", "nope", 0)),
            Err(SessionRejected::Unknown("nope".into()))
        );
        let id = links.create_session("n", "p", SECOND, TENTH).unwrap();
        assert_eq!(links.sessions("n")[0].state, SessionState::Pending);
        for seq in 0..(SESSION_HISTORY as u64 + 50) {
            links.session_data("n", &data("p", &id, seq)).unwrap();
        }
        let detail = links.session("n", "p").unwrap();
        assert_eq!(detail.info.state, SessionState::Active);
        assert_eq!(detail.info.seq, SESSION_HISTORY as u64 + 49);
        assert_eq!(
            links.session_history("n", "p").unwrap().len(),
            SESSION_HISTORY
        );
        // A new session for the plugin replaces the old; the old id is now unknown.
        let newer = links.create_session("n", "p", SECOND, TENTH).unwrap();
        assert_ne!(newer, id);
        assert!(links.session_data("n", &data("p", &id, 150)).is_err());
        let mut bad = data("p", &newer, 0);
        bad.payload_json = "{".into();
        assert_eq!(
            links.session_data("n", &bad),
            Err(SessionRejected::BadPayload)
        );
    }

    #[test]
    fn a_node_holds_a_bounded_number_of_sessions_and_payload_bytes() {
        let links = Links::default();
        for i in 0..MAX_SESSIONS_PER_NODE {
            links
                .create_session("n", &format!("p{i}"), SECOND, TENTH)
                .unwrap();
        }
        assert_eq!(
            links.create_session("n", "one-more", SECOND, TENTH),
            Err(SessionRejected::TooMany)
        );
        // A plugin it has may still replace its session, and other nodes are not held up.
        let id = links.create_session("n", "p0", SECOND, TENTH).unwrap();
        assert!(
            links
                .create_session("other", "one-more", SECOND, TENTH)
                .is_ok()
        );

        let mut big = data("p0", &id, 0);
        big.payload_json = format!("\"{}\"", "x".repeat(MAX_SESSION_PAYLOAD));
        assert_eq!(
            links.session_data("n", &big),
            Err(SessionRejected::TooLarge(MAX_SESSION_PAYLOAD + 2))
        );
        // Payloads just under the limit: the history keeps what fits in its bytes, the latest included.
        big.payload_json = format!("\"{}\"", "x".repeat(MAX_SESSION_PAYLOAD - 2));
        for seq in 0..SESSION_HISTORY as u64 {
            big.seq = seq;
            links.session_data("n", &big).unwrap();
        }
        let kept = links.session_history("n", "p0").unwrap();
        assert_eq!(kept.len(), MAX_SESSION_HISTORY_BYTES / MAX_SESSION_PAYLOAD);
        assert_eq!(kept.last().unwrap().seq, SESSION_HISTORY as u64 - 1);
    }

    #[tokio::test]
    async fn calls_fail_when_their_node_goes_away() {
        let links = Links::default();
        assert_eq!(
            links
                .start_call("n", "c1", "ping", &Value::Null, 1000, "")
                .await
                .unwrap_err(),
            ActionError::NodeUnavailable
        );
        let (tx, mut rx) = mpsc::channel(4);
        let serial = links.attach("n", tx, vec![]);
        let reply = links
            .start_call("n", "c1", "ping", &Value::Null, 1000, "")
            .await
            .unwrap();
        assert!(matches!(
            rx.recv().await.map(|m| *m),
            Some(ToAgent::ActionCall(_))
        ));
        // Another node cannot answer it.
        links.finish_call("other", "c1", Ok(Value::Bool(true)));
        links.detach("n", serial);
        assert_eq!(reply.await.unwrap(), Err(ActionError::NodeUnavailable));
    }
}
