//! Tasks on the node: commands and container operations, each run at most once per task id, with output
//! streamed in order and kept on disk until the server acknowledges it, so a broken link loses nothing.

mod container;
pub mod exec;
pub mod outbox;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1::{self, AgentMessage, agent_message::Msg};
use drover_types::task::{DEFAULT_GRACE_MS, TaskSpec};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::commands::CommandGate;
use crate::policy::Policy;
use outbox::{Exit, Outbox};

/// How a task ended on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub state: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: String,
}

impl Ended {
    /// The node refused the task: it never started. A policy [`Refusal`](crate::policy::Refusal) names its rule.
    pub fn refused(why: impl ToString) -> Self {
        Self {
            state: "Refused",
            exit_code: None,
            signal: None,
            error: why.to_string(),
        }
    }

    pub fn error(error: String) -> Self {
        Self {
            state: "Error",
            exit_code: None,
            signal: None,
            error,
        }
    }

    pub fn ok() -> Self {
        Self {
            state: "Succeeded",
            exit_code: Some(0),
            signal: None,
            error: String::new(),
        }
    }
}

/// Task ids finished and acknowledged, remembered so a redelivered start is not run again.
const REMEMBERED_TASKS: usize = 10_000;
const DONE_FILE: &str = "done";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct TaskManager {
    dir: PathBuf,
    policy: Arc<Policy>,
    /// Signed commands, on a node that pins keys.
    gate: Arc<CommandGate>,
    slots: Arc<Semaphore>,
    link: Mutex<Option<mpsc::Sender<AgentMessage>>>,
    cancels: Mutex<HashMap<String, watch::Sender<bool>>>,
    done: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl TaskManager {
    /// `dir` holds one directory per unacknowledged task and the list of finished ids.
    pub fn new(
        dir: PathBuf,
        policy: Arc<Policy>,
        gate: Arc<CommandGate>,
        max_concurrent: usize,
    ) -> std::io::Result<Arc<Self>> {
        drover_files::create_private_dir(&dir)?;
        let text = std::fs::read_to_string(dir.join(DONE_FILE)).unwrap_or_default();
        let order: VecDeque<String> = text.lines().map(str::to_string).collect();
        let skip = order.len().saturating_sub(REMEMBERED_TASKS);
        let order: VecDeque<String> = order.into_iter().skip(skip).collect();
        let mut done: (HashSet<String>, VecDeque<String>) =
            (order.iter().cloned().collect(), order);
        // A task dir without an exit belongs to a task this agent was running when it died: its process is
        // gone and its outcome unknown. Forget it (the server ends the run as Lost, since the hello will not
        // list it) and remember its id, so a redelivered start never runs it a second time.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.is_dir() && outbox::read_exit(&path).is_none() {
                let id = entry.file_name().to_string_lossy().into_owned();
                tracing::warn!(task = %id, "a task was running when the agent stopped; its outcome is unknown");
                let _ = std::fs::remove_dir_all(&path);
                if done.0.insert(id.clone()) {
                    done.1.push_back(id.clone());
                    append_done(&dir, &id);
                }
            }
        }
        Ok(Arc::new(Self {
            dir,
            policy,
            gate,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            link: Mutex::new(None),
            cancels: Mutex::new(HashMap::new()),
            done: Mutex::new(done),
        }))
    }

    fn task_dir(&self, task_id: &str) -> Option<PathBuf> {
        // Task ids come from the server; refuse anything that is not a plain name.
        let ok = !task_id.is_empty()
            && task_id.len() <= 64
            && task_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        ok.then(|| self.dir.join(task_id))
    }

    async fn send(&self, m: Msg) {
        let tx = lock(&self.link).clone();
        if let Some(tx) = tx {
            // A closed link is fine: the outbox has it and resends after the reconnect.
            let _ = tx.send(AgentMessage { msg: Some(m) }).await;
        }
    }

    /// A new stream: remember where to send, and resend everything the server has not acknowledged.
    pub fn connected(self: &Arc<Self>, tx: mpsc::Sender<AgentMessage>) {
        *lock(&self.link) = Some(tx);
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(entries) = std::fs::read_dir(&me.dir) else {
                return;
            };
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let id = entry.file_name().to_string_lossy().into_owned();
                    me.resend(&id, 0).await;
                }
            }
        });
    }

    /// Tasks running here or finished without the server's acknowledgement: the hello lists them, so the
    /// server can tell which of the runs it thinks are on this node were lost.
    pub fn open_tasks(&self) -> Vec<String> {
        let mut open: std::collections::BTreeSet<String> =
            lock(&self.cancels).keys().cloned().collect();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    open.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        open.into_iter().collect()
    }

    pub fn disconnected(&self) {
        *lock(&self.link) = None;
    }

    async fn resend(&self, task_id: &str, from: u64) {
        let Some(dir) = self.task_dir(task_id) else {
            return;
        };
        let chunks = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || outbox::read_chunks(&dir, from)).await
        };
        if let Ok(Ok(chunks)) = chunks {
            for batch in chunks.chunks(BATCH_CHUNKS) {
                self.send(output_message(task_id, batch.to_vec())).await;
            }
        }
        if let Some(exit) = outbox::read_exit(&dir) {
            self.send(Msg::TaskExit(exit_message(task_id, &exit))).await;
        }
    }

    /// Starts a task, unless this id was run before: then only what is unacknowledged is resent.
    pub fn start(self: &Arc<Self>, task_id: String, spec_json: String, signature_json: String) {
        let Some(dir) = self.task_dir(&task_id) else {
            tracing::warn!("ignored a task with an invalid id {task_id:?}");
            return;
        };
        if lock(&self.done).0.contains(&task_id) {
            tracing::info!(task = %task_id, "ignored a redelivered task that already finished");
            return;
        }
        if lock(&self.cancels).contains_key(&task_id) || dir.exists() {
            tracing::info!(task = %task_id, "task already known; resending its unacknowledged output");
            let me = self.clone();
            tokio::spawn(async move { me.resend(&task_id, 0).await });
            return;
        }
        let (cancel_tx, cancel_rx) = watch::channel(false);
        lock(&self.cancels).insert(task_id.clone(), cancel_tx);
        let me = self.clone();
        tokio::spawn(async move {
            me.run(task_id, dir, spec_json, signature_json, cancel_rx)
                .await
        });
    }

    /// What checks signed commands on this node (actions that change it use it too).
    pub fn gate(&self) -> &CommandGate {
        &self.gate
    }

    pub fn cancel(&self, task_id: &str) {
        if let Some(tx) = lock(&self.cancels).get(task_id) {
            let _ = tx.send(true);
        }
    }

    /// The server stored the exit: forget the task (but remember its id).
    pub fn acknowledged(&self, task_id: &str, exit: bool) {
        if !exit {
            return;
        }
        let Some(dir) = self.task_dir(task_id) else {
            return;
        };
        if !dir.join("exit.json").exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(&dir);
        let mut done = lock(&self.done);
        if done.0.insert(task_id.to_string()) {
            done.1.push_back(task_id.to_string());
            if done.1.len() > REMEMBERED_TASKS {
                if let Some(old) = done.1.pop_front() {
                    done.0.remove(&old);
                }
                let text: String = done.1.iter().map(|id| format!("{id}\n")).collect();
                let _ =
                    drover_files::write_atomic(&self.dir.join(DONE_FILE), text.as_bytes(), true);
            } else {
                append_done(&self.dir, task_id);
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        task_id: String,
        dir: PathBuf,
        spec_json: String,
        signature_json: String,
        mut cancel: watch::Receiver<bool>,
    ) {
        let mut outbox = match Outbox::create(&dir, &spec_json) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(task = %task_id, "cannot keep task output in {}: {e}", dir.display());
                self.send(Msg::TaskExit(exit_message(
                    &task_id,
                    &Exit {
                        seq: 0,
                        state: "Error".into(),
                        exit_code: None,
                        signal: None,
                        error: format!("the agent cannot write its state dir: {e}"),
                    },
                )))
                .await;
                lock(&self.cancels).remove(&task_id);
                return;
            }
        };
        let ended = match serde_json::from_str::<TaskSpec>(&spec_json) {
            Err(e) => Ended::error(format!("this agent does not understand the task: {e}")),
            // Checked on arrival, not after waiting for a slot: its window is short.
            Ok(spec)
                if let Err(refusal) =
                    self.gate
                        .admit("the task", &spec.signed_command(), &signature_json) =>
            {
                tracing::warn!(task = %task_id, "{refusal}");
                Ended::refused(refusal)
            }
            Ok(spec) => {
                // Wait for a slot (the per-node concurrency limit), unless cancelled meanwhile.
                let permit = tokio::select! {
                    p = self.slots.clone().acquire_owned() => p.ok(),
                    _ = cancelled(&mut cancel) => None,
                };
                match permit {
                    None => Ended {
                        state: "Cancelled",
                        exit_code: None,
                        signal: None,
                        error: "cancelled before it started".into(),
                    },
                    Some(_permit) => self.execute(&task_id, spec, &mut outbox, cancel).await,
                }
            }
        };
        crate::metrics_listen::task_finished(ended.state);
        let exit = Exit {
            seq: outbox.next_seq,
            state: ended.state.to_string(),
            exit_code: ended.exit_code,
            signal: ended.signal,
            error: ended.error,
        };
        if let Err(e) = outbox.finish(&exit) {
            tracing::warn!(task = %task_id, "cannot record the task's end on disk: {e}");
        }
        lock(&self.cancels).remove(&task_id);
        tracing::info!(task = %task_id, state = %exit.state, code = ?exit.exit_code, "task finished");
        self.send(Msg::TaskExit(exit_message(&task_id, &exit)))
            .await;
    }

    /// Runs the spec, appending output to the outbox and streaming it live.
    async fn execute(
        &self,
        task_id: &str,
        spec: TaskSpec,
        outbox: &mut Outbox,
        cancel: watch::Receiver<bool>,
    ) -> Ended {
        let (emit_tx, mut emit_rx) = mpsc::channel::<(u8, Vec<u8>)>(256);
        let work = self.run_spec(spec, emit_tx, cancel);
        tokio::pin!(work);
        let (mut ended, mut open) = (None, true);
        loop {
            tokio::select! {
                chunk = emit_rx.recv(), if open => match chunk {
                    Some(first) => self.forward(task_id, first, &mut emit_rx, outbox).await,
                    None => open = false,
                },
                e = &mut work, if ended.is_none() => ended = Some(e),
            }
            if ended.is_some() && !open {
                break;
            }
        }
        ended.unwrap_or_else(|| Ended::error("the task ended without a result".into()))
    }

    /// Runs an exec or container spec, its output going to `emit`.
    async fn run_spec(
        &self,
        spec: TaskSpec,
        emit: mpsc::Sender<(u8, Vec<u8>)>,
        cancel: watch::Receiver<bool>,
    ) -> Ended {
        match spec {
            TaskSpec::Exec {
                argv,
                shell,
                env,
                cwd,
                user,
                timeout_ms,
                grace_ms,
            } => {
                let req = exec::ExecRequest {
                    argv,
                    shell,
                    env: env.into_iter().collect(),
                    cwd,
                    user,
                    timeout: timeout_ms.map(Duration::from_millis),
                    grace: Duration::from_millis(grace_ms.unwrap_or(DEFAULT_GRACE_MS)),
                };
                exec::run(req, &self.policy, emit, cancel).await
            }
            TaskSpec::Container {
                op,
                container,
                all,
                follow,
                tail,
                timeout_ms,
            } => {
                let timeout = timeout_ms.map(Duration::from_millis);
                let job = container::Job {
                    op,
                    container,
                    all,
                    follow,
                    tail,
                    timeout,
                };
                match self.policy.check_container_task() {
                    Ok(()) => container::run(job, emit, cancel).await,
                    Err(refusal) => Ended::refused(&refusal),
                }
            }
        }
    }

    /// Keeps a chunk of output, and whatever else is already waiting, so fast output travels in batches;
    /// then sends the batch.
    async fn forward(
        &self,
        task_id: &str,
        first: (u8, Vec<u8>),
        emit_rx: &mut mpsc::Receiver<(u8, Vec<u8>)>,
        outbox: &mut Outbox,
    ) {
        let (mut batch, mut bytes) = (Vec::new(), 0);
        let mut next = Some(first);
        while let Some((stream, data)) = next {
            bytes += data.len();
            match outbox.append(stream, data) {
                Ok(Some(c)) => batch.push(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(task = %task_id, "cannot keep task output: {e}"),
            }
            next = if batch.len() < BATCH_CHUNKS && bytes < BATCH_BYTES {
                emit_rx.try_recv().ok()
            } else {
                None
            };
        }
        if let Err(e) = outbox.flush() {
            tracing::warn!(task = %task_id, "cannot keep task output: {e}");
        }
        if !batch.is_empty() {
            self.send(output_message(task_id, batch)).await;
        }
    }
}

