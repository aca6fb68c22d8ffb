//! `drover containers NODE ...`: container operations as typed tasks, through the node's Docker Engine API.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_types::task::{ContainerOp, CreateTask, OutputChunk, Stream, Target, Task, TaskSpec};
use reqwest::Method;
use serde::Serialize;

use super::OutputFormat;
use super::client::{Client, Subscription, segment};
use super::exec::{run_task, task_exit_code};
use super::output::{print_json, table};
use super::safe::{safe, safe_lines};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover containers pi-kitchen list --all\n  \
    drover containers pi-kitchen list -o json\n  \
    drover containers pi-kitchen restart web\n  \
    drover containers pi-kitchen logs web --follow --tail 100\n\n\
    A container resource `web` of a manifest runs as the engine's `drover-web`; either name works.")]
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
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
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
        Op::List { all, output } => {
            let req = CreateTask {
                target: Target::Node(args.node.clone()),
                spec: TaskSpec::Container {
                    op: ContainerOp::List,
                    container: None,
                    all,
                    follow: false,
                    tail: None,
                    timeout_ms: None,
                },
                max_parallel: None,
                signature: None,
            };
            return list(client, req, &args.sign, &args.node, output).await;
        }
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

/// One container as `list` shows it; the agent sends one per line, tab-separated, in this order.
#[derive(Debug, Serialize)]
struct Container {
    id: String,
    name: String,
    image: String,
    state: String,
}

/// Runs the list task, collects its output and shows it as a table or JSON instead of the agent's raw lines,
/// so it has a header, says when there is nothing, and takes `-o json` like every other data command.
async fn list(
    client: &Client,
    mut req: CreateTask,
    sign: &super::keys::SignArgs,
    node: &str,
    output: OutputFormat,
) -> anyhow::Result<()> {
    sign.task(&mut req)?;
    let task: Task = client
        .request(Method::POST, "/api/v1/tasks", Some(&req))
        .await?
        .context("the server returned no task")?;
    let mut events = Subscription::new(
        client,
        format!("/api/v1/tasks/{}/output?follow=true", segment(&task.id)),
        false,
    );
    // Keyed by sequence number: a resumed stream may repeat chunks, and order is by sequence.
    let mut stdout: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stderr: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut done = None;
    while let Some(event) = events.next().await? {
        match event.name.as_str() {
            "output" => {
                let chunks: Vec<OutputChunk> = serde_json::from_str(&event.data)?;
                for c in chunks {
                    let bytes = match (c.text, c.base64) {
                        (Some(t), _) => t.into_bytes(),
                        (None, Some(b)) => drover_types::base64::decode(&b).unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    match c.stream {
                        Stream::Stdout => stdout.insert(c.seq, bytes),
                        Stream::Stderr => stderr.insert(c.seq, bytes),
                    };
                }
            }
            "done" => {
                done = Some(serde_json::from_str::<Task>(&event.data)?);
                break;
            }
            _ => {}
        }
    }
    let Some(task) = done else {
        anyhow::bail!(
            "the output stream ended before the task did; see `drover tasks show {}`",
            task.id
        );
    };
    let err: Vec<u8> = stderr.into_values().flatten().collect();
    if !err.is_empty() {
        eprint!("{}", safe_lines(&String::from_utf8_lossy(&err)));
    }
    let code = task_exit_code(&task.runs, true);
    if code != 0 {
        for run in &task.runs {
            eprintln!(
                "{}: {}{}",
                safe(&run.node_name),
                run.state.as_str(),
                run.error
                    .as_deref()
                    .map(|e| format!(": {}", safe(e)))
                    .unwrap_or_default()
            );
        }
        std::process::exit(code);
    }
    let out: Vec<u8> = stdout.into_values().flatten().collect();
    let containers = parse_list(&String::from_utf8_lossy(&out));
    match output {
        OutputFormat::Json => print_json(&containers),
        OutputFormat::Table => {
            println!("{}", render(&containers, node));
            Ok(())
        }
    }
}

/// The table for people, or a line saying there is nothing (an empty table would look like a hang).
fn render(containers: &[Container], node: &str) -> String {
    if containers.is_empty() {
        return format!("no containers on {}", safe(node));
    }
    let mut t = table(&["ID", "NAME", "IMAGE", "STATE"]);
    for c in containers {
        t.add_row(vec![
            c.id.clone(),
            c.name.clone(),
            c.image.clone(),
            c.state.clone(),
        ]);
    }
    t.to_string()
}

fn parse_list(text: &str) -> Vec<Container> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.splitn(4, '\t').map(str::to_string);
            Container {
                id: f.next().unwrap_or_default(),
                name: f.next().unwrap_or_default(),
                image: f.next().unwrap_or_default(),
                state: f.next().unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_agents_lines() {
        let list = super::parse_list("0123456789ab\tdrover-web\tnginx:1\trunning\n\nabc\tx\n");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "drover-web");
        assert_eq!(list[0].state, "running");
        assert_eq!((list[1].name.as_str(), list[1].image.as_str()), ("x", ""));
        let shown = super::render(&list, "pi");
        assert!(
            shown.contains("NAME") && shown.contains("drover-web"),
            "{shown}"
        );
        // Node text is escaped, here as everywhere.
        let empty = super::render(&[], "pi\x1b[2J");
        assert!(
            empty.starts_with("no containers on pi") && !empty.contains('\x1b'),
            "{empty}"
        );
    }
}
