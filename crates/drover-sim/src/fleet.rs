//! The fleet: configuration shared by every simulated agent, the ramp that starts them, and the status
//! line and file that tell a script how far they got.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use drover_agent::actions::ActionCtx;
use drover_agent::policy::Policy;
use drover_types::Labels;
use drover_types::labels::{parse_labels, validate_labels};
use tokio::time::Instant;

use crate::agent;
use crate::stats::Stats;

/// A daemon plugin as the simulated agents run it.
pub struct Plugin {
    pub name: &'static str,
    pub interval: Duration,
    pub deadline: Duration,
}

pub struct Options {
    pub server: Vec<String>,
    pub token: Option<String>,
    pub agents: u32,
    pub start_index: u32,
    pub state_dir: PathBuf,
    pub ramp: f64,
    pub heartbeat: Duration,
    pub task_delay: Duration,
    /// Bytes each task prints.
    pub task_output: usize,
    pub sessions: usize,
    pub change_probability: f64,
    pub labels: Vec<String>,
    pub stats_interval: Duration,
    pub status_file: Option<PathBuf>,
    pub reconnect_cap: Duration,
}

/// What every agent shares.
pub struct Config {
    /// The servers (replicas) to attach to, in order; empty: the one each agent enrolled with.
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub agents: u32,
    pub start_index: u32,
    pub state_dir: PathBuf,
    pub ramp: f64,
    pub heartbeat: Duration,
    pub task_delay: Duration,
    /// What each task prints.
    pub task_output: Arc<crate::tasks::Output>,
    pub plugins: Vec<Plugin>,
    pub change_probability: f64,
    pub labels: Labels,
    pub stats_interval: Duration,
    pub status_file: Option<PathBuf>,
    pub reconnect_cap: Duration,
    /// For the one real action the simulated agents run (`ping`).
    pub action_ctx: ActionCtx,
    pub stats: Stats,
}

impl Config {
    pub fn new(o: Options) -> anyhow::Result<Self> {
        let servers = drover_agent::servers::parse(&o.server)?;
        let mut labels = parse_labels(&o.labels)?;
        labels.insert("sim".into(), "1".into());
        validate_labels(&labels)?;
        // The agent's own plugins, with their own timing: the sim's sessions cannot drift from them.
        let plugins = drover_agent::daemon::registry()
            .into_iter()
            .take(o.sessions)
            .map(|e| Plugin {
                name: e.name,
                interval: e.interval,
                deadline: e.deadline,
            })
            .collect();
        Ok(Self {
            servers,
            token: o.token,
            agents: o.agents,
            start_index: o.start_index,
            state_dir: o.state_dir,
            ramp: o.ramp,
            heartbeat: o.heartbeat,
            task_delay: o.task_delay,
            task_output: Arc::new(crate::tasks::Output::new(o.task_output)),
            plugins,
            change_probability: o.change_probability,
            labels,
            stats_interval: o.stats_interval,
            status_file: o.status_file,
            reconnect_cap: o.reconnect_cap,
            action_ctx: ActionCtx {
                policy: Arc::new(Policy::new(&[])),
            },
            stats: Stats::default(),
        })
    }

    pub fn agent_dir(&self, index: u32) -> PathBuf {
        self.state_dir.join("agents").join(format!("{index:05}"))
    }
}

/// When the k-th agent starts, for a ramp of `rate` per second.
pub fn start_offset(k: u32, rate: f64) -> Duration {
    Duration::from_secs_f64(f64::from(k) / rate)
}

/// Starts the agents at the ramp rate and reports until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
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

    #[test]
    fn config_adds_the_sim_label_takes_the_agents_plugins_and_names_dirs() {
        let config = Config::new(Options {
            server: vec!["127.0.0.1:9090".into()],
            token: None,
            agents: 3,
            start_index: 10,
            state_dir: "/tmp/s".into(),
            ramp: 1.0,
            heartbeat: Duration::from_secs(10),
            task_delay: Duration::ZERO,
            task_output: 16,
            sessions: 2,
            change_probability: 0.2,
            labels: vec!["role=edge".into()],
            stats_interval: Duration::ZERO,
            status_file: None,
            reconnect_cap: Duration::from_secs(30),
        })
        .unwrap();
        assert_eq!(config.servers, vec!["https://127.0.0.1:9090"]);
        assert_eq!(config.labels["sim"], "1");
        assert_eq!(config.labels["role"], "edge");
        assert_eq!(config.plugins.len(), 2);
        assert_eq!(config.plugins[0].name, "metrics");
        assert_eq!(config.agent_dir(12), PathBuf::from("/tmp/s/agents/00012"));
    }
}
