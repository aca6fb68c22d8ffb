//! Operator routes for tasks and their output (Server-Sent Events: replay, then follow).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use drover_types::task::{CreateTask, Task, TaskListEntry};
use drover_types::url::percent_encode;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::json::ApiJson;
use crate::Fleet;
use crate::fleet::pages::{MAX_PAGE, parse_run_state};
use crate::http::{ApiError, Caller, HttpState};
use crate::store::{RunQuery, StoredOutput};
use crate::tasks::{TaskEvent, chunk};

/// A created task, and the HTTP nodes its target selected that got no run (they take no tasks).
#[derive(serde::Serialize)]
pub struct Created {
    #[serde(flatten)]
    task: Task,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped_http_nodes: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", operation_id = "tasks_create", request_body = drover_types::task::CreateTask, responses((status = 201, description = "the task; `skipped_http_nodes` besides its fields names the HTTP nodes the target selected, which take no tasks and get no run", body = drover_types::task::Task), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn create(
    State(s): State<HttpState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let (task, skipped_http_nodes) = s
        .fleet
        .tasks
        .create_task_skipping(&caller.name, req)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            task,
            skipped_http_nodes,
        }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Tasks listed, newest first (50 by default, at most 1000).
    limit: Option<usize>,
    /// Runs listed per task, in node order (100 by default, at most 1000; 0 for none): a task on more
    /// nodes lists its first ones, and `run_counts` and `runs_total` count them all.
    runs: Option<usize>,
}

/// Runs a listed task carries when the caller names no number.
const LIST_RUNS: usize = 100;

#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", operation_id = "tasks_list", params(ListQuery), responses((status = 200, description = "tasks, newest first, with their first runs and every run counted", body = [drover_types::task::TaskListEntry]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn list(
    State(s): State<HttpState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskListEntry>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let limit = q.limit.unwrap_or(50).min(MAX_PAGE);
    let runs = q.runs.unwrap_or(LIST_RUNS).min(MAX_PAGE);
    let tasks = s.fleet.tasks.task_list(limit, runs).await?;
    Ok(Json(
        tasks
            .into_iter()
            .map(|(summary, runs)| TaskListEntry {
                run_counts: summary
                    .runs
                    .iter()
                    .map(|(s, n)| (s.as_str().to_string(), *n))
                    .collect(),
                runs_total: summary.count(None),
                state: summary.state().to_string(),
                task: summary.into_task(runs),
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Runs on a page (100 by default, at most 1000).
    limit: Option<usize>,
    /// Runs skipped, in the task's node order.
    offset: Option<usize>,
    /// Only runs in this state (Pending, Running, Succeeded, Failed, …).
    state: Option<String>,
}

/// A task's runs a page at a time, in node order: a task on every node of a large fleet is read a page at a
/// time. `X-Total-Count` says how many match, `Link` names the next page.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/runs", tag = "tasks", operation_id = "tasks_runs", params(("id" = String, Path, description = "task id or a unique prefix of 4+ characters"), RunsQuery), responses((status = 200, description = "a page of the task's runs (`X-Total-Count`: how many match; `Link`: the next page)", body = [drover_types::task::TaskRun]), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn runs(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let state = q
        .state
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_run_state(s, "state"))
        .transpose()?;
    let (offset, limit) = (
        q.offset.unwrap_or(0),
        q.limit.unwrap_or(100).clamp(1, MAX_PAGE),
    );
    let page = s
        .fleet
        .tasks
        .task_page(
            &id,
            RunQuery {
                state,
                offset,
                limit,
                ..RunQuery::default()
            },
        )
        .await?;
    let path = format!("/api/v1/tasks/{}/runs", percent_encode(&page.summary.id));
    let filters = [(
        "state",
        state.map(|s| s.as_str().to_string()).unwrap_or_default(),
    )];
    let headers =
        super::paging::headers(&path, &filters, offset, limit, page.runs.len(), page.total);
    Ok((headers, Json(page.runs)).into_response())
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", operation_id = "tasks_get", params(("id" = String, Path, description = "task id or a unique prefix of 4+ characters")), responses((status = 200, description = "the task and its runs", body = drover_types::task::Task), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn get(
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(s.fleet.tasks.task(&id).await?))
}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", operation_id = "tasks_cancel", params(("id" = String, Path, description = "task id")), responses((status = 200, description = "the task", body = drover_types::task::Task), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn cancel(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(s.fleet.tasks.cancel_task(&caller.name, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    #[serde(default)]
    follow: bool,
}

