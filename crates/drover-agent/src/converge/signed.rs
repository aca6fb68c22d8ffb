//! Signed manifests on a node that pins keys: each manifest's signature is checked once per pass, against
//! the node's keys, before any resource of it reaches the policy or a kind; every resource must be the one
//! the signature covers; and a manifest may never go back to an older version than the node has seen,
//! but for one case: while a rollout of it is unfinished (the server sends a fallback for it), the node
//! keeps the signed version it held immediately before, and takes exactly that one back (a revert, the
//! server's or its own). Once the node sees the rollout over, it forgets it: anything older, and an `undo`
//! after the rollout ended, needs a newly signed, higher version.
//! Its rollout health checks are signed too: the node runs those of the signed payload, and only when the
//! server sent exactly those (a server can neither add, drop nor change a check).

use std::collections::BTreeMap;
use std::path::Path;

use drover_types::manifest::{Manifest, ManifestProof, Resource};
use drover_types::rollout::HealthCheck;
use drover_types::signing::{MANIFEST_CONTEXT, PublicKey, SignError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::fallback::WireFallback;
use crate::policy::Refusal;

/// Where the newest version seen of each signed manifest is kept, across restarts.
pub const VERSIONS_FILE: &str = "manifest-versions.json";
/// Manifests remembered; a server could otherwise grow the file without bound with names.
const VERSIONS_KEPT: usize = 10_000;

/// The newest version of a signed manifest this node has accepted, and the digest of what was signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub version: u64,
    pub digest: String,
    /// While a rollout of the manifest is unfinished: the version held immediately before, the one it
    /// may go back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Prior>,
}

/// A signed version a node held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prior {
    pub version: u64,
    pub digest: String,
}

/// Per manifest name.
pub type Versions = BTreeMap<String, Seen>;

/// What a signature covers: the manifest and its rollout health checks.
pub struct Signed {
    pub manifest: Manifest,
    pub health: Vec<HealthCheck>,
}

/// The verdict on each manifest of one desired state.
#[derive(Default)]
pub struct Verdicts {
    /// `None` when the node pins no key: nothing is checked.
    manifests: Option<BTreeMap<String, Result<Signed, Refusal>>>,
}

fn digest(payload: &str) -> String {
    hex::encode(Sha256::digest(payload.as_bytes()))
}

/// The signed manifest and its health checks, once the signature checks out against `keys`. The payload
/// names the checks beside the manifest's own fields (`health`, see `Manifest::signed_payload`), so they
/// are taken out before the rest is read as a manifest.
fn open(proof: &ManifestProof, keys: &[PublicKey]) -> Result<Signed, SignError> {
    proof
        .signature
        .verify(keys, MANIFEST_CONTEXT, &proof.payload)?;
    let malformed = |e: serde_json::Error| {
        SignError::Malformed(format!("the signed payload is not a manifest: {e}"))
    };
    let mut fields: serde_json::Map<String, Value> =
        serde_json::from_str(&proof.payload).map_err(malformed)?;
    let health = fields
        .remove("health")
        .map(serde_json::from_value)
        .transpose()
        .map_err(malformed)?
        .unwrap_or_default();
    let manifest = serde_json::from_value(Value::Object(fields)).map_err(malformed)?;
    Ok(Signed { manifest, health })
}

