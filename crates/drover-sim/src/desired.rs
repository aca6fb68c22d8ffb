//! Desired state, simulated: every resource the agent understands is "applied" at once and reported Ready
//! with the details the real reconciler gives; File content by sha256 is fetched from the server first,
//! since that is load the server must carry. Reports are built by the agent's own code, so their JSON is
//! the real agent's. A File that carries a `--fail-when` marker of one of the node's own rules is reported
//! Failed instead, with the rule's error (crate::faults).

use drover_agent::converge::{
    FetchError, UnreadableResource, WireDesired, node_convergence, parse_resource,
};
use drover_proto::v1::InlineBlob;
use drover_types::manifest::{
    FileSpec, Kind, NodeConvergence, ResourceKind, ResourceState, ResourceStatus, file_mode,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::faults::Faults;

/// A desired state as the simulated node took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub generation: u64,
    /// Sorted by id, as the real agent reports them.
    pub statuses: Vec<ResourceStatus>,
    /// Content to fetch before the File resources using it are Ready.
    pub blobs: Vec<String>,
    /// A File carries a `--fail-when` marker (of any rule: the node received a marked revision).
    pub marked: bool,
    /// A File failed by one of the node's own rules.
    pub failing: bool,
}

/// Why a simulated node ignores a desired state.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("ignored a desired state this agent cannot read: {0}")]
    Unreadable(#[from] serde_json::Error),
}

/// Takes a desired state; `inline` is the content the update brought along (checked), which `faults`
/// look into as they look into inline content.
pub fn take(state_json: &str, inline: &[&InlineBlob], faults: Faults) -> Result<Taken, TakeError> {
    let desired: WireDesired = serde_json::from_str(state_json)?;
    let mut statuses = Vec::new();
    let mut blobs: Vec<String> = Vec::new();
    let (mut marked, mut failing) = (false, false);
    for raw in &desired.resources {
        let (id, manifest, resource) = parse_resource(raw);
        let status = match resource {
            Err(e) => unreadable(&id, &manifest, &e),
            Ok(r) => {
                let mut s =
                    ResourceStatus::new(&id, &manifest, r.resource_kind(), ResourceState::Ready);
                if let Some(Kind::File(spec)) = r.kind() {
                    s.details = file_details(spec);
                    if let (None, Some(sha)) = (&spec.content, &spec.sha256)
                        && !spec.absent
                        && !blobs.contains(sha)
                    {
                        blobs.push(sha.clone());
                    }
                    if !spec.absent {
                        let sha = spec.sha256.as_deref();
                        let content = spec.content.as_deref().map(str::as_bytes).or_else(|| {
                            let sha = sha?;
                            inline
                                .iter()
                                .find(|b| b.sha256 == sha)
                                .map(|b| b.data.as_slice())
                        });
                        let (hit, fails) = faults.check(content, sha);
                        marked |= hit;
                        if let Some(class) = fails {
                            failing = true;
                            s.state = ResourceState::Failed;
                            s.error = Some(class.error().to_string());
                            s.attempts = 1;
                            s.details = Value::Null;
                        }
                    }
                }
                s
            }
        };
        statuses.push(status);
    }
    for c in &desired.conflicts {
        let manifests = c.manifests.join(",");
        let mut s = ResourceStatus::new(
            &c.id,
            &manifests,
            ResourceKind::Unknown,
            ResourceState::Conflict,
        );
        s.error = Some(format!(
            "manifests {} all give this resource; none is applied until one stops",
            c.manifests.join(", ")
        ));
        statuses.push(s);
    }
    statuses.sort_by(|a, b| a.id.cmp(&b.id));
    statuses.dedup_by(|a, b| a.id == b.id);
    Ok(Taken {
        generation: desired.generation,
        statuses,
        blobs,
        marked,
        failing,
    })
}

/// What the agent reports for a resource it cannot read.
fn unreadable(id: &str, manifest: &str, e: &UnreadableResource) -> ResourceStatus {
    let mut s = ResourceStatus::new(
        id,
        manifest,
        ResourceKind::Unknown,
        ResourceState::UnknownKind,
    );
    s.error = Some(e.to_string());
    s
}

