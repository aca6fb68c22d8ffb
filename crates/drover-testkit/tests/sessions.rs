//! Daemon-plugin sessions: built-in plugins streaming, no resend of unchanged data, deadline misses,
//! recreation after a server-side terminate and after a server restart, and plugin configuration.
//! Needs the agent built with `test-plugins`.

use drover_testkit::{Agent, Server, TIMEOUT, wait_for};
use serde_json::{Value, json};

const BUILT_IN: &[&str] = &["metrics", "disks", "network", "containers", "systemd_units"];

fn start(server: &Server, extra: &[&str]) -> Agent {
    let token = server.join_token(json!({})).unwrap();
    let mut args = vec![
        "--token",
        &token,
        "--heartbeat-interval",
        "200ms",
        "--plugin-interval",
        "metrics=200ms",
    ];
    args.extend_from_slice(extra);
    Agent::start(&server.agent_url(), "watched", &args).unwrap()
}

fn sessions(server: &Server) -> Vec<Value> {
    server
        .get("/api/v1/nodes/watched/sessions")
        .ok()
        .and_then(|r| r.body.as_array().cloned())
        .unwrap_or_default()
}

/// Waits until every named plugin has an Active session, and returns plugin -> session id.
fn wait_active(server: &Server, plugins: &[&str]) -> std::collections::BTreeMap<String, String> {
    wait_for(&format!("active sessions for {plugins:?}"), TIMEOUT, || {
        let list = sessions(server);
        let active: std::collections::BTreeMap<String, String> = list
            .iter()
            .filter(|s| s["state"] == "Active")
            .map(|s| {
                (
                    s["plugin"].as_str().unwrap().to_string(),
                    s["session_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        plugins
            .iter()
            .all(|p| active.contains_key(*p))
            .then_some(active)
    })
    .unwrap()
}

fn probe(server: &Server) -> Value {
    server
        .get("/api/v1/nodes/watched/sessions/test_probe")
        .unwrap()
        .body
}

fn tell_probe(server: &Server, body: Value) {
    let r = server
        .post(
            "/api/v1/nodes/watched/sessions/test_probe/messages",
            Some(&server.admin_token()),
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 202, "{r:?}");
}

#[test]
fn built_in_plugins_stream_typed_payloads() {
    let server = Server::start().unwrap();
    let _agent = start(&server, &[]);
    wait_active(&server, BUILT_IN);

    let disks = server
        .get("/api/v1/nodes/watched/sessions/disks")
        .unwrap()
        .body;
    assert!(
        disks["payload"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["mount_point"] == "/"),
        "{disks}"
    );
    let net = server
        .get("/api/v1/nodes/watched/sessions/network")
        .unwrap()
        .body;
    assert!(
        net["payload"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "lo"),
        "{net}"
    );
    let containers = server
        .get("/api/v1/nodes/watched/sessions/containers")
        .unwrap()
        .body;
    assert!(containers["payload"]["engine"].is_boolean());
    let units = server
        .get("/api/v1/nodes/watched/sessions/systemd_units")
        .unwrap()
        .body;
    assert_eq!(
        units["payload"]["systemd"],
        std::path::Path::new("/run/systemd/system").is_dir()
    );

    // Metrics change every sample, so its sequence climbs and its history fills.
    wait_for("several metrics payloads", TIMEOUT, || {
        let m = server
            .get("/api/v1/nodes/watched/sessions/metrics")
            .ok()?
            .body;
        (m["seq"].as_u64()? >= 3 && m["payload"]["mem_usage"].is_number()).then_some(())
    })
    .unwrap();
    let history = server
        .get("/api/v1/nodes/watched/sessions/metrics/history")
        .unwrap()
        .body;
    assert!(history.as_array().unwrap().len() >= 3);

    // The CLI lists them and prints one payload as JSON.
    let out = server.cli(&["sessions", "watched"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for p in BUILT_IN {
        assert!(table.contains(p), "{p} missing:\n{table}");
    }
    assert!(table.contains("MISSES") && table.contains("Active"));
    let out = server
        .cli(&["sessions", "watched", "disks", "-o", "json"])
        .unwrap();
    let payload: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        payload
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["mount_point"] == "/")
    );
    assert_eq!(
        server
            .cli(&["sessions", "watched", "nope"])
            .unwrap()
            .status
            .code(),
        Some(3)
    );
}

#[test]
fn unchanged_payloads_are_not_resent_and_late_calls_are_rescheduled() {
    let server = Server::start().unwrap();
    let _agent = start(&server, &[]);
    wait_active(&server, &["test_probe"]);

    // The probe updates every 100 ms with the same payload: nothing after the initial one is sent
    // (deliberate wait: a window in which nothing may be sent).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let p = probe(&server);
    assert_eq!(p["seq"], 0, "{p}");
    assert_eq!(p["payload"]["value"], 0);

    // A changed payload is sent once.
    tell_probe(&server, json!({"value": 5}));
    wait_for("the new value", TIMEOUT, || {
        (probe(&server)["payload"]["value"] == 5).then_some(())
    })
    .unwrap();
    // Deliberate: a window in which the unchanged value must not be sent again.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_eq!(probe(&server)["seq"], 1);

    // Updates that take longer than the 300 ms deadline are cancelled and counted...
    tell_probe(&server, json!({"delay_ms": 2000}));
    wait_for("deadline misses", TIMEOUT, || {
        (probe(&server)["deadline_misses"].as_u64()? >= 2).then_some(())
    })
    .unwrap();
    // ...and retried at the next tick, which succeeds once the plugin is quick again.
    tell_probe(&server, json!({"delay_ms": 0, "value": 7}));
    let p = wait_for("the plugin to recover", TIMEOUT, || {
        let p = probe(&server);
        (p["payload"]["value"] == 7).then_some(p)
    })
    .unwrap();
    assert!(p["deadline_misses"].as_u64().unwrap() >= 2);
    let out = server.cli(&["sessions", "watched", "-o", "json"]).unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe_row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["plugin"] == "test_probe")
        .unwrap()
        .clone();
    assert!(
        probe_row["deadline_misses"].as_u64().unwrap() >= 2,
        "misses are visible: {probe_row}"
    );
}

#[test]
fn sessions_are_recreated_after_terminate_and_server_restart() {
    let mut server = Server::start().unwrap();
    let _agent = start(&server, &[]);
    let first = wait_active(&server, &["test_probe", "disks"]);

    // One session terminated by the server: the agent recreates just that one.
    let r = server
        .request(
            "DELETE",
            "/api/v1/nodes/watched/sessions/test_probe",
            Some(&server.admin_token()),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let second = wait_for("a new probe session", TIMEOUT, || {
        let now = wait_active(&server, &["test_probe", "disks"]);
        (now["test_probe"] != first["test_probe"]).then_some(now)
    })
    .unwrap();
    assert_eq!(
        second["disks"], first["disks"],
        "other sessions are untouched"
    );

    // All terminated: all recreated.
    let out = server.cli(&["sessions", "watched", "--terminate"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let third = wait_for("all sessions recreated", TIMEOUT, || {
        let now = wait_active(&server, &["test_probe", "disks"]);
        (now["test_probe"] != second["test_probe"] && now["disks"] != second["disks"])
            .then_some(now)
    })
    .unwrap();

    // The server restarts and knows no sessions; the agent recreates them all.
    server.restart().unwrap();
    let fourth = wait_active(&server, &["test_probe", "disks"]);
    assert_ne!(fourth["disks"], third["disks"]);
    assert_eq!(
        probe(&server)["seq"],
        0,
        "a new session starts with its initial payload"
    );
}

#[test]
fn plugins_are_configured_on_the_agent() {
    let server = Server::start().unwrap();
    let _agent = start(
        &server,
        &[
            "--disable-plugin",
            "network",
            "--plugin-interval",
            "test_probe=50ms",
            "--plugin-deadline",
            "test_probe=250ms",
        ],
    );
    let active = wait_active(&server, &["disks", "test_probe"]);
    assert!(!active.contains_key("network"));
    let p = probe(&server);
    assert_eq!(
        (p["interval_ms"].as_u64(), p["deadline_ms"].as_u64()),
        (Some(50), Some(250))
    );

    // An unknown plugin name is a configuration error naming the known ones.
    let mut bad = Agent::start(&server.agent_url(), "bad", &["--disable-plugin", "nope"]).unwrap();
    assert_eq!(bad.wait_exit().unwrap(), Some(2));
    assert!(
        bad.log().contains("unknown daemon plugin \"nope\"") && bad.log().contains("disks"),
        "{}",
        bad.log()
    );
}
