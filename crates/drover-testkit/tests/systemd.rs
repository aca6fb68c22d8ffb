//! SystemdUnit resources, the `service_status` action and the `systemd_units` plugin against a real
//! systemd: the agent runs inside a container whose PID 1 is systemd.

use drover_testkit::{Server, SystemdHost, TIMEOUT, wait_for};
use serde_json::{Value, json};

const UNIT: &str = "[Unit]\nDescription=drover demo\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";

#[test]
fn units_converge_drift_is_corrected_and_deletion_cleans_up() {
    let host = SystemdHost::start(&format!("drover-sd-{}", std::process::id())).unwrap();
    let server = Server::start().unwrap();
    let token = server
        .join_token(json!({"labels": {"init": "systemd"}}))
        .unwrap();
    let url = server.agent_url();
    host.start_agent(&[
        "--server",
        &url,
        "--token",
        &token,
        "--name",
        "sd",
        "--heartbeat-interval",
        "300ms",
        "--resync-interval",
        "500ms",
        "--allow-kind",
        "systemd_unit",
    ])
    .unwrap();
    wait_for("the agent in the container", TIMEOUT, || {
        server
            .nodes()
            .ok()?
            .into_iter()
            .find(|n| n["name"] == "sd" && n["connected"] == true)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", host.agent_log()));

    let manifest = json!({"name": "units", "selector": {"init": "systemd"}, "resources": [{"id": "demo", "systemd_unit": {
        "name": "drover-demo.service", "content": UNIT, "enabled": true, "active": true}}]});
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let status = || server.get("/api/v1/nodes/sd/status").unwrap().body;
    let resource = |pred: &dyn Fn(&Value) -> bool| {
        wait_for("the unit's status", TIMEOUT, || {
            status()["resources"]
                .as_array()?
                .iter()
                .find(|r| pred(r))
                .cloned()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", status(), host.agent_log()))
    };
    let ready = resource(&|r| r["state"] == "Ready");
    assert_eq!(ready["details"]["active_state"], "active");
    assert_eq!(
        host.exec(&["systemctl", "is-active", "drover-demo.service"])
            .unwrap(),
        "active"
    );
    assert_eq!(
        host.exec(&["systemctl", "is-enabled", "drover-demo.service"])
            .unwrap(),
        "enabled"
    );

    // The action and the daemon plugin see the real systemd too.
    let r = server
        .post(
            "/api/v1/nodes/sd/actions/service_status",
            Some(&server.admin_token()),
            &json!({"unit": "drover-demo"}),
        )
        .unwrap();
    assert_eq!(r.body["result"]["active_state"], "active", "{r:?}");

    // Someone stops it: started again, and the drift is reported.
    host.exec(&["systemctl", "stop", "drover-demo.service"])
        .unwrap();
    resource(&|r| r["drift"].as_array().is_some_and(|d| !d.is_empty()));
    wait_for("the unit active again", TIMEOUT, || {
        (host
            .exec(&["systemctl", "is-active", "drover-demo.service"])
            .ok()?
            == "active")
            .then_some(())
    })
    .unwrap();

    // Deleting the manifest stops, disables and removes the unit the agent created.
    assert!(
        server
            .cli(&["delete", "manifest", "units"])
            .unwrap()
            .status
            .success()
    );
    wait_for("the unit file to be removed", TIMEOUT, || {
        let probe = "test -e /etc/systemd/system/drover-demo.service && echo yes || echo no";
        (host.exec(&["sh", "-c", probe]).ok()? == "no").then_some(())
    })
    .unwrap();
    assert_ne!(
        host.exec(&["systemctl", "is-active", "drover-demo.service"])
            .unwrap(),
        "active"
    );
}

/// The unit drover ships (packaging/drover-agent.service), installed as docs/operations.md shows: it does
/// not start without its configuration; with it, the agent runs as root, enrolls, and manages a unit and
/// a file under /etc; restarting the service ends a running task as Lost and keeps the node's identity.
#[test]
fn the_shipped_unit_runs_the_agent_as_root_and_it_manages_units_and_files_under_etc() {
    let host = SystemdHost::start(&format!("drover-pkg-{}", std::process::id())).unwrap();
    let server = Server::start().unwrap();
    let unit = include_str!("../../../packaging/drover-agent.service");
    host.exec(&["ln", "-sf", "/drover/drover-agent", "/usr/bin/drover-agent"])
        .unwrap();
    host.write("/etc/systemd/system/drover-agent.service", unit, "0644")
        .unwrap();
    host.exec(&["systemctl", "daemon-reload"]).unwrap();
    // Not configured yet: it does not start, and says why.
    host.exec(&["systemctl", "start", "drover-agent"]).unwrap();
    assert_eq!(
        host.exec(&["systemctl", "is-active", "drover-agent"])
            .unwrap(),
        "inactive"
    );
    let why = host
        .exec(&["systemctl", "show", "-p", "ConditionResult", "drover-agent"])
        .unwrap();
    assert_eq!(why, "ConditionResult=no");

    let token = server
        .join_token(json!({"labels": {"role": "pkg"}}))
        .unwrap();
    let config = format!(
        "server = \"{}\"\ntoken = \"{token}\"\nname = \"pkg\"\nheartbeat_interval = \"300ms\"\nresync_interval = \"500ms\"\nallow_paths = [\"/etc\"]\nallow_kinds = [\"systemd_unit\"]\nallow_exec = [\"sleep\"]\n",
        server.agent_url()
    );
    host.write("/etc/drover/agent.toml", &config, "0600")
        .unwrap();
    host.exec(&["systemctl", "enable", "--now", "drover-agent"])
        .unwrap();
    let journal = || {
        host.exec(&["journalctl", "-u", "drover-agent", "--no-pager", "-n", "30"])
            .unwrap_or_default()
    };
    let node = || {
        server
            .nodes()
            .ok()?
            .into_iter()
            .find(|n| n["name"] == "pkg" && n["connected"] == true)
    };
    let first = wait_for("the packaged agent connected", TIMEOUT, node)
        .unwrap_or_else(|e| panic!("{e}\n{}", journal()));
    assert_eq!(
        host.exec(&["stat", "-c", "%U %a", "/var/lib/drover-agent"])
            .unwrap(),
        "root 700"
    );

    let manifest = json!({"name": "pkg", "selector": {"role": "pkg"}, "resources": [
        {"id": "demo", "systemd_unit": {"name": "drover-demo.service", "content": UNIT, "enabled": true, "active": true}},
        {"id": "conf", "file": {"path": "/etc/drover-demo.conf", "content": "port = 8080\n", "mode": "0640"}},
    ]});
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    server.wait_converged("pkg").unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            server.get("/api/v1/nodes/pkg/status").unwrap().body,
            journal()
        )
    });
    assert_eq!(
        host.exec(&["systemctl", "is-active", "drover-demo.service"])
            .unwrap(),
        "active"
    );
    assert_eq!(
        host.exec(&["cat", "/etc/drover-demo.conf"]).unwrap(),
        "port = 8080"
    );
    assert_eq!(
        host.exec(&["stat", "-c", "%U %a", "/etc/drover-demo.conf"])
            .unwrap(),
        "root 640"
    );

    // A restart of the service while a task runs: the run ends Lost (never Running for ever), the unit
    // the manifest gave keeps running, and the node comes back as itself, without enrolling again.
    let task = server
        .create_task(
            json!({"target": {"node": "pkg"}, "spec": {"kind": "exec", "argv": ["sleep", "60"]}}),
        )
        .unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    server
        .wait_task(&id, "the run to be Running", |t| {
            t["runs"][0]["state"] == "Running"
        })
        .unwrap();
    host.exec(&["systemctl", "restart", "drover-agent"])
        .unwrap();
    let lost = server
        .wait_task(&id, "the run to end Lost", |t| {
            t["runs"][0]["state"] == "Lost"
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", journal()));
    let error = lost["runs"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("came back without this task"), "{lost}");
    assert_eq!(
        host.exec(&["systemctl", "is-active", "drover-demo.service"])
            .unwrap(),
        "active"
    );
    let again = wait_for("the agent back", TIMEOUT, node).unwrap();
    assert_eq!(again["id"], first["id"], "the same node");
    let pkg_nodes = server
        .nodes()
        .unwrap()
        .into_iter()
        .filter(|n| n["name"] == "pkg")
        .count();
    assert_eq!(pkg_nodes, 1, "no second enrollment");
}
