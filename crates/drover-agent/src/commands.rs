//! Signed commands on a node that pins keys: a task, or an action that changes the node, runs only with an
//! operator's signature by a pinned key, for this node, inside its short window, and once (its nonce is
//! remembered until the window has passed, across restarts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use drover_types::signing::{CLOCK_SKEW_S, COMMAND_CONTEXT, CommandSignature};
use serde_json::Value;

use crate::policy::{Policy, Refusal};

const NONCES_FILE: &str = "command-nonces.json";
/// Nonces remembered at once. Only validly signed commands add one, each for at most the longest window,
/// so this bounds what a signer (not the server) can make the node hold.
const MAX_NONCES: usize = 10_000;

pub struct CommandGate {
    policy: std::sync::Arc<Policy>,
    node_id: String,
    node_name: String,
    path: PathBuf,
    /// Nonce -> unix second after which it can no longer be valid.
    nonces: Mutex<BTreeMap<String, i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CommandGate {
    pub fn new(
        policy: std::sync::Arc<Policy>,
        node_id: &str,
        node_name: &str,
        state_dir: &std::path::Path,
    ) -> Self {
        let path = state_dir.join(NONCES_FILE);
        let nonces = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            policy,
            node_id: node_id.to_string(),
            node_name: node_name.to_string(),
            path,
            nonces: Mutex::new(nonces),
        }
    }

    /// Whether `command` (a task's or an action's signed form) may run, given the signature that came with
    /// it (JSON; empty when none). Always yes on a node that pins no key.
    pub fn admit(&self, what: &str, command: &Value, signature_json: &str) -> Result<(), Refusal> {
        self.admit_at(
            what,
            command,
            signature_json,
            chrono::Utc::now().timestamp(),
        )
    }

    fn admit_at(
        &self,
        what: &str,
        command: &Value,
        signature_json: &str,
        now: i64,
    ) -> Result<(), Refusal> {
        if !self.policy.pins_keys() {
            return Ok(());
        }
        if signature_json.trim().is_empty() {
            return Err(Refusal::Unsigned { what: what.into() });
        }
        let bad = |reason: String| Refusal::BadSignature {
            what: what.into(),
            reason,
        };
        let signed: CommandSignature = serde_json::from_str(signature_json)
            .map_err(|e| bad(format!("the signature is malformed: {e}")))?;
        let payload = signed.payload(command).map_err(|e| bad(e.to_string()))?;
        signed
            .signature
            .verify(&self.policy.manifest_keys, COMMAND_CONTEXT, &payload)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(node) = &signed.node
            && *node != self.node_id
            && *node != self.node_name
        {
            return Err(bad(format!(
                "it was signed for node {node:?}, not this one"
            )));
        }
        signed.check_window(now).map_err(|e| Refusal::Expired {
            what: what.into(),
            reason: e.to_string(),
        })?;
        let mut nonces = lock(&self.nonces);
        nonces.retain(|_, until| *until >= now);
        if nonces.contains_key(&signed.nonce) {
            return Err(Refusal::Replayed { what: what.into() });
        }
        if nonces.len() >= MAX_NONCES {
            return Err(Refusal::Expired {
                what: what.into(),
                reason: format!(
                    "this node holds {MAX_NONCES} signed commands' nonces already; try again in a few minutes"
                ),
            });
        }
        nonces.insert(
            signed.nonce.clone(),
            signed.not_after.saturating_add(CLOCK_SKEW_S),
        );
        let json = serde_json::to_vec(&*nonces).unwrap_or_default();
        if let Err(e) = drover_files::write_atomic(&self.path, &json, true) {
            // Not remembered across a restart: refuse rather than risk running it twice.
            nonces.remove(&signed.nonce);
            return Err(Refusal::Expired {
                what: what.into(),
                reason: format!("this node cannot remember its nonce ({e})"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::signing::SecretKey;

    #[test]
    fn a_signed_command_runs_once_in_its_window_on_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([9; 32]);
        let policy = Policy {
            manifest_keys: vec![key.public()],
            ..Policy::new(&[])
        };
        let gate = CommandGate::new(policy.into(), "id-1", "web-1", dir.path());
        let cmd = serde_json::json!({"task": {"kind": "exec", "argv": ["true"]}});
        let sign = |node: Option<&str>, now: i64, nonce: &str| {
            let s =
                CommandSignature::sign(&key, &cmd, node.map(Into::into), now, 300, nonce.into())
                    .unwrap();
            serde_json::to_string(&s).unwrap()
        };
        let rule = |r: Result<(), Refusal>| r.err().map(|r| r.rule());
        let now = 1_000_000;
        let ok = sign(Some("web-1"), now, "00112233445566778899");
        assert_eq!(rule(gate.admit_at("task", &cmd, &ok, now)), None);
        assert_eq!(
            rule(gate.admit_at("task", &cmd, &ok, now + 1)),
            Some("replayed")
        );
        // Remembered across a restart.
        let again = CommandGate::new(
            Policy {
                manifest_keys: vec![key.public()],
                ..Policy::new(&[])
            }
            .into(),
            "id-1",
            "web-1",
            dir.path(),
        );
        assert_eq!(
            rule(again.admit_at("task", &cmd, &ok, now + 2)),
            Some("replayed")
        );
        assert_eq!(rule(gate.admit_at("task", &cmd, "", now)), Some("unsigned"));
        let other = serde_json::json!({"task": {"kind": "exec", "argv": ["rm", "-rf", "/"]}});
        let fresh = sign(None, now, "aaaaaaaaaaaaaaaa");
        assert_eq!(
            rule(gate.admit_at("task", &other, &fresh, now)),
            Some("bad signature")
        );
        let elsewhere = sign(Some("web-2"), now, "bbbbbbbbbbbbbbbb");
        assert_eq!(
            rule(gate.admit_at("task", &cmd, &elsewhere, now)),
            Some("bad signature")
        );
        let old = sign(None, now - 3600, "cccccccccccccccc");
        assert_eq!(
            rule(gate.admit_at("task", &cmd, &old, now)),
            Some("expired")
        );
        assert_eq!(rule(gate.admit_at("task", &cmd, &fresh, now)), None);
        // A node that pins nothing asks for nothing.
        let open = CommandGate::new(Policy::new(&[]).into(), "id-1", "web-1", dir.path());
        assert_eq!(rule(open.admit_at("task", &cmd, "", now)), None);
    }
}
