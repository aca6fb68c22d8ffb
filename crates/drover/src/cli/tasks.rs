//! `drover tasks`: recorded tasks, their output, cancellation.

use clap::{Args, Subcommand};
use drover_types::task::{LateExit, Task, TaskListEntry};
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, segment};
use super::exec::{follow, run_exit_code};
use super::output::{ago, print_json, table};
use super::safe::safe;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover tasks\n  drover tasks show 3f2a…\n  drover tasks logs 3f2a… --follow\n  drover tasks cancel 3f2a…"
)]
pub struct TasksArgs {
    #[command(subcommand)]
    command: Option<TasksCommand>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// List recent tasks (the default).
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One task with its runs.
    Show { id: String },
    /// Replay a task's stored output; with --follow, keep printing until it ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a task on every node still running it.
    Cancel { id: String },
}

pub async fn run(args: TasksArgs, client: &Client) -> anyhow::Result<()> {
    let output = args.output;
    match args.command.unwrap_or(TasksCommand::List { limit: 50 }) {
        TasksCommand::List { limit } => list(client, output, limit).await,
        TasksCommand::Show { id } => show(client, output, &id).await,
        TasksCommand::Logs { id, follow: keep } => {
            let task: Task = client
                .get(&format!("/api/v1/tasks/{}", segment(&id)))
                .await?;
            follow(client, &task, keep, task.runs.len() > 1, None).await?;
            Ok(())
        }
        TasksCommand::Cancel { id } => cancel(client, output, &id).await,
    }
}

async fn list(client: &Client, output: OutputFormat, limit: usize) -> anyhow::Result<()> {
    let tasks: Vec<TaskListEntry> = client.get(&format!("/api/v1/tasks?limit={limit}")).await?;
    match output {
        OutputFormat::Json => print_json(&tasks),
        OutputFormat::Table => {
            let mut t = table(&[
                "ID",
                "TARGET",
                "COMMAND",
                "STATE",
                "STARTED",
                "DURATION",
                "EXIT CODES",
            ]);
            for task in &tasks {
                t.add_row(row(task));
            }
            println!("{t}");
            Ok(())
        }
    }
}

async fn show(client: &Client, output: OutputFormat, id: &str) -> anyhow::Result<()> {
    let task: Task = client
        .get(&format!("/api/v1/tasks/{}", segment(id)))
        .await?;
    match output {
        OutputFormat::Json => print_json(&task),
        OutputFormat::Table => {
            print_task(&task);
            Ok(())
        }
    }
}

/// One task in full: its header, then a line per run.
fn print_task(task: &Task) {
    println!(
        "Task:     {}\nCommand:  {}\nState:    {}\nCreated:  {} by {}\n",
        task.id,
        safe(&task.spec.summary()),
        task.state(),
        task.created_at.to_rfc3339(),
        safe(&task.created_by)
    );
    // Only when an agent reported after its run had ended (it was lost, or cancelled on
    // the server only): what really happened there, kept beside the recorded state.
    let late = task.runs.iter().any(|r| r.late_exit.is_some());
    let mut headers = vec!["NODE", "STATE", "EXIT", "STARTED", "FINISHED", "ERROR"];
    if late {
        headers.push("LATE EXIT");
    }
    let mut t = table(&headers);
    for r in &task.runs {
        let mut row = vec![
            r.node_name.clone(),
            r.state.as_str().to_string(),
            if r.state.is_final() {
                run_exit_code(r).to_string()
            } else {
                "-".into()
            },
            r.started_at
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            r.finished_at
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_else(|| "-".into()),
            r.error.clone().unwrap_or_default(),
        ];
        if late {
            row.push(r.late_exit.as_ref().map(late_exit).unwrap_or_default());
        }
        t.add_row(row);
    }
    println!("{t}");
}

async fn cancel(client: &Client, output: OutputFormat, id: &str) -> anyhow::Result<()> {
    // Looked at first so that cancelling a finished task says so instead of "cancel requested"
    // (the server leaves a finished task alone, unaudited, either way).
    let before: Task = client
        .get(&format!("/api/v1/tasks/{}", segment(id)))
        .await?;
    let task = if before.is_finished() {
        eprintln!(
            "task {} had already finished ({}): nothing to cancel",
            before.id,
            before.state()
        );
        Some(before)
    } else {
        let task: Option<Task> = client
            .request(
                Method::POST,
                &format!("/api/v1/tasks/{}/cancel", segment(&before.id)),
                None::<&()>,
            )
            .await?;
        match &task {
            Some(t) if t.is_finished() => {
                eprintln!("task {} is over: {}", t.id, t.state())
            }
            _ => eprintln!(
                "cancel requested for task {}: its nodes stop it (see `drover tasks show {}`)",
                before.id, before.id
            ),
        }
        task
    };
    if let (OutputFormat::Json, Some(t)) = (output, task) {
        print_json(&t)?;
    }
    Ok(())
}

/// A task's line. The list carries a task's first runs only (and every run counted): for a task on more
/// nodes its duration is not known from them, and its exit codes end with "…".
fn row(entry: &TaskListEntry) -> Vec<String> {
    let task = &entry.task;
    let target = match &task.target {
        drover_types::task::Target::Node(n) => n.clone(),
        drover_types::task::Target::Selector(s) => s
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        drover_types::task::Target::All => "all".into(),
    };
    let started = task.runs.iter().filter_map(|r| r.started_at).min();
    let finished = task.runs.iter().filter_map(|r| r.finished_at).max();
    let done = entry.state != "Running";
    let duration = match (started, finished, done && entry.complete()) {
        (Some(a), Some(b), true) => format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    };
    let mut codes: Vec<String> = task
        .runs
        .iter()
        .filter(|r| r.state.is_final())
        .map(|r| run_exit_code(r).to_string())
        .collect();
    if !entry.complete() {
        codes.push("…".into());
    }
    let mut command = task.spec.summary();
    if command.chars().count() > 40 {
        command = command.chars().take(39).collect::<String>() + "…";
    }
    vec![
        task.id.chars().take(8).collect(),
        target,
        command,
        entry.state.clone(),
        ago(started),
        duration,
        codes.join(","),
    ]
}

/// A late exit in a few words: its state, code or signal, error and when it came.
fn late_exit(e: &LateExit) -> String {
    let mut parts = vec![e.state.as_str().to_string()];
    if let Some(code) = e.exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(signal) = e.signal {
        parts.push(format!("signal {signal}"));
    }
    if let Some(error) = &e.error {
        parts.push(error.clone());
    }
    parts.push(format!("at {}", e.at.format("%H:%M:%S")));
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use drover_types::task::{LateExit, RunState};

    #[test]
    fn a_late_exit_says_how_and_when_it_ended() {
        let at = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 5, 7).unwrap();
        let e = LateExit {
            state: RunState::Failed,
            exit_code: Some(3),
            signal: None,
            error: None,
            at,
        };
        assert_eq!(super::late_exit(&e), "Failed, exit 3, at 09:05:07");
        let e = LateExit {
            state: RunState::Failed,
            exit_code: None,
            signal: Some(9),
            error: Some("killed".into()),
            at,
        };
        assert_eq!(
            super::late_exit(&e),
            "Failed, signal 9, killed, at 09:05:07"
        );
    }
}
