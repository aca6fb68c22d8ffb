//! Replicas: two servers on one PostgreSQL with one cluster secret (as cluster_secret.rs). An agent and the
//! CLI given both fail over when the one they use is killed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use drover_testkit::{Agent, Nats, Postgres, Server, ServerOptions, TIMEOUT, tail, wait_for};
use serde_json::json;

/// Two replicas on a fresh PostgreSQL sharing one cluster secret; the guard keeps the secret's dir.
pub fn replicas(pg: &Postgres) -> (Server, Server, tempfile::TempDir) {
    replicas_on(pg, None)
}

/// As [`replicas`], connected through `nats` when given.
fn replicas_on(pg: &Postgres, nats: Option<&Nats>) -> (Server, Server, tempfile::TempDir) {
    pg.create_database("drover").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let options = ServerOptions::replica(pg, nats, secrets.path());
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
fn a_task_outlives_the_replica_holding_its_agent_whole_and_run_once() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
    let (mut a, b, _secrets) = replicas_on(&pg, Some(&nats));
    let files = tempfile::tempdir().unwrap();
    // Both servers, A first: it attaches to A.
    let agent = a.attached_agent(
        "edge",
        json!({}),
        &[
            "--server",
            &b.agent_url(),
            "--heartbeat-interval",
            "300ms",
            "--allow-shell",
        ],
    );
    let logs = |a: &Server| {
        format!(
            "A's log:\n{}\nB's log:\n{}\nagent log:\n{}",
            tail(&a.log(), 20),
            tail(&b.log(), 30),
            tail(&agent.log(), 30)
        )
    };

    // Created and followed through B; it runs on the agent attached to A. Each start leaves a line.
    let starts = files.path().join("starts");
    let script = format!(
        "echo started >> {}; for i in $(seq 1 40); do echo line-$i; sleep 0.1; done",
        starts.display()
    );
    let mut cli = b
        .cli_command(&["exec", "edge", "--shell", &script])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match lines.next() {
            Some(Ok(line)) => seen.push(line),
            _ => panic!("B's CLI ended early after {seen:?}\n{}", logs(&a)),
        }
    }

    a.kill(); // SIGKILL while the task runs: the agent moves to B, the task goes on.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let status = wait_for("B's CLI to finish", TIMEOUT, || {
        cli.try_wait().ok().flatten()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    seen.extend(rest.join().unwrap());
    let expected: Vec<String> = (1..=40).map(|i| format!("line-{i}")).collect();
    assert_eq!(seen, expected, "every line once, in order\n{}", logs(&a));
    assert!(status.success(), "{status:?}\n{}", logs(&a));
    let started = std::fs::read_to_string(&starts).unwrap();
    assert_eq!(
        started.lines().count(),
        1,
        "the command ran once: {started:?}"
    );
    b.wait_node("edge", "attached to B", |n| n["connected"] == true)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a)));
    drop(agent);
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
