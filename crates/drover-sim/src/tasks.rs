//! The simulated agent's task table, in memory: a task "runs" for the configured delay and succeeds, its
//! output (one message) and its exit are kept until the server acknowledges the exit and resent after a
//! reconnect, and its id is remembered afterwards so a redelivered start is not run twice (as the real
//! agent does with its on-disk outbox).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use drover_agent::tasks::outbox::{Chunk, Exit};
use drover_agent::tasks::{Ended, exit_message, output_message};
use drover_proto::v1::agent_message::Msg;
use drover_types::task::{MAX_CHUNK_BYTES, TaskSpec};
use tokio::time::Instant;

/// Finished and acknowledged ids remembered per agent (the real agent keeps 10,000 on disk; a simulated
/// fleet of thousands keeps fewer in memory).
const REMEMBERED: usize = 256;

enum Open {
    Running { due: Instant },
    Finished(Exit),
}

/// The most output a simulated task prints: one message, as much as the real agent sends in one.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// What every simulated task prints, cut into chunks as the agent cuts them.
#[derive(Debug)]
pub struct Output(Vec<Vec<u8>>);

impl Output {
    /// `bytes` of lines (at least one byte, at most `MAX_OUTPUT`).
    pub fn new(bytes: usize) -> Self {
        let line = b"simulated: task output\n";
        let data: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(bytes.clamp(1, MAX_OUTPUT))
            .collect();
        Self(data.chunks(MAX_CHUNK_BYTES).map(<[u8]>::to_vec).collect())
    }

    fn message(&self, task_id: &str) -> Msg {
        let chunks = self.0.iter().zip(0..);
        output_message(
            task_id,
            chunks
                .map(|(data, seq)| Chunk {
                    seq,
                    stream: 1,
                    data: data.clone(),
                })
                .collect(),
        )
    }

    /// Output chunks before the exit.
    fn chunks(&self) -> u64 {
        self.0.len() as u64
    }
}

impl Default for Output {
    fn default() -> Self {
        Self(vec![b"simulated: done\n".to_vec()])
    }
}

#[derive(Default)]
pub struct TaskTable {
    output: Arc<Output>,
    open: BTreeMap<String, Open>,
    done: HashSet<String>,
    done_order: VecDeque<String>,
}

/// The end after `seq` output chunks.
fn exit(seq: u64, ended: Ended) -> Exit {
    Exit {
        seq,
        state: ended.state.to_string(),
        exit_code: ended.exit_code,
        signal: ended.signal,
        error: ended.error,
    }
}

impl TaskTable {
    pub fn new(output: Arc<Output>) -> Self {
        Self {
            output,
            ..Self::default()
        }
    }

    /// A TaskStart: what to send now.
    pub fn start(
        &mut self,
        task_id: &str,
        spec_json: &str,
        now: Instant,
        delay: Duration,
    ) -> Vec<Msg> {
        if self.done.contains(task_id) {
            return vec![];
        }
        if self.open.contains_key(task_id) {
            return self.resend(task_id);
        }
        // Like the real agent: a spec it cannot read ends in Error without output.
        let entry = match serde_json::from_str::<TaskSpec>(spec_json) {
            Err(e) => Open::Finished(exit(
                0,
                Ended::error(format!("this agent does not understand the task: {e}")),
            )),
            Ok(_) if delay.is_zero() => Open::Finished(exit(self.output.chunks(), Ended::ok())),
            Ok(_) => Open::Running { due: now + delay },
        };
        self.open.insert(task_id.to_string(), entry);
        self.resend(task_id)
    }

    /// Output and, if finished, the exit of one open task.
    fn resend(&self, task_id: &str) -> Vec<Msg> {
        match self.open.get(task_id) {
            None => vec![],
            Some(Open::Running { .. }) => vec![self.output.message(task_id)],
            Some(Open::Finished(e)) if e.seq == 0 => vec![Msg::TaskExit(exit_message(task_id, e))],
            Some(Open::Finished(e)) => {
                vec![
                    self.output.message(task_id),
                    Msg::TaskExit(exit_message(task_id, e)),
                ]
            }
        }
    }

    /// Everything not acknowledged, for a new stream.
    pub fn resend_all(&self) -> Vec<Msg> {
        self.open.keys().flat_map(|id| self.resend(id)).collect()
    }

    pub fn cancel(&mut self, task_id: &str) -> Vec<Msg> {
        let Some(entry) = self.open.get_mut(task_id) else {
            return vec![];
        };
        if !matches!(entry, Open::Running { .. }) {
            return vec![];
        }
        let e = exit(
            self.output.chunks(),
            Ended {
                state: "Cancelled",
                exit_code: None,
                signal: Some(libc::SIGTERM),
                error: String::new(),
            },
        );
        let message = Msg::TaskExit(exit_message(task_id, &e));
        *entry = Open::Finished(e);
        vec![message]
    }

