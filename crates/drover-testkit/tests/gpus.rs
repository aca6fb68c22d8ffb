//! The `gpus` daemon plugin end to end, with a fake `nvidia-smi` first on the agent's PATH that prints what
//! a real one printed on an NVIDIA H100 (fixtures/nvidia-smi-h100/, idle and under load): the samples reach
//! the server's session, `drover nodes show` and `/metrics`; a node without the tool reports no GPUs.
//! No real GPU is used here.

use std::path::{Path, PathBuf};

use drover_testkit::{
    Agent, Server, ServerOptions, TIMEOUT, get_text, parse_exposition, sample, wait_for,
};
use serde_json::{Value, json};

const UUID: &str = "GPU-e129e46f-a911-1285-27fd-5b0c4c6d79a6";

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/nvidia-smi-h100"
    ))
}

/// An agent whose PATH starts with `path_head`, with the `gpus` plugin sampling every 200 ms.
fn gpu_agent(server: &Server, name: &str, path_head: Option<&Path>, state: &Path) -> Agent {
    let token = server.join_token(json!({})).unwrap();
    let path = match path_head {
        Some(dir) => format!("{}:/usr/bin:/bin", dir.display()),
        None => "/usr/bin:/bin".to_string(),
    };
    let state = state.display().to_string();
    let args = [
        "--token",
        &token,
        "--heartbeat-interval",
        "300ms",
        "--plugin-interval",
        "gpus=200ms",
    ];
    let env = [
        ("PATH", path.as_str()),
        ("FAKE_NVIDIA_SMI_STATE", state.as_str()),
    ];
    Agent::start_with_env(&server.agent_url(), name, &args, &env).unwrap()
}

/// The node's latest `gpus` payload once `pred` holds for it.
fn wait_payload(server: &Server, node: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, TIMEOUT, || {
        let reply = server
            .get(&format!("/api/v1/nodes/{node}/sessions/gpus"))
            .ok()?;
        let payload = reply.body.get("payload")?.clone();
        pred(&payload).then_some(payload)
    })
    .unwrap()
}

fn nodes_show(server: &Server, node: &str) -> String {
    let out = server.cli(&["nodes", "show", node]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gpu_samples_from_nvidia_smi_reach_the_cli_and_metrics() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-per-node".into()],
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gpu-state");
    std::fs::write(&state, "idle").unwrap();
    let _gpu = gpu_agent(&server, "h100", Some(&fixtures()), &state);

    // Inventory found the GPU through the same tool.
    let node = server
        .wait_node("h100", "with its GPU", |n| {
            n["capabilities"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
        })
        .unwrap();
    assert_eq!(node["capabilities"]["gpus"][0]["uuid"], UUID);

    // Idle: the capture's values, `[N/A]` (the fan) left out, the idle throttle reason named.
    let idle = wait_payload(&server, "h100", "an idle sample", |p| {
        p["available"] == true && p["gpus"][0]["power_draw_w"] == 107.79
    });
    let g = &idle["gpus"][0];
    assert_eq!(g["uuid"], UUID);
    assert_eq!(g["utilization_pct"], 0.0);
    assert_eq!(g["memory_used_mib"], 0);
    assert_eq!(g["memory_total_mib"], 81559);
    assert_eq!(g["temperature_c"], 38.0);
    assert_eq!(g["power_limit_w"], 700.0);
    assert_eq!(g["throttle_reasons"], json!(["gpu_idle"]));
    assert!(g.get("fan_pct").is_none(), "{g}");

    let shown = nodes_show(&server, "h100");
    assert!(shown.contains("GPU metrics"), "{shown}");
    for text in [
        UUID,
        "0 %",
        "0 / 81559 MiB",
        "38 C",
        "107.8 / 700 W",
        "gpu_idle",
    ] {
        assert!(shown.contains(text), "{text:?} missing from:\n{shown}");
    }

    let url = format!("{}/metrics", server.api_url());
    let token = server.admin_token();
    let gpu = [("node", "h100"), ("gpu", "0"), ("uuid", UUID)];
    let scrape = |what: &str, pred: &dyn Fn(&[drover_testkit::Sample]) -> bool| {
        wait_for(what, TIMEOUT, || {
            let (status, body) = get_text(&url, Some(&token)).unwrap();
            assert_eq!(status, 200);
            let samples = parse_exposition(&body).unwrap();
            pred(&samples).then_some(samples)
        })
        .unwrap()
    };
    let samples = scrape("idle GPU gauges", &|s| {
        sample(s, "drover_gpu_power_draw_watts", &gpu) == Some(107.79)
    });
    assert_eq!(
        sample(&samples, "drover_gpu_utilization_percent", &gpu),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "drover_gpu_temperature_celsius", &gpu),
        Some(38.0)
    );
    assert_eq!(
        sample(&samples, "drover_gpu_memory_total_bytes", &gpu),
        Some(81559.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        sample(&samples, "drover_gpu_power_limit_watts", &gpu),
        Some(700.0)
    );
    assert_eq!(
        sample(
            &samples,
            "drover_gpu_throttle_reason_active",
            &[("node", "h100"), ("reason", "gpu_idle")]
        ),
        Some(1.0)
    );

    // Under load: the busy capture, at the plugin's own interval.
    std::fs::write(&state, "busy").unwrap();
    let busy = wait_payload(&server, "h100", "a busy sample", |p| {
        p["gpus"][0]["utilization_pct"] == 100.0
    });
    let g = &busy["gpus"][0];
    assert_eq!(g["memory_used_mib"], 13097);
    assert_eq!(g["temperature_c"], 55.0);
    assert_eq!(g["power_draw_w"], 663.31);
    assert!(g.get("throttle_reasons").is_none(), "{g}");
    let shown = nodes_show(&server, "h100");
    for text in ["100 %", "13097 / 81559 MiB", "55 C", "663.3 / 700 W"] {
        assert!(shown.contains(text), "{text:?} missing from:\n{shown}");
    }
    let samples = scrape("busy GPU gauges", &|s| {
        sample(s, "drover_gpu_utilization_percent", &gpu) == Some(100.0)
    });
    assert_eq!(
        sample(&samples, "drover_gpu_power_draw_watts", &gpu),
        Some(663.31)
    );
    assert_eq!(
        sample(&samples, "drover_gpu_memory_used_bytes", &gpu),
        Some(13097.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        sample(&samples, "drover_gpu_memory_utilization_percent", &gpu),
        Some(9.0)
    );

    // The dashboard's node page shows the same sample.
    let (status, page) = drover_testkit::get_text(
        &format!("{}/ui/nodes/h100", server.api_url()),
        Some(&server.admin_token()),
    )
    .unwrap();
    assert_eq!(status, 200, "{page}");
    for text in [
        "GPU activity",
        "GPU 0: 100% busy",
        "13097 / 81559 MiB",
        "55 °C",
        "663 / 700 W",
    ] {
        assert!(page.contains(text), "{text:?} missing from the node page");
    }
}

#[test]
fn a_node_without_nvidia_smi_reports_no_gpus() {
    if Path::new("/usr/bin/nvidia-smi").exists() {
        eprintln!("skipped: this machine has a real nvidia-smi in /usr/bin");
        return;
    }
    let server = Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("unused");
    let _plain = gpu_agent(&server, "plain", None, &state);
    let payload = wait_payload(&server, "plain", "an empty GPU report", |p| {
        p["available"] == false
    });
    assert_eq!(payload, json!({"available": false, "gpus": []}));
    let shown = nodes_show(&server, "plain");
    assert!(
        shown.contains("GPU metrics") && shown.contains("no nvidia-smi"),
        "{shown}"
    );
}
