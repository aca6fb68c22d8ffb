//! Tasks: the newest ones with their runs counted, and a task's runs and output, live while it runs.
//! Operators may cancel a running task from its page.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use drover_types::operator::Role;
use drover_types::task::{Target, Task};

use super::node::run_class;
use super::view::{self, Nav};
use crate::api::{ApiError, ApiState, Caller};

/// Tasks listed.
const TASKS: usize = 50;
/// Runs listed on a task's page.
const RUNS: usize = 200;
/// Output rows read for a task's page, and the bytes shown of them.
const OUTPUT_ROWS: usize = 2000;
const OUTPUT_BYTES: usize = 256 * 1024;

fn target(t: &Target) -> String {
    match t {
        Target::Node(n) => n.clone(),
        Target::Selector(labels) => labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        Target::All => "all nodes".into(),
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "Succeeded" => "ok",
        "Running" => "warn",
        "Cancelled" => "muted",
        _ => "bad",
    }
}

pub struct TaskRow {
    id: String,
    short: String,
    command: String,
    target: String,
    state: &'static str,
    class: &'static str,
    runs: String,
    by: String,
    when: String,
}

#[derive(Template)]
#[template(path = "tasks_live.html")]
pub struct ListLive {
    rows: Vec<TaskRow>,
}

#[derive(Template)]
#[template(path = "tasks.html")]
pub struct ListPage {
    live: String,
}

pub async fn list(State(s): State<ApiState>, caller: Caller, headers: HeaderMap) -> Response {
    let tasks = match s.fleet.task_summaries(TASKS).await {
        Ok(t) => t,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let rows = tasks
        .into_iter()
        .map(|t| {
            let state = t.state();
            let done: usize = t
                .runs
                .iter()
                .filter(|(s, _)| s.is_final())
                .map(|(_, n)| n)
                .sum();
            TaskRow {
                short: view::short(&t.id).to_string(),
                command: t.spec.summary(),
                target: target(&t.target),
                state,
                class: state_class(state),
                runs: format!("{done}/{}", t.total_runs()),
                by: t.created_by,
                when: view::ago(Some(t.created_at)),
                id: t.id,
            }
        })
        .collect();
    let live = ListLive { rows };
    let body = ListPage {
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(&headers, "Tasks", Nav::Tasks, &caller, &body, &live)
}

pub struct RunRow {
    node_id: String,
    node: String,
    state: String,
    class: &'static str,
    exit: String,
    error: String,
}

/// A stretch of output from one node and stream.
pub struct Chunk {
    node: String,
    stderr: bool,
    text: String,
}

#[derive(Template)]
#[template(path = "task_live.html")]
pub struct TaskLive {
    id: String,
    running: bool,
    can_cancel: bool,
    state: &'static str,
    class: &'static str,
    runs: Vec<RunRow>,
    more_runs: usize,
    many_nodes: bool,
    output: Vec<Chunk>,
    truncated: bool,
}

#[derive(Template)]
#[template(path = "task.html")]
pub struct TaskPage<'a> {
    short: &'a str,
    command: String,
    target: String,
    by: &'a str,
    created: String,
    live: String,
}

async fn task_live(s: &ApiState, caller: &Caller, task: &Task) -> Result<TaskLive, ApiError> {
    let names: std::collections::HashMap<&str, &str> = task
        .runs
        .iter()
        .map(|r| (r.node_id.as_str(), r.node_name.as_str()))
        .collect();
    let rows = s.fleet.task_output_page(&task.id, 0, OUTPUT_ROWS).await?;
    let mut output: Vec<Chunk> = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = rows.len() >= OUTPUT_ROWS;
    for (_, rec) in rows {
        if bytes + rec.data.len() > OUTPUT_BYTES {
            truncated = true;
            break;
        }
        bytes += rec.data.len();
        let text = String::from_utf8_lossy(&rec.data);
        let node = names.get(rec.node_id.as_str()).copied().unwrap_or("?");
        let stderr = rec.stream == 2;
        match output.last_mut() {
            Some(c) if c.node == node && c.stderr == stderr => c.text.push_str(&text),
            _ => output.push(Chunk {
                node: node.to_string(),
                stderr,
                text: text.into_owned(),
            }),
        }
    }
    let running = !task.is_finished();
    let state = task.state();
    Ok(TaskLive {
        id: task.id.clone(),
        running,
        can_cancel: running && caller.role >= Role::Operator,
        state,
        class: state_class(state),
        runs: task
            .runs
            .iter()
            .take(RUNS)
            .map(|r| RunRow {
                node_id: r.node_id.clone(),
                node: r.node_name.clone(),
                state: format!("{:?}", r.state),
                class: run_class(r.state),
                exit: r.shell_code().map(|c| c.to_string()).unwrap_or_default(),
                error: r.error.clone().unwrap_or_default(),
            })
            .collect(),
        more_runs: task.runs.len().saturating_sub(RUNS),
        many_nodes: task.runs.len() > 1,
        output,
        truncated,
    })
}

async fn show(s: &ApiState, caller: &Caller, headers: &HeaderMap, id: &str) -> Response {
    let task = match s.fleet.task(id).await {
        Ok(t) => t,
        Err(e) => return view::failed(caller, e.into()),
    };
    let live = match task_live(s, caller, &task).await {
        Ok(l) => l,
        Err(e) => return view::failed(caller, e),
    };
    let body = TaskPage {
        short: view::short(&task.id),
        command: task.spec.summary(),
        target: target(&task.target),
        by: &task.created_by,
        created: view::time(task.created_at),
        live: live.render().unwrap_or_default(),
    };
    view::live_or_page(headers, "Task", Nav::Tasks, caller, &body, &live)
}

pub async fn page(
    State(s): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    show(&s, &caller, &headers, &id).await
}

/// `POST /ui/tasks/{id}/cancel` (htmx, operators): cancels, then answers the task's live part.
pub async fn cancel(
    State(s): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = s.fleet.cancel_task(&caller.name, &id).await {
        return view::failed(&caller, e.into());
    }
    show(&s, &caller, &headers, &id).await
}
