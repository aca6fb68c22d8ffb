//! Prometheus metrics with real servers and agents: the server's `/metrics` behind an operator token on the
//! REST address (a viewer may scrape) and open on `--metrics-listen`, with fleet counts that match the
//! fleet; and an agent's own `--metrics-listen`.

use drover_testkit::{
    Agent, Sample, Server, ServerOptions, TIMEOUT, free_port, get_text, parse_exposition, sample,
    wait_for,
};
use serde_json::json;

/// Scrapes `url` until `pred` holds for the parsed samples; each scrape must parse.
fn scrape_until(
    url: &str,
    token: Option<&str>,
    what: &str,
    pred: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    wait_for(what, TIMEOUT, || {
        let (status, body) = get_text(url, token).unwrap();
        assert_eq!(status, 200, "{body}");
        let samples = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        pred(&samples).then_some(samples)
    })
    .unwrap()
}

/// `promtool check metrics` finds nothing to say about `text`.
fn promtool_check(text: &str) {
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; scripts/testbed.sh installs it)");
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let linted = lint.wait_with_output().unwrap();
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
}

#[test]
fn server_metrics_need_a_token_on_the_api_and_none_on_their_own_listener() {
    let metrics_port = free_port();
    let server = Server::start_with(ServerOptions {
        args: vec![
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ],
    })
    .unwrap();
    let _a = server.agent("alpha", &["--allow-shell"]);
    server
        .wait_node("alpha", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let _b = server.agent("beta", &["--allow-shell"]);
    server
        .wait_node("beta", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let task = server
        .create_task(json!({"target": "all", "spec": {"kind": "exec", "shell": "true"}}))
        .unwrap();
    server.wait_task_done(task["id"].as_str().unwrap()).unwrap();

    let url = format!("{}/metrics", server.api_url());
    // No token: 401, with the server still answering after.
    let (status, body) = get_text(&url, None).unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _) = get_text(&url, Some("drvop.not-a-token")).unwrap();
    assert_eq!(status, 401);
    // A viewer may scrape.
    let out = server
        .cli(&[
            "operator", "create", "prom", "--role", "viewer", "-o", "json",
        ])
        .unwrap();
    assert!(out.status.success());
    let viewer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let viewer = viewer["token"].as_str().unwrap();

    let samples = scrape_until(&url, Some(viewer), "fleet counts in /metrics", |s| {
        sample(s, "drover_nodes", &[("status", "Ready")]) == Some(2.0)
            && sample(
                s,
                "drover_heartbeats_received_total",
                &[("transport", "grpc")],
            )
            .is_some_and(|n| n >= 2.0)
    });
    let get = |name: &str, labels: &[(&str, &str)]| sample(&samples, name, labels);
    assert_eq!(get("drover_nodes", &[("status", "Offline")]), Some(0.0));
    assert_eq!(get("drover_agents_connected", &[]), Some(1.0 + 1.0));
    assert_eq!(get("drover_tasks", &[("state", "Succeeded")]), Some(1.0));
    assert_eq!(
        get("drover_task_runs", &[("state", "Succeeded")]),
        Some(2.0)
    );
    assert_eq!(get("drover_manifests", &[]), Some(0.0));
    // Both agents run this build: counted under its version (issue 26).
    assert_eq!(
        get(
            "drover_nodes_by_agent_version",
            &[("version", drover_types::VERSION)]
        ),
        Some(2.0)
    );
    assert_eq!(get("drover_runs_lost_total", &[]), Some(0.0));
    assert_eq!(
        get("drover_agent_messages_received_total", &[("type", "hello")]),
        Some(2.0)
    );
    assert_eq!(
        get(
            "drover_agent_messages_received_total",
            &[("type", "task_exit")]
        ),
        Some(2.0)
    );
    // Agent connections by outcome, and how long agents waited (what a reconnect storm is read from).
    assert_eq!(
        get("drover_agent_connections_total", &[("outcome", "attached")]),
        Some(2.0)
    );
    assert_eq!(
        get(
            "drover_agent_connections_total",
            &[("outcome", "handshake_timeout")]
        ),
        None
    );
    for stage in ["handshake", "welcome", "attach"] {
        assert!(
            get(
                "drover_agent_connect_duration_seconds_count",
                &[("stage", stage)]
            )
            .is_some_and(|n| n >= 2.0),
            "no {stage} timings"
        );
    }
    // Latencies by route pattern, never by raw path.
    assert!(
        get(
            "drover_http_request_duration_seconds_count",
            &[
                ("route", "/api/v1/tasks"),
                ("method", "POST"),
                ("status", "2xx")
            ]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        get(
            "drover_http_request_duration_seconds_count",
            &[("route", "/api/v1/tasks/{id}"), ("status", "2xx")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        samples.iter().all(|s| s
            .labels
            .iter()
            .all(|(k, v)| k != "route" || !v.contains(task["id"].as_str().unwrap()))),
        "a raw path became a label"
    );
    assert!(
        get(
            "drover_store_operation_duration_seconds_count",
            &[("op", "insert_task")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        get(
            "drover_store_operation_duration_seconds_count",
            &[("op", "fleet_counts")]
        )
        .unwrap()
            >= 1.0
    );
    // Per-node gauges only behind --metrics-per-node.
    assert!(samples.iter().all(|s| !s.name.starts_with("drover_node_")));

    // The open listener needs no token and serves /metrics only.
    let open = format!("http://127.0.0.1:{metrics_port}/metrics");
    let samples = scrape_until(&open, None, "the open listener", |s| {
        sample(s, "drover_nodes", &[("status", "Ready")]) == Some(2.0)
    });
    assert_eq!(
        sample(&samples, "drover_tasks", &[("state", "Succeeded")]),
        Some(1.0)
    );
    let (status, _) = get_text(
        &format!("http://127.0.0.1:{metrics_port}/api/v1/nodes"),
        None,
    )
    .unwrap();
    assert_eq!(status, 404);

    // Asked for nothing in particular (curl), the older Prometheus text format, which promtool lints clean:
    // every family, counters included, with help text.
    let body = std::process::Command::new("curl")
        .args(["-sf", &open])
        .output()
        .expect("curl runs (scripts/testbed.sh installs it)");
    assert!(body.status.success(), "{body:?}");
    let text = String::from_utf8(body.stdout).unwrap();
    assert!(
        !text.contains("# EOF") && text.contains("# TYPE drover_runs_lost_total counter"),
        "{text}"
    );
    promtool_check(&text);

    // A node going away shows in the counts.
    drop(_b);
    let samples = scrape_until(&open, None, "one agent fewer", |s| {
        sample(s, "drover_agents_connected", &[]) == Some(1.0)
    });
    assert_eq!(
        sample(&samples, "drover_nodes", &[("status", "Ready")]).map(|n| n >= 1.0),
        Some(true)
    );
    assert_eq!(server.get("/health").unwrap().status, 200);
}

#[test]
fn per_node_gauges_come_with_the_flag() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-per-node".into()],
    })
    .unwrap();
    let _a = server.agent("gamma", &[]);
    server
        .wait_node("gamma", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let url = format!("{}/metrics", server.api_url());
    let token = server.admin_token();
    let samples = scrape_until(&url, Some(&token), "gamma's gauges", |s| {
        sample(s, "drover_node_cpu_usage_percent", &[("node", "gamma")]).is_some()
    });
    let mem = sample(
        &samples,
        "drover_node_memory_total_bytes",
        &[("node", "gamma")],
    )
    .unwrap();
    assert!(mem > 1e6, "memory {mem}");
    assert!(
        sample(
            &samples,
            "drover_node_disk_free_bytes",
            &[("node", "gamma")]
        )
        .is_some()
    );
}

#[test]
fn agent_metrics_listen_serves_its_own_counters() {
    let mut server = Server::start().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _a = server.agent(
        "delta",
        &[
            "--allow-shell",
            "--metrics-listen",
            &listen,
            "--plugin-interval",
            "metrics=200ms",
        ],
    );
    server
        .wait_node("delta", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    let task = server
        .create_task(
            json!({"target": {"node": "delta"}, "spec": {"kind": "exec", "shell": "exit 3"}}),
        )
        .unwrap();
    server.wait_task_done(task["id"].as_str().unwrap()).unwrap();
    let url = format!("http://{listen}/metrics");
    let samples = scrape_until(&url, None, "the agent's counters", |s| {
        sample(s, "drover_agent_tasks_run_total", &[("state", "Failed")]) == Some(1.0)
            && sample(
                s,
                "drover_agent_messages_sent_total",
                &[("type", "heartbeat")],
            )
            .is_some()
            && sample(
                s,
                "drover_agent_plugin_run_duration_seconds_count",
                &[("plugin", "metrics")],
            )
            .is_some_and(|n| n >= 2.0)
    });
    let get = |name: &str, labels: &[(&str, &str)]| sample(&samples, name, labels);
    assert_eq!(get("drover_agent_connected", &[]), Some(1.0));
    assert_eq!(get("drover_agent_reconnects_total", &[]), Some(0.0));
    assert_eq!(
        get("drover_agent_messages_sent_total", &[("type", "hello")]),
        Some(1.0)
    );
    assert_eq!(
        get("drover_agent_messages_sent_total", &[("type", "task_exit")]),
        Some(1.0)
    );

    // Other paths are not served.
    let (status, _) = get_text(&format!("http://{listen}/"), None).unwrap();
    assert_eq!(status, 404);

    // A server restart is a reconnect: at least one, since every try counts and a first retry may find the
    // server not yet listening.
    server.restart().unwrap();
    scrape_until(&url, None, "a reconnect counted", |s| {
        sample(s, "drover_agent_reconnects_total", &[]).is_some_and(|n| n >= 1.0)
            && sample(s, "drover_agent_connected", &[]) == Some(1.0)
    });

    // An address in use is a start error that names the flag, not a silent agent without metrics.
    let token = server.join_token(json!({})).unwrap();
    let mut clash = Agent::start(
        &server.agent_url(),
        "epsilon",
        &["--token", &token, "--metrics-listen", &listen],
    )
    .unwrap();
    assert_eq!(clash.wait_exit().unwrap(), Some(2));
    assert!(clash.log().contains("--metrics-listen"), "{}", clash.log());
}

/// Issue 25: a manifest's rollout as gauges: its state (1 for the one it is in), its wave, and its nodes by
/// outcome; promtool lints them clean.
#[test]
fn a_rollout_is_gauged_by_state_wave_and_outcome() {
    let metrics_port = free_port();
    let server = Server::start_with(ServerOptions {
        args: vec![
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ],
    })
    .unwrap();
    let agent = |name: &str| {
        let a = server.agent(
            name,
            &[
                "--allow-kind",
                "shell_job",
                "--allow-shell",
                "--label",
                "role=web",
                "--resync-interval",
                "500ms",
            ],
        );
        server
            .wait_node(name, "connected", |n| n["connected"] == true)
            .unwrap();
        a
    };
    let _agents = [agent("r-a"), agent("r-b")];
    // The first wave's node fails the change: the rollout pauses there, the other node pending.
    let manifest = json!({
        "name": "web",
        "selector": {"role": "web"},
        "rollout": {"waves": [{"count": 1}, {"percent": 100}], "bake": "1s"},
        "resources": [{"id": "job", "shell_job": {"command": "echo broken >&2; exit 1", "unless": "false"}}],
    });
    let r = server
        .post("/api/v1/manifests", Some(&server.admin_token()), &manifest)
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let open = format!("http://127.0.0.1:{metrics_port}/metrics");
    let samples = scrape_until(&open, None, "the rollout paused, in /metrics", |s| {
        sample(
            s,
            "drover_rollout_state",
            &[("manifest", "web"), ("state", "Paused")],
        ) == Some(1.0)
    });
    let get = |name: &str, labels: &[(&str, &str)]| sample(&samples, name, labels);
    for state in ["Progressing", "Baking", "Reverted", "Aborted", "Complete"] {
        assert_eq!(
            get(
                "drover_rollout_state",
                &[("manifest", "web"), ("state", state)]
            ),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(
        get("drover_rollout_wave", &[("manifest", "web")]),
        Some(1.0)
    );
    assert_eq!(
        get("drover_rollout_waves", &[("manifest", "web")]),
        Some(2.0)
    );
    for (outcome, n) in [
        ("converged", 0.0),
        ("change_failed", 1.0),
        ("infra_failed", 0.0),
        ("unreachable", 0.0),
        ("pending", 1.0),
    ] {
        assert_eq!(
            get(
                "drover_rollout_nodes",
                &[("manifest", "web"), ("outcome", outcome)]
            ),
            Some(n),
            "{outcome}"
        );
    }
    // What the REST API says, the gauges say.
    let status = server.get("/api/v1/rollouts/web").unwrap().body;
    assert_eq!(status["waves"][0]["change_failed"], 1, "{status}");

    // An operator's abort shows at the next scrape; the text format lints clean with rollouts in it.
    let out = server.cli(&["rollout", "abort", "web"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    scrape_until(&open, None, "the rollout aborted", |s| {
        sample(
            s,
            "drover_rollout_state",
            &[("manifest", "web"), ("state", "Aborted")],
        ) == Some(1.0)
            && sample(
                s,
                "drover_rollout_state",
                &[("manifest", "web"), ("state", "Paused")],
            ) == Some(0.0)
    });
    // The older text format (curl asks for nothing in particular), which promtool reads.
    let body = std::process::Command::new("curl")
        .args(["-sf", &open])
        .output()
        .expect("curl runs (scripts/testbed.sh installs it)");
    assert!(body.status.success(), "{body:?}");
    let text = String::from_utf8(body.stdout).unwrap();
    assert!(text.contains("# TYPE drover_rollout_nodes gauge"), "{text}");
    promtool_check(&text);
}