/// Adds a task id to the list of tasks never to run again.
fn append_done(dir: &std::path::Path, task_id: &str) {
    use std::io::Write;
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(DONE_FILE))
        .and_then(|mut f| f.write_all(format!("{task_id}\n").as_bytes()));
    if let Err(e) = appended {
        tracing::warn!("cannot record finished task {task_id}: {e}");
    }
}

/// Resolves after `limit`, or never when there is none.
pub(crate) async fn time_limit(limit: Option<Duration>) {
    match limit {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves once the task is cancelled (never, if its canceller is gone).
pub(crate) async fn cancelled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Chunks per TaskOutput message at most.
const BATCH_CHUNKS: usize = 512;
/// Bytes per TaskOutput message, about: big enough for throughput, small enough to keep the stream moving.
const BATCH_BYTES: usize = 1024 * 1024;

/// Output chunks as they travel.
pub fn output_message(task_id: &str, chunks: Vec<outbox::Chunk>) -> Msg {
    Msg::TaskOutput(v1::TaskOutput {
        task_id: task_id.to_string(),
        chunks: chunks
            .into_iter()
            .map(|c| v1::OutputChunk {
                seq: c.seq,
                stream: c.stream.into(),
                data: c.data,
            })
            .collect(),
    })
}

/// A task's end as it travels.
pub fn exit_message(task_id: &str, exit: &Exit) -> v1::TaskExit {
    v1::TaskExit {
        task_id: task_id.to_string(),
        seq: exit.seq,
        state: exit.state.clone(),
        exit_code: exit.exit_code,
        signal: exit.signal,
        error: exit.error.clone(),
    }
}
