//! `--nats`: two replicas on one PostgreSQL and one nats-server (both started by the test), with one
//! cluster secret. An agent attached to replica A runs a task created through replica B; B's CLI prints its
//! output live and exits with its code; a cancel through B stops a long task on A's agent; a manifest
//! applied through B converges on the agent; an action called through B runs on the agent.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use drover_testkit::{
    Agent, Nats, Postgres, Server, ServerOptions, TIMEOUT, free_port, tail, wait_for,
};
use serde_json::json;

struct Cluster {
    a: Server,
    b: Server,
    agent: Agent,
    // Dropped last: the replicas and the agent go first.
    nats: Nats,
    _pg: Postgres,
    _secrets: tempfile::TempDir,
    /// Where the agent may write files (manifests).
    files: tempfile::TempDir,
}

fn cluster() -> Cluster {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("cluster.secret");
    std::fs::write(&secret, "4b9e2d7a1c3f5e8b0d2a4c6e8f1b3d5a\n").unwrap();
    let options = || ServerOptions {
        args: vec![
            "--database".into(),
            pg.url("drover"),
            "--cluster-secret-file".into(),
            secret.to_str().unwrap().into(),
            "--nats".into(),
            nats.url(),
        ],
    };
    let a = Server::start_with(options()).unwrap();
    let b = Server::start_with(options()).unwrap();
    let token = a.join_token(json!({"labels": {"role": "edge"}})).unwrap();
    let files = tempfile::tempdir().unwrap();
    let agent = Agent::start(
        &a.agent_url(),
        "box",
        &[
            "--token",
            &token,
            "--allow-shell",
            "--allow-path",
            files.path().to_str().unwrap(),
            "--heartbeat-interval",
            "300ms",
        ],
    )
    .unwrap();
    a.wait_node("box", "the agent attached to A", |n| n["connected"] == true)
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
    Cluster {
        a,
        b,
        agent,
        nats,
        _pg: pg,
        _secrets: secrets,
        files,
    }
}

impl Cluster {
    fn logs(&self) -> String {
        format!(
            "A's log:\n{}\nB's log:\n{}\nagent log:\n{}",
            tail(&self.a.log(), 30),
            tail(&self.b.log(), 30),
            tail(&self.agent.log(), 30)
        )
    }
}

