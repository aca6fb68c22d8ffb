//! The fleet: the ramp that starts every simulated agent, and the status line and file that tell a
//! script how far they got.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::agent;
use crate::config::Config;

/// When the k-th agent starts, for a ramp of `rate` per second.
pub fn start_offset(k: u32, rate: f64) -> Duration {
    Duration::from_secs_f64(f64::from(k) / rate)
}

/// Starts the agents at the ramp rate and reports until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    eprintln!("{}", config.summary());
    drover_files::create_private_dir(&config.state_dir.join("agents"))
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    let ramp = {
        let config = config.clone();
        tokio::spawn(async move {
            let begin = Instant::now();
            for k in 0..config.agents {
                tokio::time::sleep_until(begin + start_offset(k, config.ramp)).await;
                let index = config.start_index.saturating_add(k);
                tokio::spawn(agent::run(index, config.clone()));
            }
        })
    };
    let report = tokio::spawn(report(config.clone()));
    let result = wait_for_signal().await;
    ramp.abort();
    report.abort();
    eprintln!("{}", config.stats.snapshot(u64::from(config.agents)).line());
    result
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

/// Status line every stats interval, status file four times a second.
async fn report(config: Arc<Config>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_line = Instant::now();
    loop {
        tick.tick().await;
        let snap = config.stats.snapshot(u64::from(config.agents));
        if !config.stats_interval.is_zero() && last_line.elapsed() >= config.stats_interval {
            last_line = Instant::now();
            eprintln!("{}", snap.line());
        }
        if let Some(path) = &config.status_file {
            let json = serde_json::to_vec(&snap).unwrap_or_default();
            if let Err(e) = drover_files::write_atomic(path, &json, false) {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_spreads_starts_evenly() {
        assert_eq!(start_offset(0, 500.0), Duration::ZERO);
        assert_eq!(start_offset(500, 500.0), Duration::from_secs(1));
        assert_eq!(start_offset(19_000, 500.0), Duration::from_secs(38));
    }
}
