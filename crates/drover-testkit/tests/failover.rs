//! Replicas: two servers on one PostgreSQL with one cluster secret (as cluster_secret.rs). An agent and the
//! CLI given both fail over when the one they use is killed.

use drover_testkit::{Agent, Postgres, Server, ServerOptions, TIMEOUT, tail, wait_for};
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

#[test]
fn readiness_follows_the_database_and_nothing_is_lost() {
    // Durable commits: the test counts what a crash of PostgreSQL keeps.
    let mut pg = Postgres::start_durable().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let server = Server::start_with(ServerOptions {
        args: vec!["--database".into(), pg.url("drover")],
    })
    .unwrap();
    let ready = server.get("/ready").unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.body["ready"], true);
    let token = server
        .join_token(json!({"labels": {"kept": "yes"}}))
        .unwrap();

    pg.kill().unwrap();
    let down = wait_for("/ready to say not ready", TIMEOUT, || {
        let r = server.get("/ready").ok()?;
        (r.status == 503).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", tail(&server.log(), 30)));
    assert_eq!(down.body["ready"], false);
    let cause = down.body["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("database"), "names the cause: {down:?}");
    assert_eq!(
        server.get("/health").unwrap().status,
        200,
        "the server is up"
    );

    pg.start_again().unwrap();
    wait_for("/ready again", TIMEOUT, || {
        let r = server.get("/ready").ok()?;
        (r.status == 200 && r.body["ready"] == true).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", tail(&server.log(), 30)));
    let tokens = server.get("/api/v1/tokens").unwrap();
    assert!(
        tokens.status == 200 && tokens.body.to_string().contains("\"kept\""),
        "the token made before is kept ({token}): {tokens:?}\n{}",
        tail(&server.log(), 10)
    );
    drop(server);
    drop(pg);
}

#[test]
fn one_replica_leads_and_another_takes_over_when_it_dies() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    let (a, b, _secrets) = replicas(&pg);
    let leads = |s: &Server| s.get("/ready").ok().map(|r| r.body["leader"] == true);
    // Exactly one holds the lock (A, which started first, as a rule); the other retries it.
    let a_leads = wait_for("exactly one leader", TIMEOUT, || {
        let (la, lb) = (leads(&a)?, leads(&b)?);
        (la != lb).then_some(la)
    })
    .unwrap();
    let (mut leader, follower) = if a_leads { (a, b) } else { (b, a) };
    assert!(
        leader
            .log()
            .contains("leader: this replica runs the sweeps")
    );
    leader.kill();
    wait_for("the other replica to lead", TIMEOUT, || {
        leads(&follower)?.then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", tail(&follower.log(), 30)));
    assert!(
        follower
            .log()
            .contains("leader: this replica runs the sweeps")
    );
    drop(follower);
    drop(pg);
}
