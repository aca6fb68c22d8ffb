//! An end-to-end harness that drives the real `drover` and `drover-agent` binaries: free loopback ports,
//! temp dirs, logs kept for failure messages, polling for a state with a timeout instead of sleeping, and
//! every process killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

mod postgres;
pub use postgres::Postgres;
mod nats;
pub use nats::{Nats, NatsOperator, nkey_user};
mod tls;
pub use tls::TestCerts;
mod fleet;
pub use fleet::{Fleet, converged, resource};

/// The usual patience for a state to appear on a loaded machine.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables that would leak the caller's setup into a spawned process.
const SCRUBBED_ENV: &[&str] = &[
    "DROVER_SERVER",
    "DROVER_TOKEN",
    "DROVER_CONTEXT",
    "DROVER_API_TLS",
    "DROVER_API_CERT",
    "DROVER_API_KEY",
    "DROVER_DATA_DIR",
    "DROVER_DATABASE",
    "DROVER_STATE_DIR",
    "DROVER_CONFIG",
    "DROVER_LABELS",
    "DROVER_NAME",
    "DROVER_HEARTBEAT_INTERVAL",
    "DROVER_LISTEN",
    "DROVER_AGENT_LISTEN",
    "DROVER_LOG_FORMAT",
    "CONTROL_PLANE_URL",
    "HEARTBEAT_INTERVAL",
];

/// Path of a binary built by `cargo build --workspace` (it sits beside the test's own `deps` dir).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target dir")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{name} is not built at {}: run `cargo build --workspace` before the tests (scripts/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// The previous release (the last line of RELEASES) and the dir holding its `drover` and `drover-agent`,
/// as `scripts/previous-release.sh` builds them (`scripts/test.sh` runs it).
pub fn previous_release() -> anyhow::Result<(String, PathBuf)> {
    let releases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../RELEASES");
    let text = std::fs::read_to_string(&releases)
        .with_context(|| format!("cannot read {}", releases.display()))?;
    let version = text
        .lines()
        .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
        .and_then(|l| l.split_whitespace().next())
        .context("RELEASES names no release")?
        .to_string();
    let target = bin("drover")?
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target dir")?
        .to_path_buf();
    let dir = target.join("previous-release").join("debug");
    let built =
        std::fs::read_to_string(target.join("previous-release/built-from")).unwrap_or_default();
    if !built.starts_with(&format!("{version} ")) || !dir.join("drover-agent").exists() {
        bail!(
            "the previous release {version} is not built in {}: run scripts/previous-release.sh (scripts/test.sh does)",
            dir.display()
        );
    }
    Ok((version, dir))
}

/// A port free right now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}

/// Polls `probe` until it returns `Some`, or fails after `timeout` saying what was awaited.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrubbed(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("DROVER_LOG", "info,drover_server=debug");
    cmd
}

fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

fn terminate(child: &mut Child, graceful: bool) {
    if graceful {
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Options for a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub args: Vec<String>,
}

impl ServerOptions {
    /// A replica's flags: `--database` on `pg`'s `drover` database (create it first), a cluster secret
    /// written into `secrets` (the same for every replica), and `--nats` when given.
    pub fn replica(pg: &Postgres, nats: Option<&Nats>, secrets: &Path) -> Self {
        let secret = secrets.join("cluster.secret");
        std::fs::write(&secret, "4b9e2d7a1c3f5e8b0d2a4c6e8f1b3d5a\n")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", secret.display()));
        let mut args = vec![
            "--database".into(),
            pg.url("drover"),
            "--cluster-secret-file".into(),
            secret.display().to_string(),
        ];
        if let Some(nats) = nats {
            args.extend(["--nats".into(), nats.url()]);
        }
        Self { args }
    }
}

/// A real `drover server` on free loopback ports in its own data dir.
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub api_port: u16,
    pub agent_port: u16,
    options: ServerOptions,
    /// Another build of `drover` than this workspace's (the previous release's, for the skew tests).
    binary: Option<PathBuf>,
    http: reqwest::blocking::Client,
}

