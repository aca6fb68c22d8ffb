//! Liveness derived from a node's lease: the time since its last heartbeat measured in its own intervals.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeStatus {
    /// Heartbeats arrive on time.
    Ready,
    /// A few heartbeats were missed.
    NotReady,
    /// The node has been silent for long, or never sent one.
    Offline,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Ready => "Ready",
            NodeStatus::NotReady => "NotReady",
            NodeStatus::Offline => "Offline",
        })
    }
}

/// How many of a node's own heartbeat intervals may pass before it is NotReady, then Offline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LivenessPolicy {
    pub not_ready_after: f64,
    pub offline_after: f64,
}

impl Default for LivenessPolicy {
    fn default() -> Self {
        Self {
            not_ready_after: 2.0,
            offline_after: 5.0,
        }
    }
}

impl LivenessPolicy {
    /// The status of a node last heard from at `last_seen` that promised a heartbeat every `interval`.
    pub fn status(
        &self,
        last_seen: Option<DateTime<Utc>>,
        interval: Duration,
        now: DateTime<Utc>,
    ) -> NodeStatus {
        let Some(last_seen) = last_seen else {
            return NodeStatus::Offline;
        };
        let silent = (now - last_seen).to_std().unwrap_or(Duration::ZERO);
        let interval = interval.max(Duration::from_millis(1)).as_secs_f64();
        let missed = silent.as_secs_f64() / interval;
        if missed >= self.offline_after {
            NodeStatus::Offline
        } else if missed >= self.not_ready_after {
            NodeStatus::NotReady
        } else {
            NodeStatus::Ready
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_missed_intervals() {
        let policy = LivenessPolicy::default();
        let now = Utc::now();
        let interval = Duration::from_secs(10);
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(policy.status(ago(5), interval, now), NodeStatus::Ready);
        assert_eq!(policy.status(ago(25), interval, now), NodeStatus::NotReady);
        assert_eq!(policy.status(ago(60), interval, now), NodeStatus::Offline);
        assert_eq!(policy.status(None, interval, now), NodeStatus::Offline);
        // A clock that runs backwards counts as just seen.
        assert_eq!(policy.status(ago(-30), interval, now), NodeStatus::Ready);
    }
}
