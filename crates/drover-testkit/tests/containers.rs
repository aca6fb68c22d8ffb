//! Container operations as tasks against a real Podman (through its Docker Engine API), and containers
//! in the heartbeat's metrics.

use drover_testkit::{Agent, Podman, Server, TIMEOUT, wait_for};
use serde_json::json;

#[test]
fn container_operations_through_a_real_engine() {
    let podman = Podman::start().unwrap();
    let name = format!("drover-test-{}", std::process::id());
    // PID 1 in the container exits on SIGTERM, so stop is quick.
    podman
        .run_container(&name, "trap 'exit 0' TERM; echo hello-from-container; echo oops >&2; while true; do sleep 1; done")
        .unwrap();
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let args = [
        "--name".to_string(),
        "host".into(),
        "--server".into(),
        server.agent_url(),
        "--token".into(),
        token,
        "--heartbeat-interval".into(),
        "300ms".into(),
        "--allow-kind".into(),
        "container".into(),
    ];
    let _agent =
        Agent::start_raw(args.to_vec(), &[("DOCKER_HOST", &podman.docker_host())]).unwrap();

    // The heartbeat reports running containers.
    server
        .wait_node("host", "reporting the container", |n| {
            n["metrics"]["running_containers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == name.as_str()))
        })
        .unwrap();

    let cli = |args: &[&str]| {
        let mut all = vec!["containers", "host"];
        all.extend_from_slice(args);
        server.cli(&all).unwrap()
    };
    let out = cli(&["list", "--all"]);
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.contains(&name) && l.contains("running")),
        "{listing}"
    );
    // A header, like every other table.
    let header = listing.lines().next().unwrap_or_default();
    for column in ["ID", "NAME", "IMAGE", "STATE"] {
        assert!(header.contains(column), "{listing}");
    }
    // And JSON for scripts.
    let out = cli(&["list", "--all", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name.as_str() && c["state"] == "running" && c["id"].is_string()),
        "{list}"
    );

    // A manifest's container resource `web` runs as `drover-web`: its resource id finds it too.
    let id = format!("res{}", std::process::id());
    let managed = format!("drover-{id}");
    podman
        .run_container(
            &managed,
            "echo from-the-resource; while true; do sleep 1; done",
        )
        .unwrap();
    wait_for("the resource's logs by its id", TIMEOUT, || {
        let out = cli(&["logs", &id]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("from-the-resource"))
            .then_some(())
    })
    .unwrap();
    assert!(cli(&["rm", &id]).status.success());
    assert_eq!(podman.state(&managed), None);
    // Neither name exists now: the error names both and where to look.
    let out = cli(&["logs", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&managed) && err.contains("containers NODE list --all"),
        "{err}"
    );

    // Logs come back on the right streams.
    wait_for("the container's first lines", TIMEOUT, || {
        let out = cli(&["logs", &name]);
        let ok = String::from_utf8_lossy(&out.stdout).contains("hello-from-container")
            && String::from_utf8_lossy(&out.stderr).contains("oops");
        ok.then_some(())
    })
    .unwrap();

    assert!(cli(&["stop", &name]).status.success());
    assert_eq!(podman.state(&name).as_deref(), Some("exited"));
    assert!(cli(&["start", &name]).status.success());
    assert_eq!(podman.state(&name).as_deref(), Some("running"));
    assert!(cli(&["restart", &name]).status.success());
    assert_eq!(podman.state(&name).as_deref(), Some("running"));
    assert!(cli(&["rm", &name]).status.success());
    assert_eq!(podman.state(&name), None);

    let out = cli(&["stop", "no-such-container"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("no such container"),
        "{out:?}"
    );
}
