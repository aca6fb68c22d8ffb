//! Tasks on the server: targeting, dispatch with a parallelism limit, in-order output from each node
//! (reordered after reconnects, stored once), final states, lost runs, cancellation, redelivery and retention.
//!
//! Every change of a run's state is a guarded transition in the store (`TaskStore::transition_runs`): it names
//! the states it leaves, and a final state is never left. Nothing here writes a run from a copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use drover_types::Node;
use drover_types::audit::AuditAction;
use drover_types::node::HTTP_NODE_TAKES_NO_WORK;
use drover_types::signing::CommandSignature;
use drover_types::task::{
    AuditEntry, CreateTask, LateExit, MAX_CHUNK_BYTES, OutputChunk, RunState, Stream, Target, Task,
    TaskRun, TaskSpec,
};
use tokio::sync::broadcast;

use super::FleetError;
use super::fold::{Fold, FoldFailure, Written};
use crate::reach::Reach;
use crate::reach::message::{Chunk, TaskExit, TaskOutput, TaskStart, ToAgent};
use crate::store::{
    OpenRun, OutputRecord, RunPatch, RunQuery, SERVER_ONLY_CANCEL, SilentRun, StoredOutput,
};
use crate::sync::lock;

/// Something that happened to a task, for live followers.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// Output was stored: followers read it from the store, where it carries its resume point (the
    /// event itself carries no bytes, so a burst of output is neither copied per follower nor encoded twice).
    Output,
    Exit(TaskRun),
    Done,
    /// Another replica stored output or a run's end: the store has news (`drover server --nats`).
    Stored,
}

/// States a run can still leave.
const OPEN: &[RunState] = &[RunState::Pending, RunState::Running];
const PENDING: &[RunState] = &[RunState::Pending];
const RUNNING: &[RunState] = &[RunState::Running];

/// Out-of-order output held per run before it can be stored in order, in bytes (each chunk also counts
/// `HELD_OVERHEAD`, so empty chunks cost too). A real agent's reordering is its live output overtaking
/// its resend after a reconnect; what passes this is dropped and asked for again (`Progress::dropped`).
pub const MAX_HELD_BYTES_PER_RUN: usize = 4 << 20;
/// The same, for all of one node's runs together: a node cannot multiply the bound by running many tasks.
pub const MAX_HELD_BYTES_PER_NODE: usize = 8 << 20;
/// What one held chunk costs besides its bytes (its map entry), for the bounds above.
const HELD_OVERHEAD: usize = 64;
/// Output chunks between acknowledgements to the agent.
const ACK_EVERY: u64 = 1024;
/// Events a follower may fall behind by before it re-reads the store instead.
const FOLLOWER_BACKLOG: usize = 1024;
/// Pause before recounting a task's open runs while its runs keep ending.
const RECHECK_AFTER: Duration = Duration::from_millis(20);
/// How long a start may wait for room in one agent's stream before that node counts as unreachable.
const SEND_PATIENCE: Duration = Duration::from_secs(5);
/// Starts in flight at once for one task.
const SENDS_AT_ONCE: usize = 256;

#[derive(Default)]
struct Progress {
    next_seq: u64,
    held: BTreeMap<u64, (Stream, Vec<u8>)>,
    /// Bytes in `held`, counted as the bounds count them.
    held_bytes: usize,
    /// The lowest and highest seq dropped for want of room, until they came again or were asked for.
    dropped: Option<(u64, u64)>,
    /// The highest seq received.
    seen: u64,
    /// When output was asked for again: the highest seq received then, which the agent's resend covers.
    covered: Option<u64>,
    exit: Option<TaskExit>,
}

/// The runs' ordering state, and what each node's runs hold out of order.
#[derive(Default)]
struct Ordering {
    runs: HashMap<(String, String), Progress>,
    held_by_node: HashMap<String, usize>,
}

impl Ordering {
    fn get_mut(&mut self, key: &(String, String)) -> Option<&mut Progress> {
        self.runs.get_mut(key)
    }

    fn contains_key(&self, key: &(String, String)) -> bool {
        self.runs.contains_key(key)
    }

    fn get(&self, key: &(String, String)) -> Option<&Progress> {
        self.runs.get(key)
    }

    fn insert(&mut self, key: (String, String), p: Progress) {
        if let Some(old) = self.runs.insert(key.clone(), p) {
            self.release(&key.1, old.held_bytes);
        }
    }

    fn remove(&mut self, key: &(String, String)) -> Option<Progress> {
        let p = self.runs.remove(key)?;
        self.release(&key.1, p.held_bytes);
        Some(p)
    }

    /// Takes a node's chunks for a run: in order from `next_seq` they are ready to store, later ones are
    /// held within the bounds, and what passes them is dropped. `None` when the run has no ordering here.
    fn take(&mut self, key: &(String, String), chunks: Vec<Chunk>) -> Option<Ordered> {
        let p = self.runs.get_mut(key)?;
        let node_held = self.held_by_node.entry(key.1.clone()).or_default();
        let mut ready = Vec::new();
        for c in chunks {
            let stream = c.stream;
            p.seen = p.seen.max(c.seq);
            if c.seq < p.next_seq || p.held.contains_key(&c.seq) {
                // Sent again (a resend after a reconnect): already stored or held.
                continue;
            }
            if c.seq == p.next_seq {
                ready.push((c.seq, stream, c.data));
                p.next_seq += 1;
                while let Some((stream, data)) = p.held.remove(&p.next_seq) {
                    let cost = data.len() + HELD_OVERHEAD;
                    p.held_bytes = p.held_bytes.saturating_sub(cost);
                    *node_held = node_held.saturating_sub(cost);
                    ready.push((p.next_seq, stream, data));
                    p.next_seq += 1;
                }
                continue;
            }
            let cost = c.data.len() + HELD_OVERHEAD;
            if p.held_bytes + cost > MAX_HELD_BYTES_PER_RUN
                || *node_held + cost > MAX_HELD_BYTES_PER_NODE
            {
                p.dropped = Some(match p.dropped {
                    Some((lo, hi)) => (lo.min(c.seq), hi.max(c.seq)),
                    None => (c.seq, c.seq),
                });
                continue;
            }
            p.held_bytes += cost;
            *node_held += cost;
            p.held.insert(c.seq, (stream, c.data));
        }
        if *node_held == 0 {
            self.held_by_node.remove(&key.1);
        }
        // Dropped output is asked for once it blocks the run: nothing is held before it (what is held
        // drains first), and no resend asked for earlier is still to bring it. One ask at a time: a
        // resend comes in order from the start, so each ask moves the run past what it covers.
        let ask_again = match p.dropped {
            Some((_, hi)) if hi < p.next_seq => {
                // Everything dropped came again.
                p.dropped = None;
                false
            }
            Some((lo, _)) => {
                let resend_due = p.covered.is_some_and(|c| p.next_seq <= c);
                let blocks = p.held.keys().next_back().is_none_or(|&last| lo < last);
                let ask = !resend_due && blocks;
                if ask {
                    p.covered = Some(p.seen);
                    p.dropped = None;
                }
                ask
            }
            None => false,
        };
        Some(Ordered { ready, ask_again })
    }

