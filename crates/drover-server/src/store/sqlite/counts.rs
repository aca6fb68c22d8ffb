//! What `/metrics` counts, each an aggregate in SQL: one read per scrape, however large the fleet.

use rusqlite::Connection;

use super::{StoreError, parse_ts};
use crate::store::{FleetCounts, NodeLiveness};

fn grouped(c: &Connection, sql: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub(super) fn counts(c: &Connection) -> Result<FleetCounts, StoreError> {
    let mut stmt = c.prepare_cached("SELECT id, last_seen, heartbeat_interval_ms FROM nodes")?;
    let nodes = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(id, last_seen, interval)| NodeLiveness {
            // An unreadable time counts as never seen: the node shows as Offline, never as an error.
            last_seen: last_seen.and_then(|t| parse_ts(&t, "node last_seen").ok()),
            heartbeat_interval_ms: interval.max(0) as u64,
            id,
        })
        .collect();
    let runs_by_state = grouped(c, "SELECT state, count(*) FROM task_runs GROUP BY state")?;
    // A task's state as `Task::state` derives it from its runs: Running until every run is final, then
    // Succeeded if all succeeded, Cancelled if all were cancelled, else Failed.
    let tasks_by_state = grouped(
        c,
        "SELECT task_state, count(*) FROM (
            SELECT CASE
                WHEN total(r.state IN ('Pending', 'Running')) > 0 THEN 'Running'
                WHEN total(r.state <> 'Succeeded') = 0 THEN 'Succeeded'
                WHEN total(r.state <> 'Cancelled') = 0 THEN 'Cancelled'
                ELSE 'Failed' END AS task_state
            FROM tasks t LEFT JOIN task_runs r ON r.task_id = t.id
            GROUP BY t.id)
         GROUP BY task_state",
    )?;
    let manifests: i64 = c
        .prepare_cached("SELECT count(*) FROM manifests")?
        .query_row([], |r| r.get(0))?;
    let resources_by_state = grouped(
        c,
        "SELECT state, count(*) FROM node_resources GROUP BY state",
    )?;
    Ok(FleetCounts {
        nodes,
        runs_by_state,
        tasks_by_state,
        manifests: manifests.max(0) as u64,
        resources_by_state,
    })
}
