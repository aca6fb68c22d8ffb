//! Rollouts of containers through a real engine (Podman): a canary whose container health check fails
//! pauses the rollout and the other nodes never see the revision; an image whose registry cannot be
//! reached pauses it as an infrastructure failure, without reverting anything.
//!
//! Revision v1 is a shell job each node runs in its own directory (`$NODE_DIR`); v2 adds a container, which
//! only the canary (the first wave) ever gets: the other nodes need no engine.

use std::path::Path;

use drover_testkit::{Agent, BUSYBOX, Podman, Server, TIMEOUT, tail, wait_for};
use serde_json::{Value, json};

fn node(server: &Server, name: &str, tier: &str, dir: &Path, podman: Option<&Podman>) -> Agent {
    let dir = dir.display().to_string();
    let docker_host = podman.map(Podman::docker_host).unwrap_or_default();
    let mut env = vec![("NODE_DIR", dir.as_str())];
    if podman.is_some() {
        env.push(("DOCKER_HOST", docker_host.as_str()));
    }
    let args = [
        "--heartbeat-interval",
        "300ms",
        "--resync-interval",
        "500ms",
        "--allow-kind",
        "shell_job,container",
        "--allow-shell",
    ];
    server.attached_agent_with_env(
        name,
        json!({"labels": {"role": "web", "tier": tier}}),
        &args,
        &env,
    )
}

fn manifest(container: Option<Value>) -> Value {
    let mut resources = vec![json!({"id": "version", "shell_job": {
        "command": "echo v1 > \"$NODE_DIR/version\"",
        "unless": "grep -qx v1 \"$NODE_DIR/version\"",
    }})];
    resources.extend(container);
    json!({
        "name": "web",
        "selector": {"role": "web"},
        "rollout": {"waves": [{"selector": {"tier": "canary"}}, {"percent": 100}], "bake": "1s"},
        "resources": resources,
    })
}

fn apply(server: &Server, body: &Value) {
    let reply = server
        .post("/api/v1/manifests", Some(&server.admin_token()), body)
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
}

fn wait_state(server: &Server, state: &str) -> Value {
    wait_for(&format!("the rollout {state}"), TIMEOUT, || {
        let r = server.get("/api/v1/rollouts/web").ok()?.body;
        (r["state"] == state).then_some(r)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            server.get("/api/v1/rollouts/web").unwrap().body,
            tail(&server.log(), 30)
        )
    })
}

/// Runs `check` against a canary with Podman and two plain nodes, after v1 completed everywhere; returns
/// the rollout once it paused, and the other nodes' reports.
fn paused_by(container: Value) -> (Value, Vec<Value>) {
    let podman = Podman::start().unwrap_or_else(|e| panic!("{e:#}"));
    let server = Server::start().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let _agents = [
        node(&server, "canary", "canary", dirs[0].path(), Some(&podman)),
        node(&server, "web-1", "main", dirs[1].path(), None),
        node(&server, "web-2", "main", dirs[2].path(), None),
    ];
    apply(&server, &manifest(None));
    wait_state(&server, "Complete");
    apply(&server, &manifest(Some(container)));
    let paused = wait_state(&server, "Paused");
    let others = ["web-1", "web-2"]
        .iter()
        .map(|n| server.node_status(n).unwrap())
        .collect();
    // The container is the test's to remove (the agent keeps it while its manifest wants it).
    let _ = podman.podman(&["rm", "-f", "-t", "0", "drover-app"]);
    (paused, others)
}

fn never_saw_the_container(reports: &[Value]) {
    for r in reports {
        let ids: Vec<&str> = r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        assert_eq!(ids, ["version"], "{r}");
    }
}

#[test]
fn a_canary_whose_container_health_check_fails_pauses_the_rollout() {
    let (paused, others) = paused_by(json!({"id": "app", "container": {
        "image": BUSYBOX, "pull": "never", "command": ["sh", "-c", "while true; do sleep 1; done"],
        "health": {"command": ["sh", "-c", "exit 3"], "retries": 1},
    }}));
    assert_eq!(paused["waves"][0]["change_failed"], 1, "{paused}");
    assert_eq!(paused["failing"][0]["node"], "canary", "{paused}");
    never_saw_the_container(&others);
}

#[test]
fn a_registry_that_cannot_be_reached_pauses_without_reverting() {
    let (paused, others) = paused_by(json!({"id": "app", "container": {
        "image": "127.0.0.1:1/drover-nothing:latest", "pull": "always",
        "command": ["sh", "-c", "sleep 60"],
    }}));
    assert_eq!(paused["waves"][0]["infra_failed"], 1, "{paused}");
    assert_eq!(paused["waves"][0]["change_failed"], 0, "{paused}");
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("infrastructure")),
        "{paused}"
    );
    never_saw_the_container(&others);
}
