//! Desired state with real agents: files, shell jobs and containers (real Podman) converge; updates, drift,
//! garbage collection, conflicts, labels, validation, backoff, agent restarts and offline enforcement.

use std::path::Path;
use std::time::Duration;

use drover_testkit::{
    Agent, Fleet, Podman, Server, TIMEOUT, converged, get_text, next_event, parse_exposition,
    sample, wait_for,
};
use serde_json::{Value, json};

/// `drover apply --wait` of a manifest `name` (selecting the edge node) with one File resource, also
/// `name`, whose content is the local file `source` holding `data`; the node then has that content.
fn apply_source(f: &Fleet, name: &str, source: &str, data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(source), data).unwrap();
    let manifest = dir.path().join("m.yaml");
    let target = f.path(source);
    std::fs::write(&manifest, format!("name: {name}\nselector: {{role: edge}}\nresources:\n  - id: {name}\n    file: {{path: {target}, source: {source}}}\n")).unwrap();
    let manifest = manifest.to_str().unwrap();
    let out = f
        .server
        .cli(&["apply", "-f", manifest, "--wait", "--timeout", "60s"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&target).unwrap(), data);
}

fn file_manifest(name: &str, resources: Vec<Value>) -> Value {
    json!({"name": name, "selector": {"role": "edge"}, "resources": resources})
}

#[test]
fn files_converge_update_correct_drift_and_are_collected() {
    let f = Fleet::edge(&[]);
    let motd = f.path("motd");
    f.apply(file_manifest(
        "base",
        vec![json!({"id": "motd", "file": {"path": motd, "content": "hello\n", "mode": "0640"}})],
    ));
    let r = f.wait_resource("motd", "Ready", |r| r["state"] == "Ready");
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&motd).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(r["details"]["sha256"].as_str().unwrap().len(), 64);
    let converged = f.wait_converged();
    assert!(
        converged["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == true)
    );

    // An update ships as a new generation.
    let before = f.status()["desired_generation"].as_u64().unwrap();
    let applied = f.apply(file_manifest("base", vec![json!({"id": "motd", "file": {"path": motd, "content": "hello again\n", "mode": "0640"}})]));
    assert_eq!(applied["generation"], 2);
    wait_for("the new content", TIMEOUT, || {
        (std::fs::read_to_string(&motd).ok()? == "hello again\n").then_some(())
    })
    .unwrap();
    assert!(f.wait_converged()["desired_generation"].as_u64().unwrap() > before);
    // Applying the same content again changes nothing.
    assert_eq!(f.apply(file_manifest("base", vec![json!({"id": "motd", "file": {"path": motd, "content": "hello again\n", "mode": "0640"}})]))["changed"], false);

    // Someone edits the file: the drift is corrected and reported.
    std::fs::write(&motd, "tampered\n").unwrap();
    f.wait_resource("motd", "to report drift", |r| {
        r["drift"].as_array().is_some_and(|d| !d.is_empty())
    });
    assert_eq!(std::fs::read_to_string(&motd).unwrap(), "hello again\n");

    // A resource the manifest no longer names is removed; a file the agent did not create is left alone.
    let preexisting = f.path("preexisting");
    std::fs::write(&preexisting, "mine\n").unwrap();
    f.apply(file_manifest("base", vec![
        json!({"id": "motd", "file": {"path": motd, "content": "hello again\n", "mode": "0640"}}),
        json!({"id": "pre", "file": {"path": preexisting, "content": "managed\n"}}),
    ]));
    f.wait_resource("pre", "Ready", |r| r["state"] == "Ready");
    assert_eq!(std::fs::read_to_string(&preexisting).unwrap(), "managed\n");
    f.apply(file_manifest("base", vec![]));
    wait_for("motd to be collected", TIMEOUT, || {
        (!Path::new(&motd).exists()).then_some(())
    })
    .unwrap();
    assert!(
        Path::new(&preexisting).exists(),
        "the agent never deletes what it did not create"
    );

    // Deleting the manifest through the CLI.
    f.apply(file_manifest(
        "other",
        vec![json!({"id": "x", "file": {"path": f.path("x"), "content": "x"}})],
    ));
    wait_for("x", TIMEOUT, || {
        Path::new(&f.path("x")).exists().then_some(())
    })
    .unwrap();
    assert!(
        f.server
            .cli(&["delete", "manifest", "other"])
            .unwrap()
            .status
            .success()
    );
    wait_for("x to be collected", TIMEOUT, || {
        (!Path::new(&f.path("x")).exists()).then_some(())
    })
    .unwrap();
}

