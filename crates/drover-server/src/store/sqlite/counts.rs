//! What `/metrics` counts, each an aggregate in SQL: one read per scrape, however large the fleet.

use rusqlite::Connection;

use super::{StoreError, parse_ts};
use crate::store::sql;
use crate::store::{FleetCounts, NodeLiveness};

fn grouped(c: &Connection, statement: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = c.prepare_cached(statement)?;
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
    let mut stmt = c.prepare_cached(sql::counts::NODES.sqlite)?;
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
    let runs_by_state = grouped(c, sql::counts::RUNS_BY_STATE.sqlite)?;
    let tasks_by_state = grouped(c, sql::counts::TASKS_BY_STATE.sqlite)?;
    let manifests: i64 = c
        .prepare_cached(sql::counts::MANIFESTS.sqlite)?
        .query_row([], |r| r.get(0))?;
    let resources_by_state = grouped(c, sql::counts::RESOURCES_BY_STATE.sqlite)?;
    // The capabilities are JSON text the server wrote; one it cannot read counts as no version rather
    // than fail the scrape.
    let nodes_by_agent_version = grouped(
        c,
        "SELECT CASE WHEN json_valid(capabilities) THEN json_extract(capabilities, '$.agent_version') END,
                count(*) FROM nodes GROUP BY 1",
    )?;
    Ok(FleetCounts {
        nodes,
        runs_by_state,
        tasks_by_state,
        manifests: manifests.max(0) as u64,
        resources_by_state,
        nodes_by_agent_version,
    })
}
