//! `--nats`: two replicas on one PostgreSQL and one nats-server (both started by the test), with one
//! cluster secret. An agent attached to replica A runs a task created through replica B; B's CLI prints its
//! output live and exits with its code; a cancel through B stops a long task on A's agent; a manifest
//! applied through B converges on the agent; an action called through B runs on the agent.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Stdio};

use drover_testkit::{
    Agent, Nats, Postgres, Server, ServerOptions, TIMEOUT, assert_gone, free_port, process_alive,
    tail, wait_for, wait_pid,
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

/// The join token's request for the tests' agents: one label the manifests select.
fn edge() -> serde_json::Value {
    json!({"labels": {"role": "edge"}})
}

/// The tests' agents run shell commands and may write files under `files`.
fn edge_args(files: &tempfile::TempDir) -> [&str; 5] {
    let root = files.path().to_str().expect("a UTF-8 temp dir");
    [
        "--allow-shell",
        "--allow-path",
        root,
        "--heartbeat-interval",
        "300ms",
    ]
}

/// A CLI command through `server`, its output read line by line as it comes.
fn cli_lines(server: &Server, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut cli = server
        .cli_command(args)
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    (cli, lines)
}

fn cluster() -> Cluster {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let options = || ServerOptions::replica(&pg, Some(&nats), secrets.path());
    let a = Server::start_with(options()).unwrap();
    let b = Server::start_with(options()).unwrap();
    let files = tempfile::tempdir().unwrap();
    let agent = a.attached_agent("box", edge(), &edge_args(&files));
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
fn what_lives_with_the_agents_stream_is_read_and_steered_through_another_replica() {
    let c = cluster();
    let b = &c.b;
    let admin = b.admin_token();
    // B sees the node as connected once its heartbeats reach the shared store through A.
    b.wait_node("box", "connected as B sees it", |n| n["connected"] == true)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // The actions the agent offers, listed through B.
    let actions = b.get("/api/v1/nodes/box/actions").unwrap();
    assert_eq!(actions.status, 200, "{actions:?}\n{}", c.logs());
    let names = actions.body.to_string();
    assert!(
        names.contains("\"ping\"") && names.contains("test_sleep"),
        "{names}"
    );

    // Daemon-plugin sessions: listed, read, steered and terminated through B.
    wait_for("the probe's session through B", TIMEOUT, || {
        let r = b.get("/api/v1/nodes/box/sessions/test_probe").ok()?;
        (r.body["state"] == "Active").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let list = b.get("/api/v1/nodes/box/sessions").unwrap();
    assert!(list.body.to_string().contains("test_probe"), "{list:?}");
    let told = b
        .post(
            "/api/v1/nodes/box/sessions/test_probe/messages",
            Some(&admin),
            &json!({"value": 42}),
        )
        .unwrap();
    assert_eq!(told.status, 202, "{told:?}");
    wait_for("the probe's new payload through B", TIMEOUT, || {
        let r = b.get("/api/v1/nodes/box/sessions/test_probe").ok()?;
        (r.body["payload"]["value"] == 42).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let history = b
        .get("/api/v1/nodes/box/sessions/test_probe/history")
        .unwrap();
    assert!(history.body.to_string().contains("42"), "{history:?}");
    let old_id = b.get("/api/v1/nodes/box/sessions/test_probe").unwrap().body["session_id"].clone();
    let ended = b
        .request(
            "DELETE",
            "/api/v1/nodes/box/sessions/test_probe",
            Some(&admin),
            None,
        )
        .unwrap();
    assert!(ended.status < 300, "{ended:?}");
    wait_for("a new probe session after the terminate", TIMEOUT, || {
        let r = b.get("/api/v1/nodes/box/sessions/test_probe").ok()?;
        (r.body["state"] == "Active" && r.body["session_id"] != old_id).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // A dry run through B asks the agent on A for its plan.
    let motd = c.files.path().join("planned");
    let manifest = json!({"name": "plan", "selector": {"role": "edge"}, "resources": [
        {"id": "planned", "file": {"path": motd.to_str().unwrap(), "content": "x\n"}}]});
    let plan = b
        .post("/api/v1/manifests?dry_run=true", Some(&admin), &manifest)
        .unwrap();
    assert_eq!(plan.status, 200, "{plan:?}");
    let node_plan = &plan.body["nodes"][0];
    assert!(node_plan["error"].is_null(), "{plan:?}\n{}", c.logs());
    assert!(
        node_plan["plan"].to_string().contains("planned"),
        "{plan:?}"
    );
    assert!(!motd.exists(), "a dry run changes nothing");

    // A call through B cancelled through B: the agent on A stops it and kills its child.
    let pid_file = c.files.path().join("cancel.pid");
    let (api, token) = (b.api_url(), admin.clone());
    let pid_arg = pid_file.clone();
    let waiter = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(format!(
                "{api}/api/v1/nodes/box/actions/test_sleep?call_id=routed-cancel"
            ))
            .bearer_auth(token)
            .json(&json!({"seconds": 600, "pid_file": pid_arg}))
            .send()
            .unwrap()
    });
    let pid = wait_pid(&pid_file);
    assert!(process_alive(pid));
    let cancel = |id: &str| {
        b.request(
            "POST",
            &format!("/api/v1/nodes/box/actions/calls/{id}/cancel"),
            Some(&admin),
            None,
        )
        .unwrap()
    };
    let r = cancel("routed-cancel");
    assert_eq!(r.status, 202, "{r:?}\n{}", c.logs());
    let answer = waiter.join().unwrap();
    assert_eq!(answer.status().as_u16(), 409);
    let body: serde_json::Value = answer.json().unwrap();
    assert_eq!(body["action_error"]["kind"], "Cancelled", "{body}");
    assert_gone(pid);
    assert_eq!(
        cancel("routed-cancel").status,
        404,
        "a finished call is not found"
    );

    // A caller through B that leaves early stops the call on the node too.
    let pid_file = c.files.path().join("left.pid");
    let left = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap()
        .post(format!(
            "{}/api/v1/nodes/box/actions/test_sleep",
            b.api_url()
        ))
        .bearer_auth(&admin)
        .json(&json!({"seconds": 600, "pid_file": pid_file}))
        .send();
    assert!(left.is_err(), "the caller gave up: {left:?}");
    assert_gone(wait_pid(&pid_file));
}

#[test]
fn output_reaches_a_follower_on_another_replica_while_the_task_runs() {
    let c = cluster();
    // A line, then a long wait: the line can only reach B's CLI live, not at the end.
    let (mut cli, mut lines) = cli_lines(
        &c.b,
        &["exec", "box", "--shell", "echo early-line; sleep 600"],
    );
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

    // While NATS is down, B cannot reach the agent on A: it says so at once, as for an offline node.
    let task = c
        .b
        .create_task(json!({"target": {"node": "box"}, "spec": {"kind": "exec", "argv": ["true"]}}))
        .unwrap();
    let done =
        c.b.wait_task_done(task["id"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(done["runs"][0]["state"], "Unreachable", "{done}");
    let call =
        c.b.request(
            "POST",
            "/api/v1/nodes/box/actions/ping",
            Some(&c.b.admin_token()),
            Some(b"null".to_vec()),
        )
        .unwrap();
    assert_eq!(call.status, 503, "{call:?}");
    assert_eq!(
        call.body["action_error"]["kind"], "NodeUnavailable",
        "{call:?}"
    );
    // A, which holds the agent's stream, goes on without NATS.
    let task = c
        .a
        .create_task(json!({"target": {"node": "box"}, "spec": {"kind": "exec", "argv": ["true"]}}))
        .unwrap();
    let done =
        c.a.wait_task_done(task["id"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(done["runs"][0]["state"], "Succeeded", "{done}");

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

/// The issue's own scenario: three replicas on one PostgreSQL and one nats-server, an agent on each. A task
/// created through B runs on A's agent with live output at B's CLI; an action called through C runs on A's
/// agent; a manifest applied through A converges on the agents attached to B and C.
#[test]
fn three_replicas_share_one_fleet() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let options = || ServerOptions::replica(&pg, Some(&nats), secrets.path());
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with(options()).unwrap())
        .collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    let files = tempfile::tempdir().unwrap();
    let agents: Vec<Agent> = replicas
        .iter()
        .zip(["on-a", "on-b", "on-c"])
        .map(|(server, name)| server.attached_agent(name, edge(), &edge_args(&files)))
        .collect();
    let logs = || {
        let mut text = String::new();
        for (i, s) in replicas.iter().enumerate() {
            text.push_str(&format!("replica {i}:\n{}\n", tail(&s.log(), 20)));
        }
        for a in &agents {
            text.push_str(&format!("agent:\n{}\n", tail(&a.log(), 15)));
        }
        text
    };

    // Through B, on A's agent, with a line that can only reach B's CLI while the task runs.
    let (mut cli, mut lines) = cli_lines(
        b,
        &["exec", "on-a", "--shell", "echo live; sleep 2; echo after"],
    );
    assert_eq!(
        lines.next().map(|l| l.unwrap_or_default()).as_deref(),
        Some("live"),
        "{}",
        logs()
    );
    let status = wait_for("B's CLI to finish", TIMEOUT, || {
        cli.try_wait().ok().flatten()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(status.success(), "{status:?}\n{}", logs());
    assert_eq!(
        lines.map(|l| l.unwrap_or_default()).collect::<Vec<_>>(),
        ["after"]
    );

    // Through C, on A's agent.
    let r = c
        .request(
            "POST",
            "/api/v1/nodes/on-a/actions/ping",
            Some(&c.admin_token()),
            Some(b"null".to_vec()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    assert_eq!(r.body["result"]["pong"], true, "{r:?}");

    // Through A, converging on the agents attached to B and C (and A).
    let manifest = json!({"name": "shared", "selector": {"role": "edge"}, "resources": [
        {"id": "motd", "file": {"path": files.path().join("shared").to_str().unwrap(), "content": "three\n"}}]});
    let applied = a
        .post("/api/v1/manifests", Some(&a.admin_token()), &manifest)
        .unwrap();
    assert_eq!(applied.status, 200, "{applied:?}");
    for name in ["on-a", "on-b", "on-c"] {
        wait_for(
            &format!("{name} converged, as A reports it"),
            TIMEOUT,
            || {
                let s = a.get(&format!("/api/v1/nodes/{name}/status")).ok()?;
                let generation = s.body["desired_generation"].as_u64()?;
                (generation > 0
                    && s.body["observed_generation"].as_u64() == Some(generation)
                    && s.body["resources"][0]["state"] == "Ready")
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    }
}
