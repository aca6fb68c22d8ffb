//! Agent configuration from flags, `DROVER_*` variables and the MIaaS seed's variables, in that order.

use drover_testkit::{Agent, Server};
use serde_json::json;

fn interval_of(server: &Server, name: &str) -> u64 {
    server
        .wait_node(name, "attached", |n| n["connected"] == true)
        .unwrap()["heartbeat_interval_ms"]
        .as_u64()
        .unwrap()
}

#[test]
fn seed_variables_work_and_lose_to_drover_ones_and_flags() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let base = |name: &str| {
        vec![
            "--name".to_string(),
            name.to_string(),
            "--token".to_string(),
            token.clone(),
        ]
    };

    // The seed's CONTROL_PLANE_URL and HEARTBEAT_INTERVAL alone (plain seconds).
    let seed = Agent::start_raw(
        base("seed"),
        &[
            ("CONTROL_PLANE_URL", &server.agent_url()),
            ("HEARTBEAT_INTERVAL", "0.3"),
        ],
    )
    .unwrap();
    assert_eq!(interval_of(&server, "seed"), 300);

    // DROVER_HEARTBEAT_INTERVAL (a duration) beats HEARTBEAT_INTERVAL.
    let env = Agent::start_raw(
        base("env"),
        &[
            ("DROVER_SERVER", &server.agent_url()),
            ("DROVER_HEARTBEAT_INTERVAL", "450ms"),
            ("HEARTBEAT_INTERVAL", "7"),
        ],
    )
    .unwrap();
    assert_eq!(interval_of(&server, "env"), 450);

    // The flag beats both.
    let mut args = base("flag");
    args.extend([
        "--server".into(),
        server.agent_url(),
        "--heartbeat-interval".into(),
        "2s".into(),
    ]);
    let flag = Agent::start_raw(
        args,
        &[
            ("DROVER_HEARTBEAT_INTERVAL", "450ms"),
            ("HEARTBEAT_INTERVAL", "7"),
        ],
    )
    .unwrap();
    assert_eq!(interval_of(&server, "flag"), 2000);

    // A bad value is refused at start with a message naming it, exit code 2.
    let mut bad = Agent::start_raw(base("bad"), &[("HEARTBEAT_INTERVAL", "often")]).unwrap();
    assert_eq!(bad.wait_exit().unwrap(), Some(2));
    assert!(
        bad.log().contains("heartbeat interval") && bad.log().contains("often"),
        "{}",
        bad.log()
    );
    drop((seed, env, flag));
}
