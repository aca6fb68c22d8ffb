//! Fleet commands count only nodes that can do the work: with one connected agent, one stopped agent and
//! one HTTP (MIaaS) node registered through the REST API, `drover apply --wait` returns once the connected
//! agent converged and lists the stopped one as pending (exit 6), `drover exec --all` counts the stopped one
//! unreachable and never the HTTP node, the dashboard counts the targets the CLI counts, and `drover nodes`
//! shows no CPU reading as current for a node that is not Ready.

use std::process::Output;
use std::time::{Duration, Instant};

use drover_testkit::{Server, get_text, registration};
use serde_json::json;

/// An agent labelled `site=SITE`, files allowed under `root`, `true` allowed to run; returned once connected.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn http_and_offline_nodes_neither_stall_nor_fail_fleet_commands() {
    let server = Server::start().unwrap();
    let files = tempfile::tempdir().unwrap();
    let root = files.path().to_str().unwrap().to_string();
    let args = [
        "--heartbeat-interval",
        "300ms",
        "--allow-path",
        &root,
        "--allow-exec",
        "true",
    ];
    let _alive = server.attached_agent("alive", json!({"labels": {"site": "a"}}), &args);
    let mut gone = server.attached_agent("gone", json!({"labels": {"site": "b"}}), &args);
    gone.stop();
    server
        .wait_node("gone", "not connected and not Ready", |n| {
            n["connected"] == false && n["status"] != "Ready"
        })
        .unwrap();

    // The README's curl registration: a join token, then POST /api/v1/nodes/register.
    let token = server.join_token(json!({})).unwrap();
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&token),
            &registration("worker-1", json!({})),
        )
        .unwrap();
    assert_eq!(reply.status, 201, "{reply:?}");

    // A manifest for every node: the connected agent converges, the stopped one is pending, the HTTP node
    // is no target. --wait returns long before its timeout, exit 6 (node not connected).
    let everywhere = files.path().join("everywhere.yaml");
    let motd = files.path().join("motd");
    std::fs::write(
        &everywhere,
        format!(
            "name: everywhere\nresources:\n  - id: motd\n    file: {{path: {}, content: \"hi\\n\"}}\n",
            motd.display()
        ),
    )
    .unwrap();
    let began = Instant::now();
    let out = server
        .cli(&[
            "apply",
            "-f",
            everywhere.to_str().unwrap(),
            "--wait",
            "--timeout",
            "120s",
        ])
        .unwrap();
    let took = began.elapsed();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(6), "{said}");
    assert!(took < Duration::from_secs(60), "took {took:?}: {said}");
    assert!(said.contains("targeting 2 node(s)"), "{said}");
    assert!(
        said.contains("worker-1: HTTP node: takes no manifests or tasks"),
        "{said}"
    );
    assert!(said.contains("1/2 node(s) converged"), "{said}");
    assert!(said.contains("pending, not connected: gone"), "{said}");
    assert!(!said.contains("worker-1: at desired generation"), "{said}");
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hi\n");

    // The dashboard counts the targets the CLI counts.
    let (status, page) = get_text(
        &format!("{}/ui/manifests", server.api_url()),
        Some(&server.admin_token()),
    )
    .unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("on 2 nodes (1 not connected)"), "{page}");
    assert!(page.contains("not on 1 selected HTTP node(s)"), "{page}");

    // A dry run says so of the HTTP node instead of asking it.
    let out = server
        .cli(&["apply", "-f", everywhere.to_str().unwrap(), "--dry-run"])
        .unwrap();
    assert!(
        text(&out).contains("worker-1: HTTP node: takes no manifests or tasks"),
        "{}",
        text(&out)
    );

    // Only the connected agent as a target: exit 0.
    let only_alive = files.path().join("only-alive.yaml");
    std::fs::write(
        &only_alive,
        format!(
            "name: only-alive\nselector: {{site: a}}\nresources:\n  - id: note\n    file: {{path: {}, content: \"a\\n\"}}\n",
            files.path().join("note").display()
        ),
    )
    .unwrap();
    let out = server
        .cli(&[
            "apply",
            "-f",
            only_alive.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ])
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("targeting 1 node(s)"), "{said}");
    assert!(said.contains("all 1 node(s) converged"), "{said}");

    // exec --all: the connected agent succeeds, the stopped one is unreachable, the HTTP node is no run.
    let out = server.cli(&["exec", "--all", "--", "true"]).unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("1/2 nodes succeeded; 1 unreachable (not connected)"),
        "{said}"
    );
    assert!(
        said.contains("(1 HTTP node skipped: it takes no tasks)"),
        "{said}"
    );
    assert!(
        !said.contains("worker-1 "),
        "no run on the HTTP node: {said}"
    );

    // Named directly, the HTTP node is refused with the reason.
    let out = server.cli(&["exec", "worker-1", "--", "true"]).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("worker-1 is an HTTP node: takes no manifests or tasks"),
        "{}",
        text(&out)
    );

    // `drover nodes`: the stopped node's last CPU and memory readings are not shown as current.
    let out = server.cli(&["nodes"]).unwrap();
    let said = text(&out);
    let row = |name: &str| -> Vec<String> {
        said.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|cells| cells.first().map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {said}"))
    };
    let (gone_row, alive_row) = (row("gone"), row("alive"));
    // NAME ID STATUS OS/ARCH CPUS MEMORY CPU% MEM% ...
    assert_ne!(gone_row[2], "Ready", "{said}");
    assert_eq!(&gone_row[6..8], ["-", "-"], "{said}");
    assert_eq!(alive_row[2], "Ready", "{said}");
    assert!(alive_row[6].parse::<f64>().is_ok(), "{said}");
}
