//! Signed manifests and commands, with a real server (built with the test-only `tamper` feature, which
//! lets it lie to its agents), the real CLI and a real agent that pins two keys (rotation). Each lie (altered
//! resources or payload, a stripped or forged signature, an older version, a replayed, expired or altered
//! task) ends as a refusal naming its rule, and the node is left as it was.

use std::path::{Path, PathBuf};

use drover_testkit::{Fleet, Server, TIMEOUT, wait_for};
use drover_types::signing::{CommandSignature, SecretKey};
use serde_json::{Value, json};

/// The edge fleet whose agent pins the keys `a` and `b` (rotation), and the keys.
struct Signed {
    fleet: Fleet,
    keys: tempfile::TempDir,
    /// Public keys of `a` and `b` (pinned) and `x` (not).
    public: std::collections::BTreeMap<&'static str, String>,
}

impl std::ops::Deref for Signed {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

fn keys_create(server: &Server, dir: &Path) -> String {
    let out = server
        .cli(&["keys", "create", "--out", dir.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(line.starts_with("ed25519:"), "{line}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("manifest.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    line
}

fn signed() -> Signed {
    let server = Server::start().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut public = std::collections::BTreeMap::new();
    for k in ["a", "b", "x"] {
        public.insert(k, keys_create(&server, &keys.path().join(k)));
    }
    let args = [
        "--allow-exec",
        "touch",
        "--manifest-key",
        &public["a"],
        "--manifest-key",
        &public["b"],
    ];
    let fleet = Fleet::new(server, |server, root| {
        server.start_edge_agent(root, &args).unwrap().0
    });
    Signed {
        fleet,
        keys,
        public,
    }
}

impl Signed {
    fn path(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    fn key(&self, k: &str) -> PathBuf {
        self.keys.path().join(k).join("manifest.key")
    }

    fn token(&self) -> String {
        self.server.admin_token()
    }

    /// Writes the manifest `web` (one file resource) as YAML and applies it with the CLI, signed with `key`.
    fn apply_signed(&self, version: u64, content: &str, key: &str) -> std::process::Output {
        self.apply_signed_with(version, content, key, "")
    }

    /// [`Self::apply_signed`] with more top-level YAML (a `rollout:` policy).
    fn apply_signed_with(
        &self,
        version: u64,
        content: &str,
        key: &str,
        more: &str,
    ) -> std::process::Output {
        let yaml = format!(
            "name: web\nversion: {version}\nselector:\n  role: edge\n{more}resources:\n  - id: motd\n    file:\n      path: {}\n      content: \"{content}\"\n",
            self.path("motd").display()
        );
        let file = self.files.path().join(format!("web-{version}-{key}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        self.server
            .cli(&[
                "apply",
                "-f",
                file.to_str().unwrap(),
                "--sign-key",
                self.key(key).to_str().unwrap(),
            ])
            .unwrap()
    }

    /// Waits for resource `id` to be in `state` (and, for Refused, by `rule`).
    fn wait_resource(&self, id: &str, state: &str, rule: Option<&str>) -> Value {
        wait_for(&format!("resource {id} {state} {rule:?}"), TIMEOUT, || {
            self.status()["resources"]
                .as_array()?
                .iter()
                .find(|r| {
                    r["id"] == id
                        && r["state"] == state
                        && rule.is_none_or(|rule| r["details"]["rule"] == rule)
                })
                .cloned()
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nstatus: {}\nagent log:\n{}",
                self.status(),
                drover_testkit::tail(&self.agent.log(), 30)
            )
        })
    }

    fn tamper(&self, mode: &str) {
        let r = self
            .server
            .post(
                "/api/v1/tamper/desired",
                Some(&self.token()),
                &json!({"mode": mode}),
            )
            .unwrap();
        assert_eq!(r.status, 204, "{r:?}");
    }

    fn motd(&self) -> String {
        std::fs::read_to_string(self.path("motd")).unwrap_or_default()
    }

    fn create_task(&self, request: Value) -> Value {
        let task = self.server.create_task(request).unwrap();
        let id = task["id"].as_str().unwrap().to_string();
        self.server.wait_task_done(&id).unwrap()
    }
}

fn refused(run: &Value, rule: &str) {
    assert_eq!(run["state"], "Refused", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("rule {rule}")), "{run}");
}

#[test]
fn a_pinned_node_applies_only_signed_manifests_and_refuses_every_tampering() {
    let f = signed();
    // Unsigned through REST: refused, nothing written.
    let plain = f.path("plain");
    let r = f
        .server
        .post(
            "/api/v1/manifests",
            Some(&f.token()),
            &json!({"name": "plain", "selector": {"role": "edge"}, "resources": [{"id": "plain", "file": {"path": plain, "content": "x"}}]}),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let status = f.wait_resource("plain", "Refused", Some("unsigned"));
    assert!(
        status["error"].as_str().unwrap().contains("--manifest-key"),
        "{status}"
    );
    assert!(!plain.exists());

    // Signed with a pinned key: applied.
    let out = f.apply_signed(1, "one", "a");
    assert!(out.status.success(), "{out:?}");
    f.wait_resource("motd", "Ready", None);
    assert_eq!(f.motd(), "one");
    let v1 = f.server.get("/api/v1/manifests/web").unwrap().body;
    assert_eq!(v1["signature"]["key"], f.public["a"].as_str(), "{v1}");

    // The server lies: each lie is refused by its rule and the file keeps what was signed.
    for (mode, rule) in [
        ("alter", "bad signature"),
        ("alter_payload", "bad signature"),
        ("strip", "unsigned"),
        ("forge", "bad signature"),
    ] {
        f.tamper(mode);
        f.wait_resource("motd", "Refused", Some(rule));
        assert_eq!(f.motd(), "one", "{mode}");
    }
    f.tamper("off");
    f.wait_resource("motd", "Ready", None);

    // A signature by a key the node does not pin.
    let out = f.apply_signed(2, "by x", "x");
    assert!(out.status.success(), "{out:?}");
    let status = f.wait_resource("motd", "Refused", Some("bad signature"));
    assert!(
        status["error"].as_str().unwrap().contains("does not pin"),
        "{status}"
    );
    assert_eq!(f.motd(), "one");

    // Rotation: the second pinned key works too.
    let out = f.apply_signed(3, "three", "b");
    assert!(out.status.success(), "{out:?}");
    f.wait_resource("motd", "Ready", None);
    assert_eq!(f.motd(), "three");

    // The server refuses a lower version itself...
    let out = f.apply_signed(1, "one", "a");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version"),
        "{out:?}"
    );
    // ...and a server that stores it anyway finds the node refusing it: no replay of what was replaced.
    let mut old = v1.clone();
    let sig = old["signature"].clone();
    for k in ["generation", "updated_at"] {
        old.as_object_mut().unwrap().remove(k);
    }
    old["signature"] = sig;
    let r = f
        .server
        .post("/api/v1/tamper/manifest", Some(&f.token()), &old)
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    f.wait_resource("motd", "Refused", Some("older version"));
    assert_eq!(f.motd(), "three");
    // Even after the agent restarts (the versions it saw are on disk).
    let mut f = f;
    f.fleet.agent.restart(None).unwrap();
    f.server
        .wait_node("edge", "reconnected", |n| n["connected"] == true)
        .unwrap();
    f.wait_resource("motd", "Refused", Some("older version"));
    assert_eq!(f.motd(), "three");
}

#[test]
fn signing_again_with_another_key_keeps_the_generation_and_keys_lists_the_signer() {
    let f = signed();
    assert!(f.apply_signed(1, "one", "a").status.success());
    let first = f.server.get("/api/v1/manifests/web").unwrap().body;
    assert!(f.apply_signed(1, "one", "b").status.success());
    let again = f.server.get("/api/v1/manifests/web").unwrap().body;
    assert_eq!(again["generation"], first["generation"], "{again}");
    assert_eq!(again["signature"]["key"], f.public["b"].as_str());
    f.wait_resource("motd", "Ready", None);
    let out = f.server.cli(&["keys"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("web"), "{out:?}");
    assert!(text.contains(f.public["b"].as_str()), "{text}");
    // New content under the same signed version is refused by the server.
    let out = f.apply_signed(1, "changed", "a");
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn a_pinned_node_runs_only_signed_commands_once_within_their_window() {
    let f = signed();
    let done = f.path("signed");
    // A signed exec runs.
    let out = f
        .server
        .cli(&[
            "exec",
            "edge",
            "--sign-key",
            f.key("a").to_str().unwrap(),
            "--",
            "touch",
            done.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(done.exists());
    let tasks = f.server.get("/api/v1/tasks").unwrap().body;
    let signed_id = tasks[0]["id"].as_str().unwrap().to_string();

    // Unsigned: refused, not run.
    let unsigned = f.path("unsigned");
    let task = f.create_task(
        json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "argv": ["touch", unsigned]}}),
    );
    refused(&task["runs"][0], "unsigned");
    assert!(!unsigned.exists());

    // Replayed by the server under a new id: refused, not run again.
    std::fs::remove_file(&done).unwrap();
    let r = f
        .server
        .post(
            &format!("/api/v1/tamper/replay/{signed_id}"),
            Some(&f.token()),
            &json!({}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let replay = f
        .server
        .wait_task_done(r.body["id"].as_str().unwrap())
        .unwrap();
    refused(&replay["runs"][0], "replayed");
    assert!(!done.exists());

    // Expired, and altered after signing: refused, not run.
    let key = SecretKey::parse(&std::fs::read_to_string(f.key("a")).unwrap()).unwrap();
    let spec = |path: &PathBuf| json!({"kind": "exec", "argv": ["touch", path]});
    let sign = |spec: &Value, at: i64, nonce: &str| {
        let typed: drover_types::task::TaskSpec = serde_json::from_value(spec.clone()).unwrap();
        CommandSignature::sign(
            &key,
            &typed.signed_command(),
            Some("edge".into()),
            at,
            300,
            nonce.into(),
        )
        .unwrap()
    };
    let now = chrono::Utc::now().timestamp();
    let expired = f.path("expired");
    let task = f.create_task(json!({"target": {"node": "edge"}, "spec": spec(&expired),
        "signature": sign(&spec(&expired), now - 3600, "0123456789abcdef")}));
    refused(&task["runs"][0], "expired");
    assert!(!expired.exists());
    let (meant, altered) = (f.path("meant"), f.path("altered"));
    let task = f.create_task(json!({"target": {"node": "edge"}, "spec": spec(&altered),
        "signature": sign(&spec(&meant), now, "fedcba9876543210")}));
    refused(&task["runs"][0], "bad signature");
    assert!(!altered.exists() && !meant.exists());

    // Read-only actions stay open; one that changes the node needs a signature.
    let ping = f
        .server
        .post(
            "/api/v1/nodes/edge/actions/ping",
            Some(&f.token()),
            &json!({}),
        )
        .unwrap();
    assert_eq!(ping.status, 200, "{ping:?}");
    let pid_file = f.path("pid");
    let sleep = f
        .server
        .post(
            "/api/v1/nodes/edge/actions/test_sleep",
            Some(&f.token()),
            &json!({"seconds": 0, "pid_file": pid_file}),
        )
        .unwrap();
    assert_ne!(sleep.status, 200, "{sleep:?}");
    assert!(
        sleep.body.to_string().contains("rule unsigned"),
        "{sleep:?}"
    );
    assert!(!pid_file.exists());
    // Signed by the operator's key (`drover action --sign-key`): it runs.
    let args = json!({"seconds": 0, "pid_file": pid_file}).to_string();
    let key_path = f.key("a");
    let out = f
        .server
        .cli(&[
            "action",
            "edge",
            "test_sleep",
            &args,
            "--sign-key",
            key_path.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(pid_file.exists(), "the signed action ran");
    // The same call signed for another node is refused.
    std::fs::remove_file(&pid_file).unwrap();
    let key = SecretKey::parse(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let elsewhere = CommandSignature::sign(
        &key,
        &json!({"action": "test_sleep", "args": {"seconds": 0, "pid_file": pid_file}}),
        Some("another-node".into()),
        chrono::Utc::now().timestamp(),
        300,
        "00112233445566778899aabbccddeeff".into(),
    )
    .unwrap();
    let query = serde_json::to_string(&elsewhere).unwrap();
    let encoded = drover_types::url::percent_encode(&query);
    let r = f
        .server
        .post(
            &format!("/api/v1/nodes/edge/actions/test_sleep?signature={encoded}"),
            Some(&f.token()),
            &json!({"seconds": 0, "pid_file": pid_file}),
        )
        .unwrap();
    assert_ne!(r.status, 200, "{r:?}");
    assert!(!pid_file.exists());
    f.server
        .wait_node("edge", "still connected", |n| n["connected"] == true)
        .unwrap();
}

#[test]
fn a_pinned_node_takes_back_the_signed_version_it_held_just_before_when_a_rollout_reverts() {
    let node = signed();
    let rollout = |health: &str| {
        format!(
            "rollout:\n  waves: [{{percent: 100}}]\n  bake: 1s\n  on_failure: revert_wave\n{health}"
        )
    };
    let out = node.apply_signed_with(1, "one", "a", &rollout(""));
    assert!(out.status.success(), "{out:?}");
    node.wait_resource("motd", "Ready", None);
    wait_for("v1 in place", TIMEOUT, || {
        (node.motd() == "one").then_some(())
    })
    .unwrap();
    // Version 2's signed health check fails (nothing listens there): its wave is reverted, and the
    // pinned node takes signed version 1 back although it is older.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failing = format!("  health:\n    - tcp: {{address: \"{closed}\"}}\n");
    let out = node.apply_signed_with(2, "two", "a", &rollout(&failing));
    assert!(out.status.success(), "{out:?}");
    wait_for("the rollout reverted", TIMEOUT, || {
        let r = node.server.get("/api/v1/rollouts/web").ok()?.body;
        (r["state"] == "Reverted").then_some(())
    })
    .unwrap();
    wait_for("v1 back", TIMEOUT, || (node.motd() == "one").then_some(())).unwrap_or_else(|e| {
        panic!(
            "{e}\nstatus: {}\nrollout: {}\nagent log:\n{}",
            node.status(),
            node.server.get("/api/v1/rollouts/web").unwrap().body,
            drover_testkit::tail(&node.agent.log(), 30)
        )
    });
    let back = node.wait_resource("motd", "Ready", None);
    assert!(back["error"].is_null(), "{back}");
    // Anything older than the version just before stays refused, rollout or not.
    let out = node.apply_signed_with(3, "three", "a", &rollout(""));
    assert!(out.status.success(), "{out:?}");
    wait_for("v3 in place", TIMEOUT, || {
        (node.motd() == "three").then_some(())
    })
    .unwrap();
    let undo = node.server.cli(&["rollout", "undo", "web"]).unwrap();
    assert!(!undo.status.success(), "{undo:?}");
    assert!(
        String::from_utf8_lossy(&undo.stderr).contains("newly signed, higher version"),
        "{undo:?}"
    );
}
