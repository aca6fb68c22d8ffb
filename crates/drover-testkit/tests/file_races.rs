//! Path races against a real agent (issue 9, rows 2 and 15): symlinks planted under an allowed root never
//! lead a File resource's write or chmod outside it, and `list_processes` never shows the agent's token.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;

use drover_testkit::Fleet;
use serde_json::{Value, json};

/// The edge fleet and, outside its allowed root, a secret file the races aim at.
struct Races {
    fleet: Fleet,
    outside: tempfile::TempDir,
}

impl std::ops::Deref for Races {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

fn races() -> Races {
    let f = Races {
        fleet: Fleet::edge(&[]),
        outside: tempfile::tempdir().unwrap(),
    };
    std::fs::write(f.secret(), "precious").unwrap();
    std::fs::set_permissions(f.secret(), std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

impl Races {
    fn secret(&self) -> PathBuf {
        self.outside.path().join("secret")
    }

    fn assert_secret_untouched(&self) {
        assert_eq!(std::fs::read_to_string(self.secret()).unwrap(), "precious");
        let mode = std::fs::metadata(self.secret())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600, "the outside file was chmodded");
    }

    fn apply(&self, name: &str, resources: Value) {
        self.fleet
            .apply(json!({"name": name, "selector": {"role": "edge"}, "resources": resources}));
    }
}

fn failed(r: &Value) -> bool {
    !matches!(
        r["state"].as_str(),
        Some("Pending" | "Reconciling" | "Ready")
    )
}

#[test]
fn planted_symlinks_under_an_allowed_root_never_lead_a_write_outside() {
    let f = races();
    let root = f.files.path();

    // The old temp names were `.NAME.PID.N.tmp`: squat them all with links to the outside file.
    let pid = f.agent.pid().unwrap();
    for n in 0..300 {
        symlink(f.secret(), root.join(format!(".app.conf.{pid}.{n}.tmp"))).unwrap();
    }
    let app = root.join("app.conf");
    // A link as the file itself, and a link as a directory on the way.
    symlink(f.secret(), root.join("linked.conf")).unwrap();
    symlink(f.outside.path(), root.join("etc")).unwrap();
    f.apply(
        "race",
        json!([
            {"id": "app", "file": {"path": app, "content": "fine\n", "mode": "0666"}},
            {"id": "linked", "file": {"path": root.join("linked.conf"), "content": "evil\n", "mode": "0666"}},
            {"id": "via-dir", "file": {"path": root.join("etc/secret"), "content": "evil\n", "mode": "0666"}},
        ]),
    );
    f.wait_resource("app", "Ready", |r| r["state"] == "Ready");
    let linked = f.wait_resource("linked", "refused", failed);
    let via_dir = f.wait_resource("via-dir", "refused", failed);
    f.assert_secret_untouched();
    assert!(
        std::fs::symlink_metadata(&app).unwrap().is_file(),
        "written as a file of its own"
    );
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "fine\n");
    assert_eq!(
        std::fs::metadata(&app).unwrap().permissions().mode() & 0o7777,
        0o666
    );
    for r in [&linked, &via_dir] {
        let text = r.to_string();
        assert!(
            text.contains("outside") || text.contains("link"),
            "names the refusal: {text}"
        );
    }
    // The agent is still up and answering.
    let r = f
        .server
        .request(
            "POST",
            "/api/v1/nodes/edge/actions/ping",
            Some(&f.server.admin_token()),
            Some(b"null".to_vec()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn read_file_does_not_follow_a_link_and_list_processes_hides_the_token() {
    let f = races();
    let call = |action: &str, args: Value| {
        f.server
            .request(
                "POST",
                &format!("/api/v1/nodes/edge/actions/{action}"),
                Some(&f.server.admin_token()),
                Some(serde_json::to_vec(&args).unwrap()),
            )
            .unwrap()
    };
    symlink(f.secret(), f.files.path().join("peek")).unwrap();
    let r = call("read_file", json!({"path": f.files.path().join("peek")}));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(!r.body.to_string().contains("precious"));

    let r = call("list_processes", json!({"name": "drover-agent"}));
    assert_eq!(r.status, 200, "{r:?}");
    let list = r.body["result"].as_array().unwrap();
    let ours = list
        .iter()
        .find(|p| {
            p["cmd"]
                .to_string()
                .contains(f.agent.state_dir().to_str().unwrap())
        })
        .unwrap_or_else(|| panic!("the agent itself is listed: {list:?}"));
    let cmd: Vec<&str> = ours["cmd"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = cmd
        .iter()
        .position(|a| *a == "--token")
        .expect("--token is shown");
    assert_eq!(cmd[at + 1], "[redacted]");
    let secret = f.agent.arg("--token").unwrap().split('.').nth(2).unwrap();
    assert!(
        !r.body.to_string().contains(secret),
        "the join token's secret leaked"
    );
}
