//! A real, throwaway nats-server with JetStream for tests: on a free loopback port, its store in a temp
//! dir, killed and removed when the handle drops (also when the test fails). Needs `nats-server`
//! (`scripts/testbed.sh` installs the `nats-server` package; `DROVER_NATS_SERVER` may name another binary).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{free_port, spawn_logged, terminate, wait_for};

pub struct Nats {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    jetstream: bool,
    /// Extra configuration (`start_with_config`): TLS, authorization, operator mode.
    config: Option<String>,
}

/// `DROVER_NATS_SERVER`, else `nats-server` on the PATH or in /usr/sbin and /usr/bin.
fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("DROVER_NATS_SERVER") {
        let path = PathBuf::from(path);
        if path.exists() {
            return Ok(path);
        }
        bail!("DROVER_NATS_SERVER={} does not exist", path.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.exists())
        .context(
            "nats-server is not installed (run scripts/testbed.sh, which installs the `nats-server` \
             package, or set DROVER_NATS_SERVER to its binary)",
        )
}

impl Nats {
    /// Starts a fresh server with JetStream and waits until it accepts connections. Fails, saying what is
    /// missing, when nats-server is not installed.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_as(true)
    }

    /// Starts a fresh server without JetStream (core NATS only), as a misconfigured deployment would.
    pub fn start_without_jetstream() -> anyhow::Result<Self> {
        Self::start_as(false)
    }

    fn start_as(jetstream: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("drover-nats").tempdir()?;
        let mut nats = Self {
            child: None,
            dir,
            port: free_port(),
            jetstream,
            config: None,
        };
        nats.run()?;
        Ok(nats)
    }

    /// Starts a fresh server with JetStream and these lines added to its configuration file (say a
    /// `tls { ... }` block and `authorization { ... }`, or `NatsOperator::server_config`).
    pub fn start_with_config(config: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("drover-nats").tempdir()?;
        let mut nats = Self {
            child: None,
            dir,
            port: free_port(),
            jetstream: true,
            config: Some(config.to_string()),
        };
        nats.run()?;
        Ok(nats)
    }

    /// Starts the server again after `kill`, on the same port with the same store.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.run()
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let binary = find_binary()?;
        let port = self.port;
        let mut cmd = Command::new(&binary);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(extra) = &self.config {
            let file = self.dir.path().join("nats.conf");
            let store = self.dir.path().join("store");
            std::fs::write(
                &file,
                format!(
                    "jetstream {{ store_dir: {:?} }}\n{extra}\n",
                    store.display().to_string()
                ),
            )?;
            cmd.arg("-c").arg(&file);
        } else if self.jetstream {
            cmd.args(["-js", "-sd"]).arg(self.dir.path().join("store"));
        }
        self.child = Some(spawn_logged(cmd, &self.dir.path().join("log"))?);
        let ready = wait_for("nats-server to listen", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(Err(status));
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| Ok(()))
        });
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => bail!("nats-server exited ({status}); its log:\n{}", self.log()),
            Err(e) => bail!("{e}; its log:\n{}", self.log()),
        }
    }

    /// The URL replicas connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JSON value under `key` in the JetStream KV bucket `bucket`; `None` when the key has none.
    pub fn kv_get(&self, bucket: &str, key: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = async_nats::connect(self.url()).await?;
            let js = async_nats::jetstream::new(client);
            let store = js.get_key_value(bucket).await?;
            match store.get(key).await? {
                Some(value) => Ok(Some(serde_json::from_slice(&value)?)),
                None => Ok(None),
            }
        })
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Kills the server at once, as a crash would (dropping the handle also stops it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, false);
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, true);
        }
    }
}

/// A user nkey: (public key `U...` for the server's `authorization` block, seed `SU...` for the client).
pub fn nkey_user() -> anyhow::Result<(String, String)> {
    let user = nkeys::KeyPair::new_user();
    Ok((user.public_key(), user.seed()?))
}

/// nats-server's operator (JWT) mode for tests: an operator, one account with JetStream, and user JWTs
/// the account signs, minted here as `nsc` would (header, claims, ed25519 signature over both). The
/// server keeps the account in memory (`resolver: MEMORY` with `resolver_preload`).
pub struct NatsOperator {
    account: nkeys::KeyPair,
    operator_jwt: String,
    account_jwt: String,
    /// JetStream needs a system account in operator mode.
    system: nkeys::KeyPair,
    system_jwt: String,
}

/// A JWT of `claims` (their `iss`, `iat` and `jti` filled in) signed by `signer`.
fn jwt(signer: &nkeys::KeyPair, mut claims: serde_json::Value) -> anyhow::Result<String> {
    use data_encoding::BASE64URL_NOPAD;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    claims["iss"] = signer.public_key().into();
    claims["iat"] = now.as_secs().into();
    // The server does not check the id; nsc's is a hash of the claims, a random one serves as well.
    claims["jti"] = nkeys::KeyPair::new_user().public_key().into();
    let head = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims)?);
    let signed = format!("{head}.{body}");
    let sig = signer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig)))
}

impl NatsOperator {
    pub fn new() -> anyhow::Result<Self> {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            serde_json::json!({
                "sub": operator.public_key(),
                "name": "drover-test",
                "nats": {"type": "operator", "version": 2},
            }),
        )?;
        let account_jwt = jwt(
            &operator,
            serde_json::json!({
                "sub": account.public_key(),
                "name": "drover",
                "nats": {
                    "limits": {
                        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                        "wildcards": true, "conn": -1, "leaf": -1,
                        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                    },
                    "default_permissions": {"pub": {}, "sub": {}},
                    "type": "account",
                    "version": 2,
                },
            }),
        )?;
        let system = nkeys::KeyPair::new_account();
        let system_jwt = jwt(
            &operator,
            serde_json::json!({
                "sub": system.public_key(),
                "name": "SYS",
                "nats": {"type": "account", "version": 2},
            }),
        )?;
        Ok(Self {
            account,
            operator_jwt,
            account_jwt,
            system,
            system_jwt,
        })
    }

    /// The lines that put a nats-server in operator mode with this operator's account.
    pub fn server_config(&self) -> String {
        format!(
            "operator: {:?}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {:?}\n  {}: {:?}\n}}\n",
            self.operator_jwt,
            self.system.public_key(),
            self.account.public_key(),
            self.account_jwt,
            self.system.public_key(),
            self.system_jwt,
        )
    }

    /// A `.creds` file's text for a new user of the account, allowed to publish and subscribe to these
    /// subjects (empty: everything).
    pub fn user_creds(
        &self,
        name: &str,
        publish: &[&str],
        subscribe: &[&str],
    ) -> anyhow::Result<String> {
        let user = nkeys::KeyPair::new_user();
        let allow = |subjects: &[&str]| {
            if subjects.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::json!({ "allow": subjects })
            }
        };
        let token = jwt(
            &self.account,
            serde_json::json!({
                "sub": user.public_key(),
                "name": name,
                "nats": {
                    "pub": allow(publish),
                    "sub": allow(subscribe),
                    "subs": -1, "data": -1, "payload": -1,
                    "type": "user",
                    "version": 2,
                },
            }),
        )?;
        Ok(format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed()?
        ))
    }
}
