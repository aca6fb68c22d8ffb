//! The fleet core at fleet size, with real agents: fan-outs to 200 nodes where every run ends and every CLI
//! returns, and runs that end as Lost when their agent comes back without them or stays away.

use std::process::{Child, Stdio};
use std::time::Duration;

use drover_testkit::{Agent, Server, ServerOptions, tail, wait_for};
use serde_json::{Value, json};

const FLEET: usize = 200;
const FAN_OUTS: usize = 20;
/// CLIs following fan-outs at once.
const AT_ONCE: usize = 4;
/// Generous: 200 agent processes share two cores with the server and the CLIs.
const PATIENCE: Duration = Duration::from_secs(180);

fn connected(server: &Server) -> usize {
    server
        .nodes()
        .map(|nodes| nodes.iter().filter(|n| n["connected"] == true).count())
        .unwrap_or(0)
}

/// Waits for a CLI to exit, killing it (and failing) when it takes longer than `PATIENCE`.
fn finish(mut child: Child, what: &str) -> (i32, String) {
    let Ok(status) = wait_for(what, PATIENCE, || child.try_wait().ok().flatten()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not return within {PATIENCE:?}");
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status.code().unwrap_or(-1), err)
}

#[test]
fn fan_outs_to_two_hundred_agents_all_end_and_every_cli_returns() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let agents: Vec<Agent> = (0..FLEET)
        .map(|i| {
            Agent::start(
                &server.agent_url(),
                &format!("n{i:03}"),
                &[
                    "--token",
                    &token,
                    "--allow-exec",
                    "/bin/true",
                    "--heartbeat-interval",
                    "5s",
                ],
            )
            .unwrap()
        })
        .collect();
    wait_for("200 agents to connect", PATIENCE, || {
        (connected(&server) == FLEET).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {} connected", connected(&server)));

    let mut task_ids = Vec::new();
    for round in 0..FAN_OUTS / AT_ONCE {
        let clis: Vec<Child> = (0..AT_ONCE)
            .map(|_| {
                server
                    .cli_command(&["exec", "--all", "--", "/bin/true"])
                    .unwrap()
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, cli) in clis.into_iter().enumerate() {
            let (code, err) = finish(cli, &format!("fan-out {} of round {round}", i + 1));
            assert_eq!(code, 0, "fan-out exited {code}: {}", tail(&err, 20));
        }
    }
    // Every task: every run final and succeeded; none left behind.
    // A task lists at most 100 runs unless asked for more (`runs`).
    let tasks = server
        .get("/api/v1/tasks?limit=100&runs=1000")
        .unwrap()
        .body;
    for task in tasks.as_array().unwrap() {
        let runs = task["runs"].as_array().unwrap();
        assert_eq!(runs.len(), FLEET);
        let not_ok: Vec<&Value> = runs.iter().filter(|r| r["state"] != "Succeeded").collect();
        assert!(
            not_ok.is_empty(),
            "task {}: {} runs did not succeed, e.g. {}",
            task["id"],
            not_ok.len(),
            not_ok[0]
        );
        task_ids.push(task["id"].as_str().unwrap().to_string());
    }
    assert_eq!(task_ids.len(), FAN_OUTS);
    drop(agents);
}

/// An agent that allows shell, heartbeating fast, connected.
fn shell_agent(server: &Server, name: &str) -> Agent {
    let token = server.join_token(json!({})).unwrap();
    let args = [
        "--token",
        &token,
        "--allow-shell",
        "--heartbeat-interval",
        "300ms",
    ];
    let agent = Agent::start(&server.agent_url(), name, &args).unwrap();
    server
        .wait_node(name, "connected", |n| n["connected"] == true)
        .unwrap();
    agent
}

#[test]
fn a_run_ends_lost_when_its_agent_comes_back_without_it() {
    let server = Server::start().unwrap();
    let mut agent = shell_agent(&server, "box");
    // Followed by the CLI, which must end with 7 (lost) rather than wait for ever.
    let cli = server
        .cli_command(&["exec", "box", "--shell", "sleep 60"])
        .unwrap()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for("the task to exist", Duration::from_secs(30), || {
        let tasks = server.get("/api/v1/tasks?limit=1").ok()?.body;
        tasks[0]["id"].as_str().map(str::to_string)
    })
    .unwrap();
    server
        .wait_task(&id, "the run to be Running", |t| {
            t["runs"][0]["state"] == "Running"
        })
        .unwrap();
    // A crash: the agent dies with its task; started again, it does not list it.
    agent.kill();
    agent.restart(None).unwrap();
    let task = server
        .wait_task(&id, "the run to end as Lost", |t| {
            t["runs"][0]["state"] == "Lost"
        })
        .unwrap();
    let error = task["runs"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("came back without this task"), "{error}");
    let (code, err) = finish(cli, "exec of a lost run");
    assert_eq!(code, 7, "a lost run exits 7: {}", tail(&err, 10));
    // A final state is final: the restarted agent never runs it again, and it stays Lost.
    agent
        .wait_log("a task was running when the agent stopped")
        .unwrap();
    // Deliberate: a window in which the restarted agent must not run it again.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.get(&format!("/api/v1/tasks/{id}")).unwrap().body["runs"][0]["state"],
        "Lost"
    );
}

#[test]
fn a_run_ends_lost_when_its_node_stays_away_past_lost_after() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--lost-after".into(), "2s".into()],
    })
    .unwrap();
    let mut agent = shell_agent(&server, "away");
    let task = server
        .create_task(
            json!({"target": {"node": "away"}, "spec": {"kind": "exec", "shell": "sleep 60"}}),
        )
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    server
        .wait_task(&id, "the run to be Running", |t| {
            t["runs"][0]["state"] == "Running"
        })
        .unwrap();
    agent.kill();
    let task = server.wait_task_done(&id).unwrap();
    assert_eq!(task["runs"][0]["state"], "Lost", "{task}");
    let error = task["runs"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("not been heard from"), "{error}");
}
