//! How one node did with a manifest's revision, judged from its convergence report: the outcomes a
//! rollout counts (`rollout::Outcome`). Apart from `rollout` and `manifest`, which both name, so neither
//! imports the other's neighbour.

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

/// How a node did with a manifest's revision: judged from its latest report, once it observed its
/// current desired state (`desired_generation`, which holds the revision once the node is released).
/// The reason names the first failing resource, or the failing health check. A manifest the node reports
/// health checks for is judged by them too; [`node_outcome_with_checks`] also waits for them.
pub fn node_outcome(
    manifest: &str,
    desired_generation: u64,
    report: Option<&crate::manifest::NodeConvergence>,
    connected: bool,
) -> (Outcome, Option<String>) {
    node_outcome_with_checks(manifest, desired_generation, report, connected, false)
}

/// [`node_outcome`] of a manifest that has rollout health checks when `checks`: with its resources
/// ready, the node is Pending (Unreachable when not connected) until it reports the checks, and failed
/// (a change failure, whatever the check saw) while it reports them failing.
pub fn node_outcome_with_checks(
    manifest: &str,
    desired_generation: u64,
    report: Option<&crate::manifest::NodeConvergence>,
    connected: bool,
    checks: bool,
) -> (Outcome, Option<String>) {
    use crate::manifest::ResourceState as S;
    let waiting = if connected {
        Outcome::Pending
    } else {
        Outcome::Unreachable
    };
    let Some(report) =
        report.filter(|r| desired_generation > 0 && r.observed_generation >= desired_generation)
    else {
        return (waiting, None);
    };
    let mut pending = false;
    for r in report.resources.iter().filter(|r| r.manifest == manifest) {
        match r.state {
            S::Ready => {}
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
    // A check judges the change itself (the service it put there answers or not), so a failing one is
    // a change failure even when what it saw reads like a network error ("connection refused").
    match report.health.iter().find(|h| h.manifest == manifest) {
        Some(h) if !h.healthy => (
            Outcome::ChangeFailed,
            Some(format!(
                "health check: {}",
                h.reason.as_deref().unwrap_or("failing")
            )),
        ),
        Some(_) => (Outcome::Converged, None),
        None if checks => (waiting, None),
        None => (Outcome::Converged, None),
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
            node_outcome_with_checks("web", 3, Some(r), connected, checks)
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
            node_outcome("web", 3, Some(&failing), true).0,
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
        assert_eq!(
            node_outcome_with_checks("web", 4, Some(&failing), true, true),
            (Outcome::Pending, None)
        );
    }
}