/// `in_rollout`: the server sends a fallback for the manifest (a rollout of it is unfinished).
fn judge(
    name: &str,
    proof: Option<&ManifestProof>,
    keys: &[PublicKey],
    versions: &Versions,
    in_rollout: bool,
) -> Result<(Signed, Seen), Refusal> {
    let what = format!("manifest {name:?}");
    let proof = proof.ok_or_else(|| Refusal::Unsigned { what: what.clone() })?;
    let bad = |reason: String| Refusal::BadSignature {
        what: what.clone(),
        reason,
    };
    let signed = open(proof, keys).map_err(|e| bad(e.to_string()))?;
    let manifest = &signed.manifest;
    if manifest.name != name {
        return Err(bad(format!(
            "the signature covers manifest {:?}, not this one",
            manifest.name
        )));
    }
    let mut seen = Seen {
        version: manifest.version,
        digest: digest(&proof.payload),
        before: None,
    };
    if let Some(have) = versions.get(name) {
        let older = |reason: String| Refusal::OlderVersion {
            manifest: name.to_string(),
            version: manifest.version,
            reason,
        };
        let prior = Prior {
            version: seen.version,
            digest: seen.digest.clone(),
        };
        if manifest.version < have.version && have.before.as_ref() != Some(&prior) {
            return Err(older(format!(
                "this node has applied version {}; a signed manifest goes back only to the version it held \
                 immediately before, while that rollout is unfinished",
                have.version
            )));
        }
        if manifest.version == have.version && seen.digest != have.digest {
            return Err(older(format!(
                "this node applied other content signed as version {}; new content needs a higher version",
                have.version
            )));
        }
        // Going forward under a rollout keeps where it came from; staying keeps it while the rollout
        // lasts; going back (to exactly that) leaves nothing further to go back to.
        seen.before = match manifest.version.cmp(&have.version) {
            std::cmp::Ordering::Greater => in_rollout.then(|| Prior {
                version: have.version,
                digest: have.digest.clone(),
            }),
            std::cmp::Ordering::Equal if in_rollout => have.before.clone(),
            _ => None,
        };
    }
    Ok((signed, seen))
}

impl Verdicts {
    /// Judges every manifest named by `resources` (`(manifest name)` each). With `versions` given, the
    /// versions of the manifests that pass are recorded there; returns whether it changed.
    pub fn judge(
        keys: &[PublicKey],
        names: impl IntoIterator<Item = String>,
        proofs: &[ManifestProof],
        fallback: &BTreeMap<String, WireFallback>,
        versions: &mut Versions,
        record: bool,
    ) -> (Self, bool) {
        if keys.is_empty() {
            return (Self::default(), false);
        }
        let mut manifests = BTreeMap::new();
        let mut changed = false;
        for name in names {
            if manifests.contains_key(&name) {
                continue;
            }
            let proof = proofs.iter().find(|p| p.manifest == name);
            let in_rollout = fallback.contains_key(&name);
            let verdict = judge(&name, proof, keys, versions, in_rollout).map(|(signed, seen)| {
                if record
                    && versions.get(&name) != Some(&seen)
                    && (versions.len() < VERSIONS_KEPT || versions.contains_key(&name))
                {
                    versions.insert(name.clone(), seen);
                    changed = true;
                }
                signed
            });
            manifests.insert(name, verdict);
        }
        (
            Self {
                manifests: Some(manifests),
            },
            changed,
        )
    }

    /// Whether `resource` of `manifest` may be applied: its manifest passed and the resource is exactly the
    /// one its signature covers.
    pub fn admit(&self, manifest: &str, resource: &Resource) -> Result<(), Refusal> {
        let Some(manifests) = &self.manifests else {
            return Ok(());
        };
        let signed = match manifests.get(manifest) {
            Some(Ok(signed)) => &signed.manifest,
            Some(Err(refusal)) => return Err(refusal.clone()),
            None => {
                return Err(Refusal::Unsigned {
                    what: format!("manifest {manifest:?}"),
                });
            }
        };
        match signed.resources.iter().find(|r| r.id == resource.id) {
            Some(r) if r == resource => Ok(()),
            found => Err(Refusal::BadSignature {
                what: format!("resource {:?} of manifest {manifest:?}", resource.id),
                reason: if found.is_some() {
                    "it is not what the signature covers (altered on the way)".into()
                } else {
                    "the signed manifest has no such resource".into()
                },
            }),
        }
    }

    /// The manifests that passed and whose signed payload carries health checks: on a node that pins
    /// keys these are checked even when the server sent none.
    pub fn signed_checks(&self) -> impl Iterator<Item = &str> {
        self.manifests
            .iter()
            .flatten()
            .filter(|(_, v)| v.as_ref().is_ok_and(|s| !s.health.is_empty()))
            .map(|(name, _)| name.as_str())
    }