    fn release(&mut self, node_id: &str, bytes: usize) {
        if let Some(n) = self.held_by_node.get_mut(node_id) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                self.held_by_node.remove(node_id);
            }
        }
    }
}

/// What a node's output did to its run's ordering.
struct Ordered {
    /// Chunks now next in order, to store.
    ready: Vec<(u64, Stream, Vec<u8>)>,
    /// Some output was dropped for want of room and everything before it is stored: ask the agent for
    /// its unacknowledged output again.
    ask_again: bool,
}

/// What the audit log says of a task; kept while its runs finish so each exit costs no task read.
struct TaskMeta {
    created_by: String,
    summary: String,
    max_parallel: Option<u32>,
    spec_json: Arc<str>,
    /// The operator's signature, as the agent checks it; empty when unsigned.
    signature_json: Arc<str>,
}

/// Live task state: per-run ordering, the followers' channels, and the tasks being finished.
#[derive(Default)]
pub struct TaskLive {
    progress: Mutex<Ordering>,
    /// Only while someone follows the task: a task nobody watches costs no channel.
    followers: Mutex<HashMap<String, broadcast::Sender<TaskEvent>>>,
    /// Filled once per task however many runs end at once: one read, not one per run.
    meta: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<TaskMeta>>>>>,
    /// Tasks whose end is being checked: `true` when another run ended meanwhile (check again).
    checks: Mutex<HashMap<String, bool>>,
    /// Dispatch of tasks with a parallelism limit, one at a time, so the limit holds under concurrent exits.
    pump: tokio::sync::Mutex<()>,
    /// Tasks whose pokes from other replicas this replica listens for (while followed here).
    watches: Mutex<std::collections::HashSet<String>>,
    /// Output inserts, folded per task.
    output: Fold<OutputRecord, ()>,
    /// Runs' ends as agents report them, folded per task: (node, patch) -> the run, when it was open.
    ends: Fold<(String, RunPatch), Option<TaskRun>>,
    /// Audit entries of runs' ends, folded per task.
    audits: Fold<AuditEntry, ()>,
}

/// Tasks: targeting, dispatch, each node's output in order, ends, cancellation, redelivery, retention.
pub struct Tasks {
    pub(super) store: Arc<dyn crate::store::TasksStore>,
    pub(super) config: Arc<super::FleetConfig>,
    pub(super) route: Arc<crate::reach::Route>,
    pub(super) access: Arc<super::Access>,
    pub(super) nodes: Arc<super::Nodes>,
    pub(super) live: TaskLive,
}

impl TaskLive {
    /// Marks `task_id` as listened for; false when it already was.
    pub(super) fn start_watch(&self, task_id: &str) -> bool {
        lock(&self.watches).insert(task_id.to_string())
    }

    /// Whether someone here still follows `task_id`; when not, the listener is unmarked (under the
    /// followers' lock, so a follower that subscribes meanwhile starts a new one).
    pub(super) fn keep_watching(&self, task_id: &str) -> bool {
        let followers = lock(&self.followers);
        let followed = followers
            .get(task_id)
            .is_some_and(|tx| tx.receiver_count() > 0);
        if !followed {
            lock(&self.watches).remove(task_id);
        }
        followed
    }
}

pub fn chunk(node_id: &str, node_name: &str, seq: u64, stream: u8, data: Vec<u8>) -> OutputChunk {
    // Text takes the bytes over without a copy.
    let (text, base64) = match String::from_utf8(data) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(drover_types::base64::encode(e.as_bytes()))),
    };
    OutputChunk {
        node_id: node_id.to_string(),
        node_name: node_name.to_string(),
        seq,
        stream: if stream == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        },
        text,
        base64,
    }
}

/// How the store numbers an output stream (1 stdout, 2 stderr), as `chunk` reads it back.
fn stream_code(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    }
}

/// The state an agent's exit puts a run in: only what an agent may report; anything else is an Error.
fn reported_state(exit: &TaskExit) -> RunState {
    exit.state
        .filter(|s| s.is_final() && !matches!(s, RunState::Lost | RunState::Unreachable))
        .unwrap_or(RunState::Error)
}

impl Tasks {
    /// While someone here follows `task_id`, listens for pokes from other replicas and turns them (and a
    /// periodic re-read, in case one was lost) into `TaskEvent::Stored`. At most one listener per task.
    fn watch_replicas(self: &Arc<Self>, task_id: &str) {
        let Some(nats) = self.route.remote() else {
            return;
        };
        if !self.live.start_watch(task_id) {
            return;
        }
        let fleet = Arc::downgrade(self);
        let task = task_id.to_string();
        nats.watch_task(task_id, move || {
            let Some(f) = fleet.upgrade() else {
                return false;
            };
            if !f.live.keep_watching(&task) {
                return false;
            }
            f.publish_local(&task, TaskEvent::Stored);
            true
        });
    }

    /// Tells followers here, and on other replicas, of something stored for the task.
    fn publish(&self, task_id: &str, event: TaskEvent) {
        self.route.poke(task_id);
        self.publish_local(task_id, event);
    }

    /// Tells followers on this replica only.
    pub(super) fn publish_local(&self, task_id: &str, event: TaskEvent) {
        let mut followers = lock(&self.live.followers);
        if let Some(tx) = followers.get(task_id) {
            let done = matches!(event, TaskEvent::Done);
            if tx.send(event).is_err() || done {
                // Nobody listens any more, or nothing more will come: the channel goes.
                followers.remove(task_id);
            }
        }
    }

