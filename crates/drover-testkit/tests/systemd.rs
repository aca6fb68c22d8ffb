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
