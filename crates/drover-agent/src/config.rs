//! Agent configuration. Precedence: flags, then `DROVER_*` variables, then the seed's `CONTROL_PLANE_URL` /
//! `HEARTBEAT_INTERVAL`, then the TOML file (`--config`, default /etc/drover/agent.toml when present),
//! then built-in defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use drover_types::manifest::ResourceKind;
use drover_types::{Labels, duration::parse_duration, labels::parse_labels};
use serde::Deserialize;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/drover/agent.toml";
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "drover-agent",
    version,
    about = "The drover node agent: enrolls with a drover server, reports inventory and heartbeats.",
    after_help = "Examples:\n  \
      # first start: enroll with a join token from `drover token create`\n  \
      drover-agent --server https://cp.example.com:9090 --token drv1.… --label role=edge\n\n  \
      # later starts need no token: the certificate is in the state dir\n  \
      drover-agent --state-dir /var/lib/drover-agent"
)]
pub struct Args {
    /// Server's agent endpoint, e.g. https://cp.example.com:9090 (also CONTROL_PLANE_URL); repeatable
    /// (env: comma-separated) for replicas: the agent attaches to one and moves to the next when it goes.
    #[arg(long, env = "DROVER_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Join token for the first start (from `drover token create`).
    #[arg(long, env = "DROVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the agent keeps its key, certificate and state.
    #[arg(long, env = "DROVER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Node name to ask for at enrollment (default: the hostname).
    #[arg(long, env = "DROVER_NAME")]
    pub name: Option<String>,
    /// Label reported by this node, key=value; repeatable (env: comma-separated).
    #[arg(long = "label", env = "DROVER_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Seconds between heartbeats, or a duration like 500ms (also HEARTBEAT_INTERVAL). Default 10s.
    #[arg(long, env = "DROVER_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Directory under which file actions may read (and, later, write); repeatable. Default: /var/log.
    #[arg(long = "allow-path", env = "DROVER_ALLOW_PATHS", value_delimiter = ',')]
    pub allow_paths: Vec<PathBuf>,
    /// Allow shell tasks and any program (off by default: the node's own choice).
    #[arg(long, env = "DROVER_ALLOW_SHELL")]
    pub allow_shell: bool,
    /// A program tasks may run without --allow-shell (name on PATH or absolute path); repeatable.
    #[arg(long = "allow-exec", value_name = "PROGRAM")]
    pub allow_exec: Vec<String>,
    /// An environment variable tasks may set without --allow-shell: a name, or a prefix ending in `*`;
    /// repeatable. LD_*, DYLD_* and PATH pass only when named (`LD_LIBRARY_PATH`, `LD_*`), never by `*`.
    #[arg(
        long = "allow-env",
        value_name = "NAME",
        env = "DROVER_ALLOW_ENV",
        value_delimiter = ','
    )]
    pub allow_env: Vec<String>,
    /// A resource kind this node accepts besides `file`: container, systemd_unit, shell_job, or all;
    /// repeatable. Container tasks need `container` too; shell_job also needs --allow-shell.
    #[arg(
        long = "allow-kind",
        value_name = "KIND",
        env = "DROVER_ALLOW_KINDS",
        value_delimiter = ','
    )]
    pub allow_kinds: Vec<String>,
    /// A directory containers may bind-mount from (the host path must lie under it); repeatable.
    /// Default: none, so a container with any bind mount is refused.
    #[arg(
        long = "allow-mount",
        value_name = "DIR",
        env = "DROVER_ALLOW_MOUNTS",
        value_delimiter = ','
    )]
    pub allow_mounts: Vec<PathBuf>,
    /// A public key (`ed25519:BASE64`, from `drover keys create`) manifests and commands must be signed
    /// with; repeatable, for rotation. With one, this node applies only signed manifests and runs only
    /// signed tasks and node-changing actions. Default: none (the server is trusted).
    #[arg(
        long = "manifest-key",
        value_name = "KEY",
        env = "DROVER_MANIFEST_KEYS",
        value_delimiter = ','
    )]
    pub manifest_keys: Vec<String>,
    /// Tasks that may run at once; more wait their turn [default: 2 x CPUs].
    #[arg(long, env = "DROVER_MAX_TASKS")]
    pub max_tasks: Option<usize>,
    /// How often every resource is observed again to catch drift [default: 30s].
    #[arg(long, env = "DROVER_RESYNC_INTERVAL")]
    pub resync_interval: Option<String>,
    /// Turn a daemon plugin off; repeatable.
    #[arg(long = "disable-plugin", value_name = "PLUGIN")]
    pub disable_plugins: Vec<String>,
    /// A daemon plugin's update interval, PLUGIN=DURATION; repeatable.
    #[arg(long = "plugin-interval", value_name = "PLUGIN=DURATION")]
    pub plugin_intervals: Vec<String>,
    /// A daemon plugin's deadline per call, PLUGIN=DURATION; repeatable.
    #[arg(long = "plugin-deadline", value_name = "PLUGIN=DURATION")]
    pub plugin_deadlines: Vec<String>,
    /// Serve this agent's own Prometheus metrics at http://ADDR/metrics, without a token (off by default).
    #[arg(long, env = "DROVER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[plugins.NAME]` in the TOML file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFileConfig {
    pub enabled: Option<bool>,
    pub interval: Option<String>,
    pub deadline: Option<String>,
}

