//! `drover server --database postgres://…` with a real agent: the fleet's records live in a real
//! PostgreSQL cluster (started by the test, removed at its end) and are all there after a restart.

use drover_testkit::{Postgres, Server, ServerOptions, run_of, tail};
use serde_json::json;

#[test]
fn a_server_on_postgres_enrolls_runs_applies_and_keeps_it_all_across_a_restart() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let mut server = Server::start_with(ServerOptions {
        args: vec!["--database".into(), pg.url("drover")],
    })
    .unwrap();
    assert!(
        !server.data_dir().join("drover.db").exists(),
        "no SQLite store beside PostgreSQL"
    );

    let files = tempfile::tempdir().unwrap();
    let root = files.path().to_str().unwrap().to_string();
    let (agent, node) = server.start_edge_agent(&root, &["--allow-shell"]).unwrap();

    // A task, with its output.
    let task = server
        .create_task(json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "shell": "echo hello; echo oops >&2; exit 3"}}))
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let done = server.wait_task_done(&id).unwrap();
    assert_eq!(run_of(&done, "edge")["exit_code"], 3, "{done}");
    // The agent reads stdout and stderr as two pipes, so their order relative to each other is not
    // kept; what each stream says is.
    let lines = server.task_lines(&id).unwrap();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("stderr".to_string(), "oops\n".to_string()),
            ("stdout".to_string(), "hello\n".to_string())
        ]
    );

    // A manifest, converged on the agent.
    let motd = files.path().join("motd");
    let manifest = json!({"name": "base", "selector": {"role": "edge"}, "resources": [
        {"id": "motd", "file": {"path": motd.to_str().unwrap(), "content": "hello\n"}}]});
    let applied = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(applied.status, 200, "{applied:?}");
    let status = server
        .wait_converged("edge")
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello\n");

    // Restarted, the server reads it all back from PostgreSQL, and the agent comes back without enrolling.
    server.restart().unwrap();
    let again = server
        .wait_node("edge", "connected again", |n| n["connected"] == true)
        .unwrap();
    assert_eq!(again["id"], node["id"]);
    assert_eq!(again["labels"]["role"], "edge");
    assert_eq!(server.nodes().unwrap().len(), 1);
    let kept = server.get(&format!("/api/v1/tasks/{id}")).unwrap().body;
    assert_eq!(run_of(&kept, "edge")["exit_code"], 3, "{kept}");
    assert_eq!(server.task_lines(&id).unwrap(), lines);
    let manifests = server.get("/api/v1/manifests").unwrap().body;
    let base = manifests
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "base"))
        .unwrap_or_else(|| panic!("the manifest is kept: {manifests}"));
    assert_eq!(base["generation"], 1);
    let after = server.wait_converged("edge").unwrap();
    assert_eq!(after["desired_generation"], status["desired_generation"]);
    let audit = server.get("/api/v1/audit").unwrap().body;
    let actions: Vec<&str> = audit
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        actions.contains(&"task.create") && actions.iter().any(|a| a.starts_with("manifest")),
        "{audit}"
    );
    drop(agent);
    drop(server);
    drop(pg);
}
