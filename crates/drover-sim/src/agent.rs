//! One simulated agent: its identity in its own state dir (enrolled once, then reused), its own mTLS
//! connection and `Attach` stream, opened and classified by the agent library's `link::attach`, and a
//! single task that answers the server and keeps one timer for everything periodic. Reconnects with the
//! agent's own full-jitter backoff. An agent of the offline share (`--offline-share`) enrolls but never
//! attaches, or leaves for good after `--offline-after`.

use std::sync::Arc;
use std::time::Duration;

use drover_agent::backoff::Backoff;
use drover_agent::converge::{
    FetchError, Fetcher, RECONCILING_AFTER, report_message, verified_inline,
};
use drover_agent::identity::{self, Identity, IdentityError};
use drover_agent::link::{
    self, Attached, HelloInfo, SessionEnd, describe_transport_error, refused_or_broken,
};
use drover_agent::servers::Servers;
use drover_proto::v1::{
    self, AgentMessage, CreateSession, ServerMessage, SessionData, agent_message::Msg,
    server_message,
};
use drover_types::Labels;
use drover_types::action::ActionError;
use drover_types::manifest::NodeConvergence;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::config::Config;
use crate::desired::{self, Taken};
use crate::faults::{Faults, Profile};
use crate::payloads;
use crate::stats::{Connected, Stats};
use crate::tasks::TaskTable;

/// Pause before asking for a new session after the server ended one (as the real agent).
const RECREATE_DELAY: Duration = Duration::from_millis(500);
/// Retry of content that could not be fetched (the real agent's first resource backoff).
const FETCH_RETRY: Duration = Duration::from_secs(10);

/// Runs one agent for the life of the process.
pub async fn run(index: u32, config: Arc<Config>) {
    Stats::add(&config.stats.started);
    let begin = Instant::now();
    let name = payloads::hostname(index);
    let profile = config.profile(index);
    let Some(identity) = identity(index, &name, &config, &profile.labels).await else {
        Stats::add(&config.stats.failed);
        return;
    };
    Stats::add(&config.stats.enrolled);
    let mut servers = match Servers::new(&identity, &config.servers) {
        Ok(e) => e,
        Err(e) => {
            config.stats.error(format!("{name}: {e}"));
            Stats::add(&config.stats.failed);
            return;
        }
    };
    // The endpoint holds what TLS needs; the PEM text is not kept per agent.
    drop(identity);
    let offline = config.strata.offline(index);
    if offline && config.offline_after.is_zero() {
        // Enrolled, so the server knows the node; never attached.
        Stats::add(&config.stats.offline);
        return;
    }
    let mut agent = SimAgent {
        index,
        mine: config.rules_for(&profile),
        profile,
        config: config.clone(),
        tasks: TaskTable::new(config.task_output.clone()),
        desired: None,
        fetched: Vec::new(),
        last_report: None,
        beats: 0,
        versions: vec![0; config.plugins.len()],
    };
    if offline {
        // Attached for a while like any other, then gone: its stream drops with the future.
        let _ = tokio::time::timeout_at(begin + config.offline_after, agent.attached(&mut servers))
            .await;
        // Gone for good: it no longer counts as holding or failing a marked revision.
        if let Some(d) = &agent.desired {
            Stats::flag(&config.stats.marked, d.marked, false);
            Stats::flag(&config.stats.failing, d.failing, false);
        }
        Stats::add(&config.stats.offline);
        return;
    }
    agent.attached(&mut servers).await;
}