/// The TOML file's keys; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    /// Several servers (replicas), tried in order; with `server`, that one comes first.
    #[serde(default)]
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    pub heartbeat_interval: Option<toml::Value>,
    pub log_format: Option<String>,
    #[serde(default)]
    pub allow_paths: Vec<PathBuf>,
    #[serde(default)]
    pub plugins: std::collections::BTreeMap<String, PluginFileConfig>,
    pub allow_shell: Option<bool>,
    #[serde(default)]
    pub allow_exec: Vec<String>,
    #[serde(default)]
    pub allow_env: Vec<String>,
    #[serde(default)]
    pub allow_kinds: Vec<String>,
    #[serde(default)]
    pub allow_mounts: Vec<PathBuf>,
    #[serde(default)]
    pub manifest_keys: Vec<String>,
    pub max_tasks: Option<usize>,
    pub resync_interval: Option<String>,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The servers given (normalized, in order); empty: the one the node enrolled with.
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub state_dir: PathBuf,
    pub name: Option<String>,
    pub labels: Labels,
    pub heartbeat_interval: Duration,
    pub log_json: bool,
    pub allow_paths: Vec<PathBuf>,
    /// The daemon plugins to run, with their timing.
    pub plugins: Vec<crate::daemon::Enabled>,
    /// What this node allows: resource kinds, paths, bind mounts, programs, environment.
    pub policy: crate::policy::Policy,
    pub max_tasks: usize,
    pub resync_interval: Duration,
    /// Where the agent serves its own metrics (`--metrics-listen`).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for crate::daemon::Enabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}(every {:?}, deadline {:?})",
            self.name, self.interval, self.deadline
        )
    }
}

