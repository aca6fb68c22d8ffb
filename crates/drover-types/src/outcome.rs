//! How one node did with a manifest's revision, judged from its convergence report: the outcomes a
//! rollout counts (`rollout::Outcome`). Apart from `rollout` and `manifest`, which both name, so neither
//! imports the other's neighbour.

use chrono::{DateTime, Utc};

use crate::manifest::NodeConvergence;
use crate::rollout::Outcome;

/// Failure texts that name the infrastructure rather than the change (checked after those that name
/// the change itself, such as an image that does not exist).
const INFRA_SIGNS: [&str; 12] = [
    "timed out",
    "timeout",
    "connection refused",
    "connection reset",
    "network is unreachable",
    "no route to host",
    "temporary failure in name resolution",
    "dial tcp",
    "tls handshake",
    "service unavailable",
    "too many requests",
    "cannot reach",
];
const CHANGE_SIGNS: [&str; 4] = [
    "manifest unknown",
    "not found",
    "does not exist",
    "no such image",
];

/// Whether a resource's error names the infrastructure (see [`Outcome::InfraFailed`]).
pub fn is_infrastructure(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    !CHANGE_SIGNS.iter().any(|s| e.contains(s)) && INFRA_SIGNS.iter().any(|s| e.contains(s))
}

/// Drift corrections of one resource, since its wave began, that make a change failure: corrected once
/// may be a stray hand; corrected and back again means something on the node fights the change.
pub const DRIFT_FAILS: usize = 2;

/// What one node's outcome with a manifest's revision is judged from: its latest report, once it observed
/// its current desired state (`desired_generation`, which holds the revision once the node is released).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeJudging<'a> {
    pub manifest: &'a str,
    /// The revision rolled out (a manifest generation): a node that put itself back from it failed it.
    pub revision: u64,
    pub desired_generation: u64,
    pub report: Option<&'a NodeConvergence>,
    pub connected: bool,
    /// The manifest has rollout health checks: with its resources ready, the node is Pending
    /// (Unreachable when not connected) until it reports them.
    pub checks: bool,
    /// Drift corrected at or after this time counts ([`DRIFT_FAILS`]); `None`: drift is not judged.
    pub drift_since: Option<DateTime<Utc>>,
}

