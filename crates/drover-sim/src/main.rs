//! `drover-sim`: runs many simulated agents in one process against a real server, for benchmarks.
//! Each simulated agent has its own key, certificate and mTLS stream and speaks the real protocol through
//! the agent library's own message code; what it does on the node is faked, cheaply.

mod agent;
mod config;
mod desired;
mod faults;
mod fleet;
mod limits;
mod payloads;
mod stats;
mod tasks;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use drover_types::duration::parse_duration;

const EXAMPLES: &str = "Examples:
  drover-sim --server https://127.0.0.1:9090 --token drv1.… --agents 19000 --state-dir /var/tmp/sim
  drover-sim --state-dir /var/tmp/sim --agents 19000            # again: reconnects, no enrollment
  drover-sim --state-dir /var/tmp/sim --agents 10000 --start-index 10000 --token drv1.… --server …
  drover-sim … --status-file /tmp/sim.json --stats-interval 5s --task-delay 2s
  drover-sim … --task-output 256KiB                               # every task prints 256 KiB
  drover-sim … --fail-when arch=aarch64,content=BAD               # aarch64 nodes fail revisions saying BAD
  drover-sim … --fail-when label:site=site-03,content=NET,as=infra --offline-share 0.02

Nodes report an arch drawn by agent index (--arch-mix, default aarch64 3 %, armv7 2 %, the rest
x86_64) and a `site` label (site-00 .. site-07 with --sites 8), the same on every run. A --fail-when
rule names a stratum (arch=ARCH, label:KEY=VALUE; all must hold, none: every node), a marker
(content=TEXT: a File's content contains TEXT, inline or sent along with the update; sha256=HEX: a
File's sha256 starts with HEX) and a class (as=change, the default: \"exit code 1: broken\"; as=infra:
\"dial tcp …: connection refused\", which the server counts as an infrastructure failure). The nodes
of the stratum report that File Failed while their desired state carries the marker; every node
counts in `marked` while it does.

Each agent keeps its key and certificate in STATE_DIR/agents/NNNNN. A status line
(`agents=… enrolled=… connected=… …`) goes to stderr every --stats-interval; --status-file
gets the same counters as JSON, rewritten four times a second.";

/// Runs N simulated drover agents in one process, for benchmarks (tests use real agents).
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    /// The server's agent port, https://HOST:PORT (default: the address each agent enrolled with);
    /// repeatable or comma-separated for replicas, as the agent's
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// Join token (from `drover token create`); only needed for agents not enrolled yet
    #[arg(long, env = "DROVER_SIM_TOKEN")]
    token: Option<String>,
    /// How many agents to run
    #[arg(long)]
    agents: u32,
    /// Index of the first agent, so several processes can split one fleet
    #[arg(long, default_value_t = 0)]
    start_index: u32,
    /// Where the agents' identities live (DIR/agents/NNNNN)
    #[arg(long)]
    state_dir: PathBuf,
    /// New agents (enrollments or first connections) per second
    #[arg(long, default_value_t = 500.0)]
    ramp: f64,
    /// Heartbeat interval (each beat is jittered by ±5 %)
    #[arg(long, default_value = "10s", value_parser = duration)]
    heartbeat_interval: Duration,
    /// How long a task "runs" before it exits (0: at once)
    #[arg(long, default_value = "0s", value_parser = duration)]
    task_delay: Duration,
    /// What each task prints, in bytes (`16`, `256KiB`; at most 1MiB, the most a real agent sends in one
    /// message): large output keeps the server's per-connection read buffers large
    #[arg(long, default_value = "16", value_parser = output_size)]
    task_output: usize,
    /// Daemon-plugin sessions per agent (the first N of the agent's plugins; 0: none)
    #[arg(long, default_value_t = 5)]
    sessions: usize,
    /// Chance that a session payload changed at a tick (only changed payloads are sent)
    #[arg(long, default_value_t = 0.2)]
    change_probability: f64,
    /// Label for every agent, key=value; repeatable (`sim=1` is always added)
    #[arg(long = "label")]
    labels: Vec<String>,
    /// How often to print the status line on stderr (0: never)
    #[arg(long, default_value = "5s", value_parser = duration)]
    stats_interval: Duration,
    /// A JSON file with the counters, rewritten four times a second
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Longest wait between reconnect attempts (the agent's is 30s). A smaller one compresses a restart
    /// storm: N agents coming back within C seconds arrive as fast as N * 30s / C agents would
    #[arg(long, default_value = "30s", value_parser = duration)]
    reconnect_cap: Duration,
    /// Runtime worker threads (default: one per core)
    #[arg(long)]
    threads: Option<usize>,
    /// Share of each arch other than x86_64, drawn by agent index (`aarch64=3%,armv7=2%`; empty: all
    /// x86_64)
    #[arg(long, default_value = faults::DEFAULT_ARCH_MIX)]
    arch_mix: faults::ArchMix,
    /// Sites the agents are spread over, by index: label `site=site-00` .. (0: no site label; a
    /// `--label site=…` wins)
    #[arg(long, default_value_t = faults::DEFAULT_SITES)]
    sites: u32,
    /// Fail desired states on one stratum: `arch=aarch64,content=BAD[,as=change|infra]` (repeatable)
    #[arg(long = "fail-when")]
    fail_when: Vec<faults::FailRule>,
    /// Share of the agents (0 to 1, drawn by index) that are offline: they enroll if they must, and
    /// never attach (or leave for good after --offline-after)
    #[arg(long, default_value_t = 0.0)]
    offline_share: f64,
    /// How long the offline share stays attached, from its start, before it leaves for good (0: it
    /// never attaches)
    #[arg(long, default_value = "0s", value_parser = duration)]
    offline_after: Duration,
}

/// A duration like `10s` or `500ms`; unlike elsewhere, zero is allowed (no delay, no status line).
fn duration(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s).map_err(|e| e.to_string())
}

