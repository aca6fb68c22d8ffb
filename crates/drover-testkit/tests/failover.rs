//! Replicas: two servers on one PostgreSQL with one cluster secret (as cluster_secret.rs). An agent and the
//! CLI given both fail over when the one they use is killed.

use drover_testkit::{Agent, Postgres, Server, ServerOptions, tail};
use serde_json::json;

/// Two replicas on a fresh PostgreSQL sharing one cluster secret; the guard keeps the secret's dir.
pub fn replicas(pg: &Postgres) -> (Server, Server, tempfile::TempDir) {
    pg.create_database("drover").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("cluster.secret");
    std::fs::write(&secret, "8d1f0c3e5a7b9d2f4e6a8c0b1d3f5e7a\n").unwrap();
    let options = ServerOptions {
        args: vec![
            "--database".into(),
            pg.url("drover"),
            "--cluster-secret-file".into(),
            secret.to_str().unwrap().into(),
        ],
    };
    let a = Server::start_with(options.clone()).unwrap();
    let b = Server::start_with(options).unwrap();
    (a, b, secrets)
}

#[test]
fn an_agent_and_the_cli_given_both_replicas_move_to_the_survivor() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    let (mut a, b, _secrets) = replicas(&pg);
    let token = a.join_token(json!({})).unwrap();
    // Both servers, A first: the agent enrolls with and attaches to A.
    let agent = Agent::start(
        &a.agent_url(),
        "edge",
        &[
            "--server",
            &b.agent_url(),
            "--token",
            &token,
            "--heartbeat-interval",
            "300ms",
        ],
    )
    .unwrap();
    a.wait_node("edge", "attached to A", |n| {
        n["connected"] == true && n["status"] == "Ready"
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));

    a.kill(); // SIGKILL: no goodbye to the agent
    let node = b
        .wait_node("edge", "attached to B and Ready", |n| {
            n["connected"] == true && n["status"] == "Ready"
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
    assert_eq!(node["name"], "edge");
    assert!(
        agent.log().contains(&format!("at {}", b.agent_url())),
        "the agent says where it goes next:\n{}",
        tail(&agent.log(), 20)
    );

    // The CLI given the dead replica first still answers, from B.
    let out = drover_testkit::drover_cli()
        .unwrap()
        .args(["--server", &a.api_url(), "--server", &b.api_url()])
        .args(["--token", &b.admin_token(), "nodes", "list"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("edge") && stdout.contains("Ready"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One replica alone, dead: the CLI says which it could not reach.
    let out = drover_testkit::drover_cli()
        .unwrap()
        .args(["--server", &a.api_url(), "--token", &b.admin_token()])
        .args(["nodes", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "server unreachable");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&a.api_url()));
    drop(agent);
    drop(b);
    drop(pg);
}
