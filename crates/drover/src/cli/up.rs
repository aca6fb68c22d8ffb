//! `drover up`: a control plane and a local agent enrolled into it, in one command, for a first look.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use drover_server::RunningServer;
use drover_types::api::CreateTokenRequest;

use super::Global;
use super::server::{ServerArgs, announce, init_logging, resolve, shutdown_signal};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover up\n  drover up --data-dir ./.drover --heartbeat-interval 5s\n\nThen, in another terminal: drover nodes"
)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Heartbeat interval of the local agent.
    #[arg(long, default_value = "10s")]
    heartbeat_interval: String,
    /// The drover-agent binary [default: next to this drover binary, else on PATH].
    #[arg(long)]
    agent: Option<PathBuf>,
}

fn agent_binary(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("drover-agent")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("drover-agent"))
}

pub async fn run(args: UpArgs, global: &Global) -> anyhow::Result<()> {
    let (config, json) = resolve(&args.server, global)?;
    init_logging(json);
    let data_dir = config.data_dir.clone();
    let server = RunningServer::start(config).await?;
    announce(&server, &data_dir);

    let state_dir = data_dir.join("local-agent");
    let mut command = tokio::process::Command::new(agent_binary(args.agent));
    command
        .arg("--server")
        .arg(format!("https://127.0.0.1:{}", server.agent_addr.port()))
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--heartbeat-interval")
        .arg(&args.heartbeat_interval)
        .arg("--label")
        .arg("drover.io/local=true")
        // A first look on one's own machine: the local agent's policy allows everything a manifest or task
        // can ask for. Agents on real nodes allow files under their roots and nothing that runs code.
        .args(["--allow-kind", "all", "--allow-shell"])
        .args(["--allow-mount", "/", "--allow-path", "/"])
        .kill_on_drop(true);
    if !state_dir.join("node.json").exists() {
        let token = server
            .fleet
            .access
            .create_token(
                "drover up",
                CreateTokenRequest {
                    ttl: Some("10m".into()),
                    max_uses: Some(1),
                    labels: Default::default(),
                },
            )
            .await
            .context("cannot create a join token for the local agent")?;
        command.arg("--token").arg(token.token);
    }
    let mut agent = command.spawn().context(
        "cannot start drover-agent: build it with `cargo build --release` (it must sit next to drover or on PATH), or pass --agent PATH",
    )?;
    // The shortest CLI invocation that reaches this server.
    let mut cli = String::from("drover");
    if server.api_addr != drover_server::ServerConfig::new(data_dir.clone()).listen {
        cli.push_str(&format!(" --server http://{}", server.api_addr));
    }
    if global.data_dir.is_some() {
        cli.push_str(&format!(" --data-dir {}", data_dir.display()));
    }
    eprintln!(
        "\ndrover is up: server http://{} with a local agent (state in {}).\n\
         Next, in another terminal:\n  \
           {cli} nodes\n  \
           {cli} token create --ttl 1h   # to enroll more nodes\n\
         Dashboard: http://{}/ (log in with the token in {})\n\
         Press Ctrl-C to stop both.\n",
        server.api_addr,
        state_dir.display(),
        server.api_addr,
        data_dir.join("admin.token").display(),
    );
    let stopped = tokio::select! {
        status = agent.wait() => Some(status),
        _ = shutdown_signal() => None,
    };
    if let Some(status) = stopped {
        tracing::error!("the local agent exited ({:?}); stopping", status.ok());
    } else if let Some(pid) = agent.id() {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(5), agent.wait()).await;
    }
    server.run_until(async {}).await?;
    Ok(())
}