impl SimAgent {
    /// Stays attached, reconnecting after each session ends, for as long as it is polled.
    async fn attached(&mut self, servers: &mut Servers) {
        let config = self.config.clone();
        let name = payloads::hostname(self.index);
        let mut backoff = Backoff::default().with_cap(config.reconnect_cap);
        loop {
            let end = self.session(servers.endpoint(), &mut backoff).await;
            let delay = backoff.next_delay();
            // As the real agent: the next attempt goes to the next replica.
            servers.advance();
            tracing::debug!(agent = %name, "link down: {end}; retrying in {delay:.1?}");
            if !matches!(end, SessionEnd::Closed) {
                config.stats.error(format!("{name}: {end}"));
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// The identity from the agent's state dir, enrolling first when there is none. `None`: given up.
async fn identity(index: u32, name: &str, config: &Config, labels: &Labels) -> Option<Identity> {
    let dir = config.agent_dir(index);
    match Identity::load(&dir) {
        Ok(Some(identity)) => return Some(identity),
        Ok(None) => {}
        Err(e) => {
            config.stats.error(format!("{name}: {e}"));
            return None;
        }
    }
    let (Some(token), false) = (&config.token, config.servers.is_empty()) else {
        config.stats.error(format!(
            "{name} is not enrolled yet: give --token and --server"
        ));
        return None;
    };
    let mut backoff = Backoff::default();
    let mut attempt = 0usize;
    loop {
        let server = &config.servers[attempt % config.servers.len()];
        attempt = attempt.wrapping_add(1);
        match identity::enroll(&dir, server, token, name, labels).await {
            Ok(identity) => return Some(identity),
            // The server may be starting or busy; everything else is final, as for the real agent.
            Err(IdentityError::Unreachable { message, .. }) => {
                config
                    .stats
                    .error(format!("{name}: cannot enroll yet: {message}"));
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                config.stats.error(format!("{name}: {e}"));
                return None;
            }
        }
    }
}

/// What outlives a connection.
struct SimAgent {
    index: u32,
    /// Its arch and labels.
    profile: Profile,
    /// For each `--fail-when` rule, whether this agent is in its stratum.
    mine: Vec<bool>,
    config: Arc<Config>,
    tasks: TaskTable,
    desired: Option<Taken>,
    /// Content already fetched for the current desired state (a node keeps it on disk).
    fetched: Vec<String>,
    last_report: Option<NodeConvergence>,
    beats: u32,
    /// Each plugin's payload version: a new version is a changed payload.
    versions: Vec<u32>,
}

enum SessionState {
    /// CreateSession sent, no id yet.
    Pending,
    Active {
        id: String,
        seq: u64,
        sent: Option<u32>,
    },
    /// Terminated by the server; ask again at `due`.
    Waiting,
}

struct Session {
    state: SessionState,
    due: Option<Instant>,
}

type Fetched = Vec<(String, Result<(), FetchError>)>;

/// One connection's state.
struct Stream {
    tx: mpsc::Sender<AgentMessage>,
    /// Blobs come over this very stream, as for the real agent.
    blobs: Arc<Fetcher>,
    sessions: Vec<Session>,
    beat_due: Instant,
    fetch: Option<JoinHandle<Fetched>>,
    fetch_retry: Option<Instant>,
    /// When to report a desired state's resources Reconciling if its content is still being fetched (as the
    /// real agent does with a pass that takes longer than `RECONCILING_AFTER`).
    reconciling_due: Option<Instant>,
}

impl Stream {
    async fn send(&self, m: Msg) {
        // A closed stream shows up on the inbound side, which ends the session.
        let _ = self.tx.send(AgentMessage { msg: Some(m) }).await;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(f) = self.fetch.take() {
            f.abort();
        }
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.95..1.05))
}

async fn wait_fetch(fetch: &mut Option<JoinHandle<Fetched>>) -> Fetched {
    match fetch {
        Some(handle) => handle.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

impl SimAgent {
    fn hello(&self) -> HelloInfo {
        HelloInfo {
            capabilities: payloads::capabilities(self.index, &self.profile.arch),
            metrics: payloads::metrics(self.index, self.beats),
            labels: self.profile.labels.clone(),
            heartbeat_interval: self.config.heartbeat,
            // The one action the simulated agents really run.
            actions: drover_agent::actions::advertised()
                .into_iter()
                .filter(|a| a.name == "ping")
                .collect(),
            daemon_plugins: self
                .config
                .plugins
                .iter()
                .map(|p| p.name.to_string())
                .collect(),
            open_tasks: self.tasks.open_ids(),
        }
    }

    async fn session(&mut self, endpoint: &Endpoint, backoff: &mut Backoff) -> SessionEnd {
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Connect(describe_transport_error(&e)),
        };
        let Attached {
            tx, mut inbound, ..
        } = match link::attach(channel, self.hello().into_hello()).await {
            Ok(a) => a,
            Err(end) => return end,
        };
        backoff.reset();
        let config = self.config.clone();
        let _connected = Connected::new(&config.stats);
        let now = Instant::now();
        let blobs = Arc::new(Fetcher::default());
        blobs.connected(tx.clone());
        let mut stream = Stream {
            tx,
            blobs,
            sessions: Vec::new(),
            beat_due: now + jittered(config.heartbeat),
            fetch: None,
            fetch_retry: None,
            reconciling_due: None,
        };
        // Like the real agent on a new stream: unacknowledged task results, the last report, sessions.
        for m in self.tasks.resend_all() {
            stream.send(m).await;
        }
        if let Some(r) = &self.last_report {
            let _ = stream.tx.send(report_message(r)).await;
        }
        for plugin in &config.plugins {
            stream.sessions.push(Session {
                state: SessionState::Pending,
                due: None,
            });
            stream.send(create_session(plugin)).await;
        }
        loop {
            let wake = [
                Some(stream.beat_due),
                stream.sessions.iter().filter_map(|s| s.due).min(),
                self.tasks.next_due(),
                stream.fetch_retry,
                stream.reconciling_due,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(stream.beat_due);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => self.timers(&mut stream).await,
                msg = inbound.message() => match msg {
                    Ok(Some(ServerMessage { msg: Some(m) })) => self.dispatch(m, &mut stream).await,
                    Ok(Some(ServerMessage { msg: None })) => {}
                    Ok(None) => return SessionEnd::Closed,
                    Err(status) => return refused_or_broken(&status),
                },
                done = wait_fetch(&mut stream.fetch) => {
                    stream.fetch = None;
                    self.fetched(done, &mut stream).await;
                }
            }
        }
    }

    /// Whatever came due: the heartbeat, session payloads, delayed task exits, a content retry.
    async fn timers(&mut self, stream: &mut Stream) {
        let now = Instant::now();
        let stats = &self.config.stats;
        if stream.beat_due <= now {
            self.beats = self.beats.wrapping_add(1);
            let _ = stream
                .tx
                .send(link::heartbeat(payloads::metrics(self.index, self.beats)))
                .await;
            Stats::add(&stats.heartbeats);
            stream.beat_due = now + jittered(self.config.heartbeat);
        }
        for i in 0..stream.sessions.len() {
            if stream.sessions[i].due.is_none_or(|d| d > now) {
                continue;
            }
            let plugin = &self.config.plugins[i];
            let session = &mut stream.sessions[i];
            session.due = None;
            let message = match &mut session.state {
                SessionState::Waiting => {
                    session.state = SessionState::Pending;
                    Some(create_session(plugin))
                }
                SessionState::Pending => None,
                SessionState::Active { id, seq, sent } => {
                    session.due = Some(now + plugin.interval);
                    let version = &mut self.versions[i];
                    if sent.is_some() && rand::random_bool(self.config.change_probability) {
                        *version = version.wrapping_add(1);
                    }
                    // Only a changed payload travels, as with the real plugins.
                    (*sent != Some(*version)).then(|| {
                        let data = SessionData {
                            plugin: plugin.name.to_string(),
                            session_id: id.clone(),
                            seq: *seq,
                            payload_json: payloads::session_payload(
                                plugin.name,
                                self.index,
                                *version,
                            )
                            .to_string(),
                            deadline_misses: 0,
                        };
                        *seq += 1;
                        *sent = Some(*version);
                        Stats::add(&stats.session_data);
                        Msg::SessionData(data)
                    })
                }
            };
            if let Some(m) = message {
                stream.send(m).await;
            }
        }
        for m in self.tasks.finish_due(now) {
            stream.send(m).await;
        }
        if stream.fetch_retry.is_some_and(|t| t <= now) {
            stream.fetch_retry = None;
            self.start_fetch(stream).await;
        }
        if stream.reconciling_due.is_some_and(|t| t <= now) {
            stream.reconciling_due = None;
            if let Some(report) = self.desired.as_ref().map(|d| d.reconciling()) {
                self.report(report, stream).await;
            }
        }
    }

    async fn dispatch(&mut self, m: server_message::Msg, stream: &mut Stream) {
        use server_message::Msg as M;
        let stats = &self.config.stats;
        match m {
            M::BlobData(d) => stream.blobs.data(d),
            M::Welcome(_) | M::CancelAction(_) | M::SessionMessage(_) => {}
            M::ActionCall(call) => {
                Stats::add(&stats.actions);
                let result = if call.name == "ping" {
                    let (_keep, cancel) = tokio::sync::oneshot::channel();
                    let deadline = Duration::from_millis(call.deadline_ms.max(1));
                    drover_agent::actions::run(
                        self.config.action_ctx.clone(),
                        "ping",
                        serde_json::Value::Null,
                        deadline,
                        cancel,
                    )
                    .await
                } else {
                    Err(ActionError::UnknownAction {
                        name: call.name.clone(),
                        known: vec!["ping".into()],
                    })
                };
                let _ = stream
                    .tx
                    .send(link::action_result(call.call_id, result))
                    .await;
            }
            M::SessionCreated(c) => {
                let now = Instant::now();
                let pending = self
                    .config
                    .plugins
                    .iter()
                    .zip(stream.sessions.iter_mut())
                    .find(|(p, s)| p.name == c.plugin && matches!(s.state, SessionState::Pending));
                if let Some((_, session)) = pending {
                    session.state = SessionState::Active {
                        id: c.session_id,
                        seq: 0,
                        sent: None,
                    };
                    session.due = Some(now);
                }
            }
            M::TerminateSession(t) => {
                let again = Instant::now() + RECREATE_DELAY;
                for (plugin, session) in self.config.plugins.iter().zip(stream.sessions.iter_mut())
                {
                    let hit = match &session.state {
                        SessionState::Active { id, .. } => {
                            (t.plugin.is_empty() || t.plugin == plugin.name)
                                && (t.session_id.is_empty() || t.session_id == *id)
                        }
                        _ => false,
                    };
                    if hit {
                        session.state = SessionState::Waiting;
                        session.due = Some(again);
                    }
                }
            }
            M::TaskStart(t) => {
                let sent = self.tasks.start(
                    &t.task_id,
                    &t.spec_json,
                    Instant::now(),
                    self.config.task_delay,
                );
                for m in sent {
                    stream.send(m).await;
                }
            }
            M::TaskCancel(t) => {
                for m in self.tasks.cancel(&t.task_id) {
                    stream.send(m).await;
                }
            }
            M::TaskAck(a) => {
                if self.tasks.acknowledged(&a.task_id, a.exit) {
                    Stats::add(&stats.tasks_finished);
                }
            }
            M::DesiredState(d) => self.desired(d, stream).await,
            M::PlanRequest(p) => {
                let plan = v1::PlanResult {
                    request_id: p.request_id,
                    plan_json: "[]".into(),
                };
                stream.send(Msg::PlanResult(plan)).await;
            }
        }
    }

    async fn desired(&mut self, update: v1::DesiredStateUpdate, stream: &mut Stream) {
        let inline: Vec<&v1::InlineBlob> = verified_inline(&update.blobs).collect();
        let faults = Faults {
            rules: &self.config.fail_rules,
            mine: &self.mine,
        };
        let taken = match desired::take(&update.state_json, &inline, faults) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(agent = self.index, "{e}");
                return;
            }
        };
        if let Some(current) = &self.desired {
            // An older state arriving late, or the same one again (resent on every attach).
            if taken.generation < current.generation || *current == taken {
                return;
            }
        }
        stream.reconciling_due = (self.last_report.as_ref().map(|r| r.observed_generation)
            != Some(taken.generation)
            && !taken.statuses.is_empty())
        .then(|| Instant::now() + RECONCILING_AFTER);
        self.fetched.retain(|sha| taken.blobs.contains(sha));
        // Content sent along needs no fetch, as on a real agent (which keeps it in its cache).
        for blob in inline {
            if taken.blobs.contains(&blob.sha256) && !self.fetched.contains(&blob.sha256) {
                Stats::add(&self.config.stats.blobs_inline);
                self.fetched.push(blob.sha256.clone());
            }
        }
        let stats = &self.config.stats;
        let (was_marked, was_failing) = self
            .desired
            .as_ref()
            .map_or((false, false), |d| (d.marked, d.failing));
        Stats::flag(&stats.marked, was_marked, taken.marked);
        Stats::flag(&stats.failing, was_failing, taken.failing);
        if taken.marked && !was_marked {
            Stats::add(&stats.marked_total);
        }
        if taken.marked != was_marked || taken.failing != was_failing {
            // Which nodes took or left a marked revision, and when (RUST_LOG=drover_sim=debug).
            tracing::debug!(
                agent = %payloads::hostname(self.index),
                generation = taken.generation,
                marked = taken.marked,
                failing = taken.failing,
                "a marked desired state came or went"
            );
        }
        self.desired = Some(taken);
        if let Some(f) = stream.fetch.take() {
            f.abort();
        }
        stream.fetch_retry = None;
        self.start_fetch(stream).await;
    }

    /// Fetches what the desired state needs and is not here yet, or reports at once when nothing is.
    async fn start_fetch(&mut self, stream: &mut Stream) {
        let Some(taken) = &self.desired else {
            return;
        };
        let missing: Vec<String> = taken
            .blobs
            .iter()
            .filter(|sha| !self.fetched.contains(sha))
            .cloned()
            .collect();
        if missing.is_empty() {
            let report = taken.report(&[]);
            stream.reconciling_due = None;
            self.report(report, stream).await;
            return;
        }
        let blobs = stream.blobs.clone();
        // Over the agent's own stream: a fleet fetching at once must not double its sockets.
        stream.fetch = Some(tokio::spawn(async move {
            let mut results = Vec::new();
            for sha in missing {
                let r = blobs.fetch(&sha).await.map(drop);
                results.push((sha, r));
            }
            results
        }));
    }

    async fn fetched(&mut self, results: Fetched, stream: &mut Stream) {
        let stats = &self.config.stats;
        let mut failed = Vec::new();
        for (sha, r) in results {
            match r {
                Ok(()) => {
                    Stats::add(&stats.blobs_fetched);
                    self.fetched.push(sha);
                }
                Err(e) => {
                    Stats::add(&stats.blob_errors);
                    stats.error(format!("{}: {e}", payloads::hostname(self.index)));
                    failed.push((sha, e));
                }
            }
        }
        let Some(taken) = &self.desired else {
            return;
        };
        let report = taken.report(&failed);
        stream.reconciling_due = None;
        if !failed.is_empty() {
            stream.fetch_retry = Some(Instant::now() + FETCH_RETRY);
        }
        self.report(report, stream).await;
    }

    /// Sends a report when it differs from the last one sent.
    async fn report(&mut self, report: NodeConvergence, stream: &Stream) {
        if self.last_report.as_ref() == Some(&report) {
            return;
        }
        let _ = stream.tx.send(report_message(&report)).await;
        Stats::add(&self.config.stats.reports);
        self.last_report = Some(report);
    }
}

fn create_session(plugin: &crate::config::Plugin) -> Msg {
    Msg::CreateSession(CreateSession {
        plugin: plugin.name.to_string(),
        interval_ms: plugin.interval.as_millis() as u64,
        deadline_ms: plugin.deadline.as_millis() as u64,
    })
}
