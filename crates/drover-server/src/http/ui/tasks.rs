//! Tasks: the newest ones with their runs counted, and a task's runs (counted by state at the top, a page
//! of them below, filtered by state) and output, live while it runs. Operators may cancel a running task
//! from its page.

use std::collections::{BTreeSet, HashMap};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use drover_types::operator::Role;
use drover_types::task::{RunState, Target, TaskRun};
use serde::Deserialize;

use super::node::run_class;
use super::view::{self, Count, Nav, Pager};
use crate::fleet::pages::parse_run_state;
use crate::http::{ApiError, Caller, HttpState};
use crate::store::{RunQuery, StoredOutput, TaskPage as StoredPage};

/// Tasks listed.
const TASKS: usize = 50;
/// Runs on a page of a task's runs.
const RUNS: usize = 50;
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

pub async fn list(State(s): State<HttpState>, caller: Caller, headers: HeaderMap) -> Response {
    let tasks = match s.fleet.tasks.task_summaries(TASKS).await {
        Ok(t) => t,
        Err(e) => return view::failed(&caller, e.into()),
    };
    let rows = tasks
        .into_iter()
        .map(|t| {
            let state = t.state();
            let done = t.done();
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

fn run_row(r: &TaskRun) -> RunRow {
    RunRow {
        node_id: r.node_id.clone(),
        node: r.node_name.clone(),
        state: r.state.as_str().to_string(),
        class: run_class(r.state),
        exit: r.shell_code().map(|c| c.to_string()).unwrap_or_default(),
        error: r.error.clone().unwrap_or_default(),
    }
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
    self_url: String,
    running: bool,
    can_cancel: bool,
    state: &'static str,
    class: &'static str,
    error: String,
    counts: Vec<Count>,
    runs: Vec<RunRow>,
    pager: Pager,
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

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    state: Option<String>,
    page: Option<usize>,
}

fn task_href(id: &str, state: Option<RunState>, page: usize) -> String {
    view::href(
        &format!("/ui/tasks/{}", drover_types::url::percent_encode(id)),
        &[("state", state.map_or("", |s| s.as_str()))],
        page,
    )
}

/// The task's output from the start, up to `OUTPUT_ROWS` rows and `OUTPUT_BYTES`, each stretch named by
/// its node: names come from the page's runs, and the runs of the other nodes in the output are read by
/// node id (a bounded read: at most one per output row).
async fn output(s: &HttpState, page: &StoredPage) -> Result<(Vec<Chunk>, bool), ApiError> {
    let id = &page.summary.id;
    // One byte past the page's budget: a row that reaches it means there is more than the page shows.
    let rows = s
        .fleet
        .tasks
        .task_output_within(id, 0, OUTPUT_ROWS, OUTPUT_BYTES + 1)
        .await?;
    let mut names: HashMap<String, String> = page
        .runs
        .iter()
        .map(|r| (r.node_id.clone(), r.node_name.clone()))
        .collect();
    let unnamed: BTreeSet<&str> = rows
        .iter()
        .map(|o| o.record.node_id.as_str())
        .filter(|n| !names.contains_key(*n))
        .collect();
    if !unnamed.is_empty() {
        let query = RunQuery {
            nodes: unnamed.iter().map(|n| n.to_string()).collect(),
            limit: unnamed.len(),
            ..RunQuery::default()
        };
        let named = s.fleet.tasks.task_page(id, query).await?;
        names.extend(named.runs.into_iter().map(|r| (r.node_id, r.node_name)));
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = rows.len() >= OUTPUT_ROWS;
    for StoredOutput { record: rec, .. } in rows {
        if bytes + rec.data.len() > OUTPUT_BYTES {
            truncated = true;
            break;
        }
        bytes += rec.data.len();
        let text = String::from_utf8_lossy(&rec.data);
        let node = names.get(&rec.node_id).map_or("?", String::as_str);
        let stderr = rec.stream == 2;
        match chunks.last_mut() {
            Some(c) if c.node == node && c.stderr == stderr => c.text.push_str(&text),
            _ => chunks.push(Chunk {
                node: node.to_string(),
                stderr,
                text: text.into_owned(),
            }),
        }
    }
    Ok((chunks, truncated))
}

async fn task_live(
    s: &HttpState,
    caller: &Caller,
    page: &StoredPage,
    state: Option<RunState>,
    page_no: usize,
    error: String,
) -> Result<TaskLive, ApiError> {
    let (output, truncated) = output(s, page).await?;
    let t = &page.summary;
    let running = t.done() < t.count(None);
    let overall = t.state();
    let all = Count {
        name: "All".into(),
        class: "all",
        n: t.count(None),
        href: task_href(&t.id, None, 0),
        active: state.is_none(),
    };
    let counts = std::iter::once(all)
        .chain(t.runs.iter().map(|(s, n)| Count {
            name: s.as_str().to_string(),
            class: run_class(*s),
            n: *n,
            href: task_href(&t.id, Some(*s), 0),
            active: state == Some(*s),
        }))
        .collect();
    let runs: Vec<RunRow> = page.runs.iter().map(run_row).collect();
    let pager = Pager::new(page_no, RUNS, runs.len(), page.total, |p| {
        task_href(&t.id, state, p)
    });
    Ok(TaskLive {
        id: t.id.clone(),
        self_url: task_href(&t.id, state, page_no),
        running,
        can_cancel: running && caller.role >= Role::Operator,
        state: overall,
        class: state_class(overall),
        error,
        counts,
        runs,
        pager,
        many_nodes: t.count(None) > 1,
        output,
        truncated,
    })
}

async fn show(
    s: &HttpState,
    caller: &Caller,
    headers: &HeaderMap,
    id: &str,
    q: RunsQuery,
) -> Response {
    let (state, error) = match q.state.as_deref().filter(|s| !s.trim().is_empty()) {
        None => (None, String::new()),
        Some(text) => match parse_run_state(text, "state") {
            Ok(s) => (Some(s), String::new()),
            Err(e) => (None, e.to_string()),
        },
    };
    let page_no = q.page.unwrap_or(0).min(view::MAX_PAGE_NO);
    let query = RunQuery {
        state,
        offset: page_no.saturating_mul(RUNS),
        limit: RUNS,
        ..RunQuery::default()
    };
    let page = match s.fleet.tasks.task_page(id, query).await {
        Ok(p) => p,
        Err(e) => return view::failed(caller, e.into()),
    };
    let live = match task_live(s, caller, &page, state, page_no, error).await {
        Ok(l) => l,
        Err(e) => return view::failed(caller, e),
    };
    let task = &page.summary;
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
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    show(&s, &caller, &headers, &id, q).await
}

/// `POST /ui/tasks/{id}/cancel` (htmx, operators): cancels, then answers the task's live part.
pub async fn cancel(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = s.fleet.tasks.cancel_task(&caller.name, &id).await {
        return view::failed(&caller, e.into());
    }
    show(&s, &caller, &headers, &id, RunsQuery::default()).await
}
