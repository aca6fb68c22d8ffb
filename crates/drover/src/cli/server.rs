//! `drover server`: configuration (flags, then `DROVER_*` variables, then the TOML file) and the run loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use drover_server::http::ApiTls;
use drover_server::{RunningServer, ServerConfig};
use drover_types::duration::parse_duration;
use drover_types::size::parse_size;
use serde::Deserialize;

use super::usage::{UsageContext, usage};
use super::{Global, default_data_dir};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/drover/server.toml";

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover server\n  \
    drover server --data-dir /var/lib/drover --listen 0.0.0.0:8080 --agent-listen 0.0.0.0:9090\n  \
    drover server --config /etc/drover/server.toml --log-format json\n  \
    drover server --listen 0.0.0.0:8080 --api-tls --agent-san cp.example.com\n  \
    drover server --api-cert /etc/drover/api-chain.pem --api-key /etc/drover/api.key\n  \
    drover server --lost-after 30m --task-retention 30d --task-output-limit 10GiB\n  \
    drover server --database postgres://drover:secret@db.example.com:5432/drover\n  \
    drover server --database postgres://drover:secret@db/drover --cluster-secret-file /etc/drover/cluster.secret\n  \
    drover server --database postgres://drover:secret@db/drover --cluster-secret-file /etc/drover/cluster.secret --nats nats://nats.example.com:4222\n  \
    drover server --database 'postgres://drover:secret@db/drover?sslmode=verify-full&sslrootcert=/etc/drover/pg-ca.pem' --nats nats://nats.example.com:4222 --nats-ca /etc/drover/nats-ca.pem --nats-creds /etc/drover/replica.creds")]
