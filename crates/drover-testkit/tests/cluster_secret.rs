//! `--cluster-secret-file`: two servers on one PostgreSQL (started by the test), with different data dirs
//! and the same secret, share the CA and the admin token; another secret is refused at start.

use drover_testkit::{Agent, Postgres, Server, ServerOptions, tail};
use serde_json::json;

#[test]
fn replicas_with_one_secret_share_the_ca_and_the_admin_token() {
    let pg = Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    pg.create_database("drover").unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("cluster.secret");
    std::fs::write(&secret, "8d1f0c3e5a7b9d2f4e6a8c0b1d3f5e7a\n").unwrap();
    let args = |file: &std::path::Path| ServerOptions {
        args: vec![
            "--database".into(),
            pg.url("drover"),
            "--cluster-secret-file".into(),
            file.to_str().unwrap().into(),
        ],
    };
    let a = Server::start_with(args(&secret)).unwrap();
    let b = Server::start_with(args(&secret)).unwrap();
    assert_ne!(a.data_dir(), b.data_dir());
    assert_eq!(
        std::fs::read(a.data_dir().join("ca.crt")).unwrap(),
        std::fs::read(b.data_dir().join("ca.crt")).unwrap(),
        "one CA"
    );

    // A join token made on A enrolls an agent with B, which pins the CA the token names.
    let token = a.join_token(json!({"labels": {"role": "edge"}})).unwrap();
    let agent = Agent::start(&b.agent_url(), "edge", &["--token", &token]).unwrap();
    let node = b
        .wait_node("edge", "connected to B", |n| n["connected"] == true)
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&agent.log(), 30)));
    assert_eq!(node["labels"]["role"], "edge");

    // B's admin.token works against A, which sees the node B enrolled.
    let b_admin = b.admin_token();
    assert_eq!(b_admin, a.admin_token());
    let nodes = a
        .request("GET", "/api/v1/nodes", Some(&b_admin), None)
        .unwrap();
    assert_eq!(nodes.status, 200, "{nodes:?}");
    assert!(
        nodes
            .body
            .to_string()
            .contains(node["id"].as_str().unwrap()),
        "{nodes:?}"
    );

    // Another secret does not open the CA: the server says so and does not start.
    let other = secrets.path().join("other.secret");
    std::fs::write(&other, "ffffffffffffffffffffffffffffffff\n").unwrap();
    let refused = Server::start_with(args(&other))
        .err()
        .expect("a server with another secret must not start");
    let text = format!("{refused:#}");
    assert!(text.contains("sealed with another secret"), "{text}");
    drop(agent);
    drop(b);
    drop(a);
    drop(pg);
}
