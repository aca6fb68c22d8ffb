//! Selection uses only the labels the operator controls (issue 9, row 6): those bound at enrollment (the
//! join token's and the agent's own at its first enrollment) and those set or accepted by an operator. A
//! node that claims another group's labels later gets none of that group's manifests or tasks until an
//! operator accepts them; `--trust-reported-labels` restores selection by what nodes report.

use std::path::Path;

use drover_testkit::{Agent, Server, ServerOptions, TIMEOUT, registration, wait_for};
use serde_json::{Value, json};

const FAST: &[&str] = &[
    "--heartbeat-interval",
    "300ms",
    "--resync-interval",
    "500ms",
];

/// An agent enrolled with `token` that reports `label` at its first enrollment.
fn labelled_agent(server: &Server, token: &str, root: &Path, label: &str) -> Agent {
    let root = root.to_str().unwrap();
    let mut args = vec![
        "--token",
        token,
        "--allow-path",
        root,
        "--allow-shell",
        "--label",
        label,
    ];
    args.extend_from_slice(FAST);
    Agent::start(&server.agent_url(), "n1", &args).unwrap()
}

/// The same agent started again, now reporting `label` in its hello.
fn reports(agent: &mut Agent, root: &Path, label: &str) {
    let root = root.to_str().unwrap();
    let mut args = vec!["--allow-path", root, "--allow-shell", "--label", label];
    args.extend_from_slice(FAST);
    agent.restart(Some(&args)).unwrap();
}

fn apply(server: &Server, manifest: &Value) -> Value {
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Runs `echo hi` on the nodes labelled `selector`; returns (success, stdout and then stderr).
fn exec_on(server: &Server, selector: &str) -> (bool, String) {
    let out = server
        .cli(&["exec", "--selector", selector, "--", "echo", "hi"])
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}\n--- stderr ({:?}):\n{}",
            String::from_utf8_lossy(&out.stdout),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn db_manifest(root: &Path) -> Value {
    let path = root.join("db.conf");
    json!({"name": "db", "selector": {"role": "db"}, "resources": [{"id": "db", "file": {"path": path, "content": "db"}}]})
}

#[test]
fn labels_claimed_after_enrollment_select_nothing_until_accepted() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({"labels": {"site": "a"}})).unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut agent = labelled_agent(&server, &token, files.path(), "role=edge");
    let node = server
        .wait_node("n1", "connected", |n| n["connected"] == true)
        .unwrap();
    // Bound at enrollment: the token's label and the agent's own.
    assert_eq!(node["labels"], json!({"site": "a", "role": "edge"}));
    assert!(node.get("pending_labels").is_none(), "{node}");
    let applied = apply(&server, &db_manifest(files.path()));
    assert_eq!(applied["nodes"], json!([]));

    // The node now claims to be a database.
    reports(&mut agent, files.path(), "role=db");
    let node = server
        .wait_node("n1", "its claim pending", |n| {
            n["connected"] == true && n["pending_labels"]["role"] == "db"
        })
        .unwrap();
    assert_eq!(node["labels"]["role"], "edge", "{node}");
    let out = server.cli(&["nodes", "show", "n1"]).unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("role=db") && shown.contains("accept-labels"),
        "{shown}"
    );

    // Neither tasks nor manifests follow the claim; the labels bound at enrollment still work.
    let (ok, stdout) = exec_on(&server, "role=db");
    assert!(!ok && !stdout.contains("n1: hi"), "{stdout}");
    let (ok, stdout) = exec_on(&server, "role=edge");
    assert!(ok && stdout.contains("n1: hi"), "{stdout}");
    let applied = apply(&server, &db_manifest(files.path()));
    assert_eq!(applied["nodes"], json!([]));
    let status = server.get("/api/v1/nodes/n1/status").unwrap().body;
    assert!(
        !status.to_string().contains("db.conf"),
        "the node was given the db manifest: {status}"
    );
    assert!(!files.path().join("db.conf").exists());

    // An operator accepts the claim: now it counts, and the acceptance is audited.
    let out = server.cli(&["nodes", "accept-labels", "n1"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("accepted role=db"),
        "{out:?}"
    );
    wait_for("the db manifest's file", TIMEOUT, || {
        (std::fs::read_to_string(files.path().join("db.conf")).ok()? == "db").then_some(())
    })
    .unwrap();
    let (ok, stdout) = exec_on(&server, "role=db");
    assert!(ok && stdout.contains("n1: hi"), "{stdout}");
    let node = &server.get("/api/v1/nodes/n1").unwrap().body;
    assert_eq!(node["labels"], json!({"site": "a", "role": "db"}));
    assert!(node.get("pending_labels").is_none(), "{node}");
    let audit = server
        .get("/api/v1/audit?action=node.accept_labels")
        .unwrap()
        .body;
    assert_eq!(audit[0]["target"], "n1", "{audit}");
    assert_eq!(audit[0]["detail"]["accepted"], json!({"role": "db"}));

    // Operator label changes are audited too.
    assert!(
        server
            .cli(&["nodes", "label", "n1", "tier=gold"])
            .unwrap()
            .status
            .success()
    );
    let audit = server.get("/api/v1/audit?action=node.label").unwrap().body;
    assert_eq!(
        audit[0]["detail"]["set"],
        json!({"tier": "gold"}),
        "{audit}"
    );
}

