//! A server that lies to its agents, for tests only (cargo feature `tamper`, never in a release build): it
//! alters, strips or forges what signed manifests carry, stores a manifest past every check (an older
//! version), and replays a signed task under a new id. Pinned agents must refuse all of it.

use std::sync::Mutex;

use chrono::Utc;
use drover_types::manifest::{ApplyManifest, DesiredState};
use drover_types::signing::{MANIFEST_CONTEXT, SecretKey};
use drover_types::task::{CreateTask, Task};
use serde::Deserialize;

use crate::fleet::{Desired, FleetError, Tasks};

/// What the server does to the desired states it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredTamper {
    /// Sends it as it is.
    Off,
    /// Changes the content of every file resource of a signed manifest, keeping the signed payload.
    Alter,
    /// Changes the content in the resources and in the signed payload alike, keeping the signature.
    AlterPayload,
    /// Drops every signature.
    Strip,
    /// Replaces every signature by one the server makes with its own key, naming the operator's key.
    Forge,
}

pub struct Tamper {
    desired: Mutex<DesiredTamper>,
}

impl Default for Tamper {
    fn default() -> Self {
        tracing::warn!("this server is built with the `tamper` feature: for tests only");
        Self {
            desired: Mutex::new(DesiredTamper::Off),
        }
    }
}

const TAMPERED: &str = "tampered by the server\n";

fn alter_files(value: &mut serde_json::Value) {
    if let Some(content) = value.pointer_mut("/file/content") {
        *content = TAMPERED.into();
    }
}

impl Tamper {
    fn mode(&self) -> DesiredTamper {
        *crate::sync::lock(&self.desired)
    }

    /// Applies the current mode to a node's desired state before it is hashed and sent.
    pub fn desired(&self, state: &mut DesiredState) {
        let mode = self.mode();
        let signed: Vec<String> = state.signed.iter().map(|p| p.manifest.clone()).collect();
        match mode {
            DesiredTamper::Off => {}
            DesiredTamper::Strip => state.signed.clear(),
            DesiredTamper::Alter | DesiredTamper::AlterPayload => {
                for r in &mut state.resources {
                    if signed.contains(&r.manifest)
                        && let Some(f) = r.resource.file.as_mut()
                        && f.content.is_some()
                    {
                        f.content = Some(TAMPERED.into());
                    }
                }
                if mode == DesiredTamper::AlterPayload {
                    for proof in &mut state.signed {
                        let Ok(mut payload) =
                            serde_json::from_str::<serde_json::Value>(&proof.payload)
                        else {
                            continue;
                        };
                        if let Some(resources) =
                            payload.get_mut("resources").and_then(|r| r.as_array_mut())
                        {
                            resources.iter_mut().for_each(alter_files);
                        }
                        if let Ok(text) = drover_types::signing::canonical_json(&payload) {
                            proof.payload = text;
                        }
                    }
                }
            }
            DesiredTamper::Forge => {
                let server_key = SecretKey::from_seed([0x5e; 32]);
                for proof in &mut state.signed {
                    let forged = server_key.sign(MANIFEST_CONTEXT, &proof.payload);
                    proof.signature.sig = forged.sig;
                }
            }
        }
    }
}

impl Desired {
    /// Sets what the server does to desired states, and sends every node its state again.
    pub async fn tamper_desired(&self, mode: DesiredTamper) -> Result<(), FleetError> {
        *crate::sync::lock(&self.tamper.desired) = mode;
        tracing::warn!(?mode, "tampering with desired states");
        self.recompute_all().await
    }

    /// Stores a manifest past every check (signature, version), as a compromised server could.
    pub async fn tamper_manifest(&self, apply: ApplyManifest) -> Result<(), FleetError> {
        self.store.delete_manifest(&apply.manifest.name).await?;
        self.store
            .put_manifest(&apply.manifest, apply.signature.as_ref(), Utc::now())
            .await?;
        self.recompute_all().await
    }
}

impl Tasks {
    /// Sends a task again under a new id, with the spec and signature it had.
    pub async fn tamper_replay(&self, task_id: &str) -> Result<Task, FleetError> {
        let task = self.task(task_id).await?;
        self.create_task(
            "tamper",
            CreateTask {
                target: task.target,
                spec: task.spec,
                max_parallel: task.max_parallel,
                signature: task.signature,
            },
        )
        .await
    }
}