/// An output size, at most what one agent message carries.
fn output_size(s: &str) -> Result<usize, String> {
    let n = drover_types::size::parse_size(s).map_err(|e| e.to_string())?;
    match usize::try_from(n) {
        Ok(n) if (1..=tasks::MAX_OUTPUT).contains(&n) => Ok(n),
        _ => Err(format!("{s}: give 1 byte to 1MiB")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if !(args.ramp > 0.0 && args.ramp.is_finite()) {
        bail!("--ramp must be a positive number of agents per second");
    }
    if !(0.0..=1.0).contains(&args.change_probability) {
        bail!("--change-probability must be between 0 and 1");
    }
    if args.heartbeat_interval.is_zero() {
        bail!("--heartbeat-interval must be more than 0");
    }
    let strata = faults::Strata::new(args.arch_mix, args.sites, args.offline_share)?;
    let files = limits::raise_open_files().context("cannot raise the open-file limit")?;
    limits::check_capacity(u64::from(args.agents), files.soft)?;
    let config = config::Config::new(config::Options {
        server: args.server,
        token: args.token,
        agents: args.agents,
        start_index: args.start_index,
        state_dir: args.state_dir,
        ramp: args.ramp,
        heartbeat: args.heartbeat_interval,
        task_delay: args.task_delay,
        task_output: args.task_output,
        sessions: args.sessions,
        change_probability: args.change_probability,
        labels: args.labels,
        stats_interval: args.stats_interval,
        status_file: args.status_file,
        reconnect_cap: args.reconnect_cap,
        strata,
        fail_rules: args.fail_when,
        offline_after: args.offline_after,
    })?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    let runtime = runtime.build().context("cannot start the runtime")?;
    let result = runtime.block_on(fleet::run(config));
    // Thousands of streams: do not wait for each to close politely.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_may_be_zero() {
        assert_eq!(duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert_eq!(duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn the_example_command_line_parses() {
        let args = Args::try_parse_from([
            "drover-sim",
            "--server",
            "https://127.0.0.1:9090",
            "--token",
            "drv1.x",
            "--agents",
            "19000",
            "--state-dir",
            "/tmp/sim",
            "--label",
            "rack=r1",
        ])
        .unwrap();
        assert_eq!(args.agents, 19_000);
        assert_eq!(args.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(args.task_delay, Duration::ZERO);
        assert_eq!(args.reconnect_cap, Duration::from_secs(30));
        assert_eq!(args.task_output, 16);
        assert_eq!(args.arch_mix, faults::DEFAULT_ARCH_MIX.parse().unwrap());
        assert_eq!(args.sites, 8);
        assert!(args.fail_when.is_empty());
        assert_eq!(args.offline_share, 0.0);
    }

    #[test]
    fn the_rollout_flags_parse() {
        let args = Args::try_parse_from([
            "drover-sim",
            "--agents",
            "10",
            "--state-dir",
            "/tmp/sim",
            "--arch-mix",
            "aarch64=10%",
            "--sites",
            "0",
            "--fail-when",
            "arch=aarch64,content=BAD",
            "--fail-when",
            "label:site=site-01,content=NET,as=infra",
            "--offline-share",
            "0.02",
            "--offline-after",
            "30s",
        ])
        .unwrap();
        assert_eq!(args.fail_when.len(), 2);
        assert_eq!(args.fail_when[1].class, faults::FailureClass::Infra);
        assert_eq!(args.offline_after, Duration::from_secs(30));
        assert_eq!(args.sites, 0);
        let bad = Args::try_parse_from([
            "drover-sim",
            "--agents",
            "1",
            "--state-dir",
            "/tmp/sim",
            "--fail-when",
            "arch=aarch64",
        ])
        .unwrap_err()
        .to_string();
        assert!(bad.contains("give content=TEXT or sha256=HEX"), "{bad}");
    }

    #[test]
    fn output_sizes_are_bounded_by_one_agent_message() {
        assert_eq!(output_size("256KiB").unwrap(), 256 * 1024);
        assert_eq!(output_size("1MiB").unwrap(), 1024 * 1024);
        assert!(output_size("0").is_err());
        assert!(output_size("2MiB").is_err());
        assert!(output_size("lots").is_err());
    }
}
