//! `drover exec`: run a command on one node or many, with live output, and exit with its code.
//! The following and printing of a task's output lives here too; `tasks logs` and `containers` reuse it.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use drover_types::duration::parse_duration;
use drover_types::labels::parse_labels;
use drover_types::task::{
    CreateTask, OutputChunk, RunState, Stream, Target, Task, TaskRun, TaskSpec,
};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;

use super::client::{Client, segment};
use super::output::table;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover exec pi-kitchen -- uptime\n  \
    drover exec pi-kitchen --shell 'journalctl -n 50 | grep -i error'\n  \
    drover exec --selector role=edge --max-parallel 10 -- systemctl restart myapp\n  \
    drover exec --all --timeout 30s -- df -h /\n\n\
    The exit code is the remote one (128+N for a signal); with several nodes, 0 only if all succeeded.\n\
    Ctrl-C cancels the task on every node; a second Ctrl-C stops waiting.")]
pub struct ExecArgs {
    /// The node (id or name); or use --selector / --all.
    node: Option<String>,
    /// Run on every node with this label (key=value); repeatable, all must match.
    #[arg(long = "selector", short = 'l')]
    selector: Vec<String>,
    /// Run on every node.
    #[arg(long, conflicts_with_all = ["node", "selector"])]
    all: bool,
    /// A shell pipeline, run by `sh -c` (the node must allow shell).
    #[arg(long, conflicts_with = "command")]
    shell: Option<String>,
    /// Environment variable K=V; repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory on the node.
    #[arg(long)]
    cwd: Option<String>,
    /// Stop the command after this long (SIGTERM, then SIGKILL after --grace).
    #[arg(long)]
    timeout: Option<String>,
    /// Time between SIGTERM and SIGKILL when cancelled or timed out [default: 10s].
    #[arg(long)]
    grace: Option<String>,
    /// Run as this user (the agent must run as root).
    #[arg(long)]
    user: Option<String>,
    /// At most this many nodes at once.
    #[arg(long)]
    max_parallel: Option<u32>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

fn duration_ms(text: &Option<String>) -> anyhow::Result<Option<u64>> {
    text.as_deref()
        .map(|t| parse_duration(t).map(|d| d.as_millis() as u64))
        .transpose()
        .map_err(Into::into)
}

pub async fn run(args: ExecArgs, client: &Client) -> anyhow::Result<()> {
    let target = match (&args.node, args.selector.is_empty(), args.all) {
        (Some(n), true, false) => Target::Node(n.clone()),
        (None, false, false) => Target::Selector(parse_labels(&args.selector)?),
        (None, true, true) => Target::All,
        (None, true, false) => bail!("say where to run: a NODE, --selector key=value, or --all"),
        _ => bail!("give one of NODE, --selector or --all"),
    };
    if args.command.is_empty() && args.shell.is_none() {
        bail!("say what to run: `-- COMMAND ARGS...` or --shell 'PIPELINE'");
    }
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected K=V"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let spec = TaskSpec::Exec {
        argv: args.command.clone(),
        shell: args.shell.clone(),
        env,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        timeout_ms: duration_ms(&args.timeout)?,
        grace_ms: duration_ms(&args.grace)?,
    };
    run_task(
        client,
        CreateTask {
            target,
            spec,
            max_parallel: args.max_parallel,
        },
    )
    .await
}

/// Creates a task, follows it to its end, and exits like the remote command.
pub async fn run_task(client: &Client, req: CreateTask) -> anyhow::Result<()> {
    let single = matches!(req.target, Target::Node(_));
    // Catch Ctrl-C from before the task exists, so an early one cancels it instead of killing us.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let task: Task = client
        .request(Method::POST, "/api/v1/tasks", Some(&req))
        .await?
        .context("the server returned no task")?;
    let done = follow(client, &task.id, true, !single, Some(&mut interrupt)).await?;
    let Some(task) = done else {
        bail!(
            "the output stream ended before the task did; see `drover tasks show {}`",
            task.id
        );
    };
    let code = if single {
        task.runs.first().map(run_exit_code).unwrap_or(1)
    } else {
        i32::from(!task.runs.iter().all(|r| r.state.is_success()))
    };
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// The exit code for one node's run.
pub fn run_exit_code(run: &TaskRun) -> i32 {
    match (run.state, run.shell_code()) {
        (RunState::Succeeded, _) => 0,
        (_, Some(code)) if code != 0 => code,
        (RunState::Refused, _) => 126,
        (RunState::Unreachable, _) => 6,
        (RunState::Cancelled, _) => 130,
        (RunState::TimedOut, _) => 124,
        _ => 1,
    }
}

/// Output waiting to be written: gathered while events arrive back to back, written out before waiting
/// for more, so bulk output costs few writes and live output still shows at once.
#[derive(Default)]
struct Pending {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Pending {
    fn add(&mut self, chunk: &OutputChunk, prefix: bool) {
        let bytes = match (&chunk.text, &chunk.base64) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(b)) => drover_types::base64::decode(b).unwrap_or_default(),
            _ => Vec::new(),
        };
        let out = match chunk.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if prefix {
            out.extend_from_slice(format!("{}: ", chunk.node_name).as_bytes());
        }
        out.extend_from_slice(&bytes);
        if prefix && !bytes.ends_with(b"\n") {
            out.push(b'\n');
        }
    }

    fn flush(&mut self) {
        // A closed stdout (a pipe into `head`) is not an error worth failing for.
        if !self.stdout.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.stdout);
            let _ = out.flush();
            self.stdout.clear();
        }
        if !self.stderr.is_empty() {
            let _ = std::io::stderr().write_all(&self.stderr);
            self.stderr.clear();
        }
    }
}