#[test]
fn trusting_reported_labels_selects_by_what_nodes_report() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--trust-reported-labels".into()],
    })
    .unwrap();
    let token = server.join_token(json!({"labels": {"site": "a"}})).unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut agent = labelled_agent(&server, &token, files.path(), "role=edge");
    server
        .wait_node("n1", "connected", |n| n["connected"] == true)
        .unwrap();
    apply(&server, &db_manifest(files.path()));

    reports(&mut agent, files.path(), "role=db");
    let node = server
        .wait_node("n1", "selected by its claim", |n| {
            n["connected"] == true && n["labels"]["role"] == "db"
        })
        .unwrap();
    assert!(node.get("pending_labels").is_none(), "{node}");
    wait_for("the db manifest's file", TIMEOUT, || {
        (std::fs::read_to_string(files.path().join("db.conf")).ok()? == "db").then_some(())
    })
    .unwrap();
    let (ok, stdout) = exec_on(&server, "role=db");
    assert!(ok && stdout.contains("n1: hi"), "{stdout}");
    // The operator's labels still win over reported ones.
    reports(&mut agent, files.path(), "site=b");
    let node = server
        .wait_node("n1", "reporting site=b", |n| {
            n["connected"] == true && n["pending_labels"]["site"] == "b"
        })
        .unwrap();
    assert_eq!(node["labels"]["site"], "a");
}

#[test]
fn an_http_node_registering_again_with_other_labels_has_them_pending() {
    let server = Server::start().unwrap();
    let join = server.join_token(json!({})).unwrap();
    let register = |labels: Value| {
        let body = registration("worker", json!({"labels": labels}));
        server
            .post("/api/v1/nodes/register", Some(&join), &body)
            .unwrap()
    };
    assert_eq!(register(json!({"role": "edge"})).status, 201);
    // Registering again (the MIaaS agent's recovery path) keeps working, but its new claim waits.
    assert_eq!(register(json!({"role": "db"})).status, 201);
    let node = &server.get("/api/v1/nodes/worker").unwrap().body;
    assert_eq!(node["labels"], json!({"role": "edge"}), "{node}");
    assert_eq!(node["pending_labels"], json!({"role": "db"}), "{node}");
    // Too many labels or capabilities no real node has: refused, naming the field.
    let many: serde_json::Map<String, Value> =
        (0..200).map(|i| (format!("k{i}"), json!("v"))).collect();
    let reply = register(Value::Object(many));
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.to_string().contains("at most 128"), "{reply:?}");
    let body = registration(
        "gpus",
        json!({"capabilities": {"os": "linux", "cpu_count": 2, "mem_mb": 2048, "gpus": vec!["A100"; 1000]}}),
    );
    let reply = server
        .post("/api/v1/nodes/register", Some(&join), &body)
        .unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.to_string().contains("capabilities.gpus"),
        "{reply:?}"
    );
}
