//! Counters the whole fleet shares, printed as a status line and written as a JSON status file.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Stats {
    pub started: AtomicU64,
    pub enrolled: AtomicU64,
    /// Agents that gave up (refused enrollment, unreadable state dir).
    pub failed: AtomicU64,
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub heartbeats: AtomicU64,
    pub session_data: AtomicU64,
    pub tasks_finished: AtomicU64,
    pub reports: AtomicU64,
    pub blobs_fetched: AtomicU64,
    /// Content that came inside a desired state update, so needed no fetch.
    pub blobs_inline: AtomicU64,
    pub blob_errors: AtomicU64,
    pub actions: AtomicU64,
    /// Agents of the offline share that are gone for good (never attached, or left).
    pub offline: AtomicU64,
    /// Agents whose desired state carries a `--fail-when` marker now.
    pub marked: AtomicU64,
    /// Times an agent took a marked desired state after an unmarked one (the nodes a bad revision
    /// reached, over a run).
    pub marked_total: AtomicU64,
    /// Agents reporting a simulated failure now.
    pub failing: AtomicU64,
    last_error: Mutex<String>,
}

/// One moment's counters, as the status line and file show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub agents: u64,
    pub started: u64,
    pub enrolled: u64,
    pub failed: u64,
    pub connected: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub heartbeats: u64,
    pub session_data: u64,
    pub tasks_finished: u64,
    pub reports: u64,
    pub blobs_fetched: u64,
    #[serde(default)]
    pub blobs_inline: u64,
    pub blob_errors: u64,
    pub actions: u64,
    #[serde(default)]
    pub offline: u64,
    #[serde(default)]
    pub marked: u64,
    #[serde(default)]
    pub marked_total: u64,
    #[serde(default)]
    pub failing: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Moves a gauge when one agent's flag changes (each agent adds only what it took away before).
    pub fn flag(gauge: &AtomicU64, was: bool, now: bool) {
        match (was, now) {
            (false, true) => {
                gauge.fetch_add(1, Relaxed);
            }
            (true, false) => {
                gauge.fetch_sub(1, Relaxed);
            }
            _ => {}
        }
    }

    /// Keeps the newest error, for the status line (thousands of agents would drown a log).
    /// Every one is logged at debug level, to count them by cause (`RUST_LOG=drover_sim=debug`).
    pub fn error(&self, message: String) {
        tracing::debug!("{message}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = message;
    }

    pub fn snapshot(&self, agents: u64) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Snapshot {
            agents,
            started: get(&self.started),
            enrolled: get(&self.enrolled),
            failed: get(&self.failed),
            connected: get(&self.connected),
            connects: get(&self.connects),
            disconnects: get(&self.disconnects),
            heartbeats: get(&self.heartbeats),
            session_data: get(&self.session_data),
            tasks_finished: get(&self.tasks_finished),
            reports: get(&self.reports),
            blobs_fetched: get(&self.blobs_fetched),
            blobs_inline: get(&self.blobs_inline),
            blob_errors: get(&self.blob_errors),
            actions: get(&self.actions),
            offline: get(&self.offline),
            marked: get(&self.marked),
            marked_total: get(&self.marked_total),
            failing: get(&self.failing),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl Snapshot {
    /// `key=value` pairs on one line, for scripts (`connected=` and `agents=` say when all are up).
    pub fn line(&self) -> String {
        let mut line = format!(
            "agents={} started={} enrolled={} connected={} failed={} connects={} disconnects={} \
             heartbeats={} session_data={} tasks_finished={} reports={} blobs_fetched={} blobs_inline={} blob_errors={} actions={} \
             offline={} marked={} marked_total={} failing={}",
            self.agents,
            self.started,
            self.enrolled,
            self.connected,
            self.failed,
            self.connects,
            self.disconnects,
            self.heartbeats,
            self.session_data,
            self.tasks_finished,
            self.reports,
            self.blobs_fetched,
            self.blobs_inline,
            self.blob_errors,
            self.actions,
            self.offline,
            self.marked,
            self.marked_total,
            self.failing
        );
        if !self.last_error.is_empty() {
            line.push_str(&format!(" last_error={:?}", self.last_error));
        }
        line
    }
}

/// Counts one connected stream for as long as it lives.
pub struct Connected<'a>(&'a Stats);

impl<'a> Connected<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        stats.connected.fetch_add(1, Relaxed);
        Stats::add(&stats.connects);
        Self(stats)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Relaxed);
        Stats::add(&self.0.disconnects);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_counter_and_the_connected_guard_counts_down() {
        let stats = Stats::default();
        {
            let _a = Connected::new(&stats);
            let _b = Connected::new(&stats);
            assert_eq!(stats.snapshot(2).connected, 2);
        }
        Stats::add(&stats.enrolled);
        Stats::flag(&stats.marked, false, true);
        Stats::flag(&stats.marked, true, true);
        Stats::flag(&stats.failing, false, true);
        Stats::flag(&stats.failing, true, false);
        stats.error("boom".into());
        let snap = stats.snapshot(2);
        assert_eq!((snap.connected, snap.connects, snap.disconnects), (0, 2, 2));
        let line = snap.line();
        assert!(
            line.starts_with("agents=2 started=0 enrolled=1 connected=0 "),
            "{line}"
        );
        assert!(line.ends_with("last_error=\"boom\""), "{line}");
        assert!(
            line.contains(" marked=1 marked_total=0 failing=0 "),
            "{line}"
        );
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snap);
    }
}
