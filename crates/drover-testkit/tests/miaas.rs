//! The MIaaS HTTP contract for plain HTTP agents: register, heartbeat, and a real Python agent.
//!
//! The `miaas_*` tests are the MIaaS control plane's own API tests (fupacat/MIaaS,
//! `control-plane/tests/test_api.py`) ported to a real drover server with registration open, reads carrying
//! an operator token (drover's deliberate difference: see docs/api.md).

use std::process::{Command, Stdio};

use drover_testkit::{Server, ServerOptions, registration};
use serde_json::{Value, json};

fn register_body(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "ip": "192.168.1.10",
        "capabilities": {"os": "linux", "cpu_count": 8, "mem_mb": 16000, "disk_mb": 500000, "gpus": [], "tpu": "v5e"}
    })
}

/// A server as the MIaaS tests expect one: anyone may register.
fn open_server(extra: &[&str]) -> Server {
    let mut args = vec!["--open-registration".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    Server::start_with(ServerOptions { args }).unwrap()
}

/// MIaaS's `node_data`: a worker with the capabilities MIaaS requires.
fn worker(name: &str, ip: &str, cpu_count: u32, mem_mb: u64, gpus: Value) -> Value {
    json!({
        "name": name,
        "ip": ip,
        "capabilities": {"os": "linux", "cpu_count": cpu_count, "mem_mb": mem_mb, "gpus": gpus}
    })
}

fn register(server: &Server, body: &Value) -> drover_testkit::Reply {
    server.post("/api/v1/nodes/register", None, body).unwrap()
}

#[test]
fn miaas_health_endpoint() {
    let server = open_server(&[]);
    let reply = server.request("GET", "/health", None, None).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "healthy", "{reply:?}");
}

// `GET /` answers JSON to a request that does not ask for HTML (a browser is sent to the dashboard).
#[test]
fn miaas_root_endpoint() {
    let server = open_server(&[]);
    // reqwest sends `Accept: */*`, as MIaaS's test client does.
    let reply = server.request("GET", "/", None, None).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body["version"],
        env!("CARGO_PKG_VERSION"),
        "{reply:?}"
    );
}

#[test]
fn miaas_register_node() {
    let server = open_server(&[]);
    let reply = register(
        &server,
        &worker("worker-01", "192.168.1.10", 8, 32000, json!([])),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    assert!(reply.body["node_id"].is_string());
    assert!(reply.body["node_token"].is_string());
    // MIaaS answers http://localhost:8080, its own port; drover answers its own.
    assert_eq!(
        reply.body["control_plane_url"],
        format!("http://localhost:{}", server.api_port),
        "{reply:?}"
    );

    // --advertise-url says where agents reach a server behind a proxy or on another address.
    let server = open_server(&["--advertise-url", "https://cp.example.com:8443/"]);
    let reply = register(
        &server,
        &worker("worker-01", "192.168.1.10", 8, 32000, json!([])),
    );
    assert_eq!(
        reply.body["control_plane_url"],
        "https://cp.example.com:8443"
    );
}

#[test]
fn miaas_register_node_missing_fields() {
    let server = open_server(&[]);
    let reply = register(&server, &json!({"name": "worker-01"}));
    assert_eq!(reply.status, 422, "{reply:?}");
    // MIaaS lists every missing field; drover names the first.
    assert_eq!(reply.body["field"], "capabilities", "{reply:?}");

    // Each field MIaaS requires is named when it alone is missing; `gpus` is optional there (default []).
    let full = worker("worker-01", "192.168.1.10", 8, 32000, json!([]));
    for field in [
        "name",
        "ip",
        "capabilities",
        "capabilities.os",
        "capabilities.cpu_count",
        "capabilities.mem_mb",
    ] {
        let mut body = full.clone();
        match field.split_once('.') {
            Some((parent, child)) => body[parent].as_object_mut().unwrap().remove(child),
            None => body.as_object_mut().unwrap().remove(field),
        };
        let reply = register(&server, &body);
        assert_eq!(
            (reply.status, reply.body["field"].as_str()),
            (422, Some(field)),
            "{reply:?}"
        );
        assert!(
            reply.body["error"].as_str().unwrap().contains(field),
            "{reply:?}"
        );
    }
    let mut no_gpus = full.clone();
    no_gpus["capabilities"]
        .as_object_mut()
        .unwrap()
        .remove("gpus");
    assert_eq!(register(&server, &no_gpus).status, 201);
    // A mistyped field stays drover's 400, naming it.
    let mut mistyped = full;
    mistyped["capabilities"]["cpu_count"] = json!("eight");
    let reply = register(&server, &mistyped);
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (400, Some("capabilities.cpu_count"))
    );
    assert_eq!(
        server.nodes().unwrap().len(),
        1,
        "only the complete registration counts"
    );
}

