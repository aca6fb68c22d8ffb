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
        if self.jetstream {
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
