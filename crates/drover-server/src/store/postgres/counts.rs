//! What `/metrics` counts, each an aggregate in SQL: one read per scrape, however large the fleet.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{StoreError, unsigned};
use crate::store::sql;
use crate::store::{FleetCounts, NodeLiveness};

async fn grouped(pool: &PgPool, statement: &'static str) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(statement).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(k, n)| (k.unwrap_or_default(), unsigned(n)))
        .collect())
}

pub(super) async fn counts(pool: &PgPool) -> Result<FleetCounts, StoreError> {
    let nodes: Vec<(String, Option<DateTime<Utc>>, i64)> = sqlx::query_as(sql::counts::NODES.pg)
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
    let runs_by_state = grouped(pool, sql::counts::RUNS_BY_STATE.pg).await?;
    let tasks_by_state = grouped(pool, sql::counts::TASKS_BY_STATE.pg).await?;
    let manifests: i64 = sqlx::query_scalar(sql::counts::MANIFESTS.pg)
        .fetch_one(pool)
        .await?;
    let resources_by_state = grouped(pool, sql::counts::RESOURCES_BY_STATE.pg).await?;
    // The capabilities are JSON text: matched rather than cast, so text that is not JSON counts as no
    // version instead of failing the scrape.
    let nodes_by_agent_version = grouped(
        pool,
        r#"SELECT substring(capabilities from '"agent_version":"([^"]*)"'), count(*) FROM nodes GROUP BY 1"#,
    )
    .await?;
    Ok(FleetCounts {
        nodes,
        runs_by_state,
        tasks_by_state,
        manifests: unsigned(manifests),
        resources_by_state,
        nodes_by_agent_version,
    })
}
