//! Signed manifests on a node that pins keys: each manifest's signature is checked once per pass, against
//! the node's keys, before any resource of it reaches the policy or a kind; every resource must be the one
//! the signature covers; and a manifest may never go back to an older version than the node has seen.

use std::collections::BTreeMap;
use std::path::Path;

use drover_types::manifest::{Manifest, ManifestProof, Resource};
use drover_types::signing::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}

/// Per manifest name.
pub type Versions = BTreeMap<String, Seen>;

/// The verdict on each manifest of one desired state.
#[derive(Default)]
pub struct Verdicts {
    /// `None` when the node pins no key: nothing is checked.
    manifests: Option<BTreeMap<String, Result<Manifest, Refusal>>>,
}

fn digest(payload: &str) -> String {
    hex::encode(Sha256::digest(payload.as_bytes()))
}

fn judge(
    name: &str,
    proof: Option<&ManifestProof>,
    keys: &[PublicKey],
    versions: &Versions,
) -> Result<(Manifest, Seen), Refusal> {
    let what = format!("manifest {name:?}");
    let proof = proof.ok_or_else(|| Refusal::Unsigned { what: what.clone() })?;
    let bad = |reason: String| Refusal::BadSignature {
        what: what.clone(),
        reason,
    };
    let manifest = proof.verify(keys).map_err(|e| bad(e.to_string()))?;
    if manifest.name != name {
        return Err(bad(format!(
            "the signature covers manifest {:?}, not this one",
            manifest.name
        )));
    }
    let seen = Seen {
        version: manifest.version,
        digest: digest(&proof.payload),
    };
    if let Some(have) = versions.get(name) {
        let older = |reason: String| Refusal::OlderVersion {
            manifest: name.to_string(),
            version: manifest.version,
            reason,
        };
        if manifest.version < have.version {
            return Err(older(format!(
                "this node has applied version {}; a signed manifest never goes back",
                have.version
            )));
        }
        if manifest.version == have.version && seen.digest != have.digest {
            return Err(older(format!(
                "this node applied other content signed as version {}; new content needs a higher version",
                have.version
            )));
        }
    }
    Ok((manifest, seen))
}

impl Verdicts {
    /// Judges every manifest named by `resources` (`(manifest name)` each). With `versions` given, the
    /// versions of the manifests that pass are recorded there; returns whether it changed.
    pub fn judge(
        keys: &[PublicKey],
        names: impl IntoIterator<Item = String>,
        proofs: &[ManifestProof],
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
            let verdict = judge(&name, proof, keys, versions).map(|(manifest, seen)| {
                if record
                    && versions.get(&name) != Some(&seen)
                    && (versions.len() < VERSIONS_KEPT || versions.contains_key(&name))
                {
                    versions.insert(name.clone(), seen);
                    changed = true;
                }
                manifest
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
            Some(Ok(m)) => m,
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
        let (verdicts, changed) =
            Verdicts::judge(&keys, names(), &[proof(&key, &v2)], &mut versions, true);
        assert!(changed);
        assert_eq!(rule(&verdicts, &v2), None);
        assert_eq!(
            rule(&verdicts, &manifest(2, "altered")),
            Some("bad signature")
        );
        let (verdicts, _) = Verdicts::judge(&keys, names(), &[], &mut versions, true);
        assert_eq!(rule(&verdicts, &v2), Some("unsigned"));
        let (verdicts, _) =
            Verdicts::judge(&keys, names(), &[proof(&other, &v2)], &mut versions, true);
        assert_eq!(rule(&verdicts, &v2), Some("bad signature"));
        let v1 = manifest(1, "one");
        let (verdicts, _) =
            Verdicts::judge(&keys, names(), &[proof(&key, &v1)], &mut versions, true);
        assert_eq!(rule(&verdicts, &v1), Some("older version"));
        let other_two = manifest(2, "other");
        let (verdicts, _) = Verdicts::judge(
            &keys,
            names(),
            &[proof(&key, &other_two)],
            &mut versions,
            true,
        );
        assert_eq!(rule(&verdicts, &other_two), Some("older version"));
        assert_eq!(versions["web"].version, 2);
        // A node that pins nothing checks nothing.
        let (verdicts, _) = Verdicts::judge(&[], names(), &[], &mut versions, true);
        assert_eq!(rule(&verdicts, &v1), None);
    }
}