pub struct ServerArgs {
    /// Keep the fleet's records in PostgreSQL at this URL (postgres://user:password@host:port/database,
    /// or ?host=/socket/dir for a unix socket) instead of SQLite in the data dir; the CA and the admin
    /// token stay in the data dir. Plain unless the URL asks for TLS: ?sslmode=require (encrypted),
    /// ?sslmode=verify-full&sslrootcert=/etc/drover/pg-ca.pem (also checks the certificate and host).
    #[arg(long, env = "DROVER_DATABASE")]
    pub database: Option<String>,
    /// With --database: keep the CA and the bootstrap admin token in PostgreSQL, sealed with the secret in
    /// this file (16+ bytes, e.g. `openssl rand -hex 32`), so every replica given the same file shares
    /// them: a join token from one enrolls with any, and admin.token in any data dir works against all.
    #[arg(long, env = "DROVER_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// With --database: connect to the other replicas through the NATS server at this URL
    /// (nats://host:port), so a command for an agent reaches the replica that holds its stream and
    /// followers see output stored by any replica. Every replica is started with the same flags.
    #[arg(long, env = "DROVER_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// With --nats: reach nats-server over TLS, verifying its certificate with this PEM CA (TLS is then
    /// required; a tls:// URL or the server's own demand also turn it on).
    #[arg(long, env = "DROVER_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// With --nats: log in with this user's JWT credentials file (.creds, as `nsc generate creds` writes).
    #[arg(
        long,
        env = "DROVER_NATS_CREDS",
        value_name = "FILE",
        conflicts_with = "nats_nkey"
    )]
    pub nats_creds: Option<PathBuf>,
    /// With --nats: log in with the user nkey seed (SU...) in this file, for a nats-server that lists
    /// the user's public key (`authorization { users = [{ nkey: U... }] }`).
    #[arg(long, env = "DROVER_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// REST API and dashboard address [default: 127.0.0.1:8080].
    #[arg(long, env = "DROVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve the REST API over TLS with a certificate from the server's CA (operators pin the CA with
    /// `drover login`); the certificate names `drover-server`, localhost, loopback and every --agent-san.
    #[arg(long, env = "DROVER_API_TLS")]
    pub api_tls: bool,
    /// Serve the REST API over TLS with this PEM certificate chain (leaf first, ending with the CA that
    /// `drover login` pins) instead; needs --api-key.
    #[arg(long, env = "DROVER_API_CERT", requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The PEM private key of --api-cert.
    #[arg(long, env = "DROVER_API_KEY", requires = "api_cert")]
    pub api_key: Option<PathBuf>,
    /// The URL HTTP (MIaaS) agents are told to reach this server at when they register
    /// [default: http://localhost:PORT for a loopback --listen, else the --listen address; https with TLS].
    #[arg(long, env = "DROVER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Agent gRPC address, always TLS [default: 0.0.0.0:9090].
    #[arg(long, env = "DROVER_AGENT_LISTEN")]
    pub agent_listen: Option<SocketAddr>,
    /// Extra DNS name or IP for the server's TLS certificate; repeatable.
    #[arg(long = "agent-san")]
    pub agent_sans: Vec<String>,
    /// Let MIaaS HTTP agents register without a join token (labs only).
    #[arg(long, env = "DROVER_OPEN_REGISTRATION")]
    pub open_registration: bool,
    /// Let selection use the labels agents report after enrolling (hello, re-registration) without an
    /// operator accepting them (`drover nodes accept-labels`): a node could then claim another group's labels.
    #[arg(long, env = "DROVER_TRUST_REPORTED_LABELS")]
    pub trust_reported_labels: bool,
    /// A node is NotReady after this many of its heartbeat intervals without one [default: 2].
    #[arg(long, env = "DROVER_NOT_READY_AFTER")]
    pub not_ready_after: Option<f64>,
    /// A node is Offline after this many of its heartbeat intervals without one [default: 5].
    #[arg(long, env = "DROVER_OFFLINE_AFTER")]
    pub offline_after: Option<f64>,
    /// Metrics samples kept per node [default: 360: six hours at one a minute].
    #[arg(long, env = "DROVER_METRICS_HISTORY")]
    pub metrics_history: Option<usize>,
    /// At most one metrics sample per node per this much of the clock; every heartbeat still updates a
    /// node's latest metrics [default: 1m].
    #[arg(long, env = "DROVER_METRICS_HISTORY_INTERVAL")]
    pub metrics_history_interval: Option<String>,
    /// A task's run ends as Lost when its node has not been heard from for this long [default: 10m].
    #[arg(long, env = "DROVER_LOST_AFTER")]
    pub lost_after: Option<String>,
    /// Finished tasks older than this are deleted with their output [default: 7d].
    #[arg(long, env = "DROVER_TASK_RETENTION")]
    pub task_retention: Option<String>,
    /// All task output together stays under this size; the oldest finished tasks' output goes first
    /// [default: 4GiB].
    #[arg(long, env = "DROVER_TASK_OUTPUT_LIMIT")]
    pub task_output_limit: Option<String>,
    /// Also serve Prometheus metrics at /metrics on this address, without a token (off by default; on the
    /// REST address /metrics always needs an operator token).
    #[arg(long, env = "DROVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Export per-node CPU, memory, disk and GPU gauges in /metrics: a set of series per node, so off by
    /// default for large fleets.
    #[arg(long, env = "DROVER_METRICS_PER_NODE")]
    pub metrics_per_node: bool,
    /// TOML configuration file [default: /etc/drover/server.toml when present].
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    nats: Option<String>,
    nats_ca: Option<PathBuf>,
    nats_creds: Option<PathBuf>,
    nats_nkey: Option<PathBuf>,
    listen: Option<SocketAddr>,
    api_tls: Option<bool>,
    api_cert: Option<PathBuf>,
    api_key: Option<PathBuf>,
    advertise_url: Option<String>,
    agent_listen: Option<SocketAddr>,
    #[serde(default)]
    agent_sans: Vec<String>,
    open_registration: Option<bool>,
    trust_reported_labels: Option<bool>,
    not_ready_after: Option<f64>,
    offline_after: Option<f64>,
    metrics_history: Option<usize>,
    metrics_history_interval: Option<String>,
    lost_after: Option<String>,
    task_retention: Option<String>,
    task_output_limit: Option<String>,
    metrics_listen: Option<SocketAddr>,
    metrics_per_node: Option<bool>,
    log_format: Option<String>,
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("the config file {} is invalid", path.display()))
}

