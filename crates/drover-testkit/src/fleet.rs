//! A server with one agent beside a temp dir of files it may write: the shape most manifest, action and
//! policy tests start from, with the status and resource polls they share.

use serde_json::Value;

use crate::{Agent, Server, TIMEOUT, tail, wait_for};

/// A server, one agent attached to it, and the temp dir that agent's `--allow-path` names.
pub struct Fleet {
    pub server: Server,
    pub agent: Agent,
    pub files: tempfile::TempDir,
}

impl Fleet {
    /// `server` and the agent `start` returns, given the server and the files dir's path.
    pub fn new(server: Server, start: impl FnOnce(&Server, &str) -> Agent) -> Self {
        let files = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let root = files.path().display().to_string();
        let agent = start(&server, &root);
        Self {
            server,
            agent,
            files,
        }
    }

    /// A fresh server and the agent `edge` of [`Server::start_edge_agent`] with `extra` flags.
    pub fn edge(extra: &[&str]) -> Self {
        Self::edge_with_env(extra, &[])
    }

    /// [`Fleet::edge`] with environment variables for the agent.
    pub fn edge_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let server = Server::start().unwrap_or_else(|e| panic!("{e:#}"));
        Self::new(server, |server, root| {
            server
                .start_edge_agent_with_env(root, extra, env)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .0
        })
    }

    /// The agent's node name (its `--name`).
    pub fn node(&self) -> &str {
        self.agent.arg("--name").unwrap_or_default()
    }

    /// The path of `name` in the files dir.
    pub fn path(&self, name: &str) -> String {
        self.files.path().join(name).display().to_string()
    }

    /// Applies `manifest` through the REST API (it must be accepted) and returns the answer.
    pub fn apply(&self, manifest: Value) -> Value {
        let reply = self
            .server
            .post(
                "/api/v1/manifests",
                Some(&self.server.admin_token()),
                &manifest,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    }

    /// The node's convergence report (Null when the server does not answer).
    pub fn status(&self) -> Value {
        self.server.node_status(self.node()).unwrap_or(Value::Null)
    }

    /// The resource `id` in the node's report.
    pub fn resource(&self, id: &str) -> Option<Value> {
        resource(&self.status(), id).cloned()
    }

    /// Waits until the resource `id` satisfies `pred`, and returns it.
    pub fn wait_resource(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("resource {id} {what}"), TIMEOUT, || {
            self.resource(id).filter(|r| pred(r))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nstatus: {}\nagent log:\n{}",
                self.status(),
                tail(&self.agent.log(), 30)
            )
        })
    }

    /// Waits until the node has converged (see [`converged`]), and returns its report.
    pub fn wait_converged(&self) -> Value {
        self.server
            .wait_converged(self.node())
            .unwrap_or_else(|e| panic!("{e}\nstatus: {}", self.status()))
    }
}

/// The resource `id` in a node's convergence report.
pub fn resource<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == id)
}

/// Whether a node's convergence report shows it converged: a manifest applied (generation above 0), the
/// agent caught up with it, and every resource (at least one) Ready.
pub fn converged(status: &Value) -> bool {
    status["desired_generation"].as_u64().is_some_and(|g| g > 0)
        && status["observed_generation"] == status["desired_generation"]
        && status["resources"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.iter().all(|r| r["state"] == "Ready"))
}
