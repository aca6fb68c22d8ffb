//! The ledger: per resource id, what this agent holds on the node, one record per handle (path, container
//! name, unit name), each saying whether the agent created it. A changed path is a delete of the old handle
//! (only when the agent created it) and a create, or takeover, of the new one; a handle whose delete failed
//! stays recorded until it succeeds. Persisted in `ledger.json`, so garbage collection is right across
//! restarts; the format agents wrote before (one handle per entry) is read as is.

use drover_types::manifest::ResourceKind;
use serde::{Deserialize, Serialize};

/// One thing on the node a resource holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// A kind a newer agent wrote and this one does not know is kept (its delete fails, naming it).
    pub kind: ResourceKind,
    pub handle: String,
    /// Things that existed before the agent took them over are never deleted by it.
    pub created: bool,
}

/// A resource this agent applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct LedgerEntry {
    pub manifest: String,
    /// What the resource holds; the last is what its spec names now, any before it are left from an
    /// earlier spec and wait to be deleted.
    pub held: Vec<Held>,
}

/// `ledger.json` entries as written now, or as agents before per-handle records wrote them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Current {
        manifest: String,
        held: Vec<Held>,
    },
    OneHandle {
        manifest: String,
        kind: ResourceKind,
        handle: String,
        created: bool,
    },
}

impl From<Stored> for LedgerEntry {
    fn from(stored: Stored) -> Self {
        match stored {
            Stored::Current { manifest, held } => Self { manifest, held },
            Stored::OneHandle {
                manifest,
                kind,
                handle,
                created,
            } => Self {
                manifest,
                held: vec![Held {
                    kind,
                    handle,
                    created,
                }],
            },
        }
    }
}

impl LedgerEntry {
    /// What the resource's spec names now.
    pub fn current(&self) -> Option<&Held> {
        self.held.last()
    }

    /// Held things other than `handle` of `kind`: left from an earlier spec.
    pub fn stale(&self, kind: &ResourceKind, handle: &str) -> Vec<Held> {
        self.held
            .iter()
            .filter(|h| !(h.kind == *kind && h.handle == handle))
            .cloned()
            .collect()
    }

    /// Records that the resource now holds `handle`: created if the agent created it now, or created it
    /// before under this same handle. A handle it held before stays created; a new one does not inherit it.
    pub fn hold(&mut self, kind: ResourceKind, handle: &str, created_now: bool) {
        let before = self
            .held
            .iter()
            .position(|h| h.kind == kind && h.handle == handle);
        let created = created_now || before.is_some_and(|i| self.held[i].created);
        if let Some(i) = before {
            self.held.remove(i);
        }
        self.held.push(Held {
            kind,
            handle: handle.to_string(),
            created,
        });
    }

    /// Forgets a handle (deleted, or never the agent's to delete).
    pub fn release(&mut self, held: &Held) {
        self.held.retain(|h| h != held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn reads_the_ledger_agents_in_the_field_wrote() {
        // Exactly what agents before per-handle records persisted.
        let today = r#"{
  "motd": {
    "manifest": "base",
    "kind": "file",
    "handle": "/etc/motd",
    "created": true
  },
  "pre": {
    "manifest": "base",
    "kind": "file",
    "handle": "/etc/issue",
    "created": false
  }
}"#;
        let ledger: BTreeMap<String, LedgerEntry> = serde_json::from_str(today).unwrap();
        assert_eq!(
            ledger["motd"],
            LedgerEntry {
                manifest: "base".into(),
                held: vec![Held {
                    kind: ResourceKind::File,
                    handle: "/etc/motd".into(),
                    created: true
                }],
            }
        );
        assert!(!ledger["pre"].current().unwrap().created);
        // And what this agent writes reads back the same.
        let again: BTreeMap<String, LedgerEntry> =
            serde_json::from_slice(&serde_json::to_vec(&ledger).unwrap()).unwrap();
        assert_eq!(again, ledger);
    }

    #[test]
    fn a_new_handle_does_not_inherit_created() {
        let mut entry = LedgerEntry {
            manifest: "m".into(),
            held: vec![],
        };
        entry.hold(ResourceKind::File, "/a", true);
        entry.hold(ResourceKind::File, "/a", false);
        assert!(entry.current().unwrap().created, "still the agent's own");
        // The path changes to a file that existed before: taken over, not created.
        entry.hold(ResourceKind::File, "/b", false);
        assert_eq!(entry.current().unwrap().handle, "/b");
        assert!(!entry.current().unwrap().created);
        let stale = entry.stale(&ResourceKind::File, "/b");
        assert_eq!(stale.len(), 1);
        assert!(stale[0].created && stale[0].handle == "/a");
        entry.release(&stale[0]);
        assert_eq!(entry.held.len(), 1);
    }
}
