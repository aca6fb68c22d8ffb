//! Enrollment with join tokens, capability reports, and every way enrollment or a stream is refused.

use drover_testkit::{Agent, Server, ServerOptions};
use serde_json::json;

const FAST: &[&str] = &["--heartbeat-interval", "200ms"];

fn args<'a>(token: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--token", token];
    v.extend_from_slice(FAST);
    v.extend_from_slice(extra);
    v
}

#[test]
fn the_history_keeps_a_sample_a_minute_while_the_node_shows_every_beat() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let _agent = Agent::start(&server.agent_url(), "edge-1", &args(&token, &[])).unwrap();
    // Five heartbeats (200 ms apart), each seen as the node's latest.
    let mut seen = std::collections::BTreeSet::new();
    drover_testkit::wait_for("five heartbeats", drover_testkit::TIMEOUT, || {
        let nodes = server.nodes().ok()?;
        let node = nodes.iter().find(|n| n["name"] == "edge-1")?;
        if node["metrics"].is_object() {
            seen.insert(node["last_seen"].as_str()?.to_string());
        }
        (seen.len() >= 5).then_some(())
    })
    .unwrap();
    let history = server.get("/api/v1/nodes/edge-1/metrics").unwrap();
    let samples = history.body.as_array().unwrap().len();
    // One sample per minute of the clock: two if these seconds crossed into a new minute.
    assert!(
        (1..=2).contains(&samples),
        "{samples} samples after a few seconds of heartbeats: {}",
        history.body
    );
}

#[test]
fn agent_enrolls_reports_capabilities_and_heartbeats() {
    // A history sample per heartbeat (the default is one a minute), so the history shows them arrive.
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-history-interval".into(), "100ms".into()],
    })
    .unwrap();
    let token = server
        .join_token(json!({"ttl": "10m", "labels": {"zone": "lab"}}))
        .unwrap();
    let mut agent = Agent::start(
        &server.agent_url(),
        "edge-1",
        &args(&token, &["--label", "role=edge"]),
    )
    .unwrap();

    let node = server
        .wait_node("edge-1", "Ready with metrics", |n| {
            n["status"] == "Ready" && n["metrics"].is_object()
        })
        .unwrap();
    let caps = &node["capabilities"];
    assert_eq!(caps["os"], std::env::consts::OS);
    assert_eq!(caps["arch"], std::env::consts::ARCH);
    assert!(caps["cpu_count"].as_u64().unwrap() >= 1);
    assert!(caps["mem_mb"].as_u64().unwrap() > 0);
    assert!(caps["disk_mb"].as_u64().unwrap() > 0);
    assert!(caps["hostname"].is_string());
    assert!(caps["kernel"].is_string());
    assert!(caps["gpus"].is_array());
    assert_eq!(caps["agent_version"], env!("CARGO_PKG_VERSION"));
    // Labels from the token and from the agent both apply.
    assert_eq!(node["labels"]["zone"], "lab");
    assert_eq!(node["labels"]["role"], "edge");
    assert_eq!(node["transport"], "grpc");
    assert_eq!(node["heartbeat_interval_ms"], 200);
    let metrics = &node["metrics"];
    for field in [
        "cpu_usage",
        "mem_usage",
        "disk_free_mb",
        "load1",
        "uptime_s",
    ] {
        assert!(
            metrics[field].is_number(),
            "metrics lack {field}: {metrics}"
        );
    }
    assert!(metrics["running_containers"].is_array());

    // Heartbeats keep arriving: the history grows.
    let id = node["id"].as_str().unwrap().to_string();
    drover_testkit::wait_for("three metrics samples", drover_testkit::TIMEOUT, || {
        let reply = server.get(&format!("/api/v1/nodes/{id}/metrics")).ok()?;
        (reply.body.as_array()?.len() >= 3).then_some(())
    })
    .unwrap();

    // A later start needs no token and keeps the node's identity.
    agent.restart(Some(FAST)).unwrap();
    agent.wait_log("connected").unwrap();
    let again = server
        .wait_node("edge-1", "Ready again", |n| {
            n["status"] == "Ready" && n["connected"] == true
        })
        .unwrap();
    assert_eq!(again["id"], node["id"]);
    assert_eq!(server.nodes().unwrap().len(), 1);
    // Labels bound at enrollment stay when the agent stops reporting them: only an operator removes them.
    assert_eq!(again["labels"]["role"], "edge");
    assert_eq!(again["labels"]["zone"], "lab");
}

