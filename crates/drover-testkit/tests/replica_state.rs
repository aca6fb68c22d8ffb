//! `--nats`: each node's desired and actual state in JetStream KV (`desired-state`, `actual-state`). Two
//! replicas on one PostgreSQL and one nats-server (both started by the test), an agent on each. Manifests
//! applied through both replicas at the same moment all converge everywhere and the KV holds PostgreSQL's
//! generations; B's status events hear what the agent on A reports; desired state applied through B
//! reaches A's agent across a NATS restart, even when applied while NATS was down; a replica whose NATS
//! has no JetStream does not start.

use std::time::Duration;

use drover_testkit::{
    Agent, Nats, Postgres, Server, ServerOptions, TIMEOUT, next_event, tail, wait_for,
};
use serde_json::{Value, json};

struct Cluster {
    a: Server,
    b: Server,
    on_a: Agent,
    on_b: Agent,
    // Dropped last: the replicas and the agents go first.
    nats: Nats,
    _pg: Postgres,
    _secrets: tempfile::TempDir,
}

fn agent_on(server: &Server, name: &str, site: &str) -> Agent {
    server.attached_agent(
        name,
        json!({"labels": {"role": "edge", "site": site}}),
        &[
            "--allow-shell",
            "--allow-kind",
            "shell_job",
            "--heartbeat-interval",
            "300ms",
        ],
    )
}

fn cluster() -> Cluster {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let a = Server::start_with(ServerOptions::replica(&pg, Some(&nats), secrets.path())).unwrap();
    let b = Server::start_with(ServerOptions::replica(&pg, Some(&nats), secrets.path())).unwrap();
    let on_a = agent_on(&a, "on-a", "a");
    let on_b = agent_on(&b, "on-b", "b");
    Cluster {
        a,
        b,
        on_a,
        on_b,
        nats,
        _pg: pg,
        _secrets: secrets,
    }
}

/// A manifest of jobs that are always Ready (`unless: true`): convergence without touching the host.
fn manifest(name: &str, selector: Value, ids: &[String]) -> Value {
    let resources: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "shell_job": {"command": "true", "unless": "true"}}))
        .collect();
    json!({"name": name, "selector": selector, "resources": resources})
}

impl Cluster {
    fn logs(&self) -> String {
        format!(
            "A's log:\n{}\nB's log:\n{}\non-a's log:\n{}\non-b's log:\n{}",
            tail(&self.a.log(), 30),
            tail(&self.b.log(), 30),
            tail(&self.on_a.log(), 20),
            tail(&self.on_b.log(), 20)
        )
    }

    fn apply(&self, through: &Server, manifest: &Value) {
        let r = through
            .post("/api/v1/manifests", Some(&through.admin_token()), manifest)
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}\n{}", self.logs());
    }

    /// Waits until `node` reports every resource in `ids` Ready at the generation PostgreSQL holds for it;
    /// returns its status.
    fn wait_converged(&self, node: &str, ids: &[String]) -> Value {
        wait_for(&format!("{node} to converge on {ids:?}"), TIMEOUT, || {
            let status = self
                .a
                .get(&format!("/api/v1/nodes/{node}/status"))
                .ok()?
                .body;
            converged_on(&status, ids).then_some(status)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// A bucket's record for a node, waiting for it to reach `generation`; panics if it goes past it.
    fn kv_generation(&self, bucket: &str, node_id: &str, generation: u64) -> Value {
        let record = wait_for(
            &format!("{bucket}/{node_id} at {generation}"),
            TIMEOUT,
            || {
                let record = self.nats.kv_get(bucket, node_id).ok()??;
                (record["generation"].as_u64()? >= generation).then_some(record)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        assert_eq!(record["generation"], generation, "{record}");
        record
    }
}

fn converged_on(status: &Value, ids: &[String]) -> bool {
    let resources = status["resources"].as_array().cloned().unwrap_or_default();
    status["observed_generation"] == status["desired_generation"]
        && resources.len() == ids.len()
        && ids.iter().all(|id| {
            resources
                .iter()
                .any(|r| r["id"] == id.as_str() && r["state"] == "Ready")
        })
}

#[test]
fn manifests_applied_through_both_replicas_at_once_all_converge_and_the_kv_follows_the_store() {
    let c = cluster();
    for round in 0..3 {
        let ids = [format!("a-{round}"), format!("b-{round}")];
        let through_a = manifest("from-a", json!({"role": "edge"}), &ids[..1]);
        let through_b = manifest("from-b", json!({"role": "edge"}), &ids[1..]);
        // Both applies at the same moment: each replica recomputes both nodes at once.
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                c.apply(&c.a, &through_a)
            });
            s.spawn(|| {
                start.wait();
                c.apply(&c.b, &through_b)
            });
        });
        for node in ["on-a", "on-b"] {
            let status = c.wait_converged(node, &ids);
            let generation = status["desired_generation"].as_u64().unwrap();
            let node_id = status["node_id"].as_str().unwrap();
            // The KV holds the store's generation, no older and no newer.
            let desired = c.kv_generation("desired-state", node_id, generation);
            let state: Value = serde_json::from_str(desired["body"].as_str().unwrap()).unwrap();
            assert_eq!(state["generation"], generation, "{state}");
            let actual = c.kv_generation("actual-state", node_id, generation);
            let report: Value = serde_json::from_str(actual["body"].as_str().unwrap()).unwrap();
            assert_eq!(report["observed_generation"], generation, "{report}");
        }
    }
}