/// Merges flags, environment and file into a server configuration, plus the log format.
pub fn resolve(args: &ServerArgs, global: &Global) -> anyhow::Result<(ServerConfig, bool)> {
    let mut file = match &args.config {
        Some(p) => read_file(p)?,
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
            read_file(Path::new(DEFAULT_CONFIG_FILE))?
        }
        None => FileConfig::default(),
    };
    let data_dir = global
        .data_dir
        .clone()
        .or(file.data_dir.take())
        .unwrap_or_else(default_data_dir);
    let mut config = ServerConfig::new(data_dir);
    resolve_cluster(args, &mut file, &mut config)?;
    resolve_listeners(args, &mut file, &mut config)?;
    resolve_limits(args, &mut file, &mut config)?;
    let json = match args.log_format.clone().or(file.log_format).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => usage!("log format {other:?}: use text or json"),
    };
    Ok((config, json))
}

/// PostgreSQL, the cluster secret and NATS: what replicas share, and which needs which.
fn resolve_cluster(
    args: &ServerArgs,
    file: &mut FileConfig,
    config: &mut ServerConfig,
) -> anyhow::Result<()> {
    if let Some(url) = args.database.clone().or(file.database.take()) {
        config.database = Some(check_database_url(&url)?);
    }
    config.cluster_secret_file = args
        .cluster_secret_file
        .clone()
        .or(file.cluster_secret_file.take());
    if config.cluster_secret_file.is_some() && config.database.is_none() {
        usage!("--cluster-secret-file needs --database: the CA is shared through PostgreSQL");
    }
    if let Some(url) = args.nats.clone().or(file.nats.take()) {
        config.nats = Some(check_nats_url(&url)?);
    }
    if config.nats.is_some() && config.database.is_none() {
        usage!("--nats needs --database: replicas share their records through PostgreSQL");
    }
    config.nats_options = drover_server::fleet::NatsOptions {
        ca: args.nats_ca.clone().or(file.nats_ca.take()),
        creds: args.nats_creds.clone().or(file.nats_creds.take()),
        nkey: args.nats_nkey.clone().or(file.nats_nkey.take()),
    };
    let o = &config.nats_options;
    if o.creds.is_some() && o.nkey.is_some() {
        usage!("--nats-creds and --nats-nkey are two ways to log in: give one");
    }
    if config.nats.is_none() {
        for (given, flag) in [
            (o.ca.is_some(), "--nats-ca"),
            (o.creds.is_some(), "--nats-creds"),
            (o.nkey.is_some(), "--nats-nkey"),
        ] {
            if given {
                usage!("{flag} needs --nats: it is how this replica reaches nats-server");
            }
        }
    }
    Ok(())
}

/// Where the server listens and what it tells agents and the REST API's clients.
fn resolve_listeners(
    args: &ServerArgs,
    file: &mut FileConfig,
    config: &mut ServerConfig,
) -> anyhow::Result<()> {
    if let Some(a) = args.listen.or(file.listen) {
        config.listen = a;
    }
    let cert = args.api_cert.clone().or(file.api_cert.take());
    let key = args.api_key.clone().or(file.api_key.take());
    config.api_tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(ApiTls::Files { cert, key }),
        (None, None) if args.api_tls || file.api_tls.unwrap_or(false) => Some(ApiTls::ServerCa),
        (None, None) => None,
        _ => usage!("--api-cert and --api-key go together"),
    };
    if let Some(url) = args.advertise_url.clone().or(file.advertise_url.take()) {
        config.advertise_url = Some(check_advertise_url(&url)?);
    }
    if let Some(a) = args.agent_listen.or(file.agent_listen) {
        config.agent_listen = a;
    }
    config.agent_sans = std::mem::take(&mut file.agent_sans);
    config.agent_sans.extend(args.agent_sans.iter().cloned());
    config.open_registration = args.open_registration || file.open_registration.unwrap_or(false);
    config.trust_reported_labels =
        args.trust_reported_labels || file.trust_reported_labels.unwrap_or(false);
    Ok(())
}

