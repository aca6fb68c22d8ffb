//! Pages of large lists in SQLite: the statements behind `list_nodes_page`, `task_summaries`, `task_page`
//! and `node_task_runs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use drover_types::NodeStatus;
use drover_types::task::TaskRun;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{RawNode, StoreError, from_json, raw_node, readable, ts};
use crate::store::codec::{TaskText, count, task_summary};
use crate::store::sql::{self, NODE_COLUMNS, TASK_COLUMNS};
use crate::store::{
    NodeCounts, NodeQuery, NodeRecord, NodeTaskRun, RunQuery, TaskPage, TaskSummary,
};

/// A node's status in SQL, as `LivenessPolicy::status` computes it from `last_seen` and the interval:
/// `?1` is now, `?2` and `?3` the policy's `not_ready_after` and `offline_after` (missed intervals).
/// Per backend: times are text here (`julianday`), `timestamptz` in PostgreSQL.
const STATUS: &str = "CASE
    WHEN last_seen IS NULL THEN 'Offline'
    WHEN (julianday(?1) - julianday(last_seen)) * 86400000.0 >= ?3 * MAX(heartbeat_interval_ms, 1) THEN 'Offline'
    WHEN (julianday(?1) - julianday(last_seen)) * 86400000.0 >= ?2 * MAX(heartbeat_interval_ms, 1) THEN 'NotReady'
    ELSE 'Ready' END";

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "Ready",
        NodeStatus::NotReady => "NotReady",
        NodeStatus::Offline => "Offline",
    }
}

/// The `WHERE` clause of a query's label filter, and its parameters (numbered from `first`). A label the
/// server set wins over the one the node enrolled (or reports, when reported labels are trusted), as in
/// the node's view. Per backend: SQLite's `json_extract` paths, PostgreSQL's `->>` keys.
fn label_filter(q: &NodeQuery, first: usize) -> (String, Vec<Value>) {
    let own = if q.trust_reported_labels {
        "reported_labels"
    } else {
        "enrolled_labels"
    };
    let mut clauses = vec!["1".to_string()];
    let mut values = Vec::new();
    for (k, v) in &q.labels {
        let (p, n) = (first + values.len(), first + values.len() + 1);
        // Keys are validated label keys (letters, digits, - _ . /): safe inside a quoted JSON path.
        clauses.push(format!(
            "COALESCE(json_extract(labels, ?{p}), json_extract({own}, ?{p})) = ?{n}"
        ));
        values.push(Value::Text(format!("$.\"{k}\"")));
        values.push(Value::Text(v.clone()));
    }
    (clauses.join(" AND "), values)
}

pub(super) fn nodes_page(
    c: &Connection,
    q: &NodeQuery,
) -> Result<(Vec<NodeRecord>, NodeCounts), StoreError> {
    let mut values = vec![
        Value::Text(ts(q.now)),
        Value::Real(q.liveness.not_ready_after),
        Value::Real(q.liveness.offline_after),
    ];
    let (filter, label_values) = label_filter(q, values.len() + 1);
    values.extend(label_values);

    let mut counts = NodeCounts::default();
    let mut stmt = c.prepare(&format!(
        "SELECT status, COUNT(*) FROM (SELECT {STATUS} AS status FROM nodes WHERE {filter}) GROUP BY status"
    ))?;
    let rows = stmt.query_map(params_from_iter(values.iter()), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (status, n) = row?;
        let n = usize::try_from(n).unwrap_or(0);
        match status.as_str() {
            "Ready" => counts.ready = n,
            "NotReady" => counts.not_ready = n,
            _ => counts.offline = n,
        }
    }

    let status_clause = match q.status {
        Some(s) => {
            values.push(Value::Text(status_name(s).to_string()));
            format!("AND ({STATUS}) = ?{}", values.len())
        }
        None => String::new(),
    };
    values.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    values.push(Value::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
    let (lim, off) = (values.len() - 1, values.len());
    let mut stmt = c.prepare(&format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE {filter} {status_clause} ORDER BY name LIMIT ?{lim} OFFSET ?{off}"
    ))?;
    let raws = stmt
        .query_map(params_from_iter(values.iter()), raw_node)?
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = readable("node", raws.into_iter().map(RawNode::decode));
    Ok((nodes, counts))
}

