//! Action plugins through the REST API and the CLI: built-ins, every typed error, deadlines and
//! cancellation that kill the action's child process. Needs the agent built with `test-plugins`.

use std::path::Path;

use drover_testkit::{
    Fleet, Server, ServerOptions, TIMEOUT, assert_gone, process_alive, wait_for, wait_pid,
};
use serde_json::{Value, json};

/// A fleet whose agent `worker` (200 ms heartbeats) may touch files under the fleet's temp dir.
fn worker() -> Fleet {
    // A history sample per heartbeat, so a test can see heartbeats arrive by the history growing.
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-history-interval".into(), "100ms".into()],
    })
    .unwrap();
    Fleet::new(server, |server, root| {
        let args = ["--heartbeat-interval", "200ms", "--allow-path", root];
        server.attached_agent("worker", json!({}), &args)
    })
}

fn call(server: &Server, action: &str, args: Value, query: &str) -> drover_testkit::Reply {
    server
        .request(
            "POST",
            &format!("/api/v1/nodes/worker/actions/{action}{query}"),
            Some(&server.admin_token()),
            Some(serde_json::to_vec(&args).unwrap()),
        )
        .unwrap()
}

#[test]
fn built_in_actions_answer() {
    let Fleet {
        server,
        agent: _agent,
        files,
    } = worker();
    let actions = server.get("/api/v1/nodes/worker/actions").unwrap();
    let names: Vec<&str> = actions
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    for name in [
        "ping",
        "inventory",
        "read_file",
        "list_processes",
        "list_containers",
        "service_status",
    ] {
        assert!(names.contains(&name), "{name} not advertised: {names:?}");
    }

    let r = call(&server, "ping", Value::Null, "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["result"]["pong"], true);
    assert!(r.body["call_id"].is_string());

    let r = call(&server, "inventory", Value::Null, "");
    assert_eq!(r.body["result"]["os"], std::env::consts::OS);
    assert!(r.body["result"]["cpu_count"].as_u64().unwrap() >= 1);

    // read_file inside the allowed root, capped, and binary-safe.
    let text = files.path().join("notes.txt");
    std::fs::write(&text, "hello drover\n").unwrap();
    let r = call(&server, "read_file", json!({"path": text}), "");
    assert_eq!(r.body["result"]["content"], "hello drover\n", "{r:?}");
    assert_eq!(r.body["result"]["truncated"], false);
    let r = call(
        &server,
        "read_file",
        json!({"path": text, "max_bytes": 5}),
        "",
    );
    assert_eq!(r.body["result"]["content"], "hello");
    assert_eq!(r.body["result"]["truncated"], true);
    let bin = files.path().join("blob");
    std::fs::write(&bin, [0xffu8, 0xfe, 0, 1]).unwrap();
    let r = call(&server, "read_file", json!({"path": bin}), "");
    assert_eq!(r.body["result"]["content_base64"], "//4AAQ==");
    let big = files.path().join("big");
    std::fs::write(&big, vec![b'x'; 3 * 1024 * 1024]).unwrap();
    let r = call(&server, "read_file", json!({"path": big}), "");
    assert_eq!(
        r.body["result"]["content"].as_str().unwrap().len(),
        1024 * 1024,
        "capped at 1 MiB"
    );

    // Outside the allowed roots, even through a symlink: the node's policy wins.
    let r = call(&server, "read_file", json!({"path": "/etc/hostname"}), "");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body["action_error"]["kind"], "Denied");
    std::os::unix::fs::symlink("/etc/hostname", files.path().join("sneaky")).unwrap();
    let r = call(
        &server,
        "read_file",
        json!({"path": files.path().join("sneaky")}),
        "",
    );
    assert_eq!(r.status, 403, "{r:?}");

    let r = call(
        &server,
        "list_processes",
        json!({"name": "drover-agent"}),
        "",
    );
    assert!(!r.body["result"].as_array().unwrap().is_empty(), "{r:?}");

    // service_status answers for real where systemd runs, and says plainly where it does not.
    let r = call(&server, "service_status", json!({"unit": "ssh"}), "");
    if Path::new("/run/systemd/system").is_dir() {
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body["result"]["active_state"].is_string());
    } else {
        assert_eq!(r.status, 422, "{r:?}");
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .contains("systemd is not running")
        );
    }
}

#[test]
fn every_action_error_is_typed() {
    let Fleet {
        server,
        mut agent,
        files: _files,
    } = worker();

    let r = call(&server, "nope", Value::Null, "");
    assert_eq!(r.status, 404);
    assert_eq!(r.body["action_error"]["kind"], "UnknownAction");
    assert!(
        r.body["action_error"]["known"]
            .as_array()
            .unwrap()
            .contains(&json!("ping"))
    );

    let r = call(&server, "read_file", json!({"path": 42}), "");
    assert_eq!(r.status, 400);
    assert_eq!(r.body["action_error"]["kind"], "InvalidArgs");
    assert_eq!(r.body["field"], "path");
    let r = call(&server, "read_file", json!({"pth": "/x"}), "");
    assert_eq!(
        r.body["action_error"]["kind"], "InvalidArgs",
        "unknown fields are refused: {r:?}"
    );

    let r = call(&server, "test_fail", json!({"message": "disk on fire"}), "");
    assert_eq!(r.status, 422);
    assert_eq!(r.body["action_error"]["kind"], "Failed");
    assert!(r.body["error"].as_str().unwrap().contains("disk on fire"));

    let r = call(&server, "ping", Value::Null, "?timeout=soon");
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("timeout")));

    let r = server
        .request(
            "POST",
            "/api/v1/nodes/ghost/actions/ping",
            Some(&server.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 404);

    // An offline node answers NodeUnavailable at once, not after the 30 s default deadline
    // (the test client gives up after 10 s).
    agent.kill();
    server
        .wait_node("worker", "disconnected", |n| n["connected"] == false)
        .unwrap();
    let r = call(&server, "ping", Value::Null, "");
    assert_eq!(r.status, 503);
    assert_eq!(r.body["action_error"]["kind"], "NodeUnavailable");
}