/// An HTTP answer: status and JSON body (Null when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Server {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> anyhow::Result<Self> {
        Self::start_from(None, options)
    }

    /// A server run from `binary` (`None`: this workspace's `drover`).
    pub fn start_from(binary: Option<PathBuf>, options: ServerOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("server.toml"), "")?;
        let mut server = Self {
            child: None,
            dir,
            api_port: free_port(),
            agent_port: free_port(),
            options,
            binary,
            // No pooling: a server may close a connection after refusing a request, and a reused
            // pooled connection would then fail the next, unrelated request. The harness's own client
            // does not verify an `--api-tls` server's certificate (its CA is made at the server's first
            // start); what the CLI verifies is what the tests check.
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .danger_accept_invalid_certs(true)
                .build()?,
        };
        // A port picked free can be taken before the server binds it (outgoing connections use the same
        // range): try again on fresh ports rather than fail the test.
        for attempt in 0.. {
            match server.launch() {
                Ok(()) => break,
                Err(e) if attempt < 3 && server.log().contains("cannot listen") => {
                    eprintln!("retrying server start on other ports: {e}");
                    server.api_port = free_port();
                    server.agent_port = free_port();
                    let _ = std::fs::remove_file(server.log_path());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => bin("drover")?,
        };
        let mut cmd = scrubbed(&binary);
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("server")
            .arg("--config")
            .arg(self.dir.path().join("server.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--agent-listen")
            .arg(format!("127.0.0.1:{}", self.agent_port))
            .args(&self.options.args);
        self.child = Some(spawn_logged(cmd, &self.log_path())?);
        let health = format!("{}/health", self.api_url());
        let child = self.child.as_mut().context("server child")?;
        let http = &self.http;
        let mut exited = None;
        let ready = wait_for("the server's /health", TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            http.get(&health)
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| true)
        });
        match (ready, exited) {
            (Ok(true), _) => Ok(()),
            (_, Some(status)) => bail!("the server exited ({status}) at start:\n{}", self.log()),
            (Err(e), _) => bail!("{e}\nserver log:\n{}", self.log()),
            (Ok(false), None) => unreachable!("false only when exited"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The REST API's URL: `https` when the server was started with `--api-tls`.
    pub fn api_url(&self) -> String {
        let tls = self.options.args.iter().any(|a| a == "--api-tls");
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.api_port)
    }

    pub fn agent_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.agent_port)
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's resident memory in KiB (`VmRSS` in /proc/<pid>/status), for memory-bound tests.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, true);
        }
    }

    /// Kills the server outright.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, false);
        }
    }

    /// Starts the server again on the same ports and data dir with other arguments (another store).
    pub fn restart_with(&mut self, options: ServerOptions) -> anyhow::Result<()> {
        self.stop();
        self.options = options;
        self.launch()
    }

    /// Starts the server again on the same ports and data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    /// A raw request. `token`: `None` sends no Authorization header.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api_url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes()?;
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// An operator GET with the admin token.
    pub fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request("GET", path, Some(&self.admin_token()), None)
    }

    /// A POST of a JSON value.
    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Reply> {
        self.request("POST", path, token, Some(serde_json::to_vec(body)?))
    }

    /// A join token made through the REST API.
    pub fn join_token(&self, request: Value) -> anyhow::Result<String> {
        let reply = self.post("/api/v1/tokens", Some(&self.admin_token()), &request)?;
        if reply.status != 201 {
            bail!("token creation failed: {reply:?}");
        }
        reply.body["token"]
            .as_str()
            .map(str::to_string)
            .context("no token in the answer")
    }

    /// A real agent named `name`, enrolled here with a join token carrying `token_request` (labels) and
    /// started with `args` besides its token; returned once this server sees it connected.
    pub fn attached_agent(&self, name: &str, token_request: Value, args: &[&str]) -> Agent {
        self.attached_agent_with_env(name, token_request, args, &[])
    }

    /// [`Server::attached_agent`] with environment variables for the agent.
    pub fn attached_agent_with_env(
        &self,
        name: &str,
        token_request: Value,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let token = self
            .join_token(token_request)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut all = vec!["--token", token.as_str()];
        all.extend_from_slice(args);
        let agent = Agent::start_with_env(&self.agent_url(), name, &all, env)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.wait_node(name, "attached", |n| n["connected"] == true)
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
        agent
    }

    /// A real agent named `name` with 300 ms heartbeats and `extra` flags, enrolled with a join token without
    /// labels; returned once this server sees it connected.
    pub fn agent(&self, name: &str, extra: &[&str]) -> Agent {
        let mut args = vec!["--heartbeat-interval", "300ms"];
        args.extend_from_slice(extra);
        self.attached_agent(name, serde_json::json!({}), &args)
    }

    /// The convergence report of the node named `node` (`/api/v1/nodes/{node}/status`).
    pub fn node_status(&self, node: &str) -> anyhow::Result<Value> {
        Ok(self.get(&format!("/api/v1/nodes/{node}/status"))?.body)
    }

    /// Waits until the node named `node` has converged (see [`converged`]), and returns its report.
    pub fn wait_converged(&self, node: &str) -> anyhow::Result<Value> {
        wait_for(&format!("convergence of {node}"), TIMEOUT, || {
            Some(self.node_status(node).ok()?).filter(converged)
        })
    }

    /// All nodes as JSON.
    pub fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        let reply = self.get("/api/v1/nodes")?;
        Ok(reply.body.as_array().cloned().unwrap_or_default())
    }

    /// Waits until the node named `name` satisfies `pred`, and returns it.
    pub fn wait_node(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        wait_for(&format!("node {name} {what}"), TIMEOUT, || {
            self.nodes()
                .ok()?
                .into_iter()
                .find(|n| n["name"] == name && pred(n))
        })
        .with_context(|| format!("server log:\n{}", tail(&self.log(), 40)))
    }

    /// Starts an agent named `edge`, enrolled with the label `role=edge`, files allowed under `root`,
    /// 300 ms heartbeats and 500 ms resyncs, plus `extra` flags; returns it once its node is connected,
    /// with the node.
    pub fn start_edge_agent(&self, root: &str, extra: &[&str]) -> anyhow::Result<(Agent, Value)> {
        self.start_edge_agent_with_env(root, extra, &[])
    }

    /// [`Server::start_edge_agent`] with environment variables for the agent.
    pub fn start_edge_agent_with_env(
        &self,
        root: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Agent, Value)> {
        let token = self.join_token(serde_json::json!({"labels": {"role": "edge"}}))?;
        let mut args = vec![
            "--token",
            &token,
            "--heartbeat-interval",
            "300ms",
            "--allow-path",
            root,
            "--resync-interval",
            "500ms",
        ];
        args.extend_from_slice(extra);
        let agent = Agent::start_with_env(&self.agent_url(), "edge", &args, env)?;
        let node = self.wait_node("edge", "connected", |n| n["connected"] == true)?;
        Ok((agent, node))
    }

    /// Creates a task through the REST API and returns it.
    pub fn create_task(&self, request: Value) -> anyhow::Result<Value> {
        let reply = self.post("/api/v1/tasks", Some(&self.admin_token()), &request)?;
        if reply.status != 201 {
            bail!("task creation failed: {reply:?}");
        }
        Ok(reply.body)
    }

    /// Waits until the task satisfies `pred`, and returns it.
    pub fn wait_task(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        wait_for(&format!("task {id} {what}"), TIMEOUT, || {
            let t = self.get(&format!("/api/v1/tasks/{id}")).ok()?.body;
            pred(&t).then_some(t)
        })
        .with_context(|| format!("server log:\n{}", tail(&self.log(), 40)))
    }

    /// Waits for the task to finish on every node.
    pub fn wait_task_done(&self, id: &str) -> anyhow::Result<Value> {
        self.wait_task(id, "to finish", |t| {
            t["runs"].as_array().is_some_and(|runs| {
                runs.iter()
                    .all(|r| !matches!(r["state"].as_str(), Some("Pending") | Some("Running")))
            })
        })
    }

    /// The task's stored output events (`output` chunks, `exit` runs, `done`), replayed without following.
    pub fn task_events(&self, id: &str) -> anyhow::Result<Vec<(String, Value)>> {
        let text = self
            .http
            .get(format!("{}/api/v1/tasks/{id}/output", self.api_url()))
            .bearer_auth(self.admin_token())
            .send()?
            .text()?;
        Ok(parse_sse(&text))
    }

    /// The stored output of a task as (stream, text) pairs in order.
    pub fn task_lines(&self, id: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .task_events(id)?
            .into_iter()
            .filter(|(name, _)| name == "output")
            .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
            .map(|c| {
                (
                    c["stream"].as_str().unwrap_or_default().to_string(),
                    c["text"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Runs the `drover` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.cli_command(args)?.output()?)
    }

    /// The `drover` CLI against this server, to spawn.
    pub fn cli_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = scrubbed(&bin("drover")?);
        cmd.arg("--server")
            .arg(self.api_url())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args);
        Ok(cmd)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `drover` CLI with no server, token or context from the caller's environment, to point anywhere.
pub fn drover_cli() -> anyhow::Result<Command> {
    Ok(scrubbed(&bin("drover")?))
}

/// Parses a Server-Sent Events body into (event, JSON data) pairs.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            Some((name?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

/// The next Server-Sent Event (name, JSON data) on a stream, skipping keep-alives.
pub fn next_event(reader: &mut impl std::io::BufRead) -> (String, Value) {
    let (mut name, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            if !data.is_empty() {
                return (name, serde_json::from_str(&data).unwrap());
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}

/// A MIaaS registration body with every field MIaaS requires (`ip`, `capabilities` with `os`,
/// `cpu_count`, `mem_mb`), plus the fields of `extra` (an object).
pub fn registration(name: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({
        "name": name,
        "ip": "192.0.2.10",
        "capabilities": {"os": "linux", "cpu_count": 2, "mem_mb": 2048, "gpus": []}
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// Whether a process lives (for children a test's action or task started).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits for the pid a test action (`test_sleep`) wrote to `file`, then returns it.
pub fn wait_pid(file: &Path) -> i32 {
    wait_for("the action's child pid", TIMEOUT, || {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until process `pid` is gone.
pub fn assert_gone(pid: i32) {
    wait_for(&format!("process {pid} to be killed"), TIMEOUT, || {
        (!process_alive(pid)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The last `n` lines of a log.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A real `drover-agent` with its own state dir.
pub struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Another build of `drover-agent` than this workspace's.
    binary: Option<PathBuf>,
}

impl Agent {
    /// Starts an agent named `name` against `server_url` with extra `args` (a `--token`, labels...).
    pub fn start(server_url: &str, name: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(server_url, name, args, &[])
    }

    /// [`Agent::start`] with environment variables.
    pub fn start_with_env(
        server_url: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            "--server".to_string(),
            server_url.to_string(),
            "--name".to_string(),
            name.to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        Self::start_raw(all, env)
    }

    /// The value the agent was started with after `flag` (`--name`, `--token`, ...).
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let at = self.args.iter().position(|a| a == flag)?;
        self.args.get(at + 1).map(String::as_str)
    }

    /// Starts an agent with exactly these arguments and environment variables (nothing added).
    pub fn start_raw(args: Vec<String>, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_from(None, args, env)
    }

    /// [`Agent::start_raw`] run from `binary` (`None`: this workspace's `drover-agent`).
    pub fn start_from(
        binary: Option<PathBuf>,
        args: Vec<String>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("agent.toml"), "")?;
        let mut agent = Self {
            child: None,
            dir,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            binary,
        };
        agent.launch(None)?;
        Ok(agent)
    }

    fn launch(&mut self, args: Option<&[&str]>) -> anyhow::Result<()> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => bin("drover-agent")?,
        };
        let mut cmd = scrubbed(&binary);
        cmd.arg("--state-dir")
            .arg(self.state_dir())
            .arg("--config")
            .arg(self.dir.path().join("agent.toml"));
        match args {
            Some(a) => cmd.args(a),
            None => cmd.args(&self.args),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(spawn_logged(cmd, &self.log_path())?);
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The agent's process id while it runs (to freeze it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, false);
        }
    }

    /// Stops the agent with SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, true);
        }
    }

    /// Starts the agent again with the same state dir and the given arguments (none: the original ones).
    pub fn restart(&mut self, args: Option<&[&str]>) -> anyhow::Result<()> {
        self.stop();
        self.launch(args)
    }

    /// Waits for the agent to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> anyhow::Result<Option<i32>> {
        let child = self.child.as_mut().context("the agent is not running")?;
        let status = wait_for("the agent to exit", TIMEOUT, || {
            child.try_wait().ok().flatten()
        })
        .with_context(|| format!("agent log:\n{}", tail(&self.log(), 40)))?;
        self.child = None;
        Ok(status.code())
    }

    /// Waits until the agent's log contains `text`.
    pub fn wait_log(&self, text: &str) -> anyhow::Result<()> {
        wait_for(&format!("{text:?} in the agent log"), TIMEOUT, || {
            self.log().contains(text).then_some(())
        })
        .with_context(|| format!("agent log:\n{}", tail(&self.log(), 40)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A command's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The run of `task` (a task's JSON) on the node named `node`; panics, showing the task, when it has none.
pub fn run_of<'a>(task: &'a Value, node: &str) -> &'a Value {
    task["runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["node_name"] == node))
        .unwrap_or_else(|| panic!("no run on {node}: {task}"))
}

/// Parses an RFC 3339 time from a JSON field (`None` when absent or malformed).
pub fn time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A real Podman serving the Docker Engine API on its own socket, for container tests.
/// Needs `scripts/testbed.sh` (Podman, runc, the local `localhost/busybox:latest` image).
pub struct Podman {
    child: Option<Child>,
    dir: tempfile::TempDir,
    containers: std::sync::Mutex<Vec<String>>,
}

/// The image tests run.
pub const BUSYBOX: &str = "localhost/busybox:latest";

impl Podman {
    pub fn start() -> anyhow::Result<Self> {
        let installed = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            bail!(
                "podman is not installed: run scripts/testbed.sh (it installs Podman, runc and the busybox image)"
            );
        }
        let image = Command::new("podman")
            .args(["image", "exists", BUSYBOX])
            .status()?;
        if !image.success() {
            bail!("the image {BUSYBOX} is missing: run scripts/testbed.sh to build it");
        }
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("podman.sock");
        let log = std::fs::File::create(dir.path().join("podman.log"))?;
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start `podman system service`")?;
        let podman = Self {
            child: Some(child),
            dir,
            containers: Default::default(),
        };
        wait_for("the Podman API socket", TIMEOUT, || {
            podman.socket().exists().then_some(())
        })
        .with_context(|| {
            std::fs::read_to_string(podman.dir.path().join("podman.log")).unwrap_or_default()
        })?;
        Ok(podman)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    /// `DOCKER_HOST` pointing at this engine.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Runs the podman CLI; fails when it fails.
    pub fn podman(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("podman").args(args).output()?;
        if !out.status.success() {
            bail!(
                "podman {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts a detached busybox container running `script`; it is removed when this handle drops.
    pub fn run_container(&self, name: &str, script: &str) -> anyhow::Result<()> {
        self.containers
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(name.to_string());
        self.podman(&["run", "-d", "--name", name, BUSYBOX, "sh", "-c", script])
            .map(|_| ())
    }

    /// The container's state (`running`, `exited`, ...), or `None` when it does not exist.
    pub fn state(&self, name: &str) -> Option<String> {
        self.podman(&["inspect", "--format", "{{.State.Status}}", name])
            .ok()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Ok(names) = self.containers.lock() {
            for name in names.iter() {
                let _ = Command::new("podman")
                    .args(["rm", "-f", "-t", "0", name])
                    .output();
            }
        }
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, true);
        }
    }
}

/// A real systemd, PID 1 of a container sharing the host's network, with the built binaries mounted at
/// /drover. Needs `scripts/testbed.sh` (it builds `localhost/debian-systemd:latest`).
pub struct SystemdHost {
    pub name: String,
}

pub const SYSTEMD_IMAGE: &str = "localhost/debian-systemd:latest";

impl SystemdHost {
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let image = Command::new("podman")
            .args(["image", "exists", SYSTEMD_IMAGE])
            .status();
        if !image.is_ok_and(|s| s.success()) {
            bail!(
                "the image {SYSTEMD_IMAGE} is missing (or podman is): run scripts/testbed.sh to build it"
            );
        }
        let bin_dir = bin("drover-agent")?
            .parent()
            .context("binary dir")?
            .to_path_buf();
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", name])
            .output();
        let out = Command::new("podman")
            .args([
                "run",
                "-d",
                "--name",
                name,
                "--systemd=always",
                "--network",
                "host",
            ])
            .arg("-v")
            .arg(format!("{}:/drover:ro", bin_dir.display()))
            .args([SYSTEMD_IMAGE, "/sbin/init"])
            .output()?;
        if !out.status.success() {
            bail!(
                "cannot start the systemd container: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let host = Self {
            name: name.to_string(),
        };
        wait_for("systemd to finish booting", TIMEOUT, || {
            let state = host.exec(&["systemctl", "is-system-running"]).ok()?;
            matches!(state.trim(), "running" | "degraded").then_some(())
        })?;
        Ok(host)
    }

    /// Runs a command in the container and returns its stdout (also when it exits non-zero).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("podman")
            .arg("exec")
            .arg(&self.name)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Writes `content` to `path` inside (its parent dirs made), with `mode` (octal, as chmod takes it).
    pub fn write(&self, path: &str, content: &str, mode: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let script = "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\" && chmod \"$2\" \"$1\"";
        let mut child = Command::new("podman")
            .args([
                "exec", "-i", &self.name, "sh", "-c", script, "sh", path, mode,
            ])
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("the container's stdin")?
            .write_all(content.as_bytes())?;
        if !child.wait()?.success() {
            bail!("cannot write {path} in the systemd container");
        }
        Ok(())
    }

    /// Starts `drover-agent` inside, in the background, logging to /var/log/drover-agent.log there.
    pub fn start_agent(&self, args: &[&str]) -> anyhow::Result<()> {
        let line = format!(
            "exec /drover/drover-agent --state-dir /var/lib/drover-agent {} > /var/log/drover-agent.log 2>&1",
            args.join(" ")
        );
        let status = Command::new("podman")
            .args(["exec", "-d", &self.name, "sh", "-c", &line])
            .status()?;
        if !status.success() {
            bail!("cannot start the agent in the systemd container");
        }
        Ok(())
    }

    pub fn agent_log(&self) -> String {
        self.exec(&["cat", "/var/log/drover-agent.log"])
            .unwrap_or_default()
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
    }
}

/// A plain-text GET (a Prometheus scrape): status and body. `token`: `None` sends no Authorization header.
pub fn get_text(url: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    // What Prometheus asks for: OpenMetrics first.
    let mut req = http.get(url).header(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send()?;
    Ok((resp.status().as_u16(), resp.text()?))
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses a text exposition (Prometheus or OpenMetrics), failing on any line that is neither a comment
/// (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) nor `name{labels} value`: what a scraper would refuse.
pub fn parse_exposition(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# ") || line.is_empty() {
            continue;
        }
        let bad = || anyhow::anyhow!("not an exposition line: {line:?}");
        let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad())?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(bad)?;
                let mut labels = Vec::new();
                // Label values here never hold `",` (names, states, route patterns, uuids).
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").ok_or_else(bad)?;
                    labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
                }
                (name, labels)
            }
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid_name {
            return Err(bad());
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if !text.ends_with("# EOF\n") {
        bail!("the exposition does not end with `# EOF`");
    }
    Ok(samples)
}

/// The value of the sample named `name` whose labels include all of `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
}
