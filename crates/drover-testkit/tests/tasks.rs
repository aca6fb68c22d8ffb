//! Remote tasks with real agents: live ordered output, exit codes and signals, cancellation of a whole
//! process tree, timeouts, redelivery across a server restart without re-running, fan-out, the node's
//! shell policy, the concurrency limit, and the audit log.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use drover_testkit::{Agent, Server, TIMEOUT, run_of, wait_for};
use serde_json::{Value, json};

fn shell(node: &str, script: &str) -> Value {
    json!({"target": {"node": node}, "spec": {"kind": "exec", "shell": script}})
}

/// Processes whose whole command line matches `pattern` (anchor it, so the shell or CLI that carries the
/// command in its own arguments does not count).
fn pgrep(pattern: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn output_streams_live_and_in_order_and_exit_codes_pass_through() {
    let server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);

    // Order across stdout and stderr is the order the lines were written.
    let task = server
        .create_task(shell(
            "box",
            "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; printf 'no newline'",
        ))
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let done = server.wait_task_done(id).unwrap();
    assert_eq!(run_of(&done, "box")["state"], "Succeeded");
    // Output travels by size: what one stream wrote in a row may come in one chunk or several.
    let mut lines: Vec<(String, String)> = Vec::new();
    for (stream, text) in server.task_lines(id).unwrap() {
        match lines.last_mut() {
            Some((s, t)) if *s == stream => t.push_str(&text),
            _ => lines.push((stream, text)),
        }
    }
    let expect: Vec<(String, String)> = [
        ("stdout", "one\n"),
        ("stderr", "two\n"),
        ("stdout", "three\nno newline"),
    ]
    .iter()
    .map(|(s, t)| (s.to_string(), t.to_string()))
    .collect();
    assert_eq!(lines, expect);

    // The CLI prints each line as it comes, to the matching stream, while the command still runs.
    let mut cli = server
        .cli_command(&[
            "exec",
            "box",
            "--shell",
            "echo first; echo warn >&2; sleep 3; echo second",
        ])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(cli.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "first\n");
    let tasks = server.get("/api/v1/tasks?limit=1").unwrap().body;
    assert_eq!(
        tasks[0]["runs"][0]["state"], "Running",
        "the first line arrived before the command ended"
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "second\n");
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "warn\n");

    // Exit codes and signals.
    let out = server.cli(&["exec", "box", "--shell", "exit 7"]).unwrap();
    assert_eq!(out.status.code(), Some(7));
    let out = server
        .cli(&["exec", "box", "--shell", "kill -TERM $$"])
        .unwrap();
    assert_eq!(out.status.code(), Some(143), "128 + SIGTERM");
    let last = server.get("/api/v1/tasks?limit=1").unwrap().body;
    assert_eq!(last[0]["runs"][0]["signal"], 15);
    let out = server
        .cli(&["exec", "box", "--", "/no/such/program"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such program"));

    // Arbitrary bytes pass through unchanged; overlong lines are split, not lost.
    let out = server
        .cli(&["exec", "box", "--shell", "printf '\\377\\376\\000ok\\n'"])
        .unwrap();
    assert_eq!(out.stdout, b"\xff\xfe\x00ok\n");
    let out = server
        .cli(&[
            "exec",
            "box",
            "--shell",
            "head -c 40000 /dev/zero | tr '\\0' x; echo",
        ])
        .unwrap();
    assert_eq!(out.stdout.len(), 40001);
    let long = server.get("/api/v1/tasks?limit=1").unwrap().body;
    let chunks = server.task_lines(long[0]["id"].as_str().unwrap()).unwrap();
    let whole: String = chunks.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(whole.len(), 40001, "stored whole and in order");
    assert!(
        chunks.len() < 40 && chunks.iter().all(|(_, t)| t.len() <= 64 * 1024),
        "output travels by size, in few chunks of at most 64 KiB: {} chunks",
        chunks.len()
    );

    // Environment and working directory.
    let out = server
        .cli(&[
            "exec",
            "box",
            "--env",
            "GREETING=hi there",
            "--cwd",
            "/tmp",
            "--shell",
            "echo $GREETING; pwd",
        ])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n/tmp\n");
}

#[test]
fn cancel_and_timeout_kill_the_whole_process_tree() {
    let server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);

    let task = server
        .create_task(shell("box", "sleep 1000 & sleep 1000; echo never"))
        .unwrap();
    let id = task["id"].as_str().unwrap();
    wait_for("both sleeps to run", TIMEOUT, || {
        (pgrep("^sleep 1000$").len() >= 2).then_some(())
    })
    .unwrap();
    let out = server.cli(&["tasks", "cancel", &id[..8]]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let done = server.wait_task_done(id).unwrap();
    assert_eq!(run_of(&done, "box")["state"], "Cancelled");
    wait_for("no sleep left behind", TIMEOUT, || {
        pgrep("^sleep 1000$").is_empty().then_some(())
    })
    .unwrap();

    // A command that ignores SIGTERM is killed after the grace period.
    let task = server
        .create_task(json!({"target": {"node": "box"}, "spec": {"kind": "exec", "shell": "trap '' TERM; sleep 2000", "timeout_ms": 500, "grace_ms": 500}}))
        .unwrap();
    let done = server.wait_task_done(task["id"].as_str().unwrap()).unwrap();
    assert_eq!(run_of(&done, "box")["state"], "TimedOut");
    wait_for("the stubborn child to be killed", TIMEOUT, || {
        pgrep("^sleep 2000$").is_empty().then_some(())
    })
    .unwrap();

    // Ctrl-C on the CLI cancels the task.
    let mut cli = server
        .cli_command(&["exec", "box", "--shell", "sleep 3000"])
        .unwrap()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the sleep to run", TIMEOUT, || {
        (!pgrep("^sleep 3000$").is_empty()).then_some(())
    })
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(cli.id() as i32, libc::SIGINT) };
    let status = wait_for("the CLI to exit", TIMEOUT, || cli.try_wait().ok().flatten()).unwrap();
    assert_eq!(status.code(), Some(143), "cancelled by SIGTERM");
    wait_for("the sleep to be gone", TIMEOUT, || {
        pgrep("^sleep 3000$").is_empty().then_some(())
    })
    .unwrap();
}