#[test]
fn policy_conflicts_backoff_and_shell_jobs() {
    let f = Fleet::edge(&[]);
    // Outside the allowed roots: that resource fails, the others still converge.
    f.apply(file_manifest("m", vec![
        json!({"id": "outside", "file": {"path": "/etc/drover-never", "content": "x"}}),
        json!({"id": "inside", "file": {"path": f.path("inside"), "content": "ok"}}),
        json!({"id": "job", "shell_job": {"command": format!("echo run >> {}", f.path("job.log")), "unless": "false"}}),
    ]));
    f.wait_resource("inside", "Ready", |r| r["state"] == "Ready");
    // The node's policy refuses, naming the rule: final, not retried with backoff.
    let outside = f.wait_resource("outside", "Refused", |r| r["state"] == "Refused");
    assert!(
        outside["error"]
            .as_str()
            .unwrap()
            .contains("outside this node's allowed roots")
    );
    assert_eq!(outside["details"]["rule"], "allow-path", "{outside}");
    assert!(outside["retry_at"].is_null(), "{outside}");
    assert!(!Path::new("/etc/drover-never").exists());
    let job = f.wait_resource("job", "Refused", |r| r["state"] == "Refused");
    assert_eq!(job["details"]["rule"], "allow-kind", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("--allow-kind shell_job")
    );
    assert!(!Path::new(&f.path("job.log")).exists());
    let status = f.status();
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Degraded" && c["status"] == true)
    );

    // Two manifests giving one id: reported as a conflict, neither applied. (Both start selecting the node
    // at once, when it gets the label.)
    let shared = f.path("shared");
    f.apply(json!({"name": "a", "selector": {"conf": "yes"}, "resources": [{"id": "shared", "file": {"path": shared, "content": "a"}}]}));
    f.apply(json!({"name": "b", "selector": {"conf": "yes"}, "resources": [{"id": "shared", "file": {"path": shared, "content": "b"}}]}));
    assert!(
        f.server
            .cli(&["nodes", "label", "edge", "conf=yes"])
            .unwrap()
            .status
            .success()
    );
    let c = f.wait_resource("shared", "in conflict", |r| r["state"] == "Conflict");
    assert!(c["error"].as_str().unwrap().contains("a, b"), "{c}");
    assert!(!Path::new(&shared).exists());
}

#[test]
fn shell_jobs_run_once_with_their_guard() {
    let f = Fleet::edge(&["--allow-shell", "--allow-kind", "shell_job"]);
    let marker = f.path("done");
    let log = f.path("runs");
    f.apply(file_manifest("jobs", vec![json!({"id": "init", "shell_job": {"command": format!("echo run >> {log}; touch {marker}"), "creates": marker}})]));
    f.wait_resource("init", "Ready", |r| r["state"] == "Ready");
    // Deliberate: several 500 ms resyncs pass, and the guard must keep the job from running again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "run\n");
}

