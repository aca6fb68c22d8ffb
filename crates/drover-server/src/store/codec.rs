//! Encoding shared by the backends: records are kept as JSON text in both, and read back the same way.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drover_types::manifest::{Manifest, RESOURCE_STATES};
use drover_types::task::{RUN_STATES, RunState};

use super::{ConvergenceRow, ManifestCounts, PutManifest, RunPatch, StoreError, TaskSummary};

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

/// Runs a transition returned as (node id, run JSON), decoded in the order their nodes were asked for.
pub(super) fn runs_in_order_asked(
    node_ids: &[String],
    mut rows: Vec<(String, String)>,
) -> Result<Vec<drover_types::task::TaskRun>, StoreError> {
    let order: std::collections::HashMap<&str, usize> = node_ids
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    rows.sort_by_key(|(node, _)| order.get(node.as_str()).copied().unwrap_or(usize::MAX));
    rows.iter()
        .map(|(_, run)| from_json(run, "task run"))
        .collect()
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

/// A manifest as stored, as `manifest_put` weighs it.
pub(super) struct CurrentManifest<'a> {
    pub generation: u64,
    /// Its exact JSON text.
    pub json: &'a str,
    /// Its signature's JSON, if signed.
    pub sig: Option<&'a str>,
    /// The newest signed version stored under this name, if any was signed.
    pub signed_version: Option<u64>,
}

/// What storing a manifest does, given the stored one and the new one's JSON text and signature: refused
/// when its version goes down, or when signed content changed without a higher version (a node that saw
/// that version signed would refuse other content). A signed write is weighed against the newest signed
/// version only: an unsigned write (which anyone with the operator role can make) must not push the
/// version a signer has to exceed out of reach.
pub(super) fn manifest_put(
    current: Option<CurrentManifest<'_>>,
    new: &Manifest,
    json: &str,
    sig: Option<&str>,
) -> Result<PutManifest, StoreError> {
    let signed_version = |before: Option<u64>| {
        if sig.is_some() {
            Some(new.version)
        } else {
            before
        }
    };
    let Some(CurrentManifest {
        generation,
        json: old,
        sig: old_sig,
        signed_version: floor,
    }) = current
    else {
        return Ok(PutManifest {
            generation: 1,
            changed: true,
            resigned: false,
            signed_version: signed_version(None),
        });
    };
    let refuse = |have: u64, reason| StoreError::ManifestVersion {
        name: new.name.clone(),
        have,
        reason,
    };
    let changed = old != json;
    if sig.is_some() {
        let floor = floor.unwrap_or(0);
        if new.version < floor {
            return Err(refuse(
                floor,
                "signed versions only go up; give a higher one",
            ));
        }
        // At the same version only the same signed content may be signed again (by another key).
        if new.version == floor && floor > 0 && (changed || old_sig.is_none()) {
            return Err(refuse(
                floor,
                "signed content that changed needs a higher version",
            ));
        }
    } else {
        let have = from_json::<Manifest>(old, "manifest")?.version;
        if new.version < have {
            return Err(refuse(have, "versions only go up; give a higher one"));
        }
    }
    Ok(PutManifest {
        generation: generation.saturating_add(u64::from(changed)),
        changed,
        resigned: !changed && old_sig != sig,
        signed_version: signed_version(floor),
    })
}

/// A desired generation read from SQL: none (no desired state, or one whose generation cannot be read)
/// and negative ones read as 0, which a compare-and-set against a stored state then fails on.
pub(super) fn generation(g: Option<i64>) -> u64 {
    g.and_then(|g| u64::try_from(g).ok()).unwrap_or(0)
}

/// A count read from SQL (never negative there) as a `usize`.
pub(super) fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

/// A resource's rank in `RESOURCE_STATES` (best first), from the `state` column of `node_resources`; an
/// unknown name ranks 0. The names are our own constants, so inlining them is safe.
pub(super) fn rank_sql() -> String {
    let cases: String = RESOURCE_STATES
        .iter()
        .enumerate()
        .map(|(i, s)| format!(" WHEN '{}' THEN {i}", s.as_str()))
        .collect();
    format!("CASE state{cases} ELSE 0 END")
}

/// The rows of `manifest_counts`' statement, (kind: 0 for resources and 1 for nodes, manifest, rank,
/// count), grouped by manifest. Rows without a manifest or with a rank out of range are left out.
pub(super) fn group_manifest_counts(
    rows: impl IntoIterator<Item = (i64, Option<String>, i64, i64)>,
) -> Vec<ManifestCounts> {
    let mut by_manifest: BTreeMap<String, ManifestCounts> = BTreeMap::new();
    for (kind, manifest, rank, n) in rows {
        let state = usize::try_from(rank)
            .ok()
            .and_then(|i| RESOURCE_STATES.get(i).copied());
        let (Some(manifest), Some(state)) = (manifest, state) else {
            continue;
        };
        let entry = by_manifest
            .entry(manifest.clone())
            .or_insert_with(|| ManifestCounts {
                manifest,
                ..ManifestCounts::default()
            });
        let list = if kind == 0 {
            &mut entry.resources
        } else {
            &mut entry.nodes
        };
        list.push((state, count(n)));
    }
    by_manifest.into_values().collect()
}

/// A run state as stored in the `state` column.
pub(super) fn run_state(text: &str) -> Result<RunState, StoreError> {
    from_json(&format!("\"{text}\""), "run state")
}

/// A task's row as both stores read it: (id, target, spec, created_by, created_at, max_parallel, signature).
pub(super) type TaskText = (
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<u32>,
    Option<String>,
);

/// A task with its runs counted by state (state, count as read), in the order states are declared
/// (Pending, Running, Succeeded, …), as pages show them.
pub(super) fn task_summary(
    row: TaskText,
    runs: Vec<(String, i64)>,
) -> Result<TaskSummary, StoreError> {
    let (id, target, spec, created_by, created_at, max_parallel, signature) = row;
    let mut runs = runs
        .into_iter()
        .map(|(s, n)| Ok((run_state(&s)?, count(n))))
        .collect::<Result<Vec<_>, StoreError>>()?;
    runs.sort_by_key(|(s, _)| RUN_STATES.iter().position(|r| r == s));
    Ok(TaskSummary {
        target: from_json(&target, "task target")?,
        spec: from_json(&spec, "task spec")?,
        signature: signature
            .map(|s| from_json(&s, "task signature"))
            .transpose()?,
        id,
        created_by,
        created_at,
        max_parallel,
        runs,
    })
}

/// A node's (id, name, desired generation, report) as read, before the report is parsed.
pub(super) type ConvergenceText = (String, String, Option<i64>, Option<String>);

pub(super) fn decode_convergence(
    rows: Vec<ConvergenceText>,
) -> Result<Vec<ConvergenceRow>, StoreError> {
    rows.into_iter()
        .map(|(node_id, node_name, generation, report)| {
            Ok(ConvergenceRow {
                node_id,
                node_name,
                desired_generation: self::generation(generation),
                report: report
                    .map(|r| from_json(&r, "convergence report"))
                    .transpose()?,
            })
        })
        .collect()
}