/// Starts an agent that must fail to enroll, and returns its log.
fn refused_enrollment(server: &Server, token: &str) -> String {
    let mut agent = Agent::start(&server.agent_url(), "refused", &args(token, &[])).unwrap();
    let code = agent.wait_exit().unwrap();
    assert_ne!(code, Some(0), "agent log:\n{}", agent.log());
    agent.log()
}

#[test]
fn bad_tokens_are_refused_with_clear_messages() {
    let server = Server::start().unwrap();
    let good = server.join_token(json!({})).unwrap();
    let fingerprint = good.rsplit('.').next().unwrap();

    let log = refused_enrollment(&server, "not-a-token");
    assert!(log.contains("malformed join token"), "{log}");

    let forged = format!("drv1.0badc0de.{}.{fingerprint}", "0".repeat(32));
    let log = refused_enrollment(&server, &forged);
    assert!(log.contains("unknown to this server"), "{log}");

    let expiring = server.join_token(json!({"ttl": "1s"})).unwrap();
    // Deliberate: the token's 1 s lifetime runs out.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let log = refused_enrollment(&server, &expiring);
    assert!(log.contains("expired"), "{log}");

    let once = server.join_token(json!({"max_uses": 1})).unwrap();
    let _first = Agent::start(&server.agent_url(), "first", &args(&once, &[])).unwrap();
    server
        .wait_node("first", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let log = refused_enrollment(&server, &once);
    assert!(log.contains("used 1 times"), "{log}");

    let revoked = server.join_token(json!({})).unwrap();
    let id = revoked.split('.').nth(1).unwrap();
    let reply = server
        .request(
            "DELETE",
            &format!("/api/v1/tokens/{id}"),
            Some(&server.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(reply.status, 204);
    let log = refused_enrollment(&server, &revoked);
    assert!(log.contains("revoked"), "{log}");

    assert!(server.log().contains("refused an enrollment"));
    // None of the refused agents became a node.
    let names: Vec<_> = server
        .nodes()
        .unwrap()
        .iter()
        .map(|n| n["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("first")]);
}

#[test]
fn a_token_pins_the_server_that_made_it() {
    let real = Server::start().unwrap();
    let impostor = Server::start().unwrap();
    let token = real.join_token(json!({})).unwrap();
    let log = refused_enrollment(&impostor, &token);
    assert!(
        log.contains("is not the server that made the token"),
        "{log}"
    );
    assert!(impostor.nodes().unwrap().is_empty());
}

#[test]
fn certificates_from_another_server_are_refused_on_both_sides() {
    let home = Server::start().unwrap();
    let other = Server::start().unwrap();
    let token = home.join_token(json!({})).unwrap();
    let mut agent = Agent::start(&home.agent_url(), "wanderer", &args(&token, &[])).unwrap();
    home.wait_node("wanderer", "Ready", |n| n["status"] == "Ready")
        .unwrap();

    // Pointed at another server, the agent refuses that server: its CA is not the pinned one.
    let other_url = other.agent_url();
    agent
        .restart(Some(&[
            "--server",
            &other_url,
            "--heartbeat-interval",
            "200ms",
        ]))
        .unwrap();
    agent
        .wait_log("not signed by the CA this node pinned")
        .unwrap();

    // Made to trust the other server's CA, it is refused by that server: its certificate is foreign.
    agent.stop();
    std::fs::copy(
        other.data_dir().join("ca.crt"),
        agent.state_dir().join("ca.crt"),
    )
    .unwrap();
    agent
        .restart(Some(&[
            "--server",
            &other_url,
            "--heartbeat-interval",
            "200ms",
        ]))
        .unwrap();
    agent
        .wait_log("the server refused this node's certificate")
        .unwrap();
    drover_testkit::wait_for(
        "the refusal in the server log",
        drover_testkit::TIMEOUT,
        || {
            other
                .log()
                .contains("refused a client certificate not issued by this server's CA")
                .then_some(())
        },
    )
    .unwrap();
    assert!(other.nodes().unwrap().is_empty());
}

#[test]
fn a_deleted_node_is_refused_until_it_enrolls_again() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let agent = Agent::start(&server.agent_url(), "doomed", &args(&token, &[])).unwrap();
    server
        .wait_node("doomed", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let reply = server
        .request(
            "DELETE",
            "/api/v1/nodes/doomed",
            Some(&server.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(reply.status, 200);
    agent
        .wait_log("this node was deleted from the server")
        .unwrap();
    assert!(server.nodes().unwrap().is_empty());
}