    /// Follows a task's events from now on.
    pub fn subscribe(self: &Arc<Self>, task_id: &str) -> broadcast::Receiver<TaskEvent> {
        let rx = lock(&self.live.followers)
            .entry(task_id.to_string())
            .or_insert_with(|| broadcast::channel(FOLLOWER_BACKLOG).0)
            .subscribe();
        // After the follower is in place: the listener stops only when it finds none.
        self.watch_replicas(task_id);
        rx
    }

    /// Drops the channels of tasks nobody follows any more (their followers left between events).
    pub fn sweep_followers(&self) {
        lock(&self.live.followers).retain(|_, tx| tx.receiver_count() > 0);
    }

    /// Creates a task on every targeted node and starts dispatching it.
    pub async fn create_task(&self, actor: &str, req: CreateTask) -> Result<Task, FleetError> {
        Ok(self.create_task_skipping(actor, req).await?.0)
    }

    /// [`Tasks::create_task`], also naming the HTTP nodes the target selected: they take no tasks, so
    /// they get no run (not a failed one).
    pub async fn create_task_skipping(
        &self,
        actor: &str,
        req: CreateTask,
    ) -> Result<(Task, Vec<String>), FleetError> {
        req.spec
            .validate()
            .map_err(|e| FleetError::invalid(format!("spec.{}", e.field), e.reason))?;
        if req.max_parallel == Some(0) {
            return Err(FleetError::invalid("max_parallel", "must be at least 1"));
        }
        let (nodes, http) = self.task_targets(&req.target).await?;
        let now = Utc::now();
        let runs = self.initial_runs(&nodes, now).await;
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            target: req.target,
            spec: req.spec,
            created_by: actor.to_string(),
            created_at: now,
            max_parallel: req.max_parallel,
            signature: req.signature,
            runs,
        };
        self.store.insert_task(&task).await?;
        let nodes_list: Vec<&str> = task.runs.iter().map(|r| r.node_name.as_str()).collect();
        self.access.audit(
            actor,
            AuditAction::TaskCreate,
            &nodes_list.join(","),
            serde_json::json!({"task": task.id, "command": task.spec.summary(), "spec": task.spec}),
        )
        .await;
        tracing::info!(task = %task.id, nodes = task.runs.len(), command = %task.spec.summary(), "task created");
        let meta = Arc::new(meta_of(
            &task.created_by,
            &task.spec,
            task.max_parallel,
            task.signature.as_ref(),
        ));
        lock(&self.live.meta).insert(
            task.id.clone(),
            Arc::new(tokio::sync::OnceCell::new_with(Some(meta))),
        );
        self.dispatch(&task.id).await?;
        self.check_done(&task.id).await;
        if !task
            .runs
            .iter()
            .any(|r| self.route.local().is_attached(&r.node_id))
        {
            // Every run ends on other replicas (or already ended): they read the bookkeeping themselves.
            lock(&self.live.meta).remove(&task.id);
        }
        let skipped = http.into_iter().map(|n| n.name).collect();
        Ok((self.task(&task.id).await?, skipped))
    }

    /// A new task's runs: Pending on nodes attached here or to another replica, Unreachable (ended
    /// `now`) on the others.
    async fn initial_runs(&self, nodes: &[Node], now: chrono::DateTime<Utc>) -> Vec<TaskRun> {
        // Nodes not attached here may be attached to another replica, which starts their runs; whether
        // one holds the node is asked, not judged from the node's view.
        let here = |id: &str| self.route.local().is_attached(id);
        let elsewhere = self
            .route
            .held_elsewhere(
                nodes
                    .iter()
                    .filter(|n| !here(&n.id))
                    .map(|n| n.id.clone())
                    .collect(),
            )
            .await;
        nodes
            .iter()
            .map(|n| {
                let reachable = here(&n.id) || elsewhere.contains(&n.id);
                TaskRun {
                    node_id: n.id.clone(),
                    node_name: n.name.clone(),
                    state: if reachable {
                        RunState::Pending
                    } else {
                        RunState::Unreachable
                    },
                    exit_code: None,
                    signal: None,
                    error: (!reachable).then(|| {
                        "the node was not connected when the task was created".to_string()
                    }),
                    started_at: None,
                    finished_at: (!reachable).then_some(now),
                    late_exit: None,
                }
            })
            .collect()
    }

    /// The nodes a task's target selects that take tasks, and the HTTP nodes it selects (which take
    /// none). Refuses an empty selector and a target without a node that takes tasks.
    async fn task_targets(&self, target: &Target) -> Result<(Vec<Node>, Vec<Node>), FleetError> {
        let selected: Vec<Node> = match target {
            Target::Node(n) => vec![self.nodes.node(n).await?],
            Target::Selector(sel) => {
                if sel.is_empty() {
                    return Err(FleetError::invalid(
                        "target",
                        "an empty selector; use `all` to mean every node",
                    ));
                }
                self.nodes
                    .nodes()
                    .await?
                    .into_iter()
                    .filter(|n| sel.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                    .collect()
            }
            Target::All => self.nodes.nodes().await?,
        };
        // HTTP nodes have no stream to run a task on: they are no target, not a failed run.
        let (nodes, http): (Vec<Node>, Vec<Node>) =
            selected.into_iter().partition(|n| n.transport.takes_work());
        if nodes.is_empty() {
            return Err(FleetError::invalid(
                "target",
                match (target, http.first()) {
                    (Target::Node(_), Some(n)) => format!(
                        "{} is an {HTTP_NODE_TAKES_NO_WORK}; run tasks on nodes with drover-agent",
                        n.name
                    ),
                    (_, Some(_)) => format!(
                        "no node that takes tasks matches, only {} HTTP node(s) ({HTTP_NODE_TAKES_NO_WORK})",
                        http.len()
                    ),
                    (_, None) => "no node matches".to_string(),
                },
            ));
        }
        Ok((nodes, http))
    }

    /// A task by its id, or by a unique prefix of it (as tables show).
    pub async fn task(&self, id: &str) -> Result<Task, FleetError> {
        if let Some(t) = self.store.get_task(id).await? {
            return Ok(t);
        }
        let full = self.task_id_by_prefix(id).await?;
        self.store
            .get_task(&full)
            .await?
            .ok_or_else(|| FleetError::TaskNotFound(id.to_string()))
    }

    /// The one task whose id starts with `prefix` (4 characters or more).
    pub(super) async fn task_id_by_prefix(&self, prefix: &str) -> Result<String, FleetError> {
        let ids = if prefix.len() >= 4 {
            self.store.task_ids_with_prefix(prefix, 2).await?
        } else {
            Vec::new()
        };
        match <[String; 1]>::try_from(ids) {
            Ok([one]) => Ok(one),
            Err(ids) if ids.is_empty() => Err(FleetError::TaskNotFound(prefix.to_string())),
            Err(_) => Err(FleetError::invalid(
                "id",
                format!("{prefix:?} matches several tasks; give more of the id"),
            )),
        }
    }

    pub async fn tasks(&self, limit: usize) -> Result<Vec<Task>, FleetError> {
        Ok(self.store.list_tasks(limit).await?)
    }

    pub async fn task_output_page(
        &self,
        id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredOutput>, FleetError> {
        Ok(self.store.output(id, after, limit).await?)
    }

    /// Stored output after the row cursor `after`: at most `limit` rows, ending with the one that reaches
    /// `max_bytes` (`Store::output_within`).
    pub async fn task_output_within(
        &self,
        id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredOutput>, FleetError> {
        Ok(self
            .store
            .output_within(id, after, limit, max_bytes)
            .await?)
    }

    /// A task's bookkeeping, read once per task and server process (its runs are not read: a fan-out's
    /// thousands of ends on a replica that did not create the task share one small read).
    async fn meta(&self, task_id: &str) -> Result<Arc<TaskMeta>, FleetError> {
        let cell = lock(&self.live.meta)
            .entry(task_id.to_string())
            .or_default()
            .clone();
        let read = cell
            .get_or_try_init(|| async {
                let only_the_task = RunQuery::default();
                let page = self
                    .store
                    .task_page(task_id, &only_the_task)
                    .await?
                    .ok_or_else(|| FleetError::TaskNotFound(task_id.to_string()))?;
                let t = &page.summary;
                Ok::<_, FleetError>(Arc::new(meta_of(
                    &t.created_by,
                    &t.spec,
                    t.max_parallel,
                    t.signature.as_ref(),
                )))
            })
            .await;
        if read.is_err() {
            // An unknown task (an agent's stale id) leaves nothing behind.
            lock(&self.live.meta).remove(task_id);
        }
        read.cloned()
    }

    /// Starts pending runs, as many as the parallelism limit allows: each moves Pending -> Running in one
    /// batch, then every start is sent at once (no node waits for another).
    async fn dispatch(&self, task_id: &str) -> Result<(), FleetError> {
        let meta = self.meta(task_id).await?;
        let _one_at_a_time = match meta.max_parallel {
            Some(_) => Some(self.live.pump.lock().await),
            None => None,
        };
        let room = self.room(task_id, meta.max_parallel).await?;
        if room == 0 {
            return Ok(());
        }
        let pending = self.store.runs_in_state(task_id, PENDING, room).await?;
        if pending.is_empty() {
            return Ok(());
        }
        // Output can arrive as soon as a start is sent: be ready for it first.
        {
            let mut progress = lock(&self.live.progress);
            for run in &pending {
                progress.insert(
                    (task_id.to_string(), run.node_id.clone()),
                    Progress::default(),
                );
            }
        }
        let ids = pending.iter().map(|r| r.node_id.clone()).collect();
        let started = self
            .store
            .transition_runs(
                task_id,
                ids,
                PENDING,
                RunPatch {
                    started_at: Some(Utc::now()),
                    ..RunPatch::to(RunState::Running)
                },
            )
            .await?;
        if started.len() < pending.len() {
            // Some ended meanwhile (cancelled): they need no ordering.
            let moved: std::collections::HashSet<&str> =
                started.iter().map(|s| s.node_id.as_str()).collect();
            let mut progress = lock(&self.live.progress);
            for run in &pending {
                if !moved.contains(run.node_id.as_str()) {
                    progress.remove(&(task_id.to_string(), run.node_id.clone()));
                }
            }
        }
        let sent = self
            .send_starts(task_id, &meta, started.iter().map(|r| r.node_id.as_str()))
            .await;
        {
            // Runs started through another replica get their output there (`ensure_progress`), not here.
            let mut progress = lock(&self.live.progress);
            for (node_id, _) in &sent {
                if !self.route.local().is_attached(node_id) {
                    progress.remove(&(task_id.to_string(), node_id.clone()));
                }
            }
        }
        let failed: Vec<String> = sent
            .into_iter()
            .filter(|(_, sent)| !sent)
            .map(|(id, _)| id)
            .collect();
        self.end_unstarted(task_id, failed).await
    }

    /// Ends the runs whose start no node took as Unreachable.
    async fn end_unstarted(&self, task_id: &str, failed: Vec<String>) -> Result<(), FleetError> {
        if !failed.is_empty() {
            self.end_runs(
                task_id,
                failed,
                RUNNING,
                RunPatch::end(
                    RunState::Unreachable,
                    "the task could not be started on the node: it disconnected, or its stream (or the replica holding it) did not take the start within 5 s",
                ),
            )
            .await?;
        }
        Ok(())
    }

    /// How many more of a task's runs may start under its parallelism limit.
    async fn room(&self, task_id: &str, max_parallel: Option<u32>) -> Result<usize, FleetError> {
        Ok(match max_parallel {
            None => usize::MAX,
            Some(limit) => {
                let running = self.store.count_runs(task_id, RUNNING).await?;
                (limit as usize).saturating_sub(running)
            }
        })
    }

    /// Sends a run's start to each node, each within `SEND_PATIENCE`: whether each node took it.
    async fn send_starts<'a>(
        &self,
        task_id: &str,
        meta: &TaskMeta,
        node_ids: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, bool)> {
        // Bounded: a start for a node on another replica is a NATS request each, and ten thousand at once
        // wait in line behind each other past their patience; 256 at a time keeps every one short.
        let slots = tokio::sync::Semaphore::new(SENDS_AT_ONCE);
        let sends = node_ids.map(|node_id| {
            let start = ToAgent::TaskStart(TaskStart {
                task_id: task_id.into(),
                spec_json: meta.spec_json.clone(),
                signature_json: meta.signature_json.clone(),
            });
            let slots = &slots;
            async move {
                let _slot = slots.acquire().await;
                let sent =
                    tokio::time::timeout(SEND_PATIENCE, self.route.send(node_id, start)).await;
                (node_id.to_string(), matches!(sent, Ok(true)))
            }
        });
        futures_util::future::join_all(sends).await
    }

    /// Ends runs by the server's own decision (never an agent's report), then announces them.
    async fn end_runs(
        &self,
        task_id: &str,
        node_ids: Vec<String>,
        from: &'static [RunState],
        patch: RunPatch,
    ) -> Result<usize, FleetError> {
        let ended = self
            .store
            .transition_runs(task_id, node_ids, from, patch)
            .await?;
        {
            let mut progress = lock(&self.live.progress);
            for run in &ended {
                progress.remove(&(task_id.to_string(), run.node_id.clone()));
            }
        }
        let n = ended.len();
        for run in ended {
            tracing::info!(task = %task_id, node = %run.node_name, state = run.state.as_str(), "task run ended by the server");
            self.publish(task_id, TaskEvent::Exit(run));
        }
        Ok(n)
    }

    /// After runs ended: starts the next ones (parallelism limit) and announces the end once every run is
    /// final. Concurrent calls for one task fold into one check that runs again while runs keep ending.
    async fn check_done(&self, task_id: &str) {
        {
            let mut checks = lock(&self.live.checks);
            if let Some(again) = checks.get_mut(task_id) {
                *again = true;
                return;
            }
            checks.insert(task_id.to_string(), false);
        }
        loop {
            let limited = match self.meta(task_id).await {
                Ok(m) => m.max_parallel.is_some(),
                Err(_) => false,
            };
            if limited && let Err(e) = self.dispatch(task_id).await {
                tracing::error!(task = %task_id, "cannot continue a task: {e}");
            }
            let open = self.store.count_runs(task_id, OPEN).await;
            let again = {
                let mut checks = lock(&self.live.checks);
                if checks.get(task_id) == Some(&true) {
                    checks.insert(task_id.to_string(), false);
                    true
                } else {
                    checks.remove(task_id);
                    false
                }
            };
            if again {
                // Runs are still ending: let more of them end before counting again, so a fan-out's
                // thousands of exits cost a few counts, not one each.
                tokio::time::sleep(RECHECK_AFTER).await;
                continue;
            }
            match open {
                Ok(0) => {
                    lock(&self.live.meta).remove(task_id);
                    self.publish(task_id, TaskEvent::Done);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(task = %task_id, "cannot check a task's runs: {e}"),
            }
            return;
        }
    }

    /// Makes sure a run that is open in the store has its ordering state here. A reconnecting agent resends
    /// its output and exit at once, which can beat the redelivery that would have set it up; without this,
    /// such an exit would be taken for one of a finished run and acknowledged unrecorded.
    async fn ensure_progress(&self, task_id: &str, node_id: &str) -> bool {
        let key = (task_id.to_string(), node_id.to_string());
        if lock(&self.live.progress).contains_key(&key) {
            return true;
        }
        match self.store.get_run(task_id, node_id).await {
            Ok(Some(run)) if run.state == RunState::Running => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::error!(task = %task_id, "cannot look up a run: {e}");
                return false;
            }
        };
        self.resume_progress(task_id, node_id).await
    }

    /// Sets up a running run's ordering from what the store holds (output stored so far), unless it is set up.
    async fn resume_progress(&self, task_id: &str, node_id: &str) -> bool {
        let next_seq = match self.store.stored_seq(task_id, node_id).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(task = %task_id, "cannot look up a run's output: {e}");
                return false;
            }
        };
        lock(&self.live.progress)
            .runs
            .entry((task_id.to_string(), node_id.to_string()))
            .or_insert_with(|| Progress {
                next_seq,
                ..Progress::default()
            });
        true
    }

    /// Output from a node: held until it is next in order (within bounds), then stored and published. A
    /// chunk over `MAX_CHUNK_BYTES` ends the run as Error; the node's stream carries on.
    pub async fn task_output(&self, node_id: &str, out: TaskOutput) {
        if !self.ensure_progress(out.task_id.as_str(), node_id).await {
            return;
        }
        if let Some(big) = out.chunks.iter().find(|c| c.data.len() > MAX_CHUNK_BYTES) {
            self.refuse_output(out.task_id.as_str(), node_id, big.data.len())
                .await;
            return;
        }
        let key = (out.task_id.to_string(), node_id.to_string());
        let Some(Ordered { ready, ask_again }) = lock(&self.live.progress).take(&key, out.chunks)
        else {
            return;
        };
        if ask_again {
            self.ask_output_again(out.task_id.as_str(), node_id).await;
        }
        if ready.is_empty() {
            return;
        }
        let first = ready.first().map(|r| r.0).unwrap_or_default();
        let last = ready.last().map(|r| r.0).unwrap_or_default();
        let records = ready
            .into_iter()
            .map(|(seq, stream, data)| OutputRecord {
                node_id: node_id.to_string(),
                seq,
                stream: stream_code(stream),
                data,
            })
            .collect();
        let store = self.store.clone();
        let insert = move |task_id: String, records: Vec<OutputRecord>| {
            let store = store.clone();
            async move {
                store
                    .insert_output(&task_id, records)
                    .await
                    .map_err(FoldFailure::from)
            }
        };
        if let Err(e) = self
            .live
            .output
            .write_all(out.task_id.as_str(), records, insert)
            .await
        {
            tracing::error!(task = %out.task_id, "cannot store task output: {e}");
            return;
        }
        // Published after the output is stored: a follower reading the store then finds it.
        self.publish(out.task_id.as_str(), TaskEvent::Output);
        // Acknowledge whenever a batch crosses a multiple of ACK_EVERY.
        if (last + 1) / ACK_EVERY > first / ACK_EVERY {
            let ack = ToAgent::TaskAck {
                task_id: out.task_id.clone(),
                upto_seq: last + 1,
                exit: false,
            };
            self.route.local().send(node_id, ack).await;
        }
        self.try_finish(out.task_id.as_str(), node_id).await;
    }

    /// Ends a run whose node sent a chunk no agent sends (over `MAX_CHUNK_BYTES`), and stops it there.
    async fn refuse_output(&self, task_id: &str, node_id: &str, len: usize) {
        tracing::warn!(task = %task_id, node = %node_id, bytes = len, "refused an output chunk over MAX_CHUNK_BYTES");
        let why = format!(
            "the node sent an output chunk of {len} bytes, over the limit of {MAX_CHUNK_BYTES} bytes a chunk (MAX_CHUNK_BYTES): no drover-agent sends that; update or reinstall the node's agent"
        );
        let ended = self
            .end_runs(
                task_id,
                vec![node_id.to_string()],
                OPEN,
                RunPatch::end(RunState::Error, &why),
            )
            .await;
        match ended {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(task = %task_id, "cannot end a run: {e}");
                return;
            }
        }
        let cancel = ToAgent::TaskCancel {
            task_id: task_id.into(),
        };
        self.route.local().send(node_id, cancel).await;
        self.check_done(task_id).await;
    }

    /// Asks a node for a run's unacknowledged output again, as after a reconnect (the agent takes a
    /// known task's start as that), when output it sent was dropped for want of room.
    async fn ask_output_again(&self, task_id: &str, node_id: &str) {
        let meta = match self.meta(task_id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(task = %task_id, "cannot ask for output again: {e}");
                return;
            }
        };
        tracing::info!(task = %task_id, node = %node_id, "output arrived too far out of order; asking the node to send it again");
        let start = ToAgent::TaskStart(TaskStart {
            task_id: task_id.into(),
            spec_json: meta.spec_json.clone(),
            signature_json: meta.signature_json.clone(),
        });
        self.route.local().send(node_id, start).await;
    }

    /// A node's task ended; it is final once every chunk before it is stored.
    pub async fn task_exit(&self, node_id: &str, mut exit: TaskExit) {
        drover_types::limits::clip(&mut exit.error, drover_types::limits::MAX_EXIT_ERROR);
        let key = (exit.task_id.to_string(), node_id.to_string());
        self.ensure_progress(exit.task_id.as_str(), node_id).await;
        let known = {
            let mut progress = lock(&self.live.progress);
            match progress.get_mut(&key) {
                Some(p) => {
                    p.exit = Some(exit.clone());
                    true
                }
                None => false,
            }
        };
        if known {
            self.try_finish(exit.task_id.as_str(), node_id).await;
            return;
        }
        // Already final here (lost, or cancelled while the node was away): keep the agent's word beside
        // it, then let the agent forget the task.
        let late = LateExit {
            state: reported_state(&exit),
            exit_code: exit.exit_code,
            signal: exit.signal,
            error: (!exit.error.is_empty()).then(|| exit.error.clone()),
            at: Utc::now(),
        };
        match self
            .store
            .record_late_exit(exit.task_id.as_str(), node_id, late)
            .await
        {
            Ok(Some(run)) => {
                tracing::info!(task = %exit.task_id, node = %run.node_name, "kept a late exit beside a run that had already ended")
            }
            Ok(None) => {}
            Err(e) => tracing::error!(task = %exit.task_id, "cannot keep a late exit: {e}"),
        }
        let ack = ToAgent::TaskAck {
            task_id: exit.task_id,
            upto_seq: exit.seq,
            exit: true,
        };
        self.route.local().send(node_id, ack).await;
    }

    async fn try_finish(&self, task_id: &str, node_id: &str) {
        let key = (task_id.to_string(), node_id.to_string());
        let exit = {
            let mut progress = lock(&self.live.progress);
            let complete = progress
                .get(&key)
                .is_some_and(|p| p.exit.as_ref().is_some_and(|e| e.seq <= p.next_seq));
            if !complete {
                return;
            }
            progress.remove(&key).and_then(|p| p.exit)
        };
        let Some(exit) = exit else { return };
        if let Err(e) = self.finish_run(task_id, node_id, &exit).await {
            tracing::error!(task = %task_id, "cannot record a task's end: {e}");
            return;
        }
        let ack = ToAgent::TaskAck {
            task_id: task_id.into(),
            upto_seq: exit.seq,
            exit: true,
        };
        self.route.local().send(node_id, ack).await;
        self.check_done(task_id).await;
    }

    /// Records the agent's exit: Pending or Running -> the reported final state. A run already final stays
    /// as it is (the exit is kept beside it when the server had ended it).
    async fn finish_run(
        &self,
        task_id: &str,
        node_id: &str,
        exit: &TaskExit,
    ) -> Result<(), FleetError> {
        let state = reported_state(exit);
        let now = Utc::now();
        let patch = RunPatch {
            state,
            exit_code: exit.exit_code,
            signal: exit.signal,
            error: (!exit.error.is_empty()).then(|| exit.error.clone()),
            started_at: None,
            finished_at: Some(now),
        };
        let ended = self
            .live
            .ends
            .write(
                task_id,
                vec![(node_id.to_string(), patch)],
                end_runs(self.store.clone()),
            )
            .await?;
        let Some(run) = ended.into_iter().flatten().next() else {
            let late = LateExit {
                state,
                exit_code: exit.exit_code,
                signal: exit.signal,
                error: (!exit.error.is_empty()).then(|| exit.error.clone()),
                at: now,
            };
            self.store.record_late_exit(task_id, node_id, late).await?;
            return Ok(());
        };
        tracing::debug!(task = %task_id, node = %run.node_name, state = run.state.as_str(), code = ?run.exit_code, "task run finished");
        let meta = self.meta(task_id).await?;
        // Folded with the task's other ends: a fan-out's thousands of entries cost a few writes.
        let entry = AuditEntry {
            id: 0,
            at: now,
            actor: meta.created_by.clone(),
            action: AuditAction::TaskFinish.as_str().into(),
            target: run.node_name.clone(),
            detail: serde_json::json!({"task": task_id, "command": meta.summary, "state": run.state, "exit_code": run.exit_code, "signal": run.signal, "error": run.error}),
        };
        let store = self.store.clone();
        let insert = move |_task_id: String, entries: Vec<AuditEntry>| {
            let store = store.clone();
            async move {
                store
                    .insert_audits(entries)
                    .await
                    .map_err(FoldFailure::from)
            }
        };
        if let Err(e) = self
            .live
            .audits
            .write_all(task_id, vec![entry], insert)
            .await
        {
            tracing::error!("cannot write the audit log: {e}");
        }
        self.publish(task_id, TaskEvent::Exit(run));
        Ok(())
    }

    /// A node (re)attached. Runs it is listed as running (or holding an unacknowledged exit of) are
    /// redelivered: the agent runs none twice and resends what the server has not acknowledged. Runs it does
    /// not list end as Lost: it restarted, or never received them. `open_tasks` is `None` for agents that do
    /// not say (protocol 1): theirs are redelivered.
    pub async fn tasks_on_attach(
        &self,
        node_id: &str,
        node_name: &str,
        open_tasks: Option<std::collections::HashSet<String>>,
        attached_at: chrono::DateTime<Utc>,
    ) {
        let open = match self.store.open_runs_for_node(node_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot look up tasks to redeliver: {e}");
                return;
            }
        };
        let mut lost = Vec::new();
        for OpenRun { task_id, run, spec } in open {
            if run.state != RunState::Running {
                continue;
            }
            let listed = open_tasks.as_ref().is_none_or(|l| l.contains(&task_id));
            // A run started after the hello (through this very stream) cannot be in its list.
            let before_hello = run.started_at.is_none_or(|t| t < attached_at);
            if !listed && before_hello {
                lost.push(task_id);
                continue;
            }
            // Should this fail, the run's resent output sets it up on arrival (`ensure_progress`).
            self.resume_progress(&task_id, node_id).await;
            let signature_json = match self.meta(&task_id).await {
                Ok(meta) => meta.signature_json.clone(),
                Err(_) => "".into(),
            };
            let start = ToAgent::TaskStart(TaskStart {
                task_id: task_id.as_str().into(),
                spec_json: serde_json::to_string(&spec).unwrap_or_default().into(),
                signature_json,
            });
            self.route.local().send(node_id, start).await;
            tracing::info!(task = %task_id, node = %node_name, "redelivered a running task");
        }
        for task_id in lost {
            let ended = self
                .end_runs(
                    &task_id,
                    vec![node_id.to_string()],
                    RUNNING,
                    RunPatch::end(
                        RunState::Lost,
                        "the agent came back without this task (it restarted, or never received it); whether it ran is unknown",
                    ),
                )
                .await;
            match ended {
                Ok(n) => {
                    self.config.metrics.runs_lost(n);
                    self.check_done(&task_id).await
                }
                Err(e) => tracing::error!(task = %task_id, "cannot mark a run lost: {e}"),
            }
        }
    }

    /// Ends as Lost every open run whose node has not been heard from for `lost_after` and is not
    /// connected. Returns how many.
    pub async fn sweep_lost_runs(&self, lost_after: Duration) -> Result<usize, FleetError> {
        let span = chrono::Duration::from_std(lost_after)
            .map_err(|_| FleetError::invalid("lost_after", "too long"))?;
        let Some(cutoff) = Utc::now().checked_sub_signed(span) else {
            return Ok(0);
        };
        let mut by_task: HashMap<String, Vec<String>> = HashMap::new();
        for SilentRun { task_id, node_id } in self.store.open_runs_silent_since(cutoff).await? {
            if !self.route.local().is_attached(&node_id) {
                by_task.entry(task_id).or_default().push(node_id);
            }
        }
        let mut n = 0;
        let why = format!(
            "its node has not been heard from for more than {}; whether it ran is unknown",
            humantime::format_duration(lost_after)
        );
        for (task_id, nodes) in by_task {
            n += self
                .end_runs(&task_id, nodes, OPEN, RunPatch::end(RunState::Lost, &why))
                .await?;
            self.check_done(&task_id).await;
        }
        self.config.metrics.runs_lost(n);
        Ok(n)
    }

    /// Deletes finished tasks older than `retention`, then the output of the oldest finished tasks while
    /// all output takes more than `max_output` bytes.
    pub async fn apply_retention(
        &self,
        retention: Duration,
        max_output: u64,
    ) -> Result<(usize, usize), FleetError> {
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| Utc::now().checked_sub_signed(r));
        let deleted = match cutoff {
            Some(c) => self.store.delete_finished_tasks_before(c).await?,
            None => 0,
        };
        let trimmed = self.store.trim_output(max_output).await?;
        Ok((deleted, trimmed))
    }

    /// Cancels every run not yet final: pending ones at once, running ones on their nodes (or here, when
    /// their node is away). A task already finished is answered as it is, unaudited: nothing happened.
    pub async fn cancel_task(&self, actor: &str, id: &str) -> Result<Task, FleetError> {
        let task = self.task(id).await?;
        if task.is_finished() {
            return Ok(task);
        }
        let id = task.id.as_str();
        self.access
            .audit(
                actor,
                AuditAction::TaskCancel,
                &task
                    .runs
                    .iter()
                    .map(|r| r.node_name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                serde_json::json!({"task": id}),
            )
            .await;
        let pending: Vec<String> = task
            .runs
            .iter()
            .filter(|r| r.state == RunState::Pending)
            .map(|r| r.node_id.clone())
            .collect();
        self.end_runs(
            id,
            pending,
            PENDING,
            RunPatch {
                finished_at: Some(Utc::now()),
                ..RunPatch::to(RunState::Cancelled)
            },
        )
        .await?;
        let running = task.runs.iter().filter(|r| r.state == RunState::Running);
        let sends = running.map(|run| async move {
            let cancel = ToAgent::TaskCancel { task_id: id.into() };
            let sent = self.route.send(&run.node_id, cancel).await;
            (run.node_id.clone(), sent)
        });
        let away: Vec<String> = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .filter(|(_, sent)| !sent)
            .map(|(node, _)| node)
            .collect();
        self.end_runs(
            id,
            away,
            RUNNING,
            RunPatch::end(RunState::Cancelled, SERVER_ONLY_CANCEL),
        )
        .await?;
        self.check_done(id).await;
        self.task(id).await
    }
}