#[test]
fn status_events_on_one_replica_hear_what_an_agent_on_another_reports() {
    let c = cluster();
    let http = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let resp = http
        .get(format!("{}/api/v1/status/events", c.b.api_url()))
        .bearer_auth(c.b.admin_token())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut events = std::io::BufReader::new(resp);
    let (name, _) = next_event(&mut events);
    assert_eq!(name, "status");

    // Applied through A for A's agent only: B changes nothing itself, so all B's followers hear of it
    // comes from A's writes to the buckets.
    let ids = ["only-a".to_string()];
    c.apply(&c.a, &manifest("site-a", json!({"site": "a"}), &ids));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let (name, report) = next_event(&mut events);
            if name == "node" && report["node_name"] == "on-a" && converged_on(&report, &ids) {
                let _ = tx.send(report);
                return;
            }
        }
    });
    let report = rx.recv_timeout(TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "B's status events never said on-a converged: {e}\n{}",
            c.logs()
        )
    });
    assert_eq!(report["resources"][0]["id"], "only-a", "{report}");
}

#[test]
fn desired_state_applied_through_b_reaches_the_agent_on_a_across_a_nats_restart() {
    let mut c = cluster();
    // Applied while NATS is down: the store takes it; the KV gets it once NATS is back.
    c.nats.kill();
    wait_for("B to see NATS down", TIMEOUT, || {
        (c.b.get("/ready").ok()?.status == 503).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let first = ["while-down".to_string()];
    let started = std::time::Instant::now();
    c.apply(&c.b, &manifest("down", json!({"role": "edge"}), &first));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an apply does not wait on NATS: {:?}",
        started.elapsed()
    );
    // B's own agent has it at once.
    c.wait_converged("on-b", &first);
    c.nats.start_again().unwrap();
    let status = c.wait_converged("on-a", &first);
    let node_id = status["node_id"].as_str().unwrap();
    let generation = status["desired_generation"].as_u64().unwrap();
    c.kv_generation("desired-state", node_id, generation);

    // And after the restart, A's watch goes on: the next change through B reaches on-a too.
    let next = ["while-down".to_string(), "after".to_string()];
    c.apply(&c.b, &manifest("up", json!({"site": "a"}), &next[1..]));
    c.wait_converged("on-a", &next);
}

#[test]
fn a_replica_whose_nats_has_no_jetstream_does_not_start() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let nats = Nats::start_without_jetstream().unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let refused = Server::start_with(ServerOptions::replica(&pg, Some(&nats), secrets.path()))
        .err()
        .expect("a replica without JetStream must not start");
    let text = format!("{refused:#}");
    assert!(text.contains("nats-server -js"), "{text}");
}
