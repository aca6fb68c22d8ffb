//! The node's policy is the last word, with a real server and real agents: task environments on exec-only
//! nodes (LD_PRELOAD), resource kinds a plain agent does not accept, container bind mounts, and the ledger
//! across a changed path. Each attack ends as a typed refusal naming the rule, and the agent stays up.

use std::path::Path;

use drover_testkit::{Fleet, Podman, TIMEOUT, wait_for};
use serde_json::{Value, json};

/// The edge fleet, with the policy tests' own checks.
struct Node {
    fleet: Fleet,
}

impl std::ops::Deref for Node {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

/// A server and one agent named `edge` (label role=edge) whose allowed root is a temp dir.
fn edge(extra: &[&str], env: &[(&str, &str)]) -> Node {
    Node {
        fleet: Fleet::edge_with_env(extra, env),
    }
}

impl Node {
    fn apply(&self, name: &str, resources: Vec<Value>) {
        self.fleet
            .apply(json!({"name": name, "selector": {"role": "edge"}, "resources": resources}));
    }

    fn wait_resource(&self, id: &str, state: &str) -> Value {
        wait_for(&format!("resource {id} {state}"), TIMEOUT, || {
            self.status()["resources"]
                .as_array()?
                .iter()
                .find(|r| r["id"] == id && r["state"] == state)
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

    /// Runs an exec task and returns its finished run.
    fn exec(&self, spec: Value) -> Value {
        let task = self
            .server
            .create_task(json!({"target": {"node": "edge"}, "spec": spec}))
            .unwrap();
        let id = task["id"].as_str().unwrap();
        self.server.wait_task_done(id).unwrap()["runs"][0].clone()
    }

    /// The agent is still up: connected, and it still converges a new file.
    fn still_up(&self) {
        self.server
            .wait_node("edge", "still connected", |n| n["connected"] == true)
            .unwrap();
        let probe = self.path("still-up");
        self.apply(
            "probe",
            vec![json!({"id": "probe", "file": {"path": probe, "content": "up"}})],
        );
        wait_for("the agent to still converge", TIMEOUT, || {
            Path::new(&probe).exists().then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", drover_testkit::tail(&self.agent.log(), 30)));
    }
}

fn refused(run: &Value, rule: &str, naming: &str) {
    assert_eq!(run["state"], "Refused", "{run}");
    let error = run["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("rule {rule}")), "{run}");
    assert!(error.contains(naming), "{run}");
}

#[test]
fn an_exec_only_node_refuses_loader_variables_and_unnamed_env() {
    let n = edge(
        &[
            "--allow-exec",
            "/usr/bin/env",
            "--allow-env",
            "GREETING",
            "--allow-env",
            "*",
        ],
        &[],
    );
    // The attack: a File manifest places a library under an allowed root, then a task runs an allowed
    // program with LD_PRELOAD pointing at it, which would run any code as the agent's user.
    let lib = n.path("evil.so");
    n.apply(
        "lib",
        vec![json!({"id": "lib", "file": {"path": lib, "content": "not really a library"}})],
    );
    n.wait_resource("lib", "Ready");
    let run = n.exec(json!({"kind": "exec", "argv": ["/usr/bin/env"], "env": {"LD_PRELOAD": lib}}));
    refused(&run, "allow-env", "LD_PRELOAD");
    // `*` never lets the loader's variables or PATH through; only naming them does.
    for name in ["LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "PATH"] {
        let run = n.exec(json!({"kind": "exec", "argv": ["/usr/bin/env"], "env": {name: "/tmp"}}));
        refused(&run, "allow-env", name);
    }
    // A name the node allows passes.
    let task = n
        .server
        .create_task(json!({"target": {"node": "edge"}, "spec": {"kind": "exec", "argv": ["/usr/bin/env"], "env": {"GREETING": "hello"}}}))
        .unwrap();
    let id = task["id"].as_str().unwrap();
    let run = n.server.wait_task_done(id).unwrap()["runs"][0].clone();
    assert_eq!(run["state"], "Succeeded", "{run}");
    let out: String = n
        .server
        .task_lines(id)
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert!(out.contains("GREETING=hello"), "{out}");
    assert!(!out.contains("LD_PRELOAD"), "{out}");
    n.still_up();
}

#[test]
fn an_exec_only_node_without_allow_env_passes_no_variables() {
    let n = edge(&["--allow-exec", "/bin/true"], &[]);
    let run = n.exec(json!({"kind": "exec", "argv": ["/bin/true"], "env": {"LANG": "C"}}));
    refused(&run, "allow-env", "LANG");
    let run = n.exec(json!({"kind": "exec", "argv": ["/bin/true"]}));
    assert_eq!(run["state"], "Succeeded", "{run}");
    // With --allow-shell, the environment is the task's own business.
    let shell = edge(&["--allow-shell"], &[]);
    let run = shell.exec(json!({"kind": "exec", "argv": ["/bin/true"], "env": {"LD_PRELOAD": ""}}));
    assert_eq!(run["state"], "Succeeded", "{run}");
    n.still_up();
}

#[test]
fn a_plain_agent_accepts_files_and_refuses_every_kind_that_runs_code() {
    let n = edge(&[], &[]);
    let marker = n.path("job-ran");
    n.apply(
        "mixed",
        vec![
            json!({"id": "motd", "file": {"path": n.path("motd"), "content": "hi"}}),
            json!({"id": "unit", "systemd_unit": {"name": "drover-evil.service", "content": "[Service]\nExecStart=/bin/sh -c 'id > /tmp/pwned'\n", "active": true}}),
            json!({"id": "job", "shell_job": {"command": format!("touch {marker}"), "creates": marker}}),
            json!({"id": "ctr", "container": {"image": "busybox", "pull": "never"}}),
        ],
    );
    n.wait_resource("motd", "Ready");
    for (id, kind) in [
        ("unit", "systemd_unit"),
        ("job", "shell_job"),
        ("ctr", "container"),
    ] {
        let r = n.wait_resource(id, "Refused");
        assert_eq!(r["details"]["rule"], "allow-kind", "{r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(&format!("--allow-kind {kind}")), "{r}");
        assert!(r["retry_at"].is_null(), "a refusal is not retried: {r}");
    }
    assert!(!Path::new(&marker).exists());
    let status = n.status();
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Degraded"
                && c["status"] == true
                && c["message"].as_str().unwrap().contains("unit")),
        "{status}"
    );
    // The CLI shows it.
    let out = n.server.cli(&["status", "edge"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Refused"), "{table}");
    assert!(
        n.server
            .cli(&["delete", "manifest", "mixed"])
            .unwrap()
            .status
            .success()
    );
    // `apply --wait` does not wait for what the node refuses: it ends at once, failed, naming it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unit.yaml");
    std::fs::write(
        &file,
        "name: units\nselector: {role: edge}\nresources:\n  - id: u2\n    systemd_unit: {name: other.service, content: \"[Service]\\nExecStart=/bin/true\\n\"}\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = n
        .server
        .cli(&[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "2m",
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Refused") && stderr.contains("u2"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{stderr}"
    );
    // Container tasks reach the engine: refused too.
    let run = n.exec(json!({"kind": "container", "op": "list"}));
    refused(&run, "allow-kind", "--allow-kind container");
    n.still_up();
}

#[test]
fn shell_jobs_need_both_the_kind_and_shell() {
    let n = edge(&["--allow-kind", "shell_job"], &[]);
    let marker = n.path("job-ran");
    n.apply(
        "jobs",
        vec![json!({"id": "job", "shell_job": {"command": format!("touch {marker}"), "creates": marker}})],
    );
    let r = n.wait_resource("job", "Refused");
    assert_eq!(r["details"]["rule"], "allow-shell", "{r}");
    assert!(!Path::new(&marker).exists());
    n.still_up();
}

#[test]
fn container_bind_mounts_must_lie_under_the_allowed_mount_roots() {
    let podman = Podman::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_root = data.path().to_str().unwrap().to_string();
    let n = edge(
        &["--allow-kind", "container", "--allow-mount", &data_root],
        &[("DOCKER_HOST", &podman.docker_host())],
    );
    let pid = std::process::id();
    let (host_id, ok_id) = (format!("host{pid}"), format!("data{pid}"));
    let run = json!(["sh", "-c", "while true; do sleep 1; done"]);
    n.apply(
        "c",
        vec![
            json!({"id": host_id, "container": {"image": drover_testkit::BUSYBOX, "pull": "never", "command": run, "volumes": ["/:/host"]}}),
            json!({"id": ok_id, "container": {"image": drover_testkit::BUSYBOX, "pull": "never", "command": run, "volumes": [format!("{data_root}:/data:ro")]}}),
        ],
    );
    let r = n.wait_resource(&host_id, "Refused");
    assert_eq!(r["details"]["rule"], "allow-mount", "{r}");
    assert!(r["error"].as_str().unwrap().contains("/:/host"), "{r}");
    // The engine never saw it.
    assert_eq!(podman.state(&format!("drover-{host_id}")), None);
    // A mount under the allowed root runs.
    n.wait_resource(&ok_id, "Ready");
    assert_eq!(
        podman.state(&format!("drover-{ok_id}")).as_deref(),
        Some("running")
    );
    n.apply("c", vec![]);
    wait_for("the container to be removed", TIMEOUT, || {
        podman
            .state(&format!("drover-{ok_id}"))
            .is_none()
            .then_some(())
    })
    .unwrap();
    n.still_up();
}

#[test]
fn a_changed_path_keeps_the_file_that_was_there_and_removes_drovers_own() {
    let n = edge(&[], &[]);
    // Drover creates its own file.
    let own = n.path("own.conf");
    n.apply(
        "conf",
        vec![json!({"id": "conf", "file": {"path": own, "content": "managed\n"}})],
    );
    wait_for("drover's own file", TIMEOUT, || {
        Path::new(&own).exists().then_some(())
    })
    .unwrap();
    // The path changes onto a file the node had before drover: the old one, drover's, is deleted; the
    // new one is taken over, not counted as created.
    let before = n.path("preexisting.conf");
    std::fs::write(&before, "the operator's\n").unwrap();
    n.apply(
        "conf",
        vec![json!({"id": "conf", "file": {"path": before, "content": "managed\n"}})],
    );
    wait_for("the move onto the existing file", TIMEOUT, || {
        (std::fs::read_to_string(&before).ok()? == "managed\n" && !Path::new(&own).exists())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", drover_testkit::tail(&n.agent.log(), 30)));
    n.wait_resource("conf", "Ready");
    // Deleting the manifest never removes the file that existed before drover.
    assert!(
        n.server
            .cli(&["delete", "manifest", "conf"])
            .unwrap()
            .status
            .success()
    );
    wait_for("the resource to be forgotten", TIMEOUT, || {
        n.status()["resources"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["id"] != "conf"))
            .then_some(())
    })
    .unwrap();
    n.still_up();
    assert!(
        Path::new(&before).exists(),
        "a file that existed before drover is never deleted"
    );
    // The other way: from the taken-over file to a new one drover creates; the delete removes only that.
    let new = n.path("new.conf");
    n.apply(
        "back",
        vec![json!({"id": "back", "file": {"path": before, "content": "x"}})],
    );
    n.wait_resource("back", "Ready");
    n.apply(
        "back",
        vec![json!({"id": "back", "file": {"path": new, "content": "x"}})],
    );
    wait_for("the new file", TIMEOUT, || {
        Path::new(&new).exists().then_some(())
    })
    .unwrap();
    n.wait_resource("back", "Ready");
    assert!(Path::new(&before).exists());
    assert!(
        n.server
            .cli(&["delete", "manifest", "back"])
            .unwrap()
            .status
            .success()
    );
    wait_for("drover's own file to be collected", TIMEOUT, || {
        (!Path::new(&new).exists()).then_some(())
    })
    .unwrap();
    assert!(Path::new(&before).exists());
}
