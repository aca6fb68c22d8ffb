//! Going back on its own: while a rollout is unfinished the server sends, with each manifest whose new
//! revision it gave this node, the revision the node held before (`DesiredState::fallback`). A node that
//! has lost the server for [`FALLBACK_AFTER`] while that revision fails its health checks puts itself back
//! on the previous one, and reports it ([`SelfRevert`]) until the server gives the manifest another
//! revision: the server counts it as a change failure of its wave. Kept across restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use drover_types::manifest::{ManifestProof, SelfRevert};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::WireDesired;

/// How long the server must have been gone before a node goes back on its own: a server restart or a
/// replica's failover is shorter, and the server judges what it can see itself.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(10);
/// How often, with the server gone, a manifest that could go back has its health checks run again.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Where the reverts in force are kept.
const REVERTS_FILE: &str = "self-reverts.json";

/// A revision to go back to, as it travels: resources and checks stay JSON until each is understood.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WireFallback {
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub previous_revision: u64,
    #[serde(default)]
    pub resources: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<ManifestProof>,
}

/// The reverts in force, by manifest.
pub type Reverts = BTreeMap<String, SelfRevert>;

pub fn load(dir: &Path) -> Reverts {
    super::read_json(&dir.join(REVERTS_FILE)).unwrap_or_default()
}

pub fn save(dir: &Path, reverts: &Reverts) {
    let json = serde_json::to_vec_pretty(reverts).unwrap_or_default();
    if let Err(e) = drover_files::write_atomic(&dir.join(REVERTS_FILE), &json, true) {
        tracing::warn!("cannot persist the node's own reverts: {e}");
    }
}

/// Keeps the reverts the server still rolls out the same revision for; the others end (the rollout moved
/// on, was reverted, or ended). True when some ended.
pub fn keep_current(reverts: &mut Reverts, desired: &WireDesired) -> bool {
    let before = reverts.len();
    reverts.retain(|name, r| {
        let current = desired
            .fallback
            .get(name)
            .is_some_and(|f| f.revision == r.revision);
        if !current {
            tracing::info!(manifest = %name, "the server gave the manifest another revision: its own revert ends");
        }
        current
    });
    reverts.len() != before
}

/// The desired state the node runs: `desired` with each reverted manifest's resources, health checks
/// and signed payload those of its previous revision.
pub fn effective(desired: &WireDesired, reverts: &Reverts) -> WireDesired {
    let mut applied = desired.clone();
    for name in reverts.keys() {
        let Some(back) = desired.fallback.get(name) else {
            continue;
        };
        applied
            .resources
            .retain(|r| r["manifest"].as_str() != Some(name.as_str()));
        applied.resources.extend(back.resources.iter().map(|r| {
            let mut r = r.clone();
            if let Some(fields) = r.as_object_mut() {
                fields.insert("manifest".into(), Value::String(name.clone()));
            }
            r
        }));
        applied.health.remove(name);
        if !back.health.is_empty() {
            applied.health.insert(name.clone(), back.health.clone());
        }
        applied.signed.retain(|p| &p.manifest != name);
        applied.signed.extend(back.signed.clone());
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired() -> WireDesired {
        serde_json::from_value(json!({
            "generation": 4,
            "resources": [
                {"manifest": "web", "id": "conf", "file": {"path": "/tmp/web", "content": "new"}},
                {"manifest": "db", "id": "db", "file": {"path": "/tmp/db", "content": "db"}},
            ],
            "health": {"web": [{"tcp": {"address": "127.0.0.1:9"}}]},
            "fallback": {"web": {
                "revision": 7, "previous_revision": 6,
                "resources": [{"id": "conf", "file": {"path": "/tmp/web", "content": "old"}}],
            }},
        }))
        .unwrap()
    }

    fn revert(revision: u64) -> SelfRevert {
        SelfRevert {
            manifest: "web".into(),
            revision,
            previous_revision: 6,
            reason: "tcp 127.0.0.1:9: connection refused".into(),
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_reverted_manifest_runs_its_previous_revision_and_the_others_stay() {
        let d = desired();
        assert_eq!(effective(&d, &Reverts::new()).resources, d.resources);
        let reverts = Reverts::from([("web".to_string(), revert(7))]);
        let applied = effective(&d, &reverts);
        let contents: Vec<(&str, &str)> = applied
            .resources
            .iter()
            .map(|r| {
                (
                    r["manifest"].as_str().unwrap(),
                    r["file"]["content"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(contents, [("db", "db"), ("web", "old")]);
        // The previous revision had no checks: none run.
        assert!(applied.health.is_empty());
        assert_eq!(applied.generation, 4);
    }

    #[test]
    fn a_revert_ends_when_the_server_rolls_out_another_revision_or_none() {
        let mut d = desired();
        let mut reverts = Reverts::from([("web".to_string(), revert(7))]);
        assert!(!keep_current(&mut reverts, &d), "the same rollout: kept");
        assert_eq!(reverts.len(), 1);
        d.fallback.get_mut("web").unwrap().revision = 8;
        assert!(keep_current(&mut reverts, &d));
        assert!(reverts.is_empty());
        let mut reverts = Reverts::from([("web".to_string(), revert(7))]);
        d.fallback.clear();
        assert!(keep_current(&mut reverts, &d), "the rollout ended");
    }
}
