//! `drover-agent`: parse configuration, set up logging, run the agent until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use drover_agent::{AgentConfig, config::Args, link};
use drover_process::{init_logging, shutdown_signal};

fn main() -> ExitCode {
    let config = match AgentConfig::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_json);
    // Two workers are plenty for an agent and keep its footprint small on tiny nodes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Some(addr) = config.metrics_listen {
            match drover_agent::metrics_listen::start(addr).await {
                Ok(bound) => tracing::info!("agent metrics on http://{bound}/metrics"),
                Err(e) => {
                    eprintln!("drover-agent: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        match link::run(config, rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("drover-agent: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