#[test]
fn miaas_list_nodes() {
    let server = open_server(&[]);
    // Empty at first.
    let reply = server.get("/api/v1/nodes").unwrap();
    assert_eq!((reply.status, &reply.body), (200, &json!([])));
    register(
        &server,
        &worker("worker-01", "192.168.1.10", 8, 16000, json!([])),
    );
    register(
        &server,
        &worker("worker-02", "192.168.1.11", 4, 8000, json!([])),
    );
    let reply = server.get("/api/v1/nodes").unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.as_array().map(Vec::len), Some(2), "{reply:?}");
    // drover's deliberate difference: reads need an operator token.
    let anonymous = server.request("GET", "/api/v1/nodes", None, None).unwrap();
    assert_eq!(anonymous.status, 401);
}

#[test]
fn miaas_get_node() {
    let server = open_server(&[]);
    let reply = register(
        &server,
        &worker("worker-01", "192.168.1.10", 8, 16000, json!([])),
    );
    let node_id = reply.body["node_id"].as_str().unwrap();
    let reply = server.get(&format!("/api/v1/nodes/{node_id}")).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["id"], node_id);
    assert_eq!(reply.body["name"], "worker-01");
    assert_eq!(
        server.get("/api/v1/nodes/non-existent").unwrap().status,
        404
    );
}

#[test]
fn miaas_update_existing_node() {
    let server = open_server(&[]);
    let first = register(
        &server,
        &worker("worker-01", "192.168.1.10", 8, 16000, json!([])),
    );
    let node_id = first.body["node_id"].as_str().unwrap();
    let updated = worker(
        "worker-01",
        "192.168.1.20",
        16,
        32000,
        json!([{"id": 0, "model": "RTX 3090"}]),
    );
    let reply = register(&server, &updated);
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["node_id"], node_id, "same name, same node");
    let nodes = server.nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["ip"], "192.168.1.20");
    assert_eq!(nodes[0]["capabilities"]["cpu_count"], 16);
}

#[test]
fn miaas_heartbeat() {
    let server = open_server(&[]);
    let reply = register(
        &server,
        &worker("worker-01", "192.168.1.10", 8, 16000, json!([])),
    );
    let (node_id, token) = (
        reply.body["node_id"].as_str().unwrap(),
        reply.body["node_token"].as_str().unwrap(),
    );
    let beat = json!({"cpu_usage": 45.5, "mem_usage": 60.2, "disk_free_mb": 50000, "running_containers": ["postgres", "redis"]});
    let before = chrono::Utc::now().timestamp_millis() as f64 / 1e3;
    let reply = server
        .post(
            &format!("/api/v1/nodes/{node_id}/heartbeat"),
            Some(token),
            &beat,
        )
        .unwrap();
    let after = chrono::Utc::now().timestamp_millis() as f64 / 1e3;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["status"], "ok");
    let at = reply.body["timestamp"].as_f64().expect("a float timestamp");
    assert!(
        before - 1.0 <= at && at <= after + 1.0,
        "{at} is not now ({before}..{after})"
    );

    // A heartbeat for a node that does not exist is 404 (MIaaS signs a token for the fake id; a drover
    // node token is a real node's, which does not make the other id exist).
    let reply = server
        .post("/api/v1/nodes/non-existent/heartbeat", Some(token), &beat)
        .unwrap();
    assert_eq!(reply.status, 404, "{reply:?}");
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
        .post(
            "/api/v1/nodes/register",
            None,
            &registration("lab-box", json!({})),
        )
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
        .post(
            "/api/v1/nodes/register",
            None,
            &registration("grpc-box", json!({})),
        )
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
