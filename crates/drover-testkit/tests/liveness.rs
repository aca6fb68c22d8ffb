//! Liveness from the lease, agents vanishing and returning, and the server restarting under its agents.

use drover_testkit::{Agent, Server, TIMEOUT, time, wait_for};
use serde_json::json;

#[test]
fn liveness_follows_heartbeats_and_recovers_without_reenrolling() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let mut agent = Agent::start(
        &server.agent_url(),
        "flaky",
        &["--token", &token, "--heartbeat-interval", "300ms"],
    )
    .unwrap();
    let ready = server
        .wait_node("flaky", "Ready", |n| n["status"] == "Ready")
        .unwrap();

    agent.kill();
    server
        .wait_node("flaky", "NotReady after missed heartbeats", |n| {
            n["status"] == "NotReady"
        })
        .unwrap();
    let offline = server
        .wait_node("flaky", "Offline after many missed heartbeats", |n| {
            n["status"] == "Offline"
        })
        .unwrap();
    assert_eq!(offline["connected"], false);

    agent
        .restart(Some(&["--heartbeat-interval", "300ms"]))
        .unwrap();
    let back = server
        .wait_node("flaky", "Ready again", |n| {
            n["status"] == "Ready" && n["connected"] == true
        })
        .unwrap();
    assert_eq!(back["id"], ready["id"]);
    assert!(time(&back["last_seen"]) > time(&offline["last_seen"]));
}

#[test]
fn liveness_multiples_are_configurable() {
    let server = Server::start_with(drover_testkit::ServerOptions {
        args: vec![
            "--not-ready-after".into(),
            "50".into(),
            "--offline-after".into(),
            "100".into(),
        ],
    })
    .unwrap();
    let token = server.join_token(json!({})).unwrap();
    let mut agent = Agent::start(
        &server.agent_url(),
        "patient",
        &["--token", &token, "--heartbeat-interval", "100ms"],
    )
    .unwrap();
    server
        .wait_node("patient", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    agent.kill();
    // With 50 intervals of grace (5 s) the node is still Ready one second later (deliberate wait)...
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let node = server.wait_node("patient", "listed", |_| true).unwrap();
    assert_eq!(node["status"], "Ready");
    // ...and NotReady once the grace is gone.
    server
        .wait_node("patient", "NotReady", |n| n["status"] == "NotReady")
        .unwrap();
}

#[test]
fn agents_reconnect_after_a_server_restart() {
    let mut server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            Agent::start(
                &server.agent_url(),
                &format!("n{i}"),
                &["--token", &token, "--heartbeat-interval", "300ms"],
            )
            .unwrap()
        })
        .collect();
    for i in 0..3 {
        server
            .wait_node(&format!("n{i}"), "Ready", |n| n["status"] == "Ready")
            .unwrap();
    }
    server.kill();
    // Deliberate: an outage the agents ride out before the server comes back.
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.restart().unwrap();
    let restarted_at = chrono::Utc::now();
    for i in 0..3 {
        server
            .wait_node(
                &format!("n{i}"),
                "Ready and attached after the restart",
                |n| {
                    n["status"] == "Ready"
                        && n["connected"] == true
                        && time(&n["last_seen"]) > Some(restarted_at)
                },
            )
            .unwrap();
    }
    assert_eq!(server.nodes().unwrap().len(), 3);
    for a in &mut agents {
        a.stop();
    }
    // The server stays healthy after its agents vanish mid-stream.
    wait_for("health after agents left", TIMEOUT, || {
        (server.get("/health").ok()?.status == 200).then_some(())
    })
    .unwrap();
}