    /// The health checks of `manifest` to run, from those the server `sent` (still JSON): on a node that
    /// pins no key, those sent; on one that does, the signed payload's, and only when the sent ones are
    /// exactly those. The error says why none run (the reason the node reports).
    pub fn health(&self, manifest: &str, sent: &[Value]) -> Result<Vec<HealthCheck>, String> {
        let parsed: Result<Vec<HealthCheck>, _> =
            sent.iter().cloned().map(serde_json::from_value).collect();
        let Some(manifests) = &self.manifests else {
            return parsed.map_err(|e| format!("this agent does not understand a check: {e}"));
        };
        match manifests.get(manifest) {
            Some(Ok(signed)) => match parsed {
                Ok(checks) if checks == signed.health => Ok(checks),
                _ => Err(Refusal::BadSignature {
                    what: format!("the health checks of manifest {manifest:?}"),
                    reason: "they are not what the signature covers (altered on the way)".into(),
                }
                .to_string()),
            },
            Some(Err(refusal)) => Err(refusal.to_string()),
            None => Err(Refusal::Unsigned {
                what: format!("manifest {manifest:?}"),
            }
            .to_string()),
        }
    }
}

pub fn load(dir: &Path) -> Versions {
    super::read_json(&dir.join(VERSIONS_FILE)).unwrap_or_default()
}