/// Events a burst of live events is read in before the follower looks at the store once for all of them.
const BURST: usize = 1024;
/// Stored rows an output event carries at most.
const PAGE_ROWS: usize = 1000;
/// Output bytes an event carries, about: a page read ends with the row that reaches it (a row is at most
/// `MAX_CHUNK_BYTES`), so an event holds at most 320 KiB of output before encoding.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Events waiting for a slow follower's connection. A page is read only once one of these has room, so
/// a follower that reads nothing holds this many events and the one its connection is writing; what it
/// has not taken stays in the store.
pub const FOLLOWER_EVENTS: usize = 2;

/// The resume point a follower sends back (`Last-Event-ID`): a row cursor of the stored output. One this
/// server did not make counts as none: replaying from an earlier point is harmless, skipping is not.
pub(super) fn last_event_id(headers: &HeaderMap) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|c| *c >= 0)
        .unwrap_or(0)
}

/// `event: output` (an array of consecutive OutputChunks), `event: exit` (a TaskRun), `event: done` (the Task,
/// when every run is final). Every event has an `id:`, the stored output's row cursor up to which the
/// follower has everything; sent back as `Last-Event-ID`, the stream resumes after it. A resumed stream may
/// repeat chunks from before that point (same node and seq) and exits (same node): followers drop repeats.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/output", tag = "tasks", operation_id = "tasks_output", params(("id" = String, Path, description = "task id"), OutputQuery, ("Last-Event-ID" = Option<String>, Header, description = "resume after this event")), responses((status = 200, description = "Server-Sent Events: `output`, `exit`, `done` (docs/api.md)", content_type = "text/event-stream", body = String), (status = "4XX", description = "refused: `error` says why, `field` names the field at fault", body = drover_types::api::ErrorBody)))]
pub async fn output(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(e.body_text(), Some("follow".into())))?;
    let task = s.fleet.tasks.task(&id).await?;
    // Subscribe before reading what is stored, so nothing falls between the two.
    let live = s.fleet.tasks.subscribe(&task.id);
    let (tx, rx) = mpsc::channel(FOLLOWER_EVENTS);
    let follower = Follower {
        fleet: s.fleet.clone(),
        names: task
            .runs
            .iter()
            .map(|r| (r.node_id.clone(), r.node_name.clone()))
            .collect(),
        id: task.id,
        sent: Sent {
            cursor: last_event_id(&headers),
            ..Sent::default()
        },
        tx,
    };
    tokio::spawn(follower.run(q.follow, live));
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// What a follower has been sent, so replay and live events never repeat.
#[derive(Default)]
struct Sent {
    /// Stored rows read so far: the resume point.
    cursor: i64,
    next_seq: HashMap<String, u64>,
    exits: HashSet<String>,
}

impl Sent {
    /// Whether this chunk is new (and from now on sent).
    fn fresh(&mut self, node_id: &str, seq: u64) -> bool {
        let next = self.next_seq.entry(node_id.to_string()).or_default();
        let new = seq >= *next;
        if new {
            *next = seq + 1;
        }
        new
    }
}

/// The stream stopped: the follower went away or the task is gone.
struct Stop;

/// One follower of one task's output.
struct Follower {
    fleet: Arc<Fleet>,
    id: String,
    names: HashMap<String, String>,
    sent: Sent,
    tx: mpsc::Sender<Result<Event, Infallible>>,
}

impl Follower {
    async fn run(mut self, follow: bool, mut live: broadcast::Receiver<TaskEvent>) {
        match self.catch_up().await {
            Ok(false) if follow => {}
            _ => return,
        }
        while let Ok(false) = self.live(&mut live).await {}
    }

    async fn send(&self, name: &str, data: &impl serde::Serialize) -> Result<(), Stop> {
        let event = self.event(name, data);
        self.tx.send(Ok(event)).await.map_err(|_| Stop)
    }