/// Liveness, history, retention and output limits, and the metrics endpoint.
fn resolve_limits(
    args: &ServerArgs,
    file: &mut FileConfig,
    config: &mut ServerConfig,
) -> anyhow::Result<()> {
    if let Some(n) = args.not_ready_after.or(file.not_ready_after) {
        config.liveness.not_ready_after = n;
    }
    if let Some(n) = args.offline_after.or(file.offline_after) {
        config.liveness.offline_after = n;
    }
    let l = config.liveness;
    if !(l.not_ready_after > 0.0 && l.offline_after > l.not_ready_after) {
        usage!(
            "liveness multiples must satisfy 0 < --not-ready-after ({}) < --offline-after ({})",
            l.not_ready_after,
            l.offline_after
        );
    }
    if let Some(n) = args.metrics_history.or(file.metrics_history) {
        if n == 0 {
            usage!("--metrics-history must be at least 1");
        }
        config.metrics_history = n;
    }
    if let Some(t) = args
        .metrics_history_interval
        .clone()
        .or(file.metrics_history_interval.take())
    {
        config.metrics_history_interval = parse_duration(&t).usage("--metrics-history-interval")?;
    }
    if let Some(t) = args.lost_after.clone().or(file.lost_after.take()) {
        config.lost_after = parse_duration(&t).usage("--lost-after")?;
    }
    if let Some(t) = args.task_retention.clone().or(file.task_retention.take()) {
        config.task_retention = parse_duration(&t).usage("--task-retention")?;
    }
    if let Some(t) = args
        .task_output_limit
        .clone()
        .or(file.task_output_limit.take())
    {
        config.max_task_output = parse_size(&t).usage("--task-output-limit")?;
    }
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    config.metrics_per_node = args.metrics_per_node || file.metrics_per_node.unwrap_or(false);
    Ok(())
}

/// `--database` takes a PostgreSQL URL; SQLite needs none (it is the default, in the data dir).
pub fn check_database_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_string())
    } else {
        usage!(
            "--database {}: give a postgres:// URL (leave it out to keep the store in SQLite in the data dir)",
            drover_server::store::redact_url(url)
        )
    }
}

/// `--nats` takes a NATS URL (nats:// or tls://).
fn check_nats_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim();
    if url.starts_with("nats://") || url.starts_with("tls://") {
        Ok(url.to_string())
    } else {
        usage!(
            "--nats {}: give a nats://host:port URL",
            drover_server::store::redact_url(url)
        )
    }
}

/// An advertised URL is handed to agents as is: it must be an absolute http(s) URL of printable text.
fn check_advertise_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && url.len() <= 2048
                && url.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(url.to_string())
        }
        _ => usage!(
            "--advertise-url {url:?}: give an http:// or https:// URL such as https://cp.example.com:8080"
        ),
    }
}

pub use drover_process::{init_logging, shutdown_signal};

