//! What a new user meets in the first hour (issue 29), with the real binaries: usage mistakes exit 2 and
//! say how to call the command, `exec` without `--` suggests it, an address in use is told once,
//! cancelling a finished task says so and audits nothing, `drover audit` says what each entry did, a
//! second agent with a taken name is told on both sides, a missing container engine names the sockets
//! and DOCKER_HOST, and logs written to a file carry no colour codes.

use std::process::Stdio;

use drover_testkit::{Agent, Server, TIMEOUT, drover_cli, free_port, stderr, tail, wait_for};
use serde_json::{Value, json};

fn no_colour(what: &str, log: &str) {
    assert!(
        !log.contains('\x1b'),
        "{what} carries ANSI escapes:\n{}",
        tail(log, 10)
    );
}

#[test]
fn usage_mistakes_exit_2_and_exec_suggests_the_double_dash() {
    // No server and no token: the usage mistake is told first.
    let out = drover_cli()
        .unwrap()
        .args(["exec", "vm", "uptime"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("drover exec vm -- uptime"),
        "{}",
        stderr(&out)
    );
    let out = drover_cli()
        .unwrap()
        .args(["exec", "--all", "df", "/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("drover exec --all -- df /"),
        "{}",
        stderr(&out)
    );
    // Hand-made checks of other commands exit 2 as clap's own do.
    let out = drover_cli()
        .unwrap()
        .args(["exec", "--timeout", "soon", "vm", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let out = drover_cli()
        .unwrap()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["server", "--lost-after", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("--lost-after"), "{}", stderr(&out));
    let server = Server::start().unwrap();
    let out = server
        .cli(&["token", "create", "--label", "no-equals-sign"])
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("--label"), "{}", stderr(&out));
    let out = server.cli(&["action", "vm", "ping", "{not json"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // What the server logged to its file has no colour codes.
    no_colour("the server log", &server.log());
}

#[test]
fn an_address_in_use_is_told_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = drover_cli()
        .unwrap()
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["server", "--listen", &addr.to_string()])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
    assert_eq!(
        text.matches("Address already in use").count(),
        1,
        "the OS message once:\n{text}"
    );
    no_colour("the server's stderr", &text);
}

#[test]
fn cancel_of_a_finished_task_says_so_and_audit_says_what_each_entry_did() {
    let server = Server::start().unwrap();
    let mut edge = server.agent("edge", &["--allow-exec", "true", "--allow-exec", "sleep"]);

    // A finished task: the cancel says so, exits 0 and is not audited.
    let task = server
        .create_task(
            json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "argv": ["true"]}}),
        )
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    server.wait_task_done(&id).unwrap();
    let out = server.cli(&["tasks", "cancel", &id]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains(&format!("task {id} had already finished (Succeeded)")),
        "{}",
        stderr(&out)
    );
    // The API too leaves it alone, unaudited.
    let r = server
        .post(
            &format!("/api/v1/tasks/{id}/cancel"),
            Some(&server.admin_token()),
            &json!(null),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["runs"][0]["state"], "Succeeded");
    let cancels = server.get("/api/v1/audit?action=task.cancel").unwrap().body;
    assert_eq!(cancels, json!([]), "a no-op is not audited");

    // A running task is cancelled and audited once.
    let task = server
        .create_task(
            json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "argv": ["sleep", "60"]}}),
        )
        .unwrap();
    let running = task["id"].as_str().unwrap().to_string();
    server
        .wait_task(&running, "running", |t| t["runs"][0]["state"] == "Running")
        .unwrap();
    let out = server.cli(&["tasks", "cancel", &running]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("cancel requested") || stderr(&out).contains("is over"),
        "{}",
        stderr(&out)
    );
    let done = server.wait_task_done(&running).unwrap();
    assert_eq!(done["runs"][0]["state"], "Cancelled");

    // An action call, then the audit table: WHAT says what each entry did.
    let out = server.cli(&["action", "edge", "ping"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = server.cli(&["audit"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |action: &str| -> String {
        table
            .lines()
            .find(|l| l.contains(action))
            .unwrap_or_else(|| panic!("no {action} row in:\n{table}"))
            .to_string()
    };
    assert!(row("action.call").contains("ping"), "{table}");
    assert!(
        row("task.cancel").contains(&format!("task {running}")),
        "{table}"
    );
    assert_eq!(
        server
            .get("/api/v1/audit?action=task.cancel")
            .unwrap()
            .body
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    edge.stop();
    no_colour("the agent log", &edge.log());
}

#[test]
fn a_second_agent_with_a_taken_name_is_renamed_and_both_sides_say_so() {
    let server = Server::start().unwrap();
    let _first = server.agent("twin", &[]);
    let token = server.join_token(json!({})).unwrap();
    let second = Agent::start(
        &server.agent_url(),
        "twin",
        &["--token", &token, "--heartbeat-interval", "300ms"],
    )
    .unwrap();
    let node = wait_for("the second node", TIMEOUT, || {
        server.nodes().ok()?.into_iter().find(|n| {
            n["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("twin-"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&second.log(), 20)));
    let renamed = node["name"].as_str().unwrap().to_string();
    second
        .wait_log(&format!("enrolled as {renamed} (twin was taken"))
        .unwrap();
    wait_for("the server to log the rename", TIMEOUT, || {
        let log = server.log();
        (log.contains(&format!("a node enrolled as {renamed}"))
            && log.contains("the name twin is taken"))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&server.log(), 20)));
}

#[test]
fn a_missing_engine_names_the_socket_and_docker_host() {
    let server = Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing-here.sock");
    let docker_host = format!("unix://{}", socket.display());
    let token = server.join_token(json!({})).unwrap();
    let args = [
        "--token",
        &token,
        "--heartbeat-interval",
        "300ms",
        "--allow-kind",
        "container",
        "--resync-interval",
        "500ms",
    ];
    let env = [("DOCKER_HOST", docker_host.as_str())];
    let _edge = Agent::start_with_env(&server.agent_url(), "edge", &args, &env).unwrap();
    server
        .wait_node("edge", "connected", |n| n["connected"] == true)
        .unwrap();
    let manifest = json!({"name": "web", "resources": [{"id": "web", "container": {
        "image": drover_testkit::BUSYBOX, "pull": "never", "command": ["sleep", "60"]}}]});
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let status = || server.get("/api/v1/nodes/edge/status").unwrap().body;
    let resource: Value = wait_for("the container resource to fail", TIMEOUT, || {
        let s = status();
        let r = s["resources"].as_array()?.first()?.clone();
        r.to_string().contains("no container engine").then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", status()));
    let text = resource.to_string();
    assert!(
        text.contains(&format!("DOCKER_HOST={docker_host}")),
        "{text}"
    );
    assert!(text.contains("does not exist"), "{text}");

    // The action says the same.
    let out = server.cli(&["action", "edge", "list_containers"]).unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains(&format!("DOCKER_HOST={docker_host}")),
        "{}",
        stderr(&out)
    );
}