#[test]
fn a_task_created_through_another_replica_runs_and_its_output_follows() {
    let c = cluster();
    let out =
        c.b.cli(&[
            "exec",
            "box",
            "--shell",
            "echo first; sleep 0.5; echo second >&2; sleep 0.5; echo third; exit 7",
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the exit code passes through B\nstdout: {stdout}\nstderr: {stderr}\n{}",
        c.logs()
    );
    assert_eq!(stdout, "first\nthird\n", "{stderr}\n{}", c.logs());
    assert!(stderr.contains("second"), "{stderr}");
}

#[test]
fn a_manifest_applied_through_another_replica_converges_on_the_agent() {
    let c = cluster();
    let motd = c.files.path().join("motd");
    let manifest = json!({"name": "base", "selector": {"role": "edge"}, "resources": [
        {"id": "motd", "file": {"path": motd.to_str().unwrap(), "content": "hello from B\n"}}]});
    let applied =
        c.b.post("/api/v1/manifests", Some(&c.b.admin_token()), &manifest)
            .unwrap();
    assert_eq!(applied.status, 200, "{applied:?}");
    // The desired state reaches the agent only through A, which holds its stream.
    wait_for("the file on the agent", TIMEOUT, || {
        std::fs::read_to_string(&motd).ok()
    })
    .map(|text| assert_eq!(text, "hello from B\n"))
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

#[test]
fn an_action_called_through_another_replica_runs_on_the_agent() {
    let c = cluster();
    let call = |action: &str| {
        c.b.request(
            "POST",
            &format!("/api/v1/nodes/box/actions/{action}"),
            Some(&c.b.admin_token()),
            Some(b"null".to_vec()),
        )
        .unwrap()
    };
    let r = call("ping");
    assert_eq!(r.status, 200, "{r:?}\n{}", c.logs());
    assert_eq!(r.body["result"]["pong"], true, "{r:?}");
    // The holder checks the name against what the agent offers, and says what it offers.
    let r = call("no_such_action");
    assert!(r.status >= 400, "{r:?}");
    assert!(r.body.to_string().contains("ping"), "{r:?}");
}

#[test]
fn output_reaches_a_follower_on_another_replica_while_the_task_runs() {
    let c = cluster();
    // A line, then a long wait: the line can only reach B's CLI live, not at the end.
    let mut cli =
        c.b.cli_command(&["exec", "box", "--shell", "echo early-line; sleep 600"])
            .unwrap()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let first = lines.next().map(|l| l.unwrap_or_default());
    assert_eq!(first.as_deref(), Some("early-line"), "{}", c.logs());

    // Cancel through B: A's agent stops the task, and B's CLI ends with the task.
    let tasks =
        c.b.request("GET", "/api/v1/tasks", Some(&c.b.admin_token()), None)
            .unwrap();
    let id = tasks.body[0]["id"].as_str().unwrap().to_string();
    let out = c.b.cli(&["tasks", "cancel", &id]).unwrap();
    assert!(out.status.success(), "{out:?}\n{}", c.logs());
    let task =
        c.b.wait_task_done(&id)
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let run = &task["runs"][0];
    assert_eq!(run["state"], "Cancelled", "{task}\n{}", c.logs());
    // Ended by the agent (signalled), not on the server only as for a node no replica reaches.
    assert!(
        !run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("server only"),
        "{task}"
    );
    let status = wait_for("B's CLI to exit", TIMEOUT, || cli.try_wait().ok().flatten())
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(
        !status.success(),
        "a cancelled task is a failure: {status:?}"
    );
}

#[test]
fn a_replica_that_cannot_reach_nats_does_not_start() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let refused = Server::start_with(ServerOptions {
        args: vec![
            "--database".into(),
            pg.url("drover"),
            "--nats".into(),
            nowhere.clone(),
        ],
    })
    .err()
    .expect("a replica without NATS must not start");
    let text = format!("{refused:#}");
    assert!(
        text.contains(&format!("cannot connect to NATS at {nowhere}")),
        "{text}"
    );

    // Replicas share their records through PostgreSQL: --nats alone is refused before anything starts.
    let out = drover_testkit::drover_cli()
        .unwrap()
        .args(["server", "--nats", &nowhere])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--nats needs --database"), "{stderr}");
}

#[test]
fn readiness_follows_nats_and_routing_comes_back_with_it() {
    let mut c = cluster();
    let ready = c.b.get("/ready").unwrap();
    assert_eq!(
        (ready.status, &ready.body["ready"]),
        (200, &json!(true)),
        "{ready:?}"
    );

    c.nats.kill();
    let down = wait_for("B's /ready to say not ready", TIMEOUT, || {
        let r = c.b.get("/ready").ok()?;
        (r.status == 503).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let cause = down.body["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("NATS"), "names the cause: {down:?}");
    assert_eq!(c.b.get("/health").unwrap().status, 200, "the replica is up");

    c.nats.start_again().unwrap();
    for s in [&c.a, &c.b] {
        wait_for("/ready again", TIMEOUT, || {
            let r = s.get("/ready").ok()?;
            (r.status == 200 && r.body["ready"] == true).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    // Routing works again: a task created through B runs on A's agent. A re-subscribes to the node's
    // subjects when its client reconnects, which may take a moment after /ready.
    wait_for(
        "a task through B to run on the agent again",
        TIMEOUT,
        || {
            let task =
                c.b.create_task(
                    json!({"target": {"node": "box"}, "spec": {"kind": "exec", "argv": ["true"]}}),
                )
                .ok()?;
            let id = task["id"].as_str()?.to_string();
            let done = c.b.wait_task_done(&id).ok()?;
            (done["runs"][0]["state"] == "Succeeded").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}