#[test]
fn labels_decide_what_a_node_runs() {
    let f = Fleet::edge(&[]);
    let path = f.path("gpu.conf");
    f.apply(json!({"name": "gpu", "selector": {"gpu": "yes"}, "resources": [{"id": "gpu", "file": {"path": path, "content": "on"}}]}));
    // Deliberate: a window in which the unlabelled node must not get the file.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!Path::new(&path).exists());
    let out = f
        .server
        .cli(&["nodes", "label", "edge", "gpu=yes"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for("the labelled node to get the file", TIMEOUT, || {
        Path::new(&path).exists().then_some(())
    })
    .unwrap();
    assert!(
        f.server
            .cli(&["nodes", "label", "edge", "gpu-"])
            .unwrap()
            .status
            .success()
    );
    wait_for("the file to go with the label", TIMEOUT, || {
        (!Path::new(&path).exists()).then_some(())
    })
    .unwrap();
}

#[test]
fn the_agent_enforces_while_offline_and_keeps_ownership_across_restarts() {
    let mut f = Fleet::edge(&[]);
    let path = f.path("kept");
    f.apply(file_manifest(
        "keep",
        vec![json!({"id": "kept", "file": {"path": path, "content": "v1"}})],
    ));
    f.wait_converged();

    // The server goes away; the agent still corrects drift.
    f.server.kill();
    std::fs::write(&path, "tampered").unwrap();
    wait_for("offline correction", TIMEOUT, || {
        (std::fs::read_to_string(&path).ok()? == "v1").then_some(())
    })
    .unwrap();
    f.server.restart().unwrap();
    f.wait_resource("kept", "reporting the drift it fixed offline", |r| {
        r["drift"].as_array().is_some_and(|d| !d.is_empty())
    });

    // The agent restarts: it still owns the file, so deleting the manifest removes it.
    f.agent
        .restart(Some(&[
            "--heartbeat-interval",
            "300ms",
            "--allow-path",
            f.files.path().to_str().unwrap(),
            "--resync-interval",
            "500ms",
        ]))
        .unwrap();
    f.server
        .wait_node("edge", "connected", |n| n["connected"] == true)
        .unwrap();
    assert!(
        f.server
            .cli(&["delete", "manifest", "keep"])
            .unwrap()
            .status
            .success()
    );
    wait_for("collection after the restart", TIMEOUT, || {
        (!Path::new(&path).exists()).then_some(())
    })
    .unwrap();
}

#[test]
fn invalid_manifests_are_refused_with_document_resource_and_field() {
    let f = Fleet::edge(&[]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (
            "relative.yaml",
            "name: web\nresources:\n  - id: motd\n    file: {path: etc/motd, content: x}\n",
            "resource \"motd\": field `file.path`",
        ),
        (
            "mode.yaml",
            "name: web\nresources:\n  - id: motd\n    file: {path: /x, content: x, mode: \"999\"}\n",
            "field `file.mode`",
        ),
        (
            "dup.yaml",
            "name: web\nresources:\n  - id: a\n    file: {path: /a, content: x}\n  - id: a\n    file: {path: /b, content: x}\n",
            "duplicate id",
        ),
        (
            "kind.yaml",
            "name: web\nresources:\n  - id: a\n    volume: {size: 1}\n",
            "unknown field `volume`",
        ),
        (
            "nokind.yaml",
            "name: web\nresources:\n  - id: a\n",
            "exactly one kind",
        ),
        (
            "guard.yaml",
            "name: web\nresources:\n  - id: a\n    shell_job: {command: \"echo hi\"}\n",
            "give a guard",
        ),
        ("yaml.yaml", "name: [unclosed\n", "not valid YAML"),
    ];
    for (file, text, expect) in cases {
        let out = f.server.cli(&["apply", "-f", &write(file, text)]).unwrap();
        assert!(!out.status.success(), "{file} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{file}: {stderr}");
    }
    let list: Value =
        serde_json::from_slice(&f.server.cli(&["manifests", "-o", "json"]).unwrap().stdout)
            .unwrap();
    assert_eq!(list, json!([]));

    // A valid file, through the CLI, with --wait.
    let good = write(
        "good.yaml",
        &format!(
            "name: web\nselector: {{role: edge}}\nresources:\n  - id: motd\n    file: {{path: {}, content: \"hi\\n\"}}\n",
            f.path("motd")
        ),
    );
    let out = f
        .server
        .cli(&["apply", "-f", &good, "--wait", "--timeout", "30s"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(f.path("motd")).unwrap(), "hi\n");
    let table = String::from_utf8_lossy(&f.server.cli(&["status"]).unwrap().stdout).to_string();
    assert!(table.contains("edge") && table.contains("1/1"), "{table}");
    let table =
        String::from_utf8_lossy(&f.server.cli(&["status", "edge"]).unwrap().stdout).to_string();
    assert!(table.contains("motd") && table.contains("Ready"), "{table}");
}

#[test]
fn an_envelope_manifest_applies_like_a_flat_one() {
    let f = Fleet::edge(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("motd.txt"), "from a source\n").unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // The kubectl-style form, with a local source the CLI uploads from under `spec`.
    let envelope = write(
        "web.yaml",
        format!(
            "apiVersion: drover/v1\nkind: Manifest\nmetadata:\n  name: web\nspec:\n  selector: {{role: edge}}\n  resources:\n    - id: motd\n      file: {{path: {}, source: motd.txt}}\n",
            f.path("motd")
        ),
    );
    let out = f
        .server
        .cli(&["apply", "-f", &envelope, "--wait", "--timeout", "30s"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(f.path("motd")).unwrap(),
        "from a source\n"
    );
    let stored = f.server.get("/api/v1/manifests/web").unwrap().body;
    assert_eq!(stored["selector"]["role"], "edge", "{stored}");

    // An unknown apiVersion or kind is refused naming the field; a problem inside is named under spec.
    let cases = [
        (
            "v2.yaml",
            "apiVersion: drover/v2\nkind: Manifest\nmetadata: {name: x}\nspec: {resources: []}\n",
            "field `apiVersion`: unknown apiVersion \"drover/v2\"",
        ),
        (
            "kind.yaml",
            "apiVersion: drover/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {resources: []}\n",
            "field `kind`: unknown kind \"Deployment\"",
        ),
        (
            "id.yaml",
            "apiVersion: drover/v1\nkind: Manifest\nmetadata: {name: x}\nspec:\n  resources:\n    - id: \"bad id\"\n      file: {path: /x, content: x}\n",
            "field `spec.resources[0].id`",
        ),
    ];
    for (file, text, expect) in cases {
        let out = f
            .server
            .cli(&["apply", "-f", &write(file, text.to_string())])
            .unwrap();
        assert!(!out.status.success(), "{file} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{file}: {stderr}");
    }
    // The REST API takes the envelope as JSON too.
    let r = f.server.post(
        "/api/v1/manifests",
        Some(&f.server.admin_token()),
        &json!({"apiVersion": "drover/v1", "kind": "Manifest", "metadata": {"name": "web"},
                "spec": {"selector": {"role": "edge"}, "resources": [{"id": "motd", "file": {"path": f.path("motd"), "content": "json\n"}}]}}),
    ).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["generation"], 2, "{r:?}");
    let r = f.server.post(
        "/api/v1/manifests",
        Some(&f.server.admin_token()),
        &json!({"apiVersion": "drover/v1", "kind": "Manifest", "metadata": {"name": "web"},
                "spec": {"resources": [{"id": "motd", "file": {"path": "relative", "content": "x"}}]}}),
    ).unwrap();
    // A resource's fields are named within the resource, which the error names.
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("file.path")),
        "{r:?}"
    );
    for (spec, field) in [
        (json!({"resources": [], "name": "x"}), "spec.name"),
        (json!({"resources": "none"}), "spec.resources"),
        (json!({}), "spec.resources"),
    ] {
        let r = f
            .server
            .post(
                "/api/v1/manifests",
                Some(&f.server.admin_token()),
                &json!({"apiVersion": "drover/v1", "kind": "Manifest", "metadata": {"name": "web"}, "spec": spec}),
            )
            .unwrap();
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (400, Some(field)),
            "{r:?}"
        );
    }
    let r = f
        .server
        .post(
            "/api/v1/manifests",
            Some(&f.server.admin_token()),
            &json!({"apiVersion": "drover/v1", "kind": "Manifest", "metadata": {"name": "bad name"}, "spec": {"resources": []}}),
        )
        .unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("metadata.name")),
        "{r:?}"
    );
}