    fn event(&self, name: &str, data: &impl serde::Serialize) -> Event {
        // Encoded straight into the event's buffer: no intermediate copy of a large output event.
        Event::default()
            .event(name)
            .id(self.sent.cursor.to_string())
            .json_data(data)
            .unwrap_or_else(|_| Event::default().event(name).data(""))
    }

    /// Waits for live events and sends what they bring; true when the task is finished.
    async fn live(&mut self, live: &mut broadcast::Receiver<TaskEvent>) -> Result<bool, Stop> {
        let first = tokio::select! {
            ev = live.recv() => ev,
            _ = self.tx.closed() => return Err(Stop),
        };
        // Take what else is queued, so a burst costs one look at the store.
        let mut batch = vec![first];
        while batch.len() < BURST {
            match live.try_recv() {
                Ok(ev) => batch.push(Ok(ev)),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    batch.push(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    batch.push(Err(broadcast::error::RecvError::Closed));
                    break;
                }
            }
        }
        let (mut output, mut exits, mut reread, mut closed) = (false, Vec::new(), false, false);
        for ev in batch {
            match ev {
                Ok(TaskEvent::Output) => output = true,
                Ok(TaskEvent::Exit(run)) => exits.push(run),
                // The end, news another replica stored, or events lost to a slow follower: either
                // way the store has the truth.
                Ok(TaskEvent::Done | TaskEvent::Stored)
                | Err(broadcast::error::RecvError::Lagged(_)) => reread = true,
                Err(broadcast::error::RecvError::Closed) => closed = true,
            }
        }
        if closed {
            // Nothing more will come this way: send what is stored and end the stream (a follower
            // that still waits for the end reconnects and subscribes afresh).
            self.catch_up().await?;
            return Err(Stop);
        }
        if reread {
            return self.catch_up().await;
        }
        // Output is published after it is stored, so the store has it, with its exact resume point. A burst
        // of exits alone needs no look: a run's output is published before its exit.
        if output {
            self.send_stored().await?;
        }
        for run in exits {
            if self.sent.exits.insert(run.node_id.clone()) {
                self.send("exit", &run).await?;
            }
        }
        Ok(false)
    }

    /// Sends stored output not sent yet, a page at a time, each read only once the follower's channel has
    /// room for it: a follower that does not read holds `FOLLOWER_EVENTS` pages, not the whole output.
    async fn send_stored(&mut self) -> Result<(), Stop> {
        loop {
            let room = self.tx.reserve().await.map_err(|_| Stop)?;
            let page = self
                .fleet
                .tasks
                .task_output_within(&self.id, self.sent.cursor, PAGE_ROWS, PAGE_BYTES)
                .await
                .map_err(|_| Stop)?;
            let Some(last) = page.last().map(|o| o.row) else {
                return Ok(());
            };
            let mut fresh = Vec::new();
            for StoredOutput { record: rec, .. } in page {
                if self.sent.fresh(&rec.node_id, rec.seq) {
                    let name = self.names.get(&rec.node_id).map(String::as_str);
                    fresh.push(chunk(
                        &rec.node_id,
                        name.unwrap_or_default(),
                        rec.seq,
                        rec.stream,
                        rec.data,
                    ));
                }
            }
            self.sent.cursor = last;
            if !fresh.is_empty() {
                room.send(Ok(self.event("output", &fresh)));
            }
        }
    }

    /// Sends stored output and final runs not sent yet; true when the task is finished (and `done` was sent).
    async fn catch_up(&mut self) -> Result<bool, Stop> {
        self.send_stored().await?;
        let task = self.fleet.tasks.task(&self.id).await.map_err(|_| Stop)?;
        // A run final now has all its output stored, but some may have been stored after the read above:
        // read again before its exit goes out, or the follower would end without those chunks.
        if task.runs.iter().any(|r| r.state.is_final()) {
            self.send_stored().await?;
        }
        for run in task.runs.iter().filter(|r| r.state.is_final()) {
            if self.sent.exits.insert(run.node_id.clone()) {
                self.send("exit", run).await?;
            }
        }
        if task.is_finished() {
            self.send("done", &task).await?;
            return Ok(true);
        }
        Ok(false)
    }
}
