//! `drover exec`: run a command on one node or many, with live output, and exit with its code.
//! The following and printing of a task's output lives here too; `tasks logs` and `containers` reuse it.

use std::collections::{BTreeMap, HashMap, HashSet};
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

use super::client::{Client, Subscription, segment};
use super::output::table;
use super::safe::safe;
use super::usage::{UsageContext, usage};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover exec pi-kitchen -- uptime\n  \
    drover exec pi-kitchen --shell 'journalctl -n 50 | grep -i error'\n  \
    drover exec --selector role=edge --max-parallel 10 -- systemctl restart myapp\n  \
    drover exec --all --timeout 30s -- df -h /\n\n\
    Exit codes, one node: the remote code (128+N for a signal), 126 refused, 6 unreachable, 7 lost (the\n\
    server lost track of the run: whether it ran is unknown), 1 could not start. Several nodes: 0 when all\n\
    succeeded, 1 when any failed, 7 when the only ones that did not succeed were lost. 5: the server could\n\
    not be reached (while following, only after 5 minutes of trying again).\n\
    Ctrl-C cancels the task on every node; a second Ctrl-C stops waiting.")]
pub struct ExecArgs {
    /// The node (id or name); or use --selector / --all.
    node: Option<String>,
    /// Run on every node with this label (key=value); repeatable, all must match.
    #[arg(long = "selector", short = 'l')]
    selector: Vec<String>,
    /// Run on every node.
    // Not in conflict with NODE for clap: `--all uptime` (a forgotten `--`) gets a hint in `run` instead.
    #[arg(long, conflicts_with = "selector")]
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
    /// Words after NODE without `--` (`drover exec vm uptime`): caught to suggest `--` rather than
    /// rejected by clap with no hint.
    #[arg(hide = true, value_name = "COMMAND")]
    stray: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
    #[command(flatten)]
    sign: super::keys::SignArgs,
}

fn duration_ms(text: &Option<String>, flag: &str) -> anyhow::Result<Option<u64>> {
    Ok(text
        .as_deref()
        .map(|t| parse_duration(t).map(|d| d.as_millis() as u64))
        .transpose()
        .usage(flag)?)
}

