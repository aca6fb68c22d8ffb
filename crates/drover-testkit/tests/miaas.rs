//! The MIaaS HTTP contract for plain HTTP agents: register, heartbeat, and a real Python agent.

use std::process::{Command, Stdio};

use drover_testkit::{Server, ServerOptions};
use serde_json::json;

fn register_body(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "ip": "192.168.1.10",
        "capabilities": {"os": "linux", "cpu_count": 8, "mem_mb": 16000, "disk_mb": 500000, "gpus": [], "tpu": "v5e"}
    })
}

#[test]
fn register_and_heartbeat_with_tokens() {
    let server = Server::start().unwrap();
    let join = server
        .join_token(json!({"labels": {"via": "http"}}))
        .unwrap();

    // Without a join token, registration is refused.
    let reply = server
        .post("/api/v1/nodes/register", None, &register_body("worker-1"))
        .unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("join token"));

    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &register_body("worker-1"),
        )
        .unwrap();
    assert_eq!(reply.status, 201, "{reply:?}");
    let node_id = reply.body["node_id"].as_str().unwrap().to_string();
    let node_token = reply.body["node_token"].as_str().unwrap().to_string();

    // Registering again under the same name returns the same node, with a fresh token.
    let again = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &register_body("worker-1"),
        )
        .unwrap();
    assert_eq!(again.status, 201);
    assert_eq!(again.body["node_id"], node_id.as_str());
    let new_token = again.body["node_token"].as_str().unwrap().to_string();
    assert_ne!(new_token, node_token);

    let beat = json!({"cpu_usage": 25.5, "mem_usage": 60.2, "disk_free_mb": 450000, "running_containers": []});
    let path = format!("/api/v1/nodes/{node_id}/heartbeat");
    assert_eq!(
        server.post(&path, Some(&node_token), &beat).unwrap().status,
        401,
        "old token must stop working"
    );
    assert_eq!(server.post(&path, None, &beat).unwrap().status, 401);
    assert_eq!(server.post(&path, Some(&join), &beat).unwrap().status, 401);
    assert_eq!(
        server.post(&path, Some(&new_token), &beat).unwrap().status,
        200
    );
    let unknown = server
        .post(
            "/api/v1/nodes/00000000-0000-0000-0000-000000000000/heartbeat",
            Some(&new_token),
            &beat,
        )
        .unwrap();
    assert_eq!(unknown.status, 404);

    let node = server
        .wait_node("worker-1", "Ready with metrics", |n| {
            n["metrics"].is_object()
        })
        .unwrap();
    assert_eq!(node["status"], "Ready");
    assert_eq!(node["transport"], "http");
    assert_eq!(node["ip"], "192.168.1.10");
    assert_eq!(node["labels"]["via"], "http");
    assert_eq!(node["capabilities"]["cpu_count"], 8);
    assert_eq!(
        node["capabilities"]["tpu"], "v5e",
        "unknown capabilities are kept"
    );
    assert_eq!(node["metrics"]["cpu_usage"], 25.5);
    assert_eq!(node["metrics"]["disk_free_mb"], 450000);
}

#[test]
fn open_registration_and_name_clashes() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--open-registration".into()],
    })
    .unwrap();
    let reply = server
        .post("/api/v1/nodes/register", None, &json!({"name": "lab-box"}))
        .unwrap();
    assert_eq!(
        reply.status, 201,
        "any capability may be missing: {reply:?}"
    );

    // An HTTP agent cannot take over the name of a drover-agent node.
    let token = server.join_token(json!({})).unwrap();
    let _agent = drover_testkit::Agent::start(
        &server.agent_url(),
        "grpc-box",
        &["--token", &token, "--heartbeat-interval", "200ms"],
    )
    .unwrap();
    server
        .wait_node("grpc-box", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let clash = server
        .post("/api/v1/nodes/register", None, &json!({"name": "grpc-box"}))
        .unwrap();
    assert_eq!(clash.status, 409, "{clash:?}");
}

/// Kills the Python agent even when an assertion fails.
struct Python(std::process::Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_python_miaas_agent_joins_the_fleet() {
    let python = which("python3")
        .expect("python3 is required for this test: scripts/testbed.sh installs it");
    let server = Server::start().unwrap();
    let join = server.join_token(json!({})).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/miaas_agent.py");
    let _agent = Python(
        Command::new(python)
            .arg(script)
            .env("CONTROL_PLANE_URL", server.api_url())
            .env("HEARTBEAT_INTERVAL", "0.3")
            .env("JOIN_TOKEN", &join)
            .env("NODE_NAME", "python-node")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let node = server
        .wait_node("python-node", "Ready with metrics", |n| {
            n["status"] == "Ready" && n["metrics"]["mem_usage"].is_number()
        })
        .unwrap();
    assert_eq!(node["transport"], "http");
    assert!(node["capabilities"]["mem_mb"].as_u64().unwrap() > 0);
    // It shows in the operator's table beside drover agents.
    let out = server.cli(&["nodes"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("python-node"));
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}