#[test]
fn output_made_while_the_server_is_down_arrives_and_nothing_runs_twice() {
    let mut server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);
    let marker = tempfile::tempdir().unwrap();
    let runs = marker.path().join("runs");
    let script = format!(
        "echo ran >> {}; echo before; sleep 1.5; echo during; sleep 1.5; echo after",
        runs.display()
    );
    let task = server.create_task(shell("box", &script)).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    wait_for("the first line", TIMEOUT, || {
        server
            .task_lines(&id)
            .ok()?
            .iter()
            .any(|(_, t)| t == "before\n")
            .then_some(())
    })
    .unwrap();
    server.kill();
    // Deliberate: the outage lasts while the task prints `during`.
    std::thread::sleep(Duration::from_millis(1500));
    server.restart().unwrap();
    let done = server.wait_task_done(&id).unwrap();
    assert_eq!(run_of(&done, "box")["state"], "Succeeded", "{done}");
    let texts: Vec<String> = server
        .task_lines(&id)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(texts, vec!["before\n", "during\n", "after\n"]);
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "ran\n",
        "the redelivered task did not run again"
    );
}

#[test]
fn fan_out_over_many_nodes_with_a_summary_and_a_parallelism_limit() {
    let server = Server::start().unwrap();
    let token = server
        .join_token(json!({"labels": {"role": "edge"}}))
        .unwrap();
    let _agents: Vec<Agent> = (0..3)
        .map(|i| {
            Agent::start(
                &server.agent_url(),
                &format!("edge-{i}"),
                &[
                    "--token",
                    &token,
                    "--allow-shell",
                    "--heartbeat-interval",
                    "300ms",
                ],
            )
            .unwrap()
        })
        .collect();
    let _other = server.agent("core", &["--allow-shell"]);
    for i in 0..3 {
        server
            .wait_node(&format!("edge-{i}"), "connected", |n| {
                n["connected"] == true
            })
            .unwrap();
    }

    let out = server
        .cli(&["exec", "--selector", "role=edge", "--", "echo", "hello"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for i in 0..3 {
        assert!(stdout.contains(&format!("edge-{i}: hello")), "{stdout}");
    }
    assert!(!stdout.contains("core"), "the selector left core out");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3/3 nodes succeeded") && stderr.contains("NODE"),
        "{stderr}"
    );

    // Any node failing makes the whole run fail, and the summary says where.
    let out = server.cli(&["exec", "--all", "--", "false"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0/4 nodes succeeded"));

    // --max-parallel 1: the runs do not overlap.
    let out = server
        .cli(&[
            "exec",
            "--selector",
            "role=edge",
            "--max-parallel",
            "1",
            "--",
            "sleep",
            "0.3",
        ])
        .unwrap();
    assert!(out.status.success());
    let task = &server.get("/api/v1/tasks?limit=1").unwrap().body[0];
    let mut spans: Vec<(String, String)> = task["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["started_at"].as_str().unwrap().to_string(),
                r["finished_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    for pair in spans.windows(2) {
        assert!(t(&pair[1].0) >= t(&pair[0].1), "runs overlapped: {spans:?}");
    }
}

#[test]
fn the_node_policy_refuses_shell_and_unlisted_programs() {
    let server = Server::start().unwrap();
    let _a = server.agent("locked", &["--allow-exec", "echo"]);
    let out = server
        .cli(&["exec", "locked", "--shell", "echo hi"])
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-shell"),
        "{out:?}"
    );
    let out = server.cli(&["exec", "locked", "--", "ls", "/"]).unwrap();
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed on this node"));
    let out = server
        .cli(&["exec", "locked", "--", "echo", "allowed"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "allowed\n");
    let tasks = server.get("/api/v1/tasks").unwrap().body;
    assert_eq!(
        tasks
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["runs"][0]["state"] == "Refused")
            .count(),
        2
    );
}

#[test]
fn the_agent_queues_tasks_beyond_its_limit() {
    let server = Server::start().unwrap();
    let _a = server.agent("small", &["--allow-shell", "--max-tasks", "1"]);
    let script = "echo start $(date +%s%N); sleep 0.5; echo end $(date +%s%N)";
    let ids: Vec<String> = (0..2)
        .map(|_| {
            server.create_task(shell("small", script)).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let spans: Vec<(u128, u128)> = ids
        .iter()
        .map(|id| {
            server.wait_task_done(id).unwrap();
            let lines = server.task_lines(id).unwrap();
            let num = |i: usize| {
                lines[i]
                    .1
                    .split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<u128>()
                    .unwrap()
            };
            (num(0), num(1))
        })
        .collect();
    assert!(
        spans[0].1 <= spans[1].0 || spans[1].1 <= spans[0].0,
        "ran at once: {spans:?}"
    );
}

#[test]
fn tasks_are_listed_replayed_and_audited() {
    let server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);
    let out = server
        .cli(&["exec", "box", "--shell", "echo logged"])
        .unwrap();
    assert!(out.status.success());

    let out = server.cli(&["tasks"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for col in [
        "ID",
        "TARGET",
        "COMMAND",
        "STATE",
        "STARTED",
        "DURATION",
        "EXIT CODES",
    ] {
        assert!(table.contains(col), "{table}");
    }
    assert!(table.contains("echo logged") && table.contains("Succeeded"));
    let tasks: Value =
        serde_json::from_slice(&server.cli(&["tasks", "-o", "json"]).unwrap().stdout).unwrap();
    let id = tasks[0]["id"].as_str().unwrap().to_string();
    let out = server.cli(&["tasks", "logs", &id]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "logged\n");

    // Following a running task prints what came before and what comes after, then ends with it.
    let task = server
        .create_task(shell("box", "echo early; sleep 1; echo late"))
        .unwrap();
    let tid = task["id"].as_str().unwrap();
    let out = server.cli(&["tasks", "logs", tid, "--follow"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "early\nlate\n");

    // The audit log has who, what, where, when and the result.
    let audit: Value = serde_json::from_slice(
        &server
            .cli(&["audit", "--node", "box", "-o", "json"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    let entries = audit.as_array().unwrap();
    let finish = entries
        .iter()
        .find(|e| e["action"] == "task.finish" && e["detail"]["command"] == "sh -c \"echo logged\"")
        .unwrap();
    assert_eq!(finish["actor"], "admin");
    assert_eq!(finish["target"], "box");
    assert_eq!(finish["detail"]["state"], "Succeeded");
    assert!(finish["at"].is_string());
    assert!(entries.iter().any(|e| e["action"] == "task.create"));
    let filtered: Value = serde_json::from_slice(
        &server
            .cli(&["audit", "--action", "task.create", "-o", "json"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        filtered
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] == "task.create")
    );

    // Bad requests are refused by field.
    let r = server
        .post(
            "/api/v1/tasks",
            Some(&server.admin_token()),
            &json!({"target": {"node": "box"}, "spec": {"kind": "exec"}}),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("spec.argv"))
    );
    let r = server.post("/api/v1/tasks", Some(&server.admin_token()), &json!({"target": {"selector": {"role": "nope"}}, "spec": {"kind": "exec", "argv": ["true"]}})).unwrap();
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("target")));
    assert_eq!(
        server.get("/api/v1/tasks/ffffffff-0000").unwrap().status,
        404
    );
}

#[test]
fn user_switching_needs_a_root_agent() {
    let server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);
    let out = server
        .cli(&["exec", "box", "--user", "nobody", "--", "id", "-u"])
        .unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(out.status.success(), "{out:?}");
        let expected = std::process::Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(out.stdout, expected);
    } else {
        assert_eq!(out.status.code(), Some(126));
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs the agent to run as root"));
    }
    let out = server
        .cli(&["exec", "box", "--user", "no-such-user-here", "--", "true"])
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
}

/// A spawned CLI killed if the test fails before it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn exec_rides_out_a_server_restart_and_prints_every_line_once() {
    let mut server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);
    let mut cli = Running(
        server
            .cli_command(&[
                "exec",
                "box",
                "--",
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6; do echo $i; sleep 1; done",
            ])
            .unwrap()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(cli.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "1\n");
    // Down while the command runs on: the CLI is cut off, then the server comes back on the same ports.
    server.kill();
    server.restart().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = cli.0.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = cli.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
    }
    assert_eq!(
        first + &rest,
        "1\n2\n3\n4\n5\n6\n",
        "every line once, in order; stderr: {stderr}"
    );
    assert!(status.success(), "{status:?}; stderr: {stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
}

/// (event, id, data) of each event in a Server-Sent Events body.
fn sse_with_ids(text: &str) -> Vec<(String, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut name, mut id, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((name?, id, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[test]
fn an_output_stream_resumes_after_the_last_event_id() {
    let server = Server::start().unwrap();
    let _a = server.agent("box", &["--allow-shell"]);
    let task = server
        .create_task(shell(
            "box",
            "echo a; sleep 0.3; echo b; sleep 0.3; echo c; sleep 0.3; echo d",
        ))
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let events = |follow: bool, last: Option<&str>| {
        let mut req = http
            .get(format!(
                "{}/api/v1/tasks/{id}/output?follow={follow}",
                server.api_url()
            ))
            .bearer_auth(server.admin_token());
        if let Some(l) = last {
            req = req.header("Last-Event-ID", l);
        }
        sse_with_ids(&req.send().unwrap().text().unwrap())
    };
    let texts = |events: &[(String, String, Value)]| -> Vec<String> {
        events
            .iter()
            .filter(|(name, _, _)| name == "output")
            .flat_map(|(_, _, v)| v.as_array().cloned().unwrap_or_default())
            .map(|c| c["text"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Followed live, the lines (written apart) come in events of their own, each with a resume point.
    let live = events(true, None);
    assert_eq!(texts(&live), vec!["a\n", "b\n", "c\n", "d\n"], "{live:?}");
    assert!(live.iter().all(|(_, id, _)| !id.is_empty()), "{live:?}");
    let upto = live
        .iter()
        .position(|(name, _, v)| name == "output" && v.to_string().contains("b\\n"))
        .unwrap();
    let seen = texts(&live[..=upto]).len();
    // Resuming after the event that carried "b" sends only what came after it, then the end again.
    let resumed = events(false, Some(&live[upto].1));
    assert_eq!(texts(&resumed), texts(&live)[seen..], "{resumed:?}");
    assert!(seen < 4, "the lines came apart: {live:?}");
    let names: Vec<&str> = resumed.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    // A resume point this server never gave replays everything rather than skip.
    assert_eq!(texts(&events(false, Some("not-an-id"))).len(), 4);
}