/// Writes a batch of reported ends: one guarded transition per distinct patch (a fan-out's ends mostly
/// share one), each run from an open state only; a run already final gets `None`.
fn end_runs(
    store: Arc<dyn crate::store::TasksStore>,
) -> impl Fn(String, Vec<(String, RunPatch)>) -> Written<Option<TaskRun>> + Send + 'static {
    move |task_id, mut ends| {
        let store = store.clone();
        Box::pin(async move {
            // Ended when written: ends a few milliseconds apart then share one patch.
            let now = Utc::now();
            for (_, patch) in &mut ends {
                patch.finished_at = patch.finished_at.map(|_| now);
            }
            let mut groups: Vec<(RunPatch, Vec<String>)> = Vec::new();
            for (node_id, patch) in &ends {
                match groups.iter_mut().find(|(p, _)| p == patch) {
                    Some((_, nodes)) => nodes.push(node_id.clone()),
                    None => groups.push((patch.clone(), vec![node_id.clone()])),
                }
            }
            let mut ended: HashMap<String, TaskRun> = HashMap::new();
            for (patch, nodes) in groups {
                let runs = store
                    .transition_runs(&task_id, nodes, OPEN, patch)
                    .await
                    .map_err(FoldFailure::from)?;
                ended.extend(runs.into_iter().map(|r| (r.node_id.clone(), r)));
            }
            Ok(ends
                .iter()
                .map(|(node_id, _)| ended.remove(node_id))
                .collect())
        })
    }
}