fn task_row(r: &rusqlite::Row) -> rusqlite::Result<TaskText> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `?first, ?first+1, …` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn task_summaries(c: &Connection, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
    // Per backend: `rowid` here, `seq` there; the ids as numbered parameters here, an array there.
    let mut stmt = c.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks ORDER BY created_at DESC, rowid DESC LIMIT ?1"
    ))?;
    let rows = stmt
        .query_map([sql_int(limit)], task_row)?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Every listed task's runs counted in one aggregate read, from the (task_id, state) index alone.
    let mut stmt = c.prepare(&format!(
        "SELECT task_id, state, COUNT(*) FROM task_runs WHERE task_id IN ({}) GROUP BY task_id, state",
        placeholders(1, rows.len())
    ))?;
    let mut counts: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    let grouped = stmt.query_map(params_from_iter(rows.iter().map(|r| &r.0)), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in grouped {
        let (task, state, n) = row?;
        counts.entry(task).or_default().push((state, n));
    }
    let summaries = rows.into_iter().map(|row| {
        let runs = counts.remove(&row.0).unwrap_or_default();
        task_summary(row, runs)
    });
    Ok(readable("task", summaries.collect::<Vec<_>>().into_iter()))
}

pub(super) fn task_page(
    c: &Connection,
    id: &str,
    q: &RunQuery,
) -> Result<Option<TaskPage>, StoreError> {
    let row = c
        .prepare_cached(sql::tasks::BY_ID.sqlite)?
        .query_row([id], task_row)
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let runs = c
        .prepare_cached(sql::tasks::RUNS_BY_STATE.sqlite)?
        .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let summary = task_summary(row, runs)?;

    // Per backend: the filter's parts only when asked for and the nodes as numbered parameters here;
    // PostgreSQL binds absent ones as typed NULLs and the nodes as an array.
    let mut values = vec![Value::Text(id.to_string())];
    let mut filter = "task_id = ?1".to_string();
    if let Some(state) = q.state {
        values.push(Value::Text(state.as_str().to_string()));
        filter.push_str(&format!(" AND state = ?{}", values.len()));
    }
    if !q.nodes.is_empty() {
        filter.push_str(&format!(
            " AND node_id IN ({})",
            placeholders(values.len() + 1, q.nodes.len())
        ));
        values.extend(q.nodes.iter().map(|n| Value::Text(n.clone())));
    }
    let total = if q.nodes.is_empty() {
        summary.count(q.state)
    } else {
        let n: i64 = c.query_row(
            &format!("SELECT COUNT(*) FROM task_runs WHERE {filter}"),
            params_from_iter(values.iter()),
            |r| r.get(0),
        )?;
        count(n)
    };
    values.push(Value::Integer(sql_int(q.limit)));
    values.push(Value::Integer(sql_int(q.offset)));
    let (lim, off) = (values.len() - 1, values.len());
    let runs = c
        .prepare(&format!(
            "SELECT run FROM task_runs WHERE {filter} ORDER BY rowid LIMIT ?{lim} OFFSET ?{off}"
        ))?
        .query_map(params_from_iter(values.iter()), |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .map(|r| from_json(r, "task run"))
        .collect::<Result<Vec<TaskRun>, _>>()?;
    Ok(Some(TaskPage {
        summary,
        runs,
        total,
    }))
}

pub(super) fn node_task_runs(
    c: &Connection,
    node_id: &str,
    limit: usize,
) -> Result<Vec<NodeTaskRun>, StoreError> {
    // Per backend: `rowid` here, `seq` there.
    let mut stmt = c.prepare(
        "SELECT r.task_id, t.spec, t.created_at, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
         WHERE r.node_id = ?1 ORDER BY t.created_at DESC, t.rowid DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(
            params![node_id, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, DateTime<Utc>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let runs = rows.into_iter().map(|(task_id, spec, created_at, run)| {
        Ok(NodeTaskRun {
            task_id,
            spec: from_json(&spec, "task spec")?,
            created_at,
            run: from_json(&run, "task run")?,
        })
    });
    Ok(readable("task run", runs))
}