/// Shell-quotes a word for a suggested command line, only where it needs it.
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Checks the arguments first, so that a usage mistake is told before any missing token or server.
pub async fn run(
    args: ExecArgs,
    client: impl FnOnce() -> anyhow::Result<Client>,
) -> anyhow::Result<()> {
    // A forgotten `--`: the words of the command land in NODE and the hidden STRAY.
    let elsewhere = args.all || !args.selector.is_empty();
    let nothing_to_run = args.command.is_empty() && args.shell.is_none();
    if !args.stray.is_empty() || (elsewhere && args.node.is_some() && nothing_to_run) {
        let mut place: Vec<String> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        if args.all {
            place.push("--all".into());
        }
        for s in &args.selector {
            place.push(format!("-l {}", quote(s)));
        }
        match &args.node {
            Some(n) if elsewhere => words.push(quote(n)),
            Some(n) => place.push(quote(n)),
            None => {}
        }
        words.extend(args.stray.iter().chain(&args.command).map(|w| quote(w)));
        usage!(
            "`{}` looks like the command to run: put it after `--`, as in `drover exec {} -- {}`",
            words.first().map(String::as_str).unwrap_or_default(),
            place.join(" "),
            words.join(" ")
        );
    }
    let target = match (&args.node, args.selector.is_empty(), args.all) {
        (Some(n), true, false) => Target::Node(n.clone()),
        (None, false, false) => Target::Selector(parse_labels(&args.selector).usage("--selector")?),
        (None, true, true) => Target::All,
        (None, true, false) => usage!("say where to run: a NODE, --selector key=value, or --all"),
        _ => usage!("give one of NODE, --selector or --all"),
    };
    if args.command.is_empty() && args.shell.is_none() {
        usage!("say what to run: `-- COMMAND ARGS...` or --shell 'PIPELINE'");
    }
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .usage(&format!("--env {kv:?}: expected K=V"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let spec = TaskSpec::Exec {
        argv: args.command.clone(),
        shell: args.shell.clone(),
        env,
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        timeout_ms: duration_ms(&args.timeout, "--timeout")?,
        grace_ms: duration_ms(&args.grace, "--grace")?,
    };
    let mut req = CreateTask {
        target,
        spec,
        max_parallel: args.max_parallel,
        signature: None,
    };
    args.sign.task(&mut req)?;
    run_task(&client()?, req).await
}

/// Creating a task on thousands of nodes stores a run per node before the server answers.
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit code of `drover exec` for a run the server lost track of (whether it ran is unknown).
pub const EXIT_LOST: i32 = 7;
/// A partial line longer than this is printed as a line of its own rather than held without bound.
const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// The server's answer to a new task: the task, and the HTTP nodes its target selected but that got no run.
#[derive(serde::Deserialize)]
struct Created {
    #[serde(flatten)]
    task: Task,
    #[serde(default)]
    skipped_http_nodes: Vec<String>,
}

/// Says that HTTP nodes were left out of a task.
fn skipped_note(n: usize) -> String {
    match n {
        1 => "(1 HTTP node skipped: it takes no tasks)".to_string(),
        n => format!("({n} HTTP nodes skipped: they take no tasks)"),
    }
}

/// Creates a task, follows it to its end, and exits like the remote command.
pub async fn run_task(client: &Client, req: CreateTask) -> anyhow::Result<()> {
    let single = matches!(req.target, Target::Node(_));
    // Catch Ctrl-C from before the task exists, so an early one cancels it instead of killing us.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let Created {
        task,
        skipped_http_nodes,
    } = client
        .request_with_timeout(
            Method::POST,
            "/api/v1/tasks",
            Some(&req),
            Some(CREATE_TIMEOUT),
        )
        .await?
        .context("the server returned no task")?;
    let done = follow(client, &task, true, !single, Some(&mut interrupt)).await?;
    // After the summary: HTTP nodes are not in it, as they were never targets.
    if !skipped_http_nodes.is_empty() {
        eprintln!("{}", skipped_note(skipped_http_nodes.len()));
    }
    let Some(task) = done else {
        bail!(
            "the output stream ended before the task did; see `drover tasks show {}`",
            task.id
        );
    };
    let code = task_exit_code(&task.runs, single);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// The exit code for one node's run.
pub fn run_exit_code(run: &TaskRun) -> i32 {
    match (run.state, run.shell_code()) {
        (RunState::Succeeded, _) => 0,
        // Whatever code it had before is not the outcome: the server does not know how it ended.
        (RunState::Lost, _) => EXIT_LOST,
        (_, Some(code)) if code != 0 => code,
        (RunState::Refused, _) => 126,
        (RunState::Unreachable, _) => 6,
        (RunState::Cancelled, _) => 130,
        (RunState::TimedOut, _) => 124,
        _ => 1,
    }
}

/// The exit code of a whole task. One node: its run's code. Several: 0 when all succeeded, 1 when any ended
/// in a definite failure, 7 when the only runs that did not succeed were lost (so "failed somewhere" and
/// "may not have run somewhere" stay apart; a definite failure wins).
pub fn task_exit_code(runs: &[TaskRun], single: bool) -> i32 {
    if single && runs.len() == 1 {
        return runs.first().map(run_exit_code).unwrap_or(1);
    }
    let failed = runs
        .iter()
        .any(|r| !matches!(r.state, RunState::Succeeded | RunState::Lost));
    let lost = runs.iter().any(|r| r.state == RunState::Lost);
    match (failed, lost) {
        (true, _) => 1,
        (false, true) => EXIT_LOST,
        (false, false) => 0,
    }
}

/// Fan-out output as whole lines prefixed with the node name. Output arrives in chunks that may end
/// mid-line, so each node's unfinished line (per stream) waits here until its newline comes or its run ends.
#[derive(Default)]
struct Lines {
    /// Keyed by node name and whether it is stderr.
    partial: HashMap<(String, bool), Vec<u8>>,
}

impl Lines {
    /// Adds a chunk; writes every line it completes to `out`.
    fn push(&mut self, node: &str, stream: Stream, mut bytes: &[u8], out: &mut Vec<u8>) {
        let held = self
            .partial
            .entry((node.to_string(), stream == Stream::Stderr))
            .or_default();
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            line(node, held, &bytes[..=nl], out);
            held.clear();
            bytes = &bytes[nl + 1..];
        }
        held.extend_from_slice(bytes);
        if held.len() >= MAX_PARTIAL_LINE {
            line(node, held, b"\n", out);
            held.clear();
        }
    }

    /// Ends a node's unfinished lines (its run is over), each with a newline.
    fn finish(&mut self, node: &str, stdout: &mut Vec<u8>, stderr: &mut Vec<u8>) {
        for (is_stderr, out) in [(false, &mut *stdout), (true, &mut *stderr)] {
            match self.partial.remove(&(node.to_string(), is_stderr)) {
                Some(held) if !held.is_empty() => line(node, &held, b"\n", out),
                _ => {}
            }
        }
    }

    /// The nodes with an unfinished line.
    fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.partial.keys().map(|(n, _)| n.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

/// One line of fan-out output: the node's name (escaped: the server's, not the command's) and the
/// command's own bytes as they are.
fn line(node: &str, start: &[u8], end: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(safe(node).as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(start);
    out.extend_from_slice(end);
}

/// Output waiting to be written: gathered while events arrive back to back, written out before waiting
/// for more, so bulk output costs few writes and live output still shows at once.
#[derive(Default)]
struct Pending {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Fan-out only: whole lines with the node name.
    lines: Option<Lines>,
}

impl Pending {
    fn add(&mut self, chunk: &OutputChunk) {
        let decoded;
        let bytes: &[u8] = match (&chunk.text, &chunk.base64) {
            (Some(t), _) => t.as_bytes(),
            (None, Some(b)) => {
                decoded = drover_types::base64::decode(b).unwrap_or_default();
                &decoded
            }
            _ => &[],
        };
        let out = match chunk.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        match &mut self.lines {
            Some(lines) => lines.push(&chunk.node_name, chunk.stream, bytes, out),
            None => out.extend_from_slice(bytes),
        }
    }

    /// A node's run ended: its unfinished lines are complete now.
    fn end_of(&mut self, node: &str) {
        if let Some(lines) = &mut self.lines {
            lines.finish(node, &mut self.stdout, &mut self.stderr);
        }
    }

    /// The output ended: every unfinished line is complete now.
    fn end_all(&mut self) {
        let nodes = self.lines.as_ref().map(Lines::nodes).unwrap_or_default();
        for node in nodes {
            self.end_of(&node);
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

/// What a follower has printed, so nothing repeats when the stream resumes from an earlier point.
#[derive(Default)]
struct Seen {
    next_seq: HashMap<String, u64>,
    exits: HashSet<String>,
}

impl Seen {
    /// Whether this chunk is new (and from now on seen).
    fn chunk(&mut self, chunk: &OutputChunk) -> bool {
        let next = self.next_seq.entry(chunk.node_id.clone()).or_default();
        let new = chunk.seq >= *next;
        if new {
            *next = chunk.seq + 1;
        }
        new
    }
}

/// Prints a task's output (replayed, then live when `follow`). With `fan_out`, lines carry the node name and
/// a progress bar counts nodes. With `interrupt`, Ctrl-C cancels the task. Rides out a server restart: the
/// stream resumes where it broke. Returns the task once done.
pub async fn follow(
    client: &Client,
    task: &Task,
    follow: bool,
    fan_out: bool,
    mut interrupt: Option<&mut tokio::signal::unix::Signal>,
) -> anyhow::Result<Option<Task>> {
    let task_id = task.id.as_str();
    let mut events = Subscription::new(
        client,
        format!("/api/v1/tasks/{}/output?follow={follow}", segment(task_id)),
        !follow,
    );
    let mut progress = Progress {
        bar: fan_out.then(|| progress_bar(task.runs.len() as u64)),
        total: task.runs.len() as u64,
        finished: 0,
        failed: 0,
        fan_out,
    };
    let mut interrupts = 0;
    let mut pending = Pending {
        lines: fan_out.then(Lines::default),
        ..Pending::default()
    };
    let mut seen = Seen::default();
    loop {
        if !events.has_buffered() {
            match &progress.bar {
                Some(b) => b.suspend(|| pending.flush()),
                None => pending.flush(),
            }
        }
        let next = tokio::select! {
            e = events.next() => e?,
            Some(_) = async { match interrupt.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                interrupts += 1;
                cancel_on_interrupt(client, task_id, interrupts).await;
                continue;
            }
        };
        let Some(event) = next else { break };
        match event.name.as_str() {
            "output" => {
                let chunks: Vec<OutputChunk> = serde_json::from_str(&event.data)?;
                for chunk in chunks.iter().filter(|c| seen.chunk(c)) {
                    pending.add(chunk);
                }
            }
            "exit" => {
                let run: TaskRun = serde_json::from_str(&event.data)?;
                if !seen.exits.insert(run.node_id.clone()) {
                    continue;
                }
                pending.end_of(&run.node_name);
                pending.flush();
                progress.run_ended(&run);
            }
            "done" => {
                pending.end_all();
                pending.flush();
                let task: Task = serde_json::from_str(&event.data)?;
                if let Some(b) = &progress.bar {
                    b.finish_and_clear();
                    print_summary(&task);
                }
                return Ok(Some(task));
            }
            _ => {}
        }
    }
    pending.end_all();
    pending.flush();
    if let Some(b) = &progress.bar {
        b.finish_and_clear();
    }
    Ok(None)
}

/// The fan-out progress bar: nodes done out of `total`.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes done {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Ctrl-C while following: the first asks the server to cancel the task, the second stops waiting.
async fn cancel_on_interrupt(client: &Client, task_id: &str, interrupts: u32) {
    if interrupts > 1 {
        std::process::exit(130);
    }
    eprintln!("cancelling task {task_id} (Ctrl-C again to stop waiting)...");
    let cancel = client
        .request::<Task>(
            Method::POST,
            &format!("/api/v1/tasks/{}/cancel", segment(task_id)),
            None::<&()>,
        )
        .await;
    if let Err(e) = cancel {
        eprintln!(
            "could not cancel: {e}; Ctrl-C again to stop waiting, or `drover tasks cancel {task_id}` later"
        );
    }
}

/// Runs ended so far, shown on the fan-out progress bar.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    finished: u64,
    failed: u64,
    fan_out: bool,
}

impl Progress {
    /// A run ended: note why when it did not succeed, and move the bar.
    fn run_ended(&mut self, run: &TaskRun) {
        self.finished += 1;
        if !run.state.is_success() {
            self.failed += 1;
        }
        let fan_out = self.fan_out;
        let note = || match &run.error {
            Some(e) => eprintln!(
                "{}: {}: {}",
                safe(&run.node_name),
                run.state.as_str(),
                safe(e)
            ),
            None if !run.state.is_success() && (fan_out || run.state != RunState::Failed) => {
                eprintln!(
                    "{}: {} (exit {})",
                    safe(&run.node_name),
                    run.state.as_str(),
                    run_exit_code(run)
                )
            }
            None => {}
        };
        match &self.bar {
            Some(b) => {
                b.suspend(note);
                b.set_position(self.finished);
                b.set_message(format!(
                    "({} failed, {} running)",
                    self.failed,
                    self.total.saturating_sub(self.finished)
                ));
            }
            None => note(),
        }
    }
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
    let lost = task
        .runs
        .iter()
        .filter(|r| r.state == RunState::Lost)
        .count();
    let unreachable = task
        .runs
        .iter()
        .filter(|r| r.state == RunState::Unreachable)
        .count();
    let mut line = format!("{ok}/{} nodes succeeded", task.runs.len());
    if unreachable > 0 {
        line.push_str(&format!("; {unreachable} unreachable (not connected)"));
    }
    if lost > 0 {
        line.push_str(&format!(
            "; {lost} lost (whether it ran there is unknown; see `drover tasks show {}`)",
            task.id
        ));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use drover_types::task::{RunState, Stream, TaskRun};

    use super::{EXIT_LOST, Lines, run_exit_code, task_exit_code};

    fn run(state: RunState, exit_code: Option<i32>, signal: Option<i32>) -> TaskRun {
        TaskRun {
            node_id: "id".into(),
            node_name: "n".into(),
            state,
            exit_code,
            signal,
            error: None,
            started_at: None,
            finished_at: None,
            late_exit: None,
        }
    }

    #[test]
    fn one_node_exits_like_its_run() {
        assert_eq!(run_exit_code(&run(RunState::Succeeded, Some(0), None)), 0);
        assert_eq!(run_exit_code(&run(RunState::Failed, Some(3), None)), 3);
        assert_eq!(run_exit_code(&run(RunState::Failed, None, Some(9))), 137);
        assert_eq!(run_exit_code(&run(RunState::Refused, None, None)), 126);
        assert_eq!(run_exit_code(&run(RunState::Unreachable, None, None)), 6);
        assert_eq!(run_exit_code(&run(RunState::Error, None, None)), 1);
        assert_eq!(run_exit_code(&run(RunState::Lost, None, None)), EXIT_LOST);
        // A code recorded before the server lost track of the run is not its outcome.
        assert_eq!(run_exit_code(&run(RunState::Lost, Some(0), None)), 7);
        let one = [run(RunState::Lost, None, None)];
        assert_eq!(task_exit_code(&one, true), 7);
        let one = [run(RunState::Failed, Some(42), None)];
        assert_eq!(task_exit_code(&one, true), 42);
    }

    #[test]
    fn a_fan_out_exits_0_all_succeeded_1_any_failed_7_only_lost() {
        let ok = || run(RunState::Succeeded, Some(0), None);
        let lost = || run(RunState::Lost, None, None);
        assert_eq!(task_exit_code(&[ok(), ok()], false), 0);
        assert_eq!(task_exit_code(&[ok(), lost()], false), 7);
        assert_eq!(task_exit_code(&[lost(), lost()], false), 7);
        // A single-node target that matched one node by a selector is still a fan-out.
        assert_eq!(task_exit_code(&[lost()], false), 7);
        for failure in [
            RunState::Failed,
            RunState::Error,
            RunState::Refused,
            RunState::Cancelled,
            RunState::TimedOut,
            RunState::Unreachable,
        ] {
            let failed = run(failure, Some(2), None);
            assert_eq!(
                task_exit_code(&[ok(), lost(), failed.clone()], false),
                1,
                "{failure:?} beats Lost"
            );
            assert_eq!(task_exit_code(&[ok(), failed], false), 1);
        }
    }

    #[test]
    fn fan_out_lines_are_whole_and_prefixed_even_when_chunks_split_them() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        lines.push("a", Stream::Stdout, b"hel", &mut out);
        lines.push("b", Stream::Stdout, b"one\ntw", &mut out);
        assert_eq!(out, b"b: one\n", "a's half line waits");
        lines.push("a", Stream::Stdout, b"lo\nwor", &mut out);
        // stderr has its own partial line.
        lines.push("a", Stream::Stderr, b"warn", &mut out);
        lines.push("a", Stream::Stdout, b"ld\n\nlast", &mut out);
        assert_eq!(out, b"b: one\na: hello\na: world\na: \n".as_slice());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        lines.finish("a", &mut stdout, &mut stderr);
        assert_eq!(stdout, b"a: last\n", "the run ended: the rest is a line");
        assert_eq!(stderr, b"a: warn\n");
        assert_eq!(lines.nodes(), vec!["b".to_string()]);
        lines.finish("b", &mut stdout, &mut stderr);
        assert_eq!(stdout, b"a: last\nb: tw\n");
        assert!(lines.nodes().is_empty());
    }

    #[test]
    fn an_endless_line_is_cut_rather_than_held_without_bound() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let big = vec![b'x'; super::MAX_PARTIAL_LINE];
        lines.push("a", Stream::Stdout, &big, &mut out);
        assert_eq!(out.len(), super::MAX_PARTIAL_LINE + 4);
        assert!(out.starts_with(b"a: xx") && out.ends_with(b"x\n"));
        assert!(lines.partial.values().all(Vec::is_empty));
    }
}