pub fn save(dir: &Path, versions: &Versions) {
    let json = serde_json::to_vec_pretty(versions).unwrap_or_default();
    if let Err(e) = drover_files::write_atomic(&dir.join(VERSIONS_FILE), &json, true) {
        tracing::warn!("cannot persist the manifest versions seen: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::signing::{MANIFEST_CONTEXT, SecretKey};

    fn manifest(version: u64, content: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "name": "web", "version": version,
            "resources": [{"id": "f", "file": {"path": "/tmp/x", "content": content}}]
        }))
        .unwrap()
    }

    fn proof(key: &SecretKey, m: &Manifest) -> ManifestProof {
        let payload = m.signed_payload().unwrap();
        ManifestProof {
            manifest: m.name.clone(),
            signature: key.sign(MANIFEST_CONTEXT, &payload),
            payload,
        }
    }

    fn rule(v: &Verdicts, m: &Manifest) -> Option<&'static str> {
        v.admit("web", &m.resources[0]).err().map(|r| r.rule())
    }

    #[test]
    fn only_signed_unaltered_and_never_older_manifests_pass() {
        let (key, other) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let keys = vec![key.public()];
        let names = || vec!["web".to_string()];
        let mut versions = Versions::new();
        let v2 = manifest(2, "two");
        let (verdicts, changed) = Verdicts::judge(
            &keys,
            names(),
            &[proof(&key, &v2)],
            &BTreeMap::new(),
            &mut versions,
            true,
        );
        assert!(changed);
        assert_eq!(rule(&verdicts, &v2), None);
        assert_eq!(
            rule(&verdicts, &manifest(2, "altered")),
            Some("bad signature")
        );
        let (verdicts, _) =
            Verdicts::judge(&keys, names(), &[], &BTreeMap::new(), &mut versions, true);
        assert_eq!(rule(&verdicts, &v2), Some("unsigned"));
        let (verdicts, _) = Verdicts::judge(
            &keys,
            names(),
            &[proof(&other, &v2)],
            &BTreeMap::new(),
            &mut versions,
            true,
        );
        assert_eq!(rule(&verdicts, &v2), Some("bad signature"));
        let v1 = manifest(1, "one");
        let (verdicts, _) = Verdicts::judge(
            &keys,
            names(),
            &[proof(&key, &v1)],
            &BTreeMap::new(),
            &mut versions,
            true,
        );
        assert_eq!(rule(&verdicts, &v1), Some("older version"));
        let other_two = manifest(2, "other");
        let (verdicts, _) = Verdicts::judge(
            &keys,
            names(),
            &[proof(&key, &other_two)],
            &BTreeMap::new(),
            &mut versions,
            true,
        );
        assert_eq!(rule(&verdicts, &other_two), Some("older version"));
        assert_eq!(versions["web"].version, 2);
        // A node that pins nothing checks nothing.
        let (verdicts, _) =
            Verdicts::judge(&[], names(), &[], &BTreeMap::new(), &mut versions, true);
        assert_eq!(rule(&verdicts, &v1), None);
    }

    #[test]
    fn a_pinned_node_runs_only_the_health_checks_its_signature_covers() {
        let key = SecretKey::from_seed([1; 32]);
        let mut m = manifest(3, "three");
        let checks = serde_json::json!([{"tcp": {"address": "127.0.0.1:8080"}}]);
        m.rollout =
            Some(serde_json::from_value(serde_json::json!({"health": checks.clone()})).unwrap());
        let sent = |v: serde_json::Value| -> Vec<Value> { serde_json::from_value(v).unwrap() };
        let (verdicts, _) = Verdicts::judge(
            &[key.public()],
            vec!["web".to_string()],
            &[proof(&key, &m)],
            &BTreeMap::new(),
            &mut Versions::new(),
            true,
        );
        // The payload names the checks beside the manifest: it still reads, resources and all.
        assert_eq!(rule(&verdicts, &m), None);
        assert_eq!(
            verdicts.health("web", &sent(checks.clone())),
            Ok(m.rollout.clone().unwrap().health)
        );
        assert_eq!(verdicts.signed_checks().collect::<Vec<_>>(), ["web"]);
        // A check added, changed or dropped by the server: none runs, and the reason says so.
        for tampered in [
            serde_json::json!([{"tcp": {"address": "127.0.0.1:8080"}}, {"command": ["rm", "-rf", "/"]}]),
            serde_json::json!([{"tcp": {"address": "127.0.0.1:9"}}]),
            serde_json::json!([]),
        ] {
            let why = verdicts.health("web", &sent(tampered)).unwrap_err();
            assert!(why.contains("rule bad signature"), "{why}");
        }
        // Checks for a manifest signed without any are refused just the same.
        let plain = manifest(4, "four");
        let (verdicts, _) = Verdicts::judge(
            &[key.public()],
            vec!["web".to_string()],
            &[proof(&key, &plain)],
            &BTreeMap::new(),
            &mut Versions::new(),
            true,
        );
        assert!(verdicts.health("web", &sent(checks.clone())).is_err());
        assert_eq!(verdicts.health("web", &[]), Ok(vec![]));
        // A node that pins nothing runs what it is sent, if it can read it.
        let open = Verdicts::default();
        assert_eq!(open.health("web", &sent(checks)).map(|c| c.len()), Ok(1));
        let unknown = open
            .health("web", &sent(serde_json::json!([{"grpc": {}}])))
            .unwrap_err();
        assert!(unknown.contains("does not understand"), "{unknown}");
    }

    #[test]
    fn under_an_unfinished_rollout_a_pinned_node_goes_back_only_to_the_version_it_held_just_before()
    {
        let key = SecretKey::from_seed([1; 32]);
        let keys = vec![key.public()];
        let names = || vec!["web".to_string()];
        let (v1, v2, v3) = (manifest(1, "one"), manifest(2, "two"), manifest(3, "three"));
        let rolling = BTreeMap::from([("web".to_string(), WireFallback::default())]);
        let over = BTreeMap::new();
        let mut versions = Versions::new();
        let mut step = |m: &Manifest, fallback: &BTreeMap<String, WireFallback>| {
            let (v, _) = Verdicts::judge(
                &keys,
                names(),
                &[proof(&key, m)],
                fallback,
                &mut versions,
                true,
            );
            rule(&v, m)
        };
        assert_eq!(step(&v1, &over), None);
        // v2 rolls out: the node keeps v1 while the rollout lasts, and takes it back on a revert.
        assert_eq!(step(&v2, &rolling), None);
        assert_eq!(
            step(&v2, &rolling),
            None,
            "still v2, still rolling: v1 kept"
        );
        assert_eq!(
            step(&v1, &rolling),
            None,
            "a revert to the version just before"
        );
        // Back on v1 there is nothing further to go back to; forward is always allowed.
        assert_eq!(step(&v2, &over), None);
        assert_eq!(
            step(&v1, &rolling),
            Some("older version"),
            "v2 came without a rollout"
        );
        // v3 rolls out and the rollout ends while the node holds v3: v2 is forgotten.
        assert_eq!(step(&v3, &rolling), None);
        assert_eq!(step(&v3, &over), None);
        assert_eq!(
            step(&v2, &rolling),
            Some("older version"),
            "an undo after the end"
        );
        // Never further back than the version just before, rollout or not.
        assert_eq!(step(&v1, &rolling), Some("older version"));
    }
}
