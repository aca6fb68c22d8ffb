//! Operator routes for tasks, their output (Server-Sent Events: replay, then follow) and the audit log.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use drover_types::task::{AuditEntry, CreateTask, Task};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::json::ApiJson;
use super::{ApiError, ApiState};
use crate::Fleet;
use crate::store::AuditFilter;
use crate::tasks::{TaskEvent, chunk};

/// Who acts through the REST API. Only the admin token exists so far.
const ACTOR: &str = "admin";

pub async fn create(
    State(s): State<ApiState>,
    ApiJson(req): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.fleet.create_task(ACTOR, req).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
}

pub async fn list(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), Some("limit".into())))?;
    Ok(Json(s.fleet.tasks(q.limit.unwrap_or(50).min(1000)).await?))
}

pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(s.fleet.task(&id).await?))
}

pub async fn cancel(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(s.fleet.cancel_task(ACTOR, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    #[serde(default)]
    follow: bool,
}

/// `event: output` (an array of consecutive OutputChunks), `event: exit` (a TaskRun), `event: done` (the Task,
/// when every run is final).
pub async fn output(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(e.body_text(), Some("follow".into())))?;
    let id = s.fleet.task(&id).await?.id;
    // Subscribe before reading what is stored, so nothing falls between the two.
    let live = s.fleet.subscribe(&id);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(stream_task(s.fleet.clone(), id, q.follow, live, tx));
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

fn event(name: &str, data: &impl serde::Serialize) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default()))
}

/// What a follower has been sent, so replay and live events never repeat.
#[derive(Default)]
struct Sent {
    /// Stored rows read so far.
    cursor: i64,
    next_seq: HashMap<String, u64>,
    exits: HashSet<String>,
}

async fn stream_task(
    fleet: Arc<Fleet>,
    id: String,
    follow: bool,
    mut live: broadcast::Receiver<TaskEvent>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut sent = Sent::default();
    if catch_up(&fleet, &id, &mut sent, &tx).await.unwrap_or(true) || !follow {
        return;
    }
    loop {
        let ev = tokio::select! {
            ev = live.recv() => ev,
            _ = tx.closed() => return,
        };
        let done = match ev {
            Ok(TaskEvent::Output(chunks)) => {
                let fresh: Vec<_> = chunks
                    .into_iter()
                    .filter(|c| {
                        let next = sent.next_seq.entry(c.node_id.clone()).or_default();
                        let new = c.seq >= *next;
                        if new {
                            *next = c.seq + 1;
                        }
                        new
                    })
                    .collect();
                if !fresh.is_empty() && tx.send(event("output", &fresh)).await.is_err() {
                    return;
                }
                false
            }
            Ok(TaskEvent::Exit(run)) => {
                if sent.exits.insert(run.node_id.clone())
                    && tx.send(event("exit", &run)).await.is_err()
                {
                    return;
                }
                false
            }
            // The end, or events lost to a slow follower: either way the store has the truth.
            Ok(TaskEvent::Done) | Err(broadcast::error::RecvError::Lagged(_)) => {
                catch_up(&fleet, &id, &mut sent, &tx).await.unwrap_or(true)
            }
            Err(broadcast::error::RecvError::Closed) => true,
        };
        if done {
            return;
        }
    }
}

/// Sends stored output and final runs not sent yet; true when the task is finished (and `done` was sent).
async fn catch_up(
    fleet: &Fleet,
    id: &str,
    sent: &mut Sent,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<bool, ()> {
    let task = fleet.task(id).await.map_err(|_| ())?;
    let names: HashMap<&str, &str> = task
        .runs
        .iter()
        .map(|r| (r.node_id.as_str(), r.node_name.as_str()))
        .collect();
    loop {
        let page = fleet
            .task_output_page(id, sent.cursor, 1000)
            .await
            .map_err(|_| ())?;
        if page.is_empty() {
            break;
        }
        let mut fresh = Vec::new();
        for (row, rec) in page {
            sent.cursor = row;
            let next = sent.next_seq.entry(rec.node_id.clone()).or_default();
            if rec.seq < *next {
                continue;
            }
            *next = rec.seq + 1;
            let name = names.get(rec.node_id.as_str()).copied().unwrap_or_default();
            fresh.push(chunk(&rec.node_id, name, rec.seq, rec.stream, &rec.data));
        }
        if !fresh.is_empty() {
            tx.send(event("output", &fresh)).await.map_err(|_| ())?;
        }
    }
    // Reread: runs may have finished while the output was being sent.
    let task = fleet.task(id).await.map_err(|_| ())?;
    for run in task.runs.iter().filter(|r| r.state.is_final()) {
        if sent.exits.insert(run.node_id.clone()) {
            tx.send(event("exit", run)).await.map_err(|_| ())?;
        }
    }
    if task.is_finished() {
        tx.send(event("done", &task)).await.map_err(|_| ())?;
        return Ok(true);
    }
    Ok(false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

pub async fn audit(
    State(s): State<ApiState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let since = match q.since.as_deref() {
        None => None,
        Some(text) => Some(match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(_) => {
                let ago = drover_types::duration::parse_duration(text).map_err(|_| {
                    ApiError::bad_request(
                        format!("{text:?} is neither an RFC 3339 time nor a duration like 1h"),
                        Some("since".into()),
                    )
                })?;
                chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default()
            }
        }),
    };
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        since,
        limit: q.limit.unwrap_or(100).min(10_000),
    };
    Ok(Json(s.fleet.audit_log(filter).await?))
}