/// Tells the user what a start created and where to go next.
pub fn announce(server: &RunningServer, data_dir: &Path) {
    if server.first_start.created_ca {
        tracing::info!(
            "created the certificate authority in {}",
            server.ca_path.display()
        );
    }
    if server.first_start.created_admin_token {
        tracing::info!(
            "wrote the admin API token to {}",
            server.admin_token_path.display()
        );
    }
    let scheme = if server.api_tls { "https" } else { "http" };
    tracing::info!(
        data_dir = %data_dir.display(),
        ca_fingerprint = %server.fleet.pki().fingerprint(),
        "drover server ready: REST API on {scheme}://{}, agents on https://{}",
        server.api_addr,
        server.agent_addr
    );
    if let Some(addr) = server.metrics_addr {
        tracing::info!("Prometheus metrics on http://{addr}/metrics (no token)");
    }
}

pub async fn run(args: ServerArgs, global: &Global) -> anyhow::Result<()> {
    let (config, json) = resolve(&args, global)?;
    init_logging(json);
    let data_dir = config.data_dir.clone();
    let server = RunningServer::start(config).await?;
    announce(&server, &data_dir);
    server.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;

    /// `drover server` with these flags and this config file, resolved.
    fn resolved(flags: &[&str], file: &str) -> anyhow::Result<ServerConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("server.toml");
        std::fs::write(&path, file)?;
        let mut argv = vec![
            "drover",
            "server",
            "--config",
            path.to_str().unwrap_or_default(),
        ];
        argv.extend_from_slice(flags);
        let cli = super::super::Cli::try_parse_from(argv)?;
        let super::super::Command::Server(args) = &cli.command else {
            anyhow::bail!("not the server command");
        };
        Ok(resolve(args, &cli.global)?.0)
    }

    #[test]
    fn the_metrics_history_interval_comes_from_the_flag_over_the_file_and_is_never_zero() {
        let every =
            |flags: &[&str], file: &str| resolved(flags, file).map(|c| c.metrics_history_interval);
        assert_eq!(every(&[], "").unwrap(), Duration::from_secs(60));
        let file = "metrics_history_interval = \"5m\"\n";
        assert_eq!(every(&[], file).unwrap(), Duration::from_secs(300));
        assert_eq!(
            every(&["--metrics-history-interval", "10s"], file).unwrap(),
            Duration::from_secs(10)
        );
        let zero = every(&["--metrics-history-interval", "0"], "").unwrap_err();
        assert!(
            format!("{zero:#}").contains("--metrics-history-interval"),
            "{zero:#}"
        );
    }

    #[test]
    fn nats_tls_and_credential_flags_need_nats_and_one_login() {
        let flags = [
            "--database",
            "postgres://u@h/db",
            "--nats",
            "nats://127.0.0.1:4222",
        ];
        let config = resolved(
            &[
                &flags[..],
                &["--nats-ca", "/ca.pem", "--nats-creds", "/r.creds"],
            ]
            .concat(),
            "",
        )
        .unwrap();
        assert_eq!(config.nats_options.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(config.nats_options.creds, Some(PathBuf::from("/r.creds")));
        let from_file = resolved(&flags, "nats_nkey = \"/r.nk\"\n").unwrap();
        assert_eq!(from_file.nats_options.nkey, Some(PathBuf::from("/r.nk")));
        let both =
            resolved(&flags, "nats_creds = \"/r.creds\"\nnats_nkey = \"/r.nk\"\n").unwrap_err();
        assert!(format!("{both:#}").contains("give one"), "{both:#}");
        let alone = resolved(&["--nats-ca", "/ca.pem"], "").unwrap_err();
        assert!(
            format!("{alone:#}").contains("--nats-ca needs --nats"),
            "{alone:#}"
        );
    }

    #[test]
    fn advertise_urls_are_absolute_http_urls() {
        assert_eq!(
            check_advertise_url("https://cp.example.com:8080/").unwrap(),
            "https://cp.example.com:8080"
        );
        for bad in ["cp.example.com", "http://", "ftp://x", "http://a b", ""] {
            let err = check_advertise_url(bad).unwrap_err().to_string();
            assert!(err.contains("--advertise-url"), "{bad}: {err}");
        }
    }
}