/// Resolves which daemon plugins run and how: built-in defaults, then the file, then flags.
fn resolve_plugins(
    args: &Args,
    file: &std::collections::BTreeMap<String, PluginFileConfig>,
) -> Result<Vec<crate::daemon::Enabled>, ConfigError> {
    let registry = crate::daemon::registry();
    let known = || {
        registry
            .iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let check = |name: &str| {
        if registry.iter().any(|e| e.name == name) {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "unknown daemon plugin {name:?}; this agent has: {}",
                known()
            )))
        }
    };
    let pair = |arg: &str, flag: &str| -> Result<(String, Duration), ConfigError> {
        let (name, d) = arg.split_once('=').ok_or_else(|| {
            ConfigError::Invalid(format!("{flag} {arg:?}: expected PLUGIN=DURATION"))
        })?;
        check(name)?;
        let d =
            parse_duration(d).map_err(|e| ConfigError::Invalid(format!("{flag} {arg:?}: {e}")))?;
        Ok((name.to_string(), d))
    };
    for name in file.keys().chain(args.disable_plugins.iter()) {
        check(name)?;
    }
    let intervals = args
        .plugin_intervals
        .iter()
        .map(|a| pair(a, "--plugin-interval"))
        .collect::<Result<Vec<_>, _>>()?;
    let deadlines = args
        .plugin_deadlines
        .iter()
        .map(|a| pair(a, "--plugin-deadline"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut enabled = Vec::new();
    for entry in registry {
        let fc = file.get(entry.name).cloned().unwrap_or_default();
        if fc.enabled == Some(false) || args.disable_plugins.iter().any(|d| d == entry.name) {
            continue;
        }
        let from_file = |v: &Option<String>, what: &str| -> Result<Option<Duration>, ConfigError> {
            v.as_deref()
                .map(|t| {
                    parse_duration(t).map_err(|e| {
                        ConfigError::Invalid(format!("plugins.{}.{what}: {e}", entry.name))
                    })
                })
                .transpose()
        };
        let flag = |list: &[(String, Duration)]| {
            list.iter()
                .rev()
                .find(|(n, _)| n == entry.name)
                .map(|(_, d)| *d)
        };
        enabled.push(crate::daemon::Enabled {
            name: entry.name,
            make: entry.make,
            interval: flag(&intervals)
                .or(from_file(&fc.interval, "interval")?)
                .unwrap_or(entry.interval),
            deadline: flag(&deadlines)
                .or(from_file(&fc.deadline, "deadline")?)
                .unwrap_or(entry.deadline),
        });
    }
    Ok(enabled)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The default state dir: system-wide for root, per-user otherwise.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/drover-agent");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("drover-agent")
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl AgentConfig {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        // Each step validates one setting; the order is the order errors are reported in.
        let file = load_file(args.config.as_deref())?;
        let plugins = resolve_plugins(&args, &file.plugins)?;
        let heartbeat_interval = heartbeat_interval(
            args.heartbeat_interval.clone(),
            file.heartbeat_interval.as_ref(),
        )?;
        let labels = labels(file.labels.clone(), &args.labels)?;
        let allow_paths = flag_or_file(&args.allow_paths, &file.allow_paths);
        require_absolute(&allow_paths, "--allow-path")?;
        let policy = resolve_policy(&args, &file, &allow_paths)?;
        let max_tasks = max_tasks(args.max_tasks.or(file.max_tasks))?;
        let resync_interval = resync_interval(
            args.resync_interval
                .clone()
                .or(file.resync_interval.clone()),
        )?;
        let servers = resolve_servers(&args, &file)?;
        let log_json = log_json(args.log_format.clone().or(file.log_format.clone()))?;
        Ok(Self {
            servers,
            token: args.token.or(file.token),
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            name: args.name.or(file.name),
            labels,
            heartbeat_interval,
            log_json,
            allow_paths,
            plugins,
            policy,
            max_tasks,
            resync_interval,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
        })
    }
}

/// The file named by `--config`, else the default file when it exists, else no file.
fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    match path {
        Some(path) => read_file(path),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
            read_file(Path::new(DEFAULT_CONFIG_FILE))
        }
        None => Ok(FileConfig::default()),
    }
}

/// The flag, then the seed's `HEARTBEAT_INTERVAL`, then the file (a string or a number of seconds).
fn heartbeat_interval(
    flag: Option<String>,
    file: Option<&toml::Value>,
) -> Result<Duration, ConfigError> {
    let text = flag
        .or_else(|| env_nonempty("HEARTBEAT_INTERVAL"))
        .or_else(|| {
            file.map(|v| match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => "invalid".to_string(),
            })
        });
    match text {
        Some(t) => {
            parse_duration(&t).map_err(|e| ConfigError::Invalid(format!("heartbeat interval: {e}")))
        }
        None => Ok(DEFAULT_HEARTBEAT),
    }
}

