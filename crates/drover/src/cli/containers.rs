//! `drover containers NODE ...`: container operations as typed tasks, through the node's Docker Engine API.

use clap::{Args, Subcommand};
use drover_types::task::{ContainerOp, CreateTask, Target, TaskSpec};

use super::client::Client;
use super::exec::run_task;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover containers pi-kitchen list --all\n  \
    drover containers pi-kitchen restart web\n  \
    drover containers pi-kitchen logs web --follow --tail 100")]
pub struct ContainersArgs {
    /// The node (id or name).
    node: String,
    #[command(subcommand)]
    op: Op,
    #[command(flatten)]
    sign: super::keys::SignArgs,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// List containers (id, name, image, state).
    List {
        /// Include stopped ones.
        #[arg(long, short)]
        all: bool,
    },
    Start {
        container: String,
    },
    Stop {
        container: String,
    },
    Restart {
        container: String,
    },
    /// Remove a container (forcibly, even when running).
    Rm {
        container: String,
    },
    /// Print a container's logs.
    Logs {
        container: String,
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u32>,
    },
}

pub async fn run(args: ContainersArgs, client: &Client) -> anyhow::Result<()> {
    let (op, container, all, follow, tail) = match args.op {
        Op::List { all } => (ContainerOp::List, None, all, false, None),
        Op::Start { container } => (ContainerOp::Start, Some(container), false, false, None),
        Op::Stop { container } => (ContainerOp::Stop, Some(container), false, false, None),
        Op::Restart { container } => (ContainerOp::Restart, Some(container), false, false, None),
        Op::Rm { container } => (ContainerOp::Remove, Some(container), false, false, None),
        Op::Logs {
            container,
            follow,
            tail,
        } => (ContainerOp::Logs, Some(container), false, follow, tail),
    };
    let spec = TaskSpec::Container {
        op,
        container,
        all,
        follow,
        tail,
        timeout_ms: None,
    };
    let mut req = CreateTask {
        target: Target::Node(args.node),
        spec,
        max_parallel: None,
        signature: None,
    };
    args.sign.task(&mut req)?;
    run_task(client, req).await
}
