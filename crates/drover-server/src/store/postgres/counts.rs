//! What `/metrics` counts, each an aggregate in SQL: one read per scrape, however large the fleet.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{StoreError, unsigned};
use crate::store::{FleetCounts, NodeLiveness};

async fn grouped(pool: &PgPool, sql: &'static str) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(k, n)| (k.unwrap_or_default(), unsigned(n)))
        .collect())
}

pub(super) async fn counts(pool: &PgPool) -> Result<FleetCounts, StoreError> {
    let nodes: Vec<(String, Option<DateTime<Utc>>, i64)> =
        sqlx::query_as("SELECT id, last_seen, heartbeat_interval_ms FROM nodes")
            .fetch_all(pool)
            .await?;
    let nodes = nodes
        .into_iter()
        .map(|(id, last_seen, interval)| NodeLiveness {
            id,
            last_seen,
            heartbeat_interval_ms: unsigned(interval),
        })
        .collect();
    let runs_by_state =
        grouped(pool, "SELECT state, count(*) FROM task_runs GROUP BY state").await?;
    // A task's state as `Task::state` derives it from its runs: Running until every run is final, then
    // Succeeded if all succeeded, Cancelled if all were cancelled, else Failed.
    let tasks_by_state = grouped(
        pool,
        "SELECT task_state, count(*) FROM (
            SELECT CASE
                WHEN count(*) FILTER (WHERE r.state IN ('Pending', 'Running')) > 0 THEN 'Running'
                WHEN count(*) FILTER (WHERE r.state <> 'Succeeded') = 0 THEN 'Succeeded'
                WHEN count(*) FILTER (WHERE r.state <> 'Cancelled') = 0 THEN 'Cancelled'
                ELSE 'Failed' END AS task_state
            FROM tasks t LEFT JOIN task_runs r ON r.task_id = t.id
            GROUP BY t.id) s
         GROUP BY task_state",
    )
    .await?;
    let manifests: i64 = sqlx::query_scalar("SELECT count(*) FROM manifests")
        .fetch_one(pool)
        .await?;
    let resources_by_state = grouped(
        pool,
        "SELECT state, count(*) FROM node_resources GROUP BY state",
    )
    .await?;
    Ok(FleetCounts {
        nodes,
        runs_by_state,
        tasks_by_state,
        manifests: unsigned(manifests),
        resources_by_state,
    })
}