impl NodeJudging<'_> {
    /// How the node did. The reason names what failed: the node's own revert, the first failing resource,
    /// drift that keeps coming back, or the failing health check (a change failure, whatever the check saw).
    pub fn outcome(&self) -> (Outcome, Option<String>) {
        use crate::manifest::ResourceState as S;
        let manifest = self.manifest;
        let waiting = if self.connected {
            Outcome::Pending
        } else {
            Outcome::Unreachable
        };
        // Said in every report until the server gives the manifest another revision, whatever the
        // generation: the node went back while it could not report.
        if let Some(back) = self.report.and_then(|r| {
            r.self_reverted
                .iter()
                .find(|s| s.manifest == manifest && s.revision == self.revision)
        }) {
            return (
                Outcome::ChangeFailed,
                Some(format!(
                    "put itself back on revision {} while the server was unreachable: {}",
                    back.previous_revision, back.reason
                )),
            );
        }
        let Some(report) = self.report.filter(|r| {
            self.desired_generation > 0 && r.observed_generation >= self.desired_generation
        }) else {
            return (waiting, None);
        };
        let mut pending = false;
        for r in report.resources.iter().filter(|r| r.manifest == manifest) {
            match r.state {
                S::Ready => {
                    if let Some(why) = self.drift_fails(r) {
                        return (Outcome::ChangeFailed, Some(why));
                    }
                }
                S::Pending | S::Reconciling => pending = true,
                S::Failed | S::Refused | S::UnknownKind | S::Conflict => {
                    let error = r.error.clone().unwrap_or_else(|| format!("{:?}", r.state));
                    let outcome = if r.state == S::Failed && is_infrastructure(&error) {
                        Outcome::InfraFailed
                    } else {
                        Outcome::ChangeFailed
                    };
                    return (outcome, Some(format!("{}: {error}", r.id)));
                }
            }
        }
        if pending {
            return (waiting, None);
        }
        // A check judges the change itself (the service it put there answers or not), so a failing one
        // is a change failure even when what it saw reads like a network error ("connection refused").
        match report.health.iter().find(|h| h.manifest == manifest) {
            Some(h) if !h.healthy => (
                Outcome::ChangeFailed,
                Some(format!(
                    "health check: {}",
                    h.reason.as_deref().unwrap_or("failing")
                )),
            ),
            Some(_) => (Outcome::Converged, None),
            None if self.checks => (waiting, None),
            None => (Outcome::Converged, None),
        }
    }

    /// Why a ready resource's drift makes a change failure, if it does.
    fn drift_fails(&self, r: &crate::manifest::ResourceStatus) -> Option<String> {
        let since = self.drift_since?;
        let recent: Vec<_> = r.drift.iter().filter(|d| d.at >= since).collect();
        let last = recent.last()?;
        (recent.len() >= DRIFT_FAILS).then(|| {
            format!(
                "{}: drift does not stay corrected: corrected {} times since its wave began (last: {})",
                r.id,
                recent.len(),
                last.what
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_health_check_is_a_change_failure_and_checks_not_reported_yet_wait() {
        use crate::manifest::{ManifestHealth, NodeConvergence, ResourceState, ResourceStatus};
        let report = |state: ResourceState, health: Vec<ManifestHealth>| NodeConvergence {
            observed_generation: 3,
            resources: vec![ResourceStatus::new("f", "web", "file", state)],
            health,
            ..Default::default()
        };
        let health = |healthy: bool, reason: Option<&str>| {
            vec![ManifestHealth {
                manifest: "web".into(),
                healthy,
                reason: reason.map(String::from),
            }]
        };
        let judge = |r: &NodeConvergence, connected: bool, checks: bool| {
            NodeJudging {
                manifest: "web",
                revision: 7,
                desired_generation: 3,
                report: Some(r),
                connected,
                checks,
                drift_since: None,
            }
            .outcome()
        };
        // Failing: a change failure with the check's reason, even when it reads like the network's.
        let failing = report(
            ResourceState::Ready,
            health(false, Some("tcp 127.0.0.1:9: connection refused")),
        );
        assert_eq!(
            judge(&failing, true, true),
            (
                Outcome::ChangeFailed,
                Some("health check: tcp 127.0.0.1:9: connection refused".into())
            )
        );
        assert_eq!(
            judge(&failing, true, false).0,
            Outcome::ChangeFailed,
            "a reported failure counts whoever asks"
        );
        // Passing: converged.
        let passing = report(ResourceState::Ready, health(true, None));
        assert_eq!(judge(&passing, true, true), (Outcome::Converged, None));
        // Not reported yet: a manifest with checks waits; one without is judged as before.
        let unchecked = report(ResourceState::Ready, vec![]);
        assert_eq!(judge(&unchecked, true, true), (Outcome::Pending, None));
        assert_eq!(judge(&unchecked, false, true), (Outcome::Unreachable, None));
        assert_eq!(judge(&unchecked, true, false), (Outcome::Converged, None));
        // A failing resource is named before any check; resources still at work wait.
        let broken = report(ResourceState::Refused, health(true, None));
        assert_eq!(judge(&broken, true, true).0, Outcome::ChangeFailed);
        let working = report(ResourceState::Reconciling, health(false, Some("x")));
        assert_eq!(judge(&working, true, true), (Outcome::Pending, None));
        // Another manifest's health says nothing of this one.
        let mut other = report(ResourceState::Ready, health(false, Some("x")));
        other.health[0].manifest = "db".into();
        assert_eq!(judge(&other, true, false), (Outcome::Converged, None));
        // A report of an older desired state is not judged at all.
        let newer = NodeJudging {
            manifest: "web",
            desired_generation: 4,
            report: Some(&failing),
            connected: true,
            checks: true,
            ..Default::default()
        };
        assert_eq!(newer.outcome(), (Outcome::Pending, None));
    }

    #[test]
    fn a_node_that_put_itself_back_failed_the_revision_it_left_whatever_its_generation() {
        use crate::manifest::{NodeConvergence, SelfRevert};
        let report = NodeConvergence {
            observed_generation: 2,
            self_reverted: vec![SelfRevert {
                manifest: "web".into(),
                revision: 7,
                previous_revision: 6,
                reason: "tcp 127.0.0.1:9: connection refused".into(),
                at: Utc::now(),
            }],
            ..Default::default()
        };
        let judging = |manifest, revision| NodeJudging {
            manifest,
            revision,
            desired_generation: 5,
            report: Some(&report),
            connected: true,
            ..Default::default()
        };
        assert_eq!(
            judging("web", 7).outcome(),
            (
                Outcome::ChangeFailed,
                Some(
                    "put itself back on revision 6 while the server was unreachable: tcp 127.0.0.1:9: connection refused"
                        .into()
                )
            )
        );
        // Another revision or manifest: judged as usual (here: an old report, pending).
        assert_eq!(judging("web", 8).outcome().0, Outcome::Pending);
        assert_eq!(judging("db", 7).outcome().0, Outcome::Pending);
    }

    #[test]
    fn drift_corrected_again_since_the_wave_began_is_a_change_failure() {
        use crate::manifest::{DriftEvent, NodeConvergence, ResourceState, ResourceStatus};
        let began = Utc::now();
        let event = |secs: i64, what: &str| DriftEvent {
            at: began + chrono::Duration::seconds(secs),
            what: what.into(),
        };
        let report = |drift: Vec<DriftEvent>| {
            let mut r = ResourceStatus::new("conf", "web", "file", ResourceState::Ready);
            r.drift = drift;
            NodeConvergence {
                observed_generation: 3,
                resources: vec![r],
                ..Default::default()
            }
        };
        let judge = |r: &NodeConvergence| {
            NodeJudging {
                manifest: "web",
                desired_generation: 3,
                report: Some(r),
                connected: true,
                drift_since: Some(began),
                ..Default::default()
            }
            .outcome()
        };
        // Once since the wave began (and any number before it): converged.
        let once = report(vec![
            event(-60, "content"),
            event(-30, "content"),
            event(5, "mode"),
        ]);
        assert_eq!(judge(&once), (Outcome::Converged, None));
        // Twice: something fights the change.
        let twice = report(vec![event(5, "content"), event(40, "content changed")]);
        assert_eq!(
            judge(&twice),
            (
                Outcome::ChangeFailed,
                Some(
                    "conf: drift does not stay corrected: corrected 2 times since its wave began (last: content changed)"
                        .into()
                )
            )
        );
        // Without a start, drift is not judged.
        let unjudged = NodeJudging {
            manifest: "web",
            desired_generation: 3,
            report: Some(&twice),
            connected: true,
            ..Default::default()
        };
        assert_eq!(unjudged.outcome(), (Outcome::Converged, None));
    }
}
