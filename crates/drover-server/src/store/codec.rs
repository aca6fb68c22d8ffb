//! Encoding shared by the backends: records are kept as JSON text in both, and read back the same way.

use drover_types::task::RunState;

use drover_types::manifest::Manifest;

use super::{PutManifest, RunPatch, StoreError};

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing our own plain data types cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { what, source })
}

/// Run states as an SQL list. They are our own constant names, so inlining them is safe.
pub(super) fn state_list(states: &[RunState]) -> String {
    states
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A run patch as a JSON merge patch: the state and only the fields it sets.
pub(super) fn patch_json(p: &RunPatch) -> String {
    let mut m = serde_json::Map::new();
    m.insert("state".into(), serde_json::json!(p.state));
    let mut set = |k: &str, v: Option<serde_json::Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    set("exit_code", p.exit_code.map(Into::into));
    set("signal", p.signal.map(Into::into));
    set("error", p.error.clone().map(Into::into));
    set("started_at", p.started_at.map(|t| serde_json::json!(t)));
    set("finished_at", p.finished_at.map(|t| serde_json::json!(t)));
    serde_json::Value::Object(m).to_string()
}

/// The rows of a list that can be read; one that cannot is logged and left out, so one bad row never
/// takes a whole list down.
pub(super) fn readable<T>(what: &str, rows: impl Iterator<Item = Result<T, StoreError>>) -> Vec<T> {
    rows.filter_map(|r| {
        r.map_err(|e| tracing::error!("left an unreadable {what} out of a list: {e}"))
            .ok()
    })
    .collect()
}

/// What storing a manifest does, given the stored one (generation, exact JSON text, signature JSON) and
/// the new one's JSON text and signature: refused when its version goes down, or when signed content
/// changed without a higher version (a node that saw that version signed would refuse other content).
pub(super) fn manifest_put(
    current: Option<(u64, &str, Option<&str>)>,
    new: &Manifest,
    json: &str,
    sig: Option<&str>,
) -> Result<PutManifest, StoreError> {
    let Some((generation, old, old_sig)) = current else {
        return Ok(PutManifest {
            generation: 1,
            changed: true,
            resigned: false,
        });
    };
    let refuse = |have: u64, reason| StoreError::ManifestVersion {
        name: new.name.clone(),
        have,
        reason,
    };
    let have = from_json::<Manifest>(old, "manifest")?.version;
    if new.version < have {
        return Err(refuse(have, "versions only go up; give a higher one"));
    }
    let changed = old != json;
    if changed && sig.is_some() && new.version == have {
        return Err(refuse(
            have,
            "signed content that changed needs a higher version",
        ));
    }
    Ok(PutManifest {
        generation: generation.saturating_add(u64::from(changed)),
        changed,
        resigned: !changed && old_sig != sig,
    })
}
