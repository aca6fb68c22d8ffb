//! A rollout across three replicas (one PostgreSQL, one nats-server): applied through one replica, with
//! agents attached to the others, it is driven by the leader alone, once: each transition is audited once,
//! and every node gets the revision in its wave.

use drover_testkit::{Agent, Nats, Postgres, Server, ServerOptions, TIMEOUT, tail, wait_for};
use serde_json::{Value, json};

/// An agent named `name` on `server`, labelled `role=web` and `tier=TIER`, writing its files under `root`.
fn web_agent(server: &Server, name: &str, tier: &str, root: &str) -> Agent {
    server.attached_agent(
        name,
        json!({"labels": {"role": "web", "tier": tier}}),
        &[
            "--allow-path",
            root,
            "--heartbeat-interval",
            "300ms",
            "--resync-interval",
            "500ms",
        ],
    )
}

fn audit(server: &Server, action: &str) -> Vec<Value> {
    server
        .get(&format!("/api/v1/audit?action={action}"))
        .unwrap()
        .body
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_rollout_through_one_replica_is_driven_once_across_three() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let options = || ServerOptions::replica(&pg, Some(&nats), secrets.path());
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with(options()).unwrap())
        .collect();
    // Each node on its own replica. They share one directory: the manifest's file is the same path on
    // every node (agents on one machine), with the same content, so whichever writes it first, all agree.
    let shared = tempfile::tempdir().unwrap();
    let shared_root = shared.path().to_str().unwrap().to_string();
    let agents = [
        web_agent(&replicas[0], "canary", "canary", &shared_root),
        web_agent(&replicas[1], "web-1", "main", &shared_root),
        web_agent(&replicas[2], "web-2", "main", &shared_root),
    ];
    let apply = |content: &str| {
        let body = json!({
            "name": "web",
            "selector": {"role": "web"},
            "rollout": {"waves": [{"selector": {"tier": "canary"}}, {"percent": 100}], "bake": "1s"},
            "resources": [{"id": "motd", "file": {"path": format!("{shared_root}/motd"), "content": content}}],
        });
        let reply = replicas[1]
            .post("/api/v1/manifests", Some(&replicas[1].admin_token()), &body)
            .unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body
    };
    let applied = apply("v1\n");
    assert_eq!(applied["rollout"]["waves"], json!([1, 2]), "{applied}");
    // Any replica answers for the rollout; it completes, and every node converged.
    let done = wait_for("the rollout complete", TIMEOUT, || {
        let r = replicas[2].get("/api/v1/rollouts/web").ok()?.body;
        (r["state"] == "Complete").then_some(r)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            replicas
                .iter()
                .map(|r| tail(&r.log(), 20))
                .collect::<Vec<_>>()
                .join("\n---\n")
        )
    });
    assert_eq!(done["waves"][0]["converged"], 1, "{done}");
    assert_eq!(done["waves"][1]["converged"], 2, "{done}");
    assert_eq!(
        std::fs::read_to_string(format!("{shared_root}/motd")).unwrap(),
        "v1\n"
    );
    // Driven once: one start, one next wave and one completion, whichever replica is asked.
    for r in &replicas {
        assert_eq!(audit(r, "rollout.start").len(), 1);
        assert_eq!(
            audit(r, "rollout.wave").len(),
            1,
            "{:?}",
            audit(r, "rollout.wave")
        );
        assert_eq!(audit(r, "rollout.complete").len(), 1);
    }
    drop(agents);
    drop(replicas);
    drop(nats);
}