#[test]
fn containers_converge_and_drift_is_corrected_through_a_real_engine() {
    let podman = Podman::start().unwrap();
    let server = Server::start().unwrap();
    let token = server
        .join_token(json!({"labels": {"role": "edge"}}))
        .unwrap();
    let args = [
        "--name",
        "edge",
        "--server",
        &server.agent_url(),
        "--token",
        &token,
        "--heartbeat-interval",
        "300ms",
        "--resync-interval",
        "500ms",
        "--allow-kind",
        "container",
    ];
    let agent_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut agent =
        Agent::start_raw(agent_args, &[("DOCKER_HOST", &podman.docker_host())]).unwrap();
    server
        .wait_node("edge", "connected", |n| n["connected"] == true)
        .unwrap();
    let id = format!("web{}", std::process::id());
    let name = format!("drover-{id}");
    let manifest = json!({"name": "c", "selector": {"role": "edge"}, "resources": [{"id": id, "container": {
        "image": drover_testkit::BUSYBOX, "pull": "never", "command": ["sh", "-c", "while true; do sleep 1; done"],
        "health": {"command": ["sh", "-c", "true"]}}}]});
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let status = |server: &Server| server.get("/api/v1/nodes/edge/status").unwrap().body;
    let ready = wait_for("the container Ready", TIMEOUT, || {
        let s = status(&server);
        s["resources"]
            .as_array()?
            .iter()
            .find(|r| r["state"] == "Ready")
            .cloned()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", status(&server)));
    assert_eq!(ready["details"]["state"], "running");
    assert_eq!(ready["details"]["health"], "healthy");
    let first_id = ready["details"]["container_id"].clone();
    assert_eq!(podman.state(&name).as_deref(), Some("running"));

    // Someone stops it: started again, drift reported, same container.
    podman.podman(&["stop", "-t", "0", &name]).unwrap();
    let drifted = wait_for("drift on the container", TIMEOUT, || {
        let s = status(&server);
        s["resources"]
            .as_array()?
            .iter()
            .find(|r| r["drift"].as_array().is_some_and(|d| !d.is_empty()))
            .cloned()
    })
    .unwrap();
    assert_eq!(podman.state(&name).as_deref(), Some("running"));
    assert_eq!(drifted["details"]["container_id"], first_id);

    // An agent restart does not recreate a healthy container.
    agent.restart(None).unwrap();
    server
        .wait_node("edge", "connected again", |n| n["connected"] == true)
        .unwrap();
    // Deliberate: resyncs pass in which the restarted agent must not recreate the container.
    std::thread::sleep(Duration::from_millis(1500));
    let after = status(&server);
    assert_eq!(
        after["resources"][0]["details"]["container_id"], first_id,
        "{after}"
    );

    // Deleting the manifest removes the container.
    assert!(
        server
            .cli(&["delete", "manifest", "c"])
            .unwrap()
            .status
            .success()
    );
    wait_for("the container to be removed", TIMEOUT, || {
        podman.state(&name).is_none().then_some(())
    })
    .unwrap();
}

#[test]
fn file_sources_travel_through_the_blob_store() {
    let f = Fleet::edge(&[]);
    // Larger than a REST body may be, and not text.
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    apply_source(&f, "blob", "payload.bin", &payload);
    let stored: Value =
        serde_json::from_slice(&f.server.cli(&["manifests", "show", "blob"]).unwrap().stdout)
            .unwrap();
    assert_eq!(
        stored["resources"][0]["file"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64,
        "{stored}"
    );

    // Through the API, a source is refused (only the CLI can read local files).
    let r = f.server.post("/api/v1/manifests", Some(&f.server.admin_token()), &json!({"name": "raw", "resources": [{"id": "a", "file": {"path": "/tmp/a", "source": "x"}}]})).unwrap();
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (400, Some("file.source"))
    );
    // A blob whose content does not match its name is refused.
    let r = f
        .server
        .request(
            "PUT",
            &format!("/api/v1/blobs/{}", "0".repeat(64)),
            Some(&f.server.admin_token()),
            Some(b"nope".to_vec()),
        )
        .unwrap();
    assert_eq!(r.status, 400);
}

/// Blob requests the server has received from agents, from its `/metrics`.
fn blob_requests(server: &Server) -> f64 {
    let url = format!("{}/metrics", server.api_url());
    let (status, body) = get_text(&url, Some(&server.admin_token())).unwrap();
    assert_eq!(status, 200, "{body}");
    let samples = parse_exposition(&body).unwrap();
    sample(
        &samples,
        "drover_agent_messages_received_total",
        &[("type", "blob_request")],
    )
    .unwrap_or(0.0)
}

/// Content fetched as the edge node, with its own certificate (the unary `FetchBlob` of protocol 1).
fn fetch_as_node(f: &Fleet, sha256: &str) -> Result<Vec<u8>, tonic::Status> {
    let identity = drover_agent::identity::Identity::load(&f.agent.state_dir())
        .unwrap()
        .expect("the agent has enrolled");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = identity
            .endpoint(&f.server.agent_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        drover_proto::AgentLinkClient::new(channel)
            .fetch_blob(drover_proto::v1::FetchBlobRequest {
                sha256: sha256.to_string(),
            })
            .await
            .map(|r| r.into_inner().data)
    })
}

#[test]
fn small_content_goes_with_the_desired_state_and_large_content_is_fetched() {
    let f = Fleet::edge(&[]);
    // A small file arrives inside the node's desired state: the agent asks for nothing.
    apply_source(&f, "small", "small.conf", b"listen 8080\n");
    assert_eq!(blob_requests(&f.server), 0.0);
    // One above the inline size (4 KiB) is fetched over the agent's stream.
    apply_source(&f, "large", "large.bin", &[7u8; 64 * 1024]);
    assert!(blob_requests(&f.server) >= 1.0);

    // A node may fetch the content its desired state names, and nothing else.
    let shown = f.server.cli(&["manifests", "show", "small"]).unwrap();
    let small: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let sha = small["resources"][0]["file"]["sha256"].as_str().unwrap();
    assert_eq!(fetch_as_node(&f, sha).unwrap(), b"listen 8080\n");
    let out = f.server.cli(&["delete", "manifest", "small"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let refused = fetch_as_node(&f, sha).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
}

#[test]
fn a_dry_run_says_what_would_change_and_changes_nothing() {
    let f = Fleet::edge(&[]);
    let keep = f.path("keep");
    let old = f.path("old");
    f.apply(file_manifest(
        "plan",
        vec![
            json!({"id": "keep", "file": {"path": keep, "content": "same"}}),
            json!({"id": "old", "file": {"path": old, "content": "old"}}),
        ],
    ));
    f.wait_converged();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("plan.yaml");
    let new = f.path("new");
    std::fs::write(&manifest, format!("name: plan\nselector: {{role: edge}}\nresources:\n  - id: keep\n    file: {{path: {keep}, content: same}}\n  - id: new\n    file: {{path: {new}, content: fresh}}\n")).unwrap();
    let out = f
        .server
        .cli(&[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--dry-run",
            "-o",
            "json",
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let plans: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = plans[0]["plan"].as_array().unwrap();
    let action = |id: &str| {
        plan.iter()
            .find(|i| i["id"] == id)
            .map(|i| i["action"].as_str().unwrap().to_string())
    };
    assert_eq!(action("keep").as_deref(), Some("none"), "{plans}");
    assert_eq!(action("new").as_deref(), Some("create"));
    assert_eq!(action("old").as_deref(), Some("delete"));
    // Nothing changed.
    assert!(!Path::new(&new).exists());
    assert!(Path::new(&old).exists());
    assert_eq!(
        f.server.get("/api/v1/manifests/plan").unwrap().body["generation"],
        1
    );
    let table = String::from_utf8_lossy(
        &f.server
            .cli(&["apply", "-f", manifest.to_str().unwrap(), "--dry-run"])
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(
        table.contains("ACTION") && table.contains("create"),
        "{table}"
    );
}

#[test]
fn status_changes_are_pushed_and_apply_wait_rides_out_a_server_restart() {
    let mut f = Fleet::edge(&["--allow-shell", "--allow-kind", "shell_job"]);
    let http = reqwest::blocking::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap();
    let resp = http
        .get(format!("{}/api/v1/status/events", f.server.api_url()))
        .bearer_auth(f.server.admin_token())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = std::io::BufReader::new(resp);
    // First the whole status, then each change as it happens, up to convergence.
    let (name, all) = next_event(&mut stream);
    assert_eq!(name, "status");
    assert_eq!(all[0]["node_name"], "edge", "{all}");
    f.apply(file_manifest(
        "base",
        vec![json!({"id": "motd", "file": {"path": f.path("motd"), "content": "pushed\n"}})],
    ));
    loop {
        let (name, report) = next_event(&mut stream);
        assert_eq!(name, "node", "{report}");
        assert_eq!(report["node_name"], "edge");
        if converged(&report) {
            assert_eq!(report["resources"][0]["id"], "motd", "{report}");
            break;
        }
    }
    drop(stream);

    // `apply --wait` on a node still converging when the server goes down and comes back.
    let marker = f.path("job-done");
    let manifest = f.files.path().join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: job\nselector: {{role: edge}}\nresources:\n  - id: slow\n    shell_job: {{command: \"sleep 3; touch {marker}\", creates: {marker}}}\n"
        ),
    )
    .unwrap();
    let mut cli = f
        .server
        .cli_command(&[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--wait",
            "--timeout",
            "2m",
        ])
        .unwrap()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(cli.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    assert!(line.contains("manifest job applied"), "{line}");
    f.server.kill();
    f.server.restart().unwrap();
    let status = wait_for("apply --wait to end", TIMEOUT * 2, || {
        cli.try_wait().ok().flatten()
    });
    if status.is_err() {
        let _ = cli.kill();
        let _ = cli.wait();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.unwrap().success(), "{rest}");
    assert!(rest.contains("all 1 node(s) converged"), "{rest}");
    assert!(
        Path::new(&marker).exists(),
        "the job ran before --wait returned"
    );
}
