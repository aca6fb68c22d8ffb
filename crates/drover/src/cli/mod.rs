//! Command-line parsing and dispatch. One file per command group.

mod action;
mod audit;
mod client;
mod config;
mod containers;
mod exec;
mod gpus;
mod keys;
mod login;
mod manifests;
mod migrate;
mod nodes;
mod operators;
mod output;
mod rollout;
mod safe;
mod server;
mod sessions;
mod tasks;
mod tls;
mod tokens;
mod up;
mod usage;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use client::ClientError;
pub use safe::safe_lines;
pub use usage::UsageError;

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "drover: a fleet agent's control plane and its operator CLI.",
    after_help = "Examples:\n  \
      drover up                       # a local server plus an enrolled local agent\n  \
      drover server --data-dir /var/lib/drover\n  \
      drover nodes                    # the fleet as a table\n  \
      drover token create --ttl 1h --label role=edge\n  \
      drover operator create alice --role operator\n  \
      drover login https://cp.example.com:8080 --token drvop.… --ca-fingerprint 3f2a…\n  \
      drover migrate --from /var/lib/drover --to postgres://drover:secret@db.example.com/drover\n\n\
      Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 not authorized, 5 server unreachable (after\n\
      5 minutes of trying again, for a command that follows a task), 6 node not connected, 7 task run\n\
      lost (exec: whether it ran is unknown), 8 rollout paused, 9 rollout reverted or aborted (apply\n\
      --wait, rollout status --watch), 124 action deadline exceeded, 130 action cancelled.\n\
      `drover exec` exits with the remote code; see `drover exec --help` for several nodes."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Global {
    /// REST API of the server (default: the current context's, else http://127.0.0.1:8080); repeatable
    /// (env: comma-separated) for replicas: a server that cannot be reached is skipped for the next.
    #[arg(long, global = true, env = "DROVER_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Context of the operator's config to use (default: the current one; see `drover context`).
    #[arg(long, global = true, env = "DROVER_CONTEXT")]
    pub context: Option<String>,
    /// Operator API token (default: the context's, else the admin token in the local data dir).
    #[arg(long, global = true, env = "DROVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's data dir (default /var/lib/drover for root, else ~/.local/share/drover).
    #[arg(long, global = true, env = "DROVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Send the API token over plain HTTP to a server that is not on loopback (anyone on the way can read
    /// it; for a lab network you trust). Without it, plain HTTP carries a token only to loopback.
    #[arg(long, global = true)]
    pub insecure_send_token_over_http: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane.
    Server(server::ServerArgs),
    /// Run a local control plane and a local agent enrolled into it, for a first look.
    Up(up::UpArgs),
    /// List and inspect nodes.
    Nodes(nodes::NodesArgs),
    /// Manage join tokens that let agents enroll.
    Token(tokens::TokenArgs),
    /// Manage operators: API tokens with a role (viewer, operator, admin).
    Operator(operators::OperatorArgs),
    /// Log in to a server: pin its CA and keep server, CA and token as a context.
    Login(login::LoginArgs),
    /// The contexts of the operator's config: list, use, remove.
    Context(login::ContextArgs),
    /// Call an action on a node and print its JSON result.
    Action(action::ActionArgs),
    /// A node's daemon-plugin sessions and their latest payloads.
    Sessions(sessions::SessionsArgs),
    /// Run a command on a node (or many) with live output.
    Exec(exec::ExecArgs),
    /// Recorded tasks: list, show, logs, cancel.
    Tasks(tasks::TasksArgs),
    /// Container operations on a node (list, start, stop, restart, rm, logs).
    Containers(containers::ContainersArgs),
    /// The audit log: every task, who ran it, where, when, and how it ended.
    Audit(audit::AuditArgs),
    /// Apply a manifest of desired state (files, containers, systemd units, shell jobs).
    Apply(manifests::ApplyArgs),
    /// List and show manifests.
    Manifests(manifests::ManifestsArgs),
    /// Delete a manifest.
    Delete(manifests::DeleteArgs),
    /// Convergence of the fleet, or of one node's resources.
    Status(manifests::StatusArgs),
    /// A manifest's rollout: its waves and their outcomes; pause, resume, abort, promote, undo, history.
    Rollout(rollout::RolloutArgs),
    /// Manifest signing keys: create one, list which manifests are signed by which key.
    Keys(keys::KeysArgs),
    /// Move a stopped server's SQLite records into an empty PostgreSQL database.
    Migrate(migrate::MigrateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// The server's data dir when none is given.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/drover");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("drover")
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => server::run(args, &cli.global).await,
        Command::Up(args) => up::run(args, &cli.global).await,
        Command::Nodes(args) => nodes::run(args, &client::Client::new(&cli.global)?).await,
        Command::Token(args) => tokens::run(args, &client::Client::new(&cli.global)?).await,
        Command::Operator(args) => operators::run(args, &client::Client::new(&cli.global)?).await,
        Command::Login(args) => login::login(args, &cli.global).await,
        Command::Context(args) => login::context(args),
        Command::Action(args) => action::run(args, &client::Client::new(&cli.global)?).await,
        Command::Sessions(args) => sessions::run(args, &client::Client::new(&cli.global)?).await,
        Command::Exec(args) => exec::run(args, || client::Client::new(&cli.global)).await,
        Command::Tasks(args) => tasks::run(args, &client::Client::new(&cli.global)?).await,
        Command::Containers(args) => {
            containers::run(args, &client::Client::new(&cli.global)?).await
        }
        Command::Audit(args) => audit::run(args, &client::Client::new(&cli.global)?).await,
        Command::Apply(args) => manifests::apply(args, &client::Client::new(&cli.global)?).await,
        Command::Manifests(args) => {
            manifests::manifests(args, &client::Client::new(&cli.global)?).await
        }
        Command::Delete(args) => manifests::delete(args, &client::Client::new(&cli.global)?).await,
        Command::Status(args) => manifests::status(args, &client::Client::new(&cli.global)?).await,
        Command::Keys(args) => keys::run(args, || client::Client::new(&cli.global)).await,
        Command::Rollout(args) => rollout::run(args, &client::Client::new(&cli.global)?).await,
        Command::Migrate(args) => migrate::run(args, &cli.global).await,
    }
}

/// Exit codes scripts can rely on.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use drover_types::action::ActionError;
    if let Some(code) = migrate::exit_code(e) {
        return code;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api {
            action: Some(a), ..
        }) => match a {
            ActionError::UnknownAction { .. } => 3,
            ActionError::NodeUnavailable => 6,
            ActionError::DeadlineExceeded { .. } => 124,
            ActionError::Cancelled => 130,
            _ => 1,
        },
        Some(ClientError::Api { status, .. }) if *status == 404 => 3,
        Some(ClientError::Api { status, .. }) if *status == 401 || *status == 403 => 4,
        Some(ClientError::NoToken { .. } | ClientError::TokenWithheld { .. }) => 4,
        Some(ClientError::Usage { .. }) => 2,
        Some(ClientError::Unreachable { .. }) => 5,
        _ => 1,
    }
}
