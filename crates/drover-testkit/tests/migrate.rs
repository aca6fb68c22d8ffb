//! `drover migrate --from DATA_DIR --to postgres://…`: a SQLite server's fleet moved into a real
//! PostgreSQL cluster (started by the test), then served from it on the same data dir, with the agent
//! reconnecting without enrolling again.

use drover_testkit::{Postgres, Server, ServerOptions, drover_cli, tail};
use serde_json::{Value, json};

fn migrate(server: &Server, url: &str, extra: &[&str]) -> (i32, String, String) {
    let out = drover_cli()
        .unwrap()
        .arg("migrate")
        .arg("--from")
        .arg(server.data_dir())
        .arg("--to")
        .arg(url)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_sqlite_fleet_moves_to_postgres_and_its_agent_stays_enrolled() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let url = pg.url("drover");
    let mut server = Server::start().unwrap();

    let files = tempfile::tempdir().unwrap();
    let root = files.path().to_str().unwrap().to_string();
    let (agent, node) = server.start_edge_agent(&root, &["--allow-shell"]).unwrap();

    // A finished task with output, a converged manifest, an operator.
    let task = server
        .create_task(json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "shell": "echo hello; echo oops >&2; exit 3"}}))
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    server.wait_task_done(&id).unwrap();
    let lines = server.task_lines(&id).unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let motd = files.path().join("motd");
    let manifest = json!({"name": "base", "selector": {"role": "edge"}, "resources": [
        {"id": "motd", "file": {"path": motd.to_str().unwrap(), "content": "hello\n"}}]});
    let applied = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(applied.status, 200, "{applied:?}");
    server
        .wait_converged("edge")
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
    let created = server
        .post(
            "/api/v1/operators",
            Some(&server.admin_token()),
            &json!({"name": "olga", "role": "viewer"}),
        )
        .unwrap();
    assert_eq!(created.status, 201, "{created:?}");
    let olga = created.body["token"].as_str().unwrap().to_string();

    // A running server's data dir is refused; so is a dir with no store.
    let (code, _, err) = migrate(&server, &url, &[]);
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("stop it first"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let out = drover_cli()
        .unwrap()
        .args(["migrate", "--to", &url, "--from"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // Stopped, it moves, every record kind counted.
    server.stop();
    let (code, out, err) = migrate(&server, &url, &["-o", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let counts = &report["counts"];
    for (kind, at_least) in [
        ("nodes", 1),
        ("join_tokens", 1),
        ("operators", 1),
        ("tasks", 1),
        ("task_runs", 1),
        ("task_output", 2),
        ("manifests", 1),
        ("node_desired", 1),
        ("node_convergence", 1),
        ("node_resources", 1),
        ("audit", 3),
    ] {
        assert!(
            counts[kind].as_u64().is_some_and(|n| n >= at_least),
            "{kind}: {report}"
        );
    }
    assert_eq!(counts["nodes"], 1, "{report}");
    assert_eq!(counts["tasks"], 1, "{report}");
    assert!(!out.contains("secret"), "no password in the report");

    // Once more: the target is not empty now.
    let (code, _, err) = migrate(&server, &url, &[]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("not empty") && err.contains("dropdb"), "{err}");

    // The server on PostgreSQL, same data dir (its CA): the same fleet, the agent back without enrolling.
    server
        .restart_with(ServerOptions {
            args: vec!["--database".into(), url.clone()],
        })
        .unwrap();
    let again = server
        .wait_node("edge", "connected again", |n| n["connected"] == true)
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
    assert_eq!(again["id"], node["id"]);
    assert_eq!(again["labels"]["role"], "edge");
    assert_eq!(server.nodes().unwrap().len(), 1);
    assert_eq!(server.task_lines(&id).unwrap(), lines);
    let kept = server.get(&format!("/api/v1/tasks/{id}")).unwrap().body;
    assert_eq!(kept["runs"][0]["exit_code"], 3, "{kept}");
    let manifests = server.get("/api/v1/manifests").unwrap().body;
    assert!(
        manifests.as_array().is_some_and(|m| m
            .iter()
            .any(|m| m["name"] == "base" && m["generation"] == 1)),
        "{manifests}"
    );
    server.wait_converged("edge").unwrap();
    let as_olga = server
        .request("GET", "/api/v1/nodes", Some(&olga), None)
        .unwrap();
    assert_eq!(as_olga.status, 200, "the operator's token still works");

    // New records continue after the copied ones (the sequences moved past them).
    let second = server
        .create_task(
            json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "shell": "echo again"}}),
        )
        .unwrap();
    let second = second["id"].as_str().unwrap().to_string();
    server.wait_task_done(&second).unwrap();
    assert_eq!(
        server.task_lines(&second).unwrap(),
        [("stdout".to_string(), "again\n".to_string())]
    );
    let tasks = server.get("/api/v1/tasks").unwrap().body;
    let ids: Vec<&str> = tasks
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [second.as_str(), id.as_str()], "newest first: {tasks}");
    drop(agent);
    drop(server);
    drop(pg);
}
