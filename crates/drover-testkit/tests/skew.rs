//! The version-skew policy with real binaries (docs/operations.md, "Versions"): the previous release's
//! agent, built from this repository's history (`scripts/previous-release.sh`), against this server, and
//! this agent against the previous release's server. Each pair enrolls, heartbeats, runs an exec and
//! converges a file manifest; the server reports the agent's version.

use std::path::PathBuf;

use drover_testkit::{Agent, Server, ServerOptions, TIMEOUT, previous_release, tail, wait_for};
use serde_json::json;

/// Enrolls an agent run from `agent_binary` (`None`: this workspace's) into `server` and drives it
/// through a heartbeat, an exec and a file manifest; returns the node as the server lists it.
fn one_node(server: &Server, agent_binary: Option<PathBuf>) -> serde_json::Value {
    let files = tempfile::tempdir().unwrap();
    let token = server
        .join_token(json!({"labels": {"role": "skew"}}))
        .unwrap();
    let root = files.path().display().to_string();
    let args = [
        "--server",
        &server.agent_url(),
        "--name",
        "skew",
        "--token",
        &token,
        "--heartbeat-interval",
        "300ms",
        "--resync-interval",
        "500ms",
        "--allow-path",
        &root,
        "--allow-exec",
        "true",
    ];
    let agent = Agent::start_from(
        agent_binary,
        args.iter().map(|a| a.to_string()).collect(),
        &[],
    )
    .unwrap();
    let fail = |what: &str| -> ! {
        panic!(
            "{what}\nagent log:\n{}\nserver log:\n{}",
            tail(&agent.log(), 20),
            tail(&server.log(), 20)
        )
    };
    // Enrolled and heartbeating: the node is Ready with a recent last_seen.
    let node = wait_for("the node Ready", TIMEOUT, || {
        server
            .nodes()
            .ok()?
            .into_iter()
            .find(|n| n["name"] == "skew" && n["connected"] == true && n["status"] == "Ready")
    })
    .unwrap_or_else(|e| fail(&e.to_string()));
    // An exec.
    let task = server
        .create_task(
            json!({"target": {"node": "skew"}, "spec": {"kind": "exec", "argv": ["true"]}}),
        )
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let done = server
        .wait_task_done(&id)
        .unwrap_or_else(|e| fail(&e.to_string()));
    assert_eq!(done["runs"][0]["state"], "Succeeded", "{done}");
    // A file manifest.
    let path = files.path().join("motd");
    let manifest = json!({"name": "skew", "selector": {"role": "skew"}, "resources": [
        {"id": "motd", "file": {"path": path.display().to_string(), "content": "hello\n"}}]});
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    server
        .wait_converged("skew")
        .unwrap_or_else(|e| fail(&e.to_string()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    node
}

#[test]
fn the_previous_releases_agent_works_with_this_server() {
    let (version, dir) = previous_release().unwrap_or_else(|e| panic!("{e:#}"));
    let server = Server::start().unwrap();
    let node = one_node(&server, Some(dir.join("drover-agent")));
    assert_eq!(node["capabilities"]["agent_version"], version, "{node}");
    let listed = server.nodes().unwrap();
    assert_eq!(listed[0]["agent_version"], version, "{listed:?}");
}

#[test]
fn this_agent_works_with_the_previous_releases_server() {
    let (version, dir) = previous_release().unwrap_or_else(|e| panic!("{e:#}"));
    let server = Server::start_from(Some(dir.join("drover")), ServerOptions::default()).unwrap();
    let health = server.get("/health").unwrap().body;
    assert_eq!(
        health["version"], version,
        "the previous release's server: {health}"
    );
    let node = one_node(&server, None);
    assert_eq!(
        node["capabilities"]["agent_version"],
        drover_types::VERSION,
        "{node}"
    );
    let log = server.log();
    assert!(!log.contains("refused a stream"), "{}", tail(&log, 20));
}
