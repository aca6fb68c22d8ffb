//! The operator CLI against a real server: tables, JSON, token management and exit codes.

use drover_testkit::{Agent, Server, stdout};
use serde_json::{Value, json};

#[test]
fn nodes_tokens_and_exit_codes() {
    let server = Server::start().unwrap();

    // Token management through the CLI.
    let out = server
        .cli(&[
            "token",
            "create",
            "--ttl",
            "30m",
            "--label",
            "role=edge",
            "--max-uses",
            "2",
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("drv1."));
    let out = server.cli(&["token", "list", "-o", "json"]).unwrap();
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tokens[0]["max_uses"], 2);
    assert_eq!(tokens[0]["labels"]["role"], "edge");
    assert!(tokens[0].get("token").is_none(), "secrets are never listed");

    let _agent = Agent::start(
        &server.agent_url(),
        "cli-node",
        &["--token", &token, "--heartbeat-interval", "200ms"],
    )
    .unwrap();
    server
        .wait_node("cli-node", "Ready with metrics", |n| {
            n["metrics"].is_object()
        })
        .unwrap();

    // The table has the promised columns and the node.
    let out = server.cli(&["nodes"]).unwrap();
    let table = stdout(&out);
    for column in [
        "NAME",
        "ID",
        "STATUS",
        "OS/ARCH",
        "CPUS",
        "MEMORY",
        "CPU %",
        "MEM %",
        "DISK FREE",
        "AGENT",
        "LAST SEEN",
        "LABELS",
    ] {
        assert!(table.contains(column), "missing {column}:\n{table}");
    }
    assert!(
        table.contains("cli-node")
            && table.contains("Ready")
            && table.contains("role=edge")
            && table.contains(drover_types::VERSION),
        "{table}"
    );

    // JSON has the promised fields with MIaaS names.
    let out = server.cli(&["nodes", "-o", "json"]).unwrap();
    let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = &nodes[0];
    for field in [
        "id",
        "name",
        "status",
        "labels",
        "last_seen",
        "capabilities",
        "metrics",
    ] {
        assert!(node.get(field).is_some(), "missing {field}: {node}");
    }
    for field in ["os", "cpu_count", "mem_mb", "disk_mb", "gpus"] {
        assert!(
            node["capabilities"].get(field).is_some(),
            "missing capabilities.{field}"
        );
    }
    // The agent's version, at the top for scripts (issue 26), as its capabilities say it.
    assert_eq!(node["agent_version"], drover_types::VERSION, "{node}");
    assert_eq!(node["capabilities"]["agent_version"], node["agent_version"]);
    for field in [
        "cpu_usage",
        "mem_usage",
        "disk_free_mb",
        "running_containers",
    ] {
        assert!(
            node["metrics"].get(field).is_some(),
            "missing metrics.{field}"
        );
    }

    // Show by name and by id agree.
    let id = node["id"].as_str().unwrap();
    let by_name: Value = serde_json::from_slice(
        &server
            .cli(&["nodes", "show", "cli-node", "-o", "json"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    let by_id: Value = serde_json::from_slice(
        &server
            .cli(&["nodes", "show", id, "-o", "json"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(by_name["id"], by_id["id"]);
    let text = stdout(&server.cli(&["nodes", "show", "cli-node"]).unwrap());
    assert!(
        text.contains("Kernel:") && text.contains("CPU usage:"),
        "{text}"
    );
    let history: Value = serde_json::from_slice(
        &server
            .cli(&["nodes", "metrics", "cli-node", "-o", "json"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!history.as_array().unwrap().is_empty());

    // Exit codes scripts can trust.
    assert_eq!(
        server
            .cli(&["nodes", "show", "ghost"])
            .unwrap()
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        server
            .cli(&["--token", "wrong", "nodes"])
            .unwrap()
            .status
            .code(),
        Some(4)
    );
    let dead = drover_testkit::free_port();
    let out = drover_testkit::bin("drover")
        .map(|b| {
            std::process::Command::new(b)
                .args([
                    "--server",
                    &format!("http://127.0.0.1:{dead}"),
                    "--token",
                    "x",
                    "nodes",
                ])
                .output()
                .unwrap()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the drover server"));
    assert_eq!(
        server.cli(&["nodes", "--bogus"]).unwrap().status.code(),
        Some(2)
    );

    // Revocation through the CLI.
    let tid = tokens[0]["id"].as_str().unwrap();
    assert!(
        server
            .cli(&["token", "revoke", tid])
            .unwrap()
            .status
            .success()
    );
    let tokens: Value =
        serde_json::from_slice(&server.cli(&["token", "list", "-o", "json"]).unwrap().stdout)
            .unwrap();
    assert_eq!(tokens[0]["revoked"], true);

    // Deletion through the CLI.
    assert!(
        server
            .cli(&["nodes", "delete", "cli-node"])
            .unwrap()
            .status
            .success()
    );
    let nodes: Value =
        serde_json::from_slice(&server.cli(&["nodes", "-o", "json"]).unwrap().stdout).unwrap();
    assert_eq!(nodes, json!([]));
}

#[test]
fn every_command_has_help_with_an_example() {
    let drover = drover_testkit::bin("drover").unwrap();
    for args in [
        vec!["--help"],
        vec!["server", "--help"],
        vec!["up", "--help"],
        vec!["nodes", "--help"],
        vec!["token", "--help"],
        vec!["operator", "--help"],
        vec!["login", "--help"],
        vec!["context", "--help"],
    ] {
        let out = std::process::Command::new(&drover)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(stdout(&out).contains("Example"), "{args:?} has no example");
    }
    let out = std::process::Command::new(drover_testkit::bin("drover-agent").unwrap())
        .arg("--help")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("Example"));
}

/// `drover token list -o json | head -c0`: a reader that went away ends the CLI quietly, like any Unix tool,
/// instead of a Rust panic on stderr.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;

    let server = Server::start().unwrap();
    server.cli(&["token", "create"]).unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just opened by pipe(2) and are owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The reader is gone before the CLI writes a byte.
    drop(read_end);
    let out = server
        .cli_command(&["token", "list", "-o", "json"])
        .unwrap()
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
}
