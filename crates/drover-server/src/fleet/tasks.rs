//! Tasks on the server: targeting, dispatch with a parallelism limit, in-order output from each node
//! (reordered after reconnects, stored once), final states, cancellation, redelivery and the audit log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::Utc;
use drover_proto::v1::{self, server_message::Msg};
use drover_types::task::{
    AuditEntry, CreateTask, OutputChunk, RunState, Stream, Target, Task, TaskRun,
};
use tokio::sync::broadcast;

use crate::fleet::{Fleet, FleetError};
use crate::store::{AuditFilter, OutputRecord};

/// Something that happened to a task, for live followers.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// Consecutive chunks from one node.
    Output(Vec<OutputChunk>),
    Exit(TaskRun),
    Done,
}

/// Out-of-order output held per run before it can be stored in order.
const MAX_HELD_CHUNKS: usize = 10_000;
/// Output chunks between acknowledgements to the agent.
const ACK_EVERY: u64 = 1024;

#[derive(Default)]
struct Progress {
    node_name: String,
    next_seq: u64,
    held: BTreeMap<u64, (u8, Vec<u8>)>,
    exit: Option<v1::TaskExit>,
}

/// Live task state: per-run ordering and the followers' channels.
#[derive(Default)]
pub struct TaskLive {
    progress: Mutex<HashMap<(String, String), Progress>>,
    events: Mutex<HashMap<String, broadcast::Sender<TaskEvent>>>,
    /// One dispatcher at a time, so a parallelism limit holds under concurrent exits.
    pump: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn chunk(node_id: &str, node_name: &str, seq: u64, stream: u8, data: &[u8]) -> OutputChunk {
    let (text, base64) = match std::str::from_utf8(data) {
        Ok(t) => (Some(t.to_string()), None),
        Err(_) => (None, Some(drover_types::base64::encode(data))),
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

impl Fleet {
    fn events(&self, task_id: &str) -> broadcast::Sender<TaskEvent> {
        lock(&self.live().events)
            .entry(task_id.to_string())
            .or_insert_with(|| broadcast::channel(4096).0)
            .clone()
    }

    fn publish(&self, task_id: &str, event: TaskEvent) {
        let _ = self.events(task_id).send(event);
    }

    /// Follows a task's events from now on.
    pub fn subscribe(&self, task_id: &str) -> broadcast::Receiver<TaskEvent> {
        self.events(task_id).subscribe()
    }

    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: serde_json::Value) {
        let entry = AuditEntry {
            id: 0,
            at: Utc::now(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
        };
        if let Err(e) = self.store().insert_audit(&entry).await {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, FleetError> {
        Ok(self.store().list_audit(&filter).await?)
    }

    /// Creates a task on every targeted node and starts dispatching it.
    pub async fn create_task(&self, actor: &str, req: CreateTask) -> Result<Task, FleetError> {
        req.spec
            .validate()
            .map_err(|e| FleetError::invalid(format!("spec.{}", e.field), e.reason))?;
        if req.max_parallel == Some(0) {
            return Err(FleetError::invalid("max_parallel", "must be at least 1"));
        }
        let nodes = match &req.target {
            Target::Node(n) => vec![self.node(n).await?],
            Target::Selector(sel) => {
                if sel.is_empty() {
                    return Err(FleetError::invalid(
                        "target",
                        "an empty selector; use `all` to mean every node",
                    ));
                }
                self.nodes()
                    .await?
                    .into_iter()
                    .filter(|n| sel.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                    .collect()
            }
            Target::All => self.nodes().await?,
        };
        if nodes.is_empty() {
            return Err(FleetError::invalid("target", "no node matches"));
        }
        let now = Utc::now();
        let runs = nodes
            .iter()
            .map(|n| {
                let reachable = n.connected;
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
            .collect();
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            target: req.target,
            spec: req.spec,
            created_by: actor.to_string(),
            created_at: now,
            max_parallel: req.max_parallel,
            runs,
        };
        self.store().insert_task(&task).await?;
        let nodes_list: Vec<&str> = task.runs.iter().map(|r| r.node_name.as_str()).collect();
        self.audit(
            actor,
            "task.create",
            &nodes_list.join(","),
            serde_json::json!({"task": task.id, "command": task.spec.summary(), "spec": task.spec}),
        )
        .await;
        tracing::info!(task = %task.id, nodes = task.runs.len(), command = %task.spec.summary(), "task created");
        self.events(&task.id);
        self.pump(&task.id).await?;
        self.task(&task.id).await
    }

    /// A task by its id, or by a unique prefix of it (as tables show).
    pub async fn task(&self, id: &str) -> Result<Task, FleetError> {
        if let Some(t) = self.store().get_task(id).await? {
            return Ok(t);
        }
        let ids = if id.len() >= 4 {
            self.store().task_ids_with_prefix(id, 2).await?
        } else {
            Vec::new()
        };
        match ids.as_slice() {
            [one] => self
                .store()
                .get_task(one)
                .await?
                .ok_or_else(|| FleetError::TaskNotFound(id.to_string())),
            [] => Err(FleetError::TaskNotFound(id.to_string())),
            _ => Err(FleetError::invalid(
                "id",
                format!("{id:?} matches several tasks; give more of the id"),
            )),
        }
    }

    pub async fn tasks(&self, limit: usize) -> Result<Vec<Task>, FleetError> {
        Ok(self.store().list_tasks(limit).await?)
    }

    pub async fn task_output_page(
        &self,
        id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, FleetError> {
        Ok(self.store().output(id, after, limit).await?)
    }

    /// Starts pending runs while the parallelism limit allows; announces the end when all are final.
    async fn pump(&self, task_id: &str) -> Result<(), FleetError> {
        let _one_at_a_time = self.live().pump.lock().await;
        let task = self.task(task_id).await?;
        let limit = task.max_parallel.map(|m| m as usize).unwrap_or(usize::MAX);
        let mut running = task
            .runs
            .iter()
            .filter(|r| r.state == RunState::Running)
            .count();
        let spec_json = serde_json::to_string(&task.spec).unwrap_or_default();
        for mut run in task
            .runs
            .iter()
            .filter(|r| r.state == RunState::Pending)
            .cloned()
        {
            if running >= limit {
                break;
            }
            lock(&self.live().progress).insert(
                (task.id.clone(), run.node_id.clone()),
                Progress {
                    node_name: run.node_name.clone(),
                    ..Progress::default()
                },
            );
            let start = v1::TaskStart {
                task_id: task.id.clone(),
                spec_json: spec_json.clone(),
            };
            if self.links().send(&run.node_id, Msg::TaskStart(start)).await {
                run.state = RunState::Running;
                run.started_at = Some(Utc::now());
                running += 1;
            } else {
                lock(&self.live().progress).remove(&(task.id.clone(), run.node_id.clone()));
                run.state = RunState::Unreachable;
                run.error = Some("the node disconnected before the task could start".into());
                run.finished_at = Some(Utc::now());
            }
            self.store().update_run(&task.id, &run).await?;
            if run.state.is_final() {
                self.publish(&task.id, TaskEvent::Exit(run));
            }
        }
        if self.task(task_id).await?.is_finished() {
            self.publish(task_id, TaskEvent::Done);
        }
        Ok(())
    }

    /// Output from a node: held until it is next in order, then stored and published.
    pub async fn task_output(&self, node_id: &str, out: v1::TaskOutput) {
        let key = (out.task_id.clone(), node_id.to_string());
        let ready: Vec<(u64, u8, Vec<u8>)>;
        let node_name;
        {
            let mut progress = lock(&self.live().progress);
            let Some(p) = progress.get_mut(&key) else {
                return;
            };
            for c in out.chunks {
                if c.seq >= p.next_seq && p.held.len() < MAX_HELD_CHUNKS {
                    p.held.insert(c.seq, (c.stream.min(2) as u8, c.data));
                }
            }
            let mut r = Vec::new();
            while let Some((stream, data)) = p.held.remove(&p.next_seq) {
                r.push((p.next_seq, stream, data));
                p.next_seq += 1;
            }
            ready = r;
            node_name = p.node_name.clone();
        }
        if ready.is_empty() {
            return;
        }
        let records = ready
            .iter()
            .map(|(seq, stream, data)| OutputRecord {
                node_id: node_id.to_string(),
                seq: *seq,
                stream: *stream,
                data: data.clone(),
            })
            .collect();
        if let Err(e) = self.store().insert_output(&out.task_id, records).await {
            tracing::error!(task = %out.task_id, "cannot store task output: {e}");
            return;
        }
        let first = ready.first().map(|r| r.0).unwrap_or_default();
        let last = ready.last().map(|r| r.0).unwrap_or_default();
        let chunks = ready
            .iter()
            .map(|(seq, stream, data)| chunk(node_id, &node_name, *seq, *stream, data))
            .collect();
        self.publish(&out.task_id, TaskEvent::Output(chunks));
        // Acknowledge whenever a batch crosses a multiple of ACK_EVERY.
        if (last + 1) / ACK_EVERY > first / ACK_EVERY {
            let ack = v1::TaskAck {
                task_id: out.task_id.clone(),
                upto_seq: last + 1,
                exit: false,
            };
            self.links().send(node_id, Msg::TaskAck(ack)).await;
        }
        self.try_finish(&out.task_id, node_id).await;
    }

    /// A node's task ended; it is final once every chunk before it is stored.
    pub async fn task_exit(&self, node_id: &str, exit: v1::TaskExit) {
        let key = (exit.task_id.clone(), node_id.to_string());
        let known = {
            let mut progress = lock(&self.live().progress);
            match progress.get_mut(&key) {
                Some(p) => {
                    p.exit = Some(exit.clone());
                    true
                }
                None => false,
            }
        };
        if known {
            self.try_finish(&exit.task_id, node_id).await;
        } else {
            // Already final here (say, cancelled while the node was away): let the agent forget it.
            let ack = v1::TaskAck {
                task_id: exit.task_id,
                upto_seq: exit.seq,
                exit: true,
            };
            self.links().send(node_id, Msg::TaskAck(ack)).await;
        }
    }

    async fn try_finish(&self, task_id: &str, node_id: &str) {
        let key = (task_id.to_string(), node_id.to_string());
        let exit = {
            let mut progress = lock(&self.live().progress);
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
        let ack = v1::TaskAck {
            task_id: task_id.to_string(),
            upto_seq: exit.seq,
            exit: true,
        };
        self.links().send(node_id, Msg::TaskAck(ack)).await;
        if let Err(e) = self.pump(task_id).await {
            tracing::error!(task = %task_id, "cannot continue a task: {e}");
        }
    }

    async fn finish_run(
        &self,
        task_id: &str,
        node_id: &str,
        exit: &v1::TaskExit,
    ) -> Result<(), FleetError> {
        let task = self.task(task_id).await?;
        let Some(mut run) = task.runs.into_iter().find(|r| r.node_id == node_id) else {
            return Ok(());
        };
        if run.state.is_final() {
            return Ok(());
        }
        run.state = RunState::parse(&exit.state)
            .filter(|s| s.is_final())
            .unwrap_or(RunState::Error);
        run.exit_code = exit.exit_code;
        run.signal = exit.signal;
        run.error = (!exit.error.is_empty()).then(|| exit.error.clone());
        run.finished_at = Some(Utc::now());
        self.store().update_run(task_id, &run).await?;
        tracing::info!(task = %task_id, node = %run.node_name, state = run.state.as_str(), code = ?run.exit_code, "task run finished");
        self.audit(
            &task.created_by,
            "task.finish",
            &run.node_name,
            serde_json::json!({"task": task_id, "command": task.spec.summary(), "state": run.state, "exit_code": run.exit_code, "signal": run.signal, "error": run.error}),
        )
        .await;
        self.publish(task_id, TaskEvent::Exit(run));
        Ok(())
    }

    /// A node (re)attached: redeliver the tasks it was running. The agent runs none twice; it resends
    /// the output and exits the server has not acknowledged.
    pub async fn redeliver_tasks(&self, node_id: &str, node_name: &str) {
        let running = match self.store().running_tasks_for_node(node_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot look up tasks to redeliver: {e}");
                return;
            }
        };
        for (task_id, spec) in running {
            let next_seq = self
                .store()
                .stored_seq(&task_id, node_id)
                .await
                .unwrap_or(0);
            lock(&self.live().progress)
                .entry((task_id.clone(), node_id.to_string()))
                .or_insert_with(|| Progress {
                    node_name: node_name.to_string(),
                    next_seq,
                    ..Progress::default()
                });
            let start = v1::TaskStart {
                task_id: task_id.clone(),
                spec_json: serde_json::to_string(&spec).unwrap_or_default(),
            };
            self.links().send(node_id, Msg::TaskStart(start)).await;
            tracing::info!(task = %task_id, node = %node_name, "redelivered a running task");
        }
    }

    /// Cancels every run not yet final: pending ones at once, running ones on their nodes.
    pub async fn cancel_task(&self, actor: &str, id: &str) -> Result<Task, FleetError> {
        let task = self.task(id).await?;
        let id = task.id.as_str();
        self.audit(
            actor,
            "task.cancel",
            &task
                .runs
                .iter()
                .map(|r| r.node_name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            serde_json::json!({"task": id}),
        )
        .await;
        for mut run in task.runs.into_iter().filter(|r| !r.state.is_final()) {
            let on_node = run.state == RunState::Running
                && self
                    .links()
                    .send(
                        &run.node_id,
                        Msg::TaskCancel(v1::TaskCancel {
                            task_id: id.to_string(),
                        }),
                    )
                    .await;
            if !on_node {
                run.state = RunState::Cancelled;
                run.finished_at = Some(Utc::now());
                if run.started_at.is_some() {
                    run.error =
                        Some("the node is not connected; cancelled on the server only".into());
                }
                lock(&self.live().progress).remove(&(id.to_string(), run.node_id.clone()));
                self.store().update_run(id, &run).await?;
                self.publish(id, TaskEvent::Exit(run));
            }
        }
        self.pump(id).await?;
        self.task(id).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn binary_output_is_base64() {
        let c = super::chunk("n", "n", 0, 1, &[0xff, 0xfe, 0, 1]);
        assert_eq!(c.base64.as_deref(), Some("//4AAQ=="));
        assert!(c.text.is_none());
        assert_eq!(
            super::chunk("n", "n", 0, 2, b"hi\n").text.as_deref(),
            Some("hi\n")
        );
    }
}
