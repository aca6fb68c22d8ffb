//! What every simulated agent shares: the command line's choices, the labels and plugins, the strata
//! (arch, site, offline share) and fail rules, and the one real action's context.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_agent::actions::ActionCtx;
use drover_agent::policy::Policy;
use drover_types::Labels;
use drover_types::labels::{parse_labels, validate_labels};

use crate::faults::{FailRule, Profile, Strata};
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
    pub strata: Strata,
    pub fail_rules: Vec<FailRule>,
    pub offline_after: Duration,
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
    /// Each agent's arch and site, and which agents are offline.
    pub strata: Strata,
    /// `--fail-when`: desired states that fail on one stratum.
    pub fail_rules: Vec<FailRule>,
    /// How long an offline agent stays attached before it goes for good (zero: it never attaches).
    pub offline_after: Duration,
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
            strata: o.strata,
            fail_rules: o.fail_rules,
            offline_after: o.offline_after,
            action_ctx: ActionCtx {
                policy: Arc::new(Policy::new(&[])),
            },
            stats: Stats::default(),
        })
    }

    pub fn agent_dir(&self, index: u32) -> PathBuf {
        self.state_dir.join("agents").join(format!("{index:05}"))
    }

    /// Agent `index`'s arch and labels.
    pub fn profile(&self, index: u32) -> Profile {
        self.strata.profile(index, &self.labels)
    }

    /// For each fail rule, whether agent `index`'s profile is in its stratum.
    pub fn rules_for(&self, profile: &Profile) -> Vec<bool> {
        self.fail_rules
            .iter()
            .map(|r| r.applies_to(profile))
            .collect()
    }

    /// This process's agents by arch, the offline ones, and the nodes each fail rule fails on: one line
    /// for the log, so a benchmark can say what it ran against.
    pub fn summary(&self) -> String {
        let mut archs: std::collections::BTreeMap<String, u32> = Default::default();
        let mut offline = 0u32;
        let mut failing = vec![0u32; self.fail_rules.len()];
        for k in 0..self.agents {
            let index = self.start_index.saturating_add(k);
            let profile = self.profile(index);
            for (n, hit) in failing.iter_mut().zip(self.rules_for(&profile)) {
                *n += u32::from(hit);
            }
            *archs.entry(profile.arch).or_default() += 1;
            offline += u32::from(self.strata.offline(index));
        }
        let archs: Vec<String> = archs.iter().map(|(a, n)| format!("{a}={n}")).collect();
        let mut line = format!(
            "strata: agents={} {} sites={} offline={offline}",
            self.agents,
            archs.join(" "),
            self.strata.sites
        );
        for (rule, n) in self.fail_rules.iter().zip(failing) {
            line.push_str(&format!("; fail-when {rule}: {n} agents"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            strata: Strata::new("aarch64=50%".parse().unwrap(), 2, 0.0).unwrap(),
            fail_rules: vec!["arch=aarch64,content=BAD".parse().unwrap()],
            offline_after: Duration::ZERO,
        })
        .unwrap();
        assert_eq!(config.servers, vec!["https://127.0.0.1:9090"]);
        assert_eq!(config.labels["sim"], "1");
        assert_eq!(config.labels["role"], "edge");
        assert_eq!(config.plugins.len(), 2);
        assert_eq!(config.plugins[0].name, "metrics");
        assert_eq!(config.agent_dir(12), PathBuf::from("/tmp/s/agents/00012"));
        let p = config.profile(11);
        assert_eq!(p.labels["sim"], "1");
        assert_eq!(p.labels["role"], "edge");
        assert!(p.labels["site"].starts_with("site-0"));
        assert_eq!(config.rules_for(&p), [p.arch == "aarch64"]);
        let summary = config.summary();
        assert!(summary.starts_with("strata: agents=3 "), "{summary}");
        assert!(
            summary.contains("sites=2 offline=0; fail-when arch=aarch64,content=BAD,as=change: "),
            "{summary}"
        );
    }
}
