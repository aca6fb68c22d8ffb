//! `drover keys`: make a manifest signing key, list which manifests are signed by which key; and the
//! signing that `apply`, `exec` and `containers` do with `--sign-key`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_types::manifest::{ApplyManifest, Manifest, StoredManifest};
use drover_types::signing::{COMMAND_VALIDITY_S, CommandSignature, SecretKey};
use drover_types::task::{CreateTask, Target};
use reqwest::Method;

use super::OutputFormat;
use super::client::Client;
use super::output::{print_json, table};

/// The key file `keys create` writes in its directory.
const KEY_FILE: &str = "manifest.key";

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover keys create --out ~/.config/drover     # prints the public key to pin on agents\n  \
    drover apply -f web.yaml --sign-key ~/.config/drover/manifest.key\n  \
    drover keys                                   # which manifest is signed by which key")]
pub struct KeysArgs {
    #[command(subcommand)]
    command: Option<KeysCommand>,
    /// Output format (list).
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new ed25519 signing key to DIR/manifest.key (0600) and print its public key, the line
    /// agents pin with --manifest-key.
    Create {
        #[arg(long)]
        out: PathBuf,
    },
    /// Which manifests are signed, and by which key (the default).
    List,
}

/// `--sign-key FILE` (or DROVER_SIGN_KEY): sign what this command sends, for nodes that pin a key.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Sign with this key (from `drover keys create`); nodes that pin a key apply or run only what is signed.
    #[arg(long = "sign-key", env = "DROVER_SIGN_KEY")]
    sign_key: Option<PathBuf>,
}

impl SignArgs {
    fn key(&self) -> anyhow::Result<Option<SecretKey>> {
        let Some(path) = &self.sign_key else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signing key {}", path.display()))?;
        let key = SecretKey::parse(&text).with_context(|| path.display().to_string())?;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} can be read by others; `chmod 600` it",
                path.display()
            );
        }
        Ok(Some(key))
    }

    /// The manifest with its signature when a key was given; as it is otherwise.
    pub fn manifest(&self, manifest: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let Some(key) = self.key()? else {
            return Ok(manifest);
        };
        // Signed in the flat form, which the server reads as well: the signature covers the same payload
        // whichever form the file was written in.
        let (flat, _) = drover_types::envelope::unwrap(manifest)
            .context("cannot sign the manifest: its envelope is not valid")?;
        let manifest: Manifest = serde_json::from_value(flat)
            .context("cannot sign the manifest: it is not a valid manifest")?;
        let payload = manifest
            .signed_payload()
            .context("cannot sign the manifest")?;
        let signature = Some(key.sign(drover_types::signing::MANIFEST_CONTEXT, &payload));
        Ok(serde_json::to_value(ApplyManifest {
            manifest,
            signature,
        })?)
    }

    /// Signs an action call when a key was given: the action and its arguments, for that node, for the next
    /// few minutes. The signature's JSON, for the call's `signature` query parameter.
    pub fn action(
        &self,
        node: &str,
        name: &str,
        args: &serde_json::Value,
    ) -> anyhow::Result<Option<String>> {
        let Some(key) = self.key()? else {
            return Ok(None);
        };
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let signed = CommandSignature::sign(
            &key,
            &serde_json::json!({"action": name, "args": args}),
            Some(node.to_string()),
            chrono::Utc::now().timestamp(),
            COMMAND_VALIDITY_S,
            nonce,
        )
        .context("cannot sign the action call")?;
        Ok(Some(serde_json::to_string(&signed)?))
    }

    /// Signs the task when a key was given: for its node, if it names one, for the next few minutes.
    pub fn task(&self, req: &mut CreateTask) -> anyhow::Result<()> {
        let Some(key) = self.key()? else {
            return Ok(());
        };
        let node = match &req.target {
            Target::Node(n) => Some(n.clone()),
            _ => None,
        };
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        req.signature = Some(
            CommandSignature::sign(
                &key,
                &req.spec.signed_command(),
                node,
                chrono::Utc::now().timestamp(),
                COMMAND_VALIDITY_S,
                nonce,
            )
            .context("cannot sign the task")?,
        );
        Ok(())
    }
}

/// `keys create` needs no server: the client is made only to list.
pub async fn run(
    args: KeysArgs,
    client: impl FnOnce() -> anyhow::Result<Client>,
) -> anyhow::Result<()> {
    match args.command {
        Some(KeysCommand::Create { out }) => create(&out),
        Some(KeysCommand::List) | None => list(&client()?, args.output).await,
    }
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(KEY_FILE);
    let key = SecretKey::from_seed(rand::random());
    // Never over an existing key: manifests signed with it would have no key left to sign their updates.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {} (is there a key already?)", path.display()))?;
    file.write_all(key.to_file().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {}; pin its public key on agents with --manifest-key:",
        path.display()
    );
    println!("{}", key.public());
    Ok(())
}

async fn list(client: &Client, output: OutputFormat) -> anyhow::Result<()> {
    let manifests: Vec<StoredManifest> = client
        .request(Method::GET, "/api/v1/manifests", None::<&()>)
        .await?
        .unwrap_or_default();
    if output == OutputFormat::Json {
        let rows: Vec<serde_json::Value> = manifests
            .iter()
            .map(|m| {
                serde_json::json!({
                    "manifest": m.manifest.name,
                    "version": m.manifest.version,
                    "generation": m.generation,
                    "key": m.signature.as_ref().map(|s| &s.key),
                })
            })
            .collect();
        return print_json(&rows);
    }
    let mut t = table(&["MANIFEST", "VERSION", "GENERATION", "SIGNED BY"]);
    for m in &manifests {
        t.add_row(vec![
            m.manifest.name.clone(),
            m.manifest.version.to_string(),
            m.generation.to_string(),
            m.signature
                .as_ref()
                .map(|s| s.key.clone())
                .unwrap_or_else(|| "unsigned".into()),
        ]);
    }
    println!("{t}");
    Ok(())
}