#[test]
fn deadlines_and_cancellation_stop_the_action_and_its_child() {
    let Fleet {
        server,
        agent: _agent,
        files,
    } = worker();

    // Deadline: the call fails typed, and the child the action started is killed.
    let pid_file = files.path().join("deadline.pid");
    let r = call(
        &server,
        "test_sleep",
        json!({"seconds": 600, "pid_file": pid_file}),
        "?timeout=1s",
    );
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.body["action_error"]["kind"], "DeadlineExceeded");
    assert_eq!(r.body["action_error"]["deadline_ms"], 1000);
    assert_gone(wait_pid(&pid_file));

    // Cancel through the REST API while the call waits.
    let pid_file = files.path().join("cancel.pid");
    let api = server.api_url();
    let token = server.admin_token();
    let pid_arg = pid_file.clone();
    let waiter = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(format!(
                "{api}/api/v1/nodes/worker/actions/test_sleep?call_id=call-to-cancel"
            ))
            .bearer_auth(token)
            .json(&json!({"seconds": 600, "pid_file": pid_arg}))
            .send()
            .unwrap()
    });
    let pid = wait_pid(&pid_file);
    assert!(process_alive(pid));
    let r = server
        .request(
            "POST",
            "/api/v1/nodes/worker/actions/calls/call-to-cancel/cancel",
            Some(&server.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    let answer = waiter.join().unwrap();
    assert_eq!(answer.status().as_u16(), 409);
    let body: Value = answer.json().unwrap();
    assert_eq!(body["action_error"]["kind"], "Cancelled");
    assert_gone(pid);
    let r = server
        .request(
            "POST",
            "/api/v1/nodes/worker/actions/calls/call-to-cancel/cancel",
            Some(&server.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 404, "a finished call cannot be cancelled");

    // A redelivered call id is not run again: the agent ignores it and the call times out.
    let r = call(&server, "ping", Value::Null, "?call_id=once-only");
    assert_eq!(r.status, 200);
    let r = call(
        &server,
        "ping",
        Value::Null,
        "?call_id=once-only&timeout=500ms",
    );
    assert_eq!(r.body["action_error"]["kind"], "DeadlineExceeded", "{r:?}");
}

#[test]
fn ctrl_c_on_the_cli_cancels_the_remote_action() {
    let Fleet {
        server,
        agent: _agent,
        files,
    } = worker();
    let pid_file = files.path().join("cli.pid");
    let args = json!({"seconds": 600, "pid_file": pid_file}).to_string();
    let mut cli = std::process::Command::new(drover_testkit::bin("drover").unwrap())
        .args([
            "--server",
            &server.api_url(),
            "--data-dir",
            server.data_dir().to_str().unwrap(),
        ])
        .args(["action", "worker", "test_sleep", &args])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = wait_pid(&pid_file);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(cli.id() as i32, libc::SIGINT) };
    let status = wait_for("the CLI to exit", TIMEOUT, || cli.try_wait().ok().flatten()).unwrap();
    assert_eq!(status.code(), Some(130));
    assert_gone(pid);
}

#[test]
fn a_slow_plugin_never_delays_heartbeats() {
    let Fleet {
        server,
        agent: _agent,
        files: _files,
    } = worker();
    let session = wait_for("the probe session", TIMEOUT, || {
        let r = server
            .get("/api/v1/nodes/worker/sessions/test_probe")
            .ok()?;
        (r.body["state"] == "Active").then_some(r.body)
    })
    .unwrap();
    assert_eq!(session["deadline_ms"], 300);
    // Every probe update now takes 5 s, far past its 300 ms deadline.
    let r = server
        .post(
            "/api/v1/nodes/worker/sessions/test_probe/messages",
            Some(&server.admin_token()),
            &json!({"delay_ms": 5000}),
        )
        .unwrap();
    assert_eq!(r.status, 202);
    wait_for("deadline misses to pile up", TIMEOUT, || {
        let r = server
            .get("/api/v1/nodes/worker/sessions/test_probe")
            .ok()?;
        (r.body["deadline_misses"].as_u64()? >= 5).then_some(())
    })
    .unwrap();
    // Meanwhile heartbeats (every 200 ms) kept arriving: the history grew and the node stayed Ready.
    let before = server
        .get("/api/v1/nodes/worker/metrics?limit=1000")
        .unwrap()
        .body
        .as_array()
        .unwrap()
        .len();
    wait_for("heartbeats to keep arriving", TIMEOUT, || {
        let after = server
            .get("/api/v1/nodes/worker/metrics?limit=1000")
            .ok()?
            .body
            .as_array()?
            .len();
        (after >= before + 4).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: heartbeats stalled"));
    let node = server.wait_node("worker", "listed", |_| true).unwrap();
    assert_eq!(node["status"], "Ready");
    let r = call(&server, "ping", Value::Null, "");
    assert_eq!(r.status, 200, "actions still answer: {r:?}");
}