fn meta_of(
    created_by: &str,
    spec: &TaskSpec,
    max_parallel: Option<u32>,
    signature: Option<&CommandSignature>,
) -> TaskMeta {
    TaskMeta {
        created_by: created_by.to_string(),
        summary: spec.summary(),
        max_parallel,
        spec_json: serde_json::to_string(spec).unwrap_or_default().into(),
        signature_json: signature
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .unwrap_or_default()
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_output_is_base64() {
        let c = chunk("n", "n", 0, 1, vec![0xff, 0xfe, 0, 1]);
        assert_eq!(c.base64.as_deref(), Some("//4AAQ=="));
        assert!(c.text.is_none());
        assert_eq!(
            chunk("n", "n", 0, 2, b"hi\n".to_vec()).text.as_deref(),
            Some("hi\n")
        );
    }

    fn chunks(seqs: impl IntoIterator<Item = u64>, size: usize) -> Vec<Chunk> {
        seqs.into_iter()
            .map(|seq| Chunk {
                seq,
                stream: Stream::Stdout,
                data: vec![b'x'; size],
            })
            .collect()
    }

    fn seqs(o: &Ordered) -> Vec<u64> {
        o.ready.iter().map(|r| r.0).collect()
    }

    #[test]
    fn out_of_order_output_is_held_within_bytes_and_asked_for_again() {
        let key = |t: &str| (t.to_string(), "n".to_string());
        let mut o = Ordering::default();
        for t in ["a", "b", "c", "d"] {
            o.insert(key(t), Progress::default());
        }
        let per_run = MAX_HELD_BYTES_PER_RUN / (MAX_CHUNK_BYTES + HELD_OVERHEAD);
        // A small reordering is held and stored in order once the gap is filled.
        let got = o.take(&key("a"), chunks([2, 1, 1], 10)).unwrap();
        assert!(got.ready.is_empty() && !got.ask_again);
        let got = o.take(&key("a"), chunks([0], 10)).unwrap();
        assert_eq!(seqs(&got), [0, 1, 2]);
        assert!(o.held_by_node.is_empty());
        // A flood is held up to the run's bound; the rest is dropped, and asked for again once what is
        // held is stored.
        let got = o.take(&key("a"), chunks(4..1000, MAX_CHUNK_BYTES)).unwrap();
        assert!(got.ready.is_empty() && !got.ask_again);
        assert_eq!(o.get(&key("a")).unwrap().held.len(), per_run);
        assert!(o.held_by_node["n"] <= MAX_HELD_BYTES_PER_RUN);
        let got = o.take(&key("a"), chunks([3], 1)).unwrap();
        assert_eq!(seqs(&got), (3..4 + per_run as u64).collect::<Vec<_>>());
        assert!(got.ask_again);
        // The resend comes in order from the start: stored as it comes, not asked for twice.
        let got = o.take(&key("a"), chunks(0..600, 1)).unwrap();
        assert_eq!(got.ready.len(), 600 - 4 - per_run);
        assert!(!got.ask_again);
        let got = o.take(&key("a"), chunks(600..1000, 1)).unwrap();
        assert_eq!(got.ready.len(), 400);
        assert!(!got.ask_again && o.get(&key("a")).unwrap().dropped.is_none());
        // The node's bound holds across its runs: a third run holds nothing while two are full, and
        // asks once, not once a message.
        for t in ["b", "c", "d"] {
            for from in (1..2000).step_by(100) {
                o.take(&key(t), chunks(from..from + 100, MAX_CHUNK_BYTES))
                    .unwrap();
            }
        }
        assert!(o.held_by_node["n"] <= MAX_HELD_BYTES_PER_NODE);
        assert!(o.get(&key("d")).unwrap().held.len() <= 1);
        let got = o.take(&key("d"), chunks([0], 1)).unwrap();
        assert!(got.ask_again);
        let got = o
            .take(&key("d"), chunks(3000..3100, MAX_CHUNK_BYTES))
            .unwrap();
        assert!(!got.ask_again, "one ask until its resend is in");
        // A run's end releases what it held.
        for t in ["b", "c", "d"] {
            o.remove(&key(t));
        }
        assert!(o.held_by_node.is_empty());
    }

    #[test]
    fn an_agent_cannot_declare_a_run_lost_or_unreachable() {
        let exit = |state: &str| TaskExit {
            task_id: "t".into(),
            seq: 0,
            state: RunState::parse(state),
            exit_code: None,
            signal: None,
            error: String::new(),
        };
        assert_eq!(reported_state(&exit("Succeeded")), RunState::Succeeded);
        assert_eq!(reported_state(&exit("Lost")), RunState::Error);
        assert_eq!(reported_state(&exit("Unreachable")), RunState::Error);
        assert_eq!(reported_state(&exit("Running")), RunState::Error);
        assert_eq!(reported_state(&exit("bogus")), RunState::Error);
    }
}