/// What the file reconciler reports for a file it wrote.
fn file_details(spec: &FileSpec) -> Value {
    if spec.absent {
        return json!({"absent": true});
    }
    let sha = match (&spec.content, &spec.sha256) {
        (Some(c), _) => hex::encode(Sha256::digest(c.as_bytes())),
        (None, Some(sha)) => sha.clone(),
        (None, None) => String::new(),
    };
    let mode = file_mode(spec).unwrap_or(0o644);
    json!({"sha256": sha, "mode": format!("{mode:04o}"), "uid": 0, "gid": 0})
}

impl Taken {
    /// The report while the pass works: every resource Reconciling.
    pub fn reconciling(&self) -> NodeConvergence {
        let statuses = self
            .statuses
            .iter()
            .map(|s| {
                let mut s = ResourceStatus::new(&s.id, &s.manifest, s.kind.clone(), s.state);
                if s.state == ResourceState::Ready {
                    s.state = ResourceState::Reconciling;
                }
                s
            })
            .collect();
        node_convergence(self.generation, statuses)
    }

    /// The report after the pass; `failed` names content that could not be fetched, and why.
    pub fn report(&self, failed: &[(String, FetchError)]) -> NodeConvergence {
        let statuses = self
            .statuses
            .iter()
            .cloned()
            .map(|mut s| {
                let sha = s.details["sha256"].as_str().unwrap_or_default();
                if let Some((_, why)) = failed.iter().find(|(f, _)| f == sha) {
                    s.state = ResourceState::Failed;
                    s.error = Some(why.to_string());
                    s.attempts = 1;
                    s.details = Value::Null;
                }
                s
            })
            .collect();
        node_convergence(self.generation, statuses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::manifest::ConditionKind;

    fn state(resources: Value) -> String {
        json!({"generation": 7, "resources": resources, "conflicts": [{"id": "c", "manifests": ["m1", "m2"]}]})
            .to_string()
    }

    #[test]
    fn every_known_resource_is_ready_and_content_by_sha_is_fetched_first() {
        let sha = "ab".repeat(32);
        let taken = take(&state(json!([
            {"id": "motd", "manifest": "m", "file": {"path": "/etc/motd", "content": "hi\n", "mode": "0600"}},
            {"id": "blob", "manifest": "m", "file": {"path": "/etc/big", "sha256": sha}},
            {"id": "app", "manifest": "m", "container": {"image": "busybox"}},
            {"id": "vol", "manifest": "m", "volume": {"size": 1}},
        ])), &[], Faults::NONE)
        .unwrap();
        assert!(!taken.marked && !taken.failing);
        assert_eq!(taken.generation, 7);
        assert_eq!(taken.blobs, std::slice::from_ref(&sha));
        let ids: Vec<&str> = taken.statuses.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["app", "blob", "c", "motd", "vol"]);

        let during = taken.reconciling();
        assert_eq!(during.observed_generation, 7);
        assert!(
            during
                .conditions
                .iter()
                .any(|c| c.kind == ConditionKind::Reconciling && c.status)
        );

        let report = taken.report(&[]);
        let by_id = |id: &str| {
            report
                .resources
                .iter()
                .find(|r| r.id == id)
                .unwrap()
                .clone()
        };
        assert_eq!(by_id("motd").state, ResourceState::Ready);
        assert_eq!(by_id("motd").details["mode"], "0600");
        assert_eq!(
            by_id("motd").details["sha256"],
            hex::encode(Sha256::digest(b"hi\n"))
        );
        assert_eq!(by_id("blob").details["sha256"], sha.as_str());
        assert_eq!(by_id("app").state, ResourceState::Ready);
        assert_eq!(by_id("vol").state, ResourceState::UnknownKind);
        assert_eq!(by_id("c").state, ResourceState::Conflict);

        let failed = taken.report(&[(sha.clone(), FetchError::NotConnected)]);
        let blob = failed.resources.iter().find(|r| r.id == "blob").unwrap();
        assert_eq!(blob.state, ResourceState::Failed);
        assert_eq!(
            blob.error.as_deref(),
            Some(FetchError::NotConnected.to_string().as_str())
        );
        assert!(
            failed
                .conditions
                .iter()
                .any(|c| c.kind == ConditionKind::Degraded && c.status)
        );
    }

    #[test]
    fn a_clean_state_is_ready_and_an_unreadable_one_is_refused() {
        let taken = take(
            &json!({"generation": 2, "resources": [{"id": "f", "manifest": "m", "file": {"path": "/x", "content": ""}}]})
                .to_string(),
            &[],
            Faults::NONE,
        )
        .unwrap();
        let report = taken.report(&[]);
        assert!(
            report
                .conditions
                .iter()
                .any(|c| c.kind == ConditionKind::Ready && c.status)
        );
        assert!(take("not json", &[], Faults::NONE).is_err());
    }

    #[test]
    fn a_marked_file_fails_on_the_nodes_of_its_stratum_only_and_is_noticed_everywhere() {
        use crate::faults::{FailRule, FailureClass};
        let rules: Vec<FailRule> = ["content=BAD", "content=NET,as=infra"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let data = b"v2 NET\n".to_vec();
        let sha = hex::encode(Sha256::digest(&data));
        let blob = InlineBlob {
            sha256: sha.clone(),
            data,
        };
        let state = json!({"generation": 3, "resources": [
            {"id": "bad", "manifest": "m", "file": {"path": "/a", "content": "v2 BAD\n"}},
            {"id": "net", "manifest": "m", "file": {"path": "/b", "sha256": sha}},
            {"id": "ok", "manifest": "m", "file": {"path": "/c", "content": "fine"}},
        ]})
        .to_string();
        let status = |t: &Taken, id: &str| t.statuses.iter().find(|s| s.id == id).unwrap().clone();

        // Not in either stratum: reported Ready, but the marker is noticed.
        let outside = take(
            &state,
            &[&blob],
            Faults {
                rules: &rules,
                mine: &[false, false],
            },
        )
        .unwrap();
        assert!(outside.marked && !outside.failing);
        assert!(
            outside
                .report(&[])
                .resources
                .iter()
                .all(|r| r.state == ResourceState::Ready)
        );

        let inside = take(
            &state,
            &[&blob],
            Faults {
                rules: &rules,
                mine: &[true, true],
            },
        )
        .unwrap();
        assert!(inside.marked && inside.failing);
        let report = inside.report(&[]);
        let by_id = |id: &str| {
            report
                .resources
                .iter()
                .find(|r| r.id == id)
                .unwrap()
                .clone()
        };
        assert_eq!(by_id("bad").state, ResourceState::Failed);
        assert_eq!(
            by_id("bad").error.as_deref(),
            Some(FailureClass::Change.error())
        );
        // Content sent along with the update is looked into too.
        assert_eq!(
            by_id("net").error.as_deref(),
            Some(FailureClass::Infra.error())
        );
        assert_eq!(by_id("ok").state, ResourceState::Ready);
        assert_eq!(status(&inside, "net").state, ResourceState::Failed);
        // Without the content at hand (to be fetched), a content marker cannot be seen.
        let unseen = take(
            &state,
            &[],
            Faults {
                rules: &rules,
                mine: &[true, true],
            },
        )
        .unwrap();
        assert_eq!(status(&unseen, "net").state, ResourceState::Ready);
        assert_eq!(status(&unseen, "bad").state, ResourceState::Failed);
        // A clean revision clears both.
        let clean = json!({"generation": 4, "resources": [
            {"id": "bad", "manifest": "m", "file": {"path": "/a", "content": "v1\n"}},
        ]})
        .to_string();
        let back = take(
            &clean,
            &[],
            Faults {
                rules: &rules,
                mine: &[true, true],
            },
        )
        .unwrap();
        assert!(!back.marked && !back.failing);
    }
}