/// Prints a task's output (replayed, then live when `follow`). With `fan_out`, lines carry the node name and
/// a progress bar counts nodes. With `interrupt`, Ctrl-C cancels the task. Returns the task once done.
pub async fn follow(
    client: &Client,
    task_id: &str,
    follow: bool,
    fan_out: bool,
    mut interrupt: Option<&mut tokio::signal::unix::Signal>,
) -> anyhow::Result<Option<Task>> {
    let mut events = client
        .events(&format!(
            "/api/v1/tasks/{}/output?follow={follow}",
            segment(task_id)
        ))
        .await?;
    let task: Task = client
        .get(&format!("/api/v1/tasks/{}", segment(task_id)))
        .await?;
    let total = task.runs.len() as u64;
    let bar = if fan_out {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes done {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    } else {
        None
    };
    let (mut finished, mut failed) = (0u64, 0u64);
    let mut interrupts = 0;
    let mut pending = Pending::default();
    loop {
        if !events.has_buffered() {
            match &bar {
                Some(b) => b.suspend(|| pending.flush()),
                None => pending.flush(),
            }
        }
        let next = tokio::select! {
            e = events.next() => e?,
            Some(_) = async { match interrupt.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                interrupts += 1;
                if interrupts > 1 {
                    std::process::exit(130);
                }
                eprintln!("cancelling task {task_id} (Ctrl-C again to stop waiting)...");
                client.request::<Task>(Method::POST, &format!("/api/v1/tasks/{}/cancel", segment(task_id)), None::<&()>).await?;
                continue;
            }
        };
        let Some((name, data)) = next else { break };
        match name.as_str() {
            "output" => {
                let chunks: Vec<OutputChunk> = serde_json::from_str(&data)?;
                for chunk in &chunks {
                    pending.add(chunk, bar.is_some());
                }
            }
            "exit" => {
                pending.flush();
                let run: TaskRun = serde_json::from_str(&data)?;
                finished += 1;
                if !run.state.is_success() {
                    failed += 1;
                }
                let note = || match &run.error {
                    Some(e) => eprintln!("{}: {}: {e}", run.node_name, run.state.as_str()),
                    None if !run.state.is_success()
                        && (fan_out || run.state != RunState::Failed) =>
                    {
                        eprintln!(
                            "{}: {} (exit {})",
                            run.node_name,
                            run.state.as_str(),
                            run_exit_code(&run)
                        )
                    }
                    None => {}
                };
                match &bar {
                    Some(b) => {
                        b.suspend(note);
                        b.set_position(finished);
                        b.set_message(format!(
                            "({failed} failed, {} running)",
                            total.saturating_sub(finished)
                        ));
                    }
                    None => note(),
                }
            }
            "done" => {
                pending.flush();
                let task: Task = serde_json::from_str(&data)?;
                if let Some(b) = &bar {
                    b.finish_and_clear();
                    print_summary(&task);
                }
                return Ok(Some(task));
            }
            _ => {}
        }
    }
    pending.flush();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(None)
}

fn print_summary(task: &Task) {
    let mut t = table(&["NODE", "STATE", "EXIT", "DURATION"]);
    for r in &task.runs {
        let duration = match (r.started_at, r.finished_at) {
            (Some(a), Some(b)) => format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        };
        t.add_row(vec![
            r.node_name.clone(),
            r.state.as_str().to_string(),
            run_exit_code(r).to_string(),
            duration,
        ]);
    }
    eprintln!("{t}");
    let ok = task.runs.iter().filter(|r| r.state.is_success()).count();
    eprintln!("{ok}/{} nodes succeeded", task.runs.len());
}