/// The file's labels, overridden key by key by `--label`.
fn labels(mut labels: Labels, flags: &[String]) -> Result<Labels, ConfigError> {
    labels.extend(parse_labels(flags).map_err(|e| ConfigError::Invalid(e.to_string()))?);
    drover_types::labels::validate_labels(&labels)
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    Ok(labels)
}

/// A list given by flags replaces the file's list rather than adding to it.
fn flag_or_file<T: Clone>(flags: &[T], file: &[T]) -> Vec<T> {
    if flags.is_empty() { file } else { flags }.to_vec()
}

fn require_absolute(paths: &[PathBuf], flag: &str) -> Result<(), ConfigError> {
    match paths.iter().find(|p| !p.is_absolute()) {
        Some(p) => Err(ConfigError::Invalid(format!(
            "{flag} {}: use an absolute path",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// What this node allows, from flags and the file together.
fn resolve_policy(
    args: &Args,
    file: &FileConfig,
    allow_paths: &[PathBuf],
) -> Result<crate::policy::Policy, ConfigError> {
    let allow_exec = allowed_programs(args, file)?;
    let allow_kinds = allowed_kinds(args, file)?;
    let allow_mounts = flag_or_file(&args.allow_mounts, &file.allow_mounts);
    require_absolute(&allow_mounts, "--allow-mount")?;
    let allow_env = allowed_env(args, file)?;
    let manifest_keys = manifest_keys(args, file)?;
    Ok(crate::policy::Policy {
        allow_shell: args.allow_shell || file.allow_shell.unwrap_or(false),
        allow_exec,
        allow_env,
        manifest_keys,
        ..crate::policy::Policy::new(allow_paths)
            .with_kinds(&allow_kinds)
            .with_mount_roots(&allow_mounts)
    })
}

/// `--allow-exec` programs, resolved to paths now so a missing one is reported at start.
fn allowed_programs(args: &Args, file: &FileConfig) -> Result<Vec<PathBuf>, ConfigError> {
    args.allow_exec
        .iter()
        .chain(file.allow_exec.iter())
        .map(|program| {
            crate::tasks::exec::resolve_program(program).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--allow-exec {program}: no such program on this node"
                ))
            })
        })
        .collect()
}

/// `--allow-kind` names, `all` standing for every kind.
fn allowed_kinds(args: &Args, file: &FileConfig) -> Result<Vec<ResourceKind>, ConfigError> {
    let mut kinds = Vec::new();
    for name in args.allow_kinds.iter().chain(file.allow_kinds.iter()) {
        let name = name.trim();
        if name == "all" {
            kinds.extend(ResourceKind::RESOURCES);
            continue;
        }
        match ResourceKind::parse(name) {
            k if ResourceKind::RESOURCES.contains(&k) => kinds.push(k),
            _ => {
                let known: Vec<&str> = ResourceKind::RESOURCES.iter().map(|k| k.as_str()).collect();
                return Err(ConfigError::Invalid(format!(
                    "--allow-kind {name:?}: use one of {} or all",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(kinds)
}

fn allowed_env(args: &Args, file: &FileConfig) -> Result<Vec<String>, ConfigError> {
    let names: Vec<String> = args
        .allow_env
        .iter()
        .chain(file.allow_env.iter())
        .map(|n| n.trim().to_string())
        .collect();
    if let Some(n) = names.iter().find(|n| {
        let name = n.strip_suffix('*').unwrap_or(n);
        (name.is_empty() && n.as_str() != "*")
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }) {
        return Err(ConfigError::Invalid(format!(
            "--allow-env {n:?}: use a variable name like LANG, or a prefix like APP_*"
        )));
    }
    Ok(names)
}

/// The manifest keys, each once, in the order given.
fn manifest_keys(
    args: &Args,
    file: &FileConfig,
) -> Result<Vec<drover_types::signing::PublicKey>, ConfigError> {
    let mut keys = Vec::new();
    for k in args.manifest_keys.iter().chain(file.manifest_keys.iter()) {
        let key = drover_types::signing::PublicKey::parse(k)
            .map_err(|e| ConfigError::Invalid(format!("--manifest-key: {e}")))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn max_tasks(given: Option<usize>) -> Result<usize, ConfigError> {
    match given {
        Some(0) => Err(ConfigError::Invalid(
            "--max-tasks must be at least 1".into(),
        )),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(2)),
    }
}

fn resync_interval(given: Option<String>) -> Result<Duration, ConfigError> {
    match given {
        Some(t) => {
            parse_duration(&t).map_err(|e| ConfigError::Invalid(format!("resync interval: {e}")))
        }
        None => Ok(Duration::from_secs(30)),
    }
}

/// `--server`, else the seed's `CONTROL_PLANE_URL`, else the file's `server` and `servers`.
fn resolve_servers(args: &Args, file: &FileConfig) -> Result<Vec<String>, ConfigError> {
    let given = if !args.server.is_empty() {
        args.server.clone()
    } else if let Some(url) = env_nonempty("CONTROL_PLANE_URL") {
        vec![url]
    } else {
        file.server
            .iter()
            .chain(file.servers.iter())
            .cloned()
            .collect()
    };
    crate::servers::parse(&given).map_err(|e| ConfigError::Invalid(format!("--server: {e}")))
}

/// Whether logs are JSON; `text` (the default) and `json` are the only formats.
fn log_json(format: Option<String>) -> Result<bool, ConfigError> {
    match format.as_deref() {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(f) => Err(ConfigError::Invalid(format!(
            "log format {f:?}: use text or json"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str, flags: &[&str]) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec!["drover-agent", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(flags);
        AgentConfig::from_args(Args::parse_from(argv))
    }

    #[test]
    fn the_default_policy_accepts_files_and_nothing_that_runs_code() {
        let c = config("", &[]).unwrap();
        assert!(c.policy.allows_kind(&ResourceKind::File));
        for kind in [
            ResourceKind::Container,
            ResourceKind::SystemdUnit,
            ResourceKind::ShellJob,
        ] {
            assert!(!c.policy.allows_kind(&kind), "{kind}");
        }
        assert!(!c.policy.allow_shell);
        assert!(c.policy.mount_roots.is_empty() && c.policy.allow_env.is_empty());
    }

    #[test]
    fn the_policy_comes_from_flags_and_the_toml_file() {
        let c = config(
            "allow_kinds = [\"container\"]\nallow_env = [\"LANG\"]\nallow_mounts = [\"/srv\"]\n",
            &["--allow-kind", "systemd_unit", "--allow-env", "APP_*"],
        )
        .unwrap();
        assert!(
            c.policy.allows_kind(&ResourceKind::Container)
                && c.policy.allows_kind(&ResourceKind::SystemdUnit)
        );
        assert!(!c.policy.allows_kind(&ResourceKind::ShellJob));
        assert_eq!(c.policy.allow_env, vec!["APP_*", "LANG"]);
        assert_eq!(c.policy.mount_roots, vec![PathBuf::from("/srv")]);
        let all = config("", &["--allow-kind", "all"]).unwrap();
        assert!(
            ResourceKind::RESOURCES
                .iter()
                .all(|k| all.policy.allows_kind(k))
        );
    }

    #[test]
    fn bad_policy_entries_are_refused_naming_the_flag() {
        let e = config("", &["--allow-kind", "volume"]).unwrap_err();
        assert!(e.to_string().contains("--allow-kind \"volume\""), "{e}");
        let e = config("", &["--allow-mount", "relative"]).unwrap_err();
        assert!(e.to_string().contains("--allow-mount"), "{e}");
        let e = config("allow_env = [\"A=B\"]\n", &[]).unwrap_err();
        assert!(e.to_string().contains("--allow-env"), "{e}");
    }
}
