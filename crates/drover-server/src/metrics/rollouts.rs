//! Rollouts as gauges, one set per manifest with a rollout: its state (1 for the state it is in, 0 for the
//! others, so an alert on `state="Paused"` sees the change both ways), the wave under way and its waves,
//! and its nodes by outcome. Labels are the manifest's name (operator-made, `[A-Za-z0-9._-]`, one per
//! manifest) and fixed words: at most 6 + 5 + 2 series per manifest.

use drover_types::rollout::{RolloutState, RolloutStatus};
use prometheus_client::registry::Registry;

use super::{gauges, label};

/// Every state, each a series of `rollout_state`.
const STATES: [RolloutState; 6] = [
    RolloutState::Progressing,
    RolloutState::Baking,
    RolloutState::Paused,
    RolloutState::Reverted,
    RolloutState::Aborted,
    RolloutState::Complete,
];

/// The outcomes as `rollout_nodes` names them (the JSON fields of a wave in `GET /api/v1/rollouts`), and
/// how many of a rollout's nodes, over all its waves, have each.
fn outcomes(r: &RolloutStatus) -> [(&'static str, usize); 5] {
    let sum = |f: fn(&drover_types::rollout::WaveStatus) -> usize| r.waves.iter().map(f).sum();
    [
        ("converged", sum(|w| w.converged)),
        ("change_failed", sum(|w| w.change_failed)),
        ("infra_failed", sum(|w| w.infra_failed)),
        ("unreachable", sum(|w| w.unreachable)),
        ("pending", sum(|w| w.pending)),
    ]
}

/// Registers the rollout gauges in `r`, filled from `rollouts` (as `GET /api/v1/rollouts` gives them).
pub(super) fn register(r: &mut Registry, rollouts: &[RolloutStatus]) {
    let state = gauges(
        r,
        "rollout_state",
        "A manifest's rollout: 1 for the state it is in (Progressing, Baking, Paused, Reverted, \
         Aborted, Complete), 0 for the others",
    );
    let wave = gauges(
        r,
        "rollout_wave",
        "The wave a manifest's rollout is at, counted from 1 (the last one once it completed)",
    );
    let waves = gauges(r, "rollout_waves", "Waves in a manifest's rollout");
    let nodes = gauges(
        r,
        "rollout_nodes",
        "A manifest's rollout's nodes by outcome (converged, change_failed, infra_failed, \
         unreachable, pending), over all its waves",
    );
    for ro in rollouts {
        let manifest = || label("manifest", ro.manifest.as_str());
        for s in STATES {
            state
                .get_or_create(&vec![manifest(), label("state", s.as_str())])
                .set(if s == ro.state { 1.0 } else { 0.0 });
        }
        wave.get_or_create(&vec![manifest()]).set(ro.wave as f64);
        waves
            .get_or_create(&vec![manifest()])
            .set(ro.waves.len() as f64);
        for (outcome, n) in outcomes(ro) {
            nodes
                .get_or_create(&vec![manifest(), label("outcome", outcome)])
                .set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_types::rollout::WaveStatus;
    use prometheus_client::encoding::text::encode_registry;

    use super::*;

    #[test]
    fn a_rollout_is_a_state_a_wave_and_its_nodes_by_outcome() {
        let wave = |converged, change_failed, pending| WaveStatus {
            nodes: converged + change_failed + pending,
            converged,
            change_failed,
            pending,
            ..Default::default()
        };
        let now = chrono::Utc::now();
        let status = RolloutStatus {
            manifest: "web".into(),
            state: RolloutState::Paused,
            revision: 2,
            previous_revision: Some(1),
            wave: 2,
            waves: vec![wave(1, 0, 0), wave(3, 1, 2), wave(0, 0, 10)],
            covered: Default::default(),
            failing: Vec::new(),
            held: 0,
            reason: Some("wave 2: 1 of 6 failed".into()),
            baking_since: None,
            started_by: "admin".into(),
            started_at: now,
            updated_at: now,
        };
        let mut r = Registry::with_prefix("drover");
        register(&mut r, &[status]);
        let mut text = String::new();
        encode_registry(&mut text, &r).unwrap();
        for line in [
            r#"drover_rollout_state{manifest="web",state="Paused"} 1.0"#,
            r#"drover_rollout_state{manifest="web",state="Progressing"} 0.0"#,
            r#"drover_rollout_state{manifest="web",state="Complete"} 0.0"#,
            r#"drover_rollout_wave{manifest="web"} 2.0"#,
            r#"drover_rollout_waves{manifest="web"} 3.0"#,
            r#"drover_rollout_nodes{manifest="web",outcome="converged"} 4.0"#,
            r#"drover_rollout_nodes{manifest="web",outcome="change_failed"} 1.0"#,
            r#"drover_rollout_nodes{manifest="web",outcome="infra_failed"} 0.0"#,
            r#"drover_rollout_nodes{manifest="web",outcome="pending"} 12.0"#,
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
        assert_eq!(text.matches("drover_rollout_state{").count(), 6);
        assert_eq!(text.matches("drover_rollout_nodes{").count(), 5);
    }
}