    /// Tasks whose time came: their exits.
    pub fn finish_due(&mut self, now: Instant) -> Vec<Msg> {
        let mut out = vec![];
        for (id, entry) in self.open.iter_mut() {
            if matches!(entry, Open::Running { due } if *due <= now) {
                let e = exit(self.output.chunks(), Ended::ok());
                out.push(Msg::TaskExit(exit_message(id, &e)));
                *entry = Open::Finished(e);
            }
        }
        out
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.open
            .values()
            .filter_map(|e| match e {
                Open::Running { due } => Some(*due),
                Open::Finished(_) => None,
            })
            .min()
    }

    /// The server stored the exit: forget the task, remember its id.
    pub fn acknowledged(&mut self, task_id: &str, exit: bool) -> bool {
        if !exit || !matches!(self.open.get(task_id), Some(Open::Finished(_))) {
            return false;
        }
        self.open.remove(task_id);
        if self.done.insert(task_id.to_string()) {
            self.done_order.push_back(task_id.to_string());
            if self.done_order.len() > REMEMBERED
                && let Some(old) = self.done_order.pop_front()
            {
                self.done.remove(&old);
            }
        }
        true
    }

    /// Ids for Hello: running, or finished without an acknowledgement.
    pub fn open_ids(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"kind": "exec", "argv": ["true"]}"#;

    fn kinds(msgs: &[Msg]) -> Vec<String> {
        msgs.iter()
            .map(|m| match m {
                Msg::TaskOutput(o) => format!("out:{}", o.chunks[0].seq),
                Msg::TaskExit(e) => format!("exit:{}:{}", e.state, e.seq),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn an_instant_task_succeeds_stays_open_until_acked_and_is_never_run_twice() {
        let spec = serde_json::to_string(&TaskSpec::Exec {
            argv: vec!["true".into()],
            shell: None,
            env: Default::default(),
            cwd: None,
            user: None,
            timeout_ms: None,
            grace_ms: None,
        })
        .unwrap();
        let mut t = TaskTable::default();
        let now = Instant::now();
        let sent = t.start("t1", &spec, now, Duration::ZERO);
        assert_eq!(kinds(&sent), ["out:0", "exit:Succeeded:1"]);
        assert_eq!(t.open_ids(), ["t1"]);
        // Redelivered before the ack: resend, do not run again.
        assert_eq!(
            kinds(&t.start("t1", &spec, now, Duration::ZERO)),
            ["out:0", "exit:Succeeded:1"]
        );
        assert_eq!(kinds(&t.resend_all()), ["out:0", "exit:Succeeded:1"]);
        assert!(!t.acknowledged("t1", false));
        assert!(t.acknowledged("t1", true));
        assert!(t.open_ids().is_empty());
        assert!(t.start("t1", &spec, now, Duration::ZERO).is_empty());
    }

    #[test]
    fn a_delayed_task_finishes_when_due_or_when_cancelled() {
        let mut t = TaskTable::default();
        let now = Instant::now();
        let d = Duration::from_secs(5);
        assert_eq!(kinds(&t.start("a", SPEC, now, d)), ["out:0"]);
        assert_eq!(kinds(&t.start("b", SPEC, now, d)), ["out:0"]);
        assert_eq!(t.next_due(), Some(now + d));
        assert!(t.finish_due(now).is_empty());
        assert_eq!(kinds(&t.cancel("b")), ["exit:Cancelled:1"]);
        assert!(t.cancel("b").is_empty());
        assert_eq!(kinds(&t.finish_due(now + d)), ["exit:Succeeded:1"]);
        assert_eq!(t.next_due(), None);
        assert_eq!(t.open_ids(), ["a", "b"]);
    }

    #[test]
    fn larger_output_travels_in_chunks_of_at_most_the_agents_size_and_the_exit_counts_them() {
        let mut t = TaskTable::new(Arc::new(Output::new(150 * 1024)));
        let sent = t.start("a", SPEC, Instant::now(), Duration::ZERO);
        let Msg::TaskOutput(o) = &sent[0] else {
            panic!("output first: {}", kinds(&sent).join(","));
        };
        let sizes: Vec<usize> = o.chunks.iter().map(|c| c.data.len()).collect();
        assert_eq!(sizes, [64 * 1024, 64 * 1024, 22 * 1024]);
        assert_eq!(kinds(&sent[1..]), ["exit:Succeeded:3"]);
    }

    #[test]
    fn a_spec_it_cannot_read_ends_in_error() {
        let mut t = TaskTable::default();
        let sent = t.start("x", "{\"volume\": 1}", Instant::now(), Duration::ZERO);
        assert_eq!(kinds(&sent), ["exit:Error:0"]);
    }
}
