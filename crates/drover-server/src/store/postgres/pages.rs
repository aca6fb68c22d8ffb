//! Pages of large lists in PostgreSQL: the statements behind `list_nodes_page`, `task_summaries`,
//! `task_page`, `node_task_runs`, `manifest_counts` and `convergence_page`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use drover_types::NodeStatus;
use drover_types::manifest::RESOURCE_STATES;
use drover_types::task::TaskRun;
use sqlx::PgPool;

use super::{StoreError, big, decode_node, from_json, readable};
use crate::store::codec::{
    ConvergenceText, TaskText, count, decode_convergence, group_manifest_counts, rank_sql,
    task_summary,
};
use crate::store::sql::{self, NODE_COLUMNS, TASK_COLUMNS};
use crate::store::{
    ConvergenceQuery, ConvergenceRow, ManifestCounts, NodeCounts, NodeQuery, NodeRecord,
    NodeTaskRun, RunQuery, TaskPage, TaskSummary,
};

/// A node's status in SQL, as `LivenessPolicy::status` computes it from `last_seen` and the interval:
/// `$1` is now, `$2` and `$3` the policy's `not_ready_after` and `offline_after` (missed intervals).
/// Per backend: times are `timestamptz` here, text in SQLite (`julianday`).
const STATUS: &str = "CASE
    WHEN last_seen IS NULL THEN 'Offline'
    WHEN EXTRACT(EPOCH FROM ($1::timestamptz - last_seen))::float8 * 1000.0
         >= $3::float8 * GREATEST(heartbeat_interval_ms, 1) THEN 'Offline'
    WHEN EXTRACT(EPOCH FROM ($1::timestamptz - last_seen))::float8 * 1000.0
         >= $2::float8 * GREATEST(heartbeat_interval_ms, 1) THEN 'NotReady'
    ELSE 'Ready' END";

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "Ready",
        NodeStatus::NotReady => "NotReady",
        NodeStatus::Offline => "Offline",
    }
}

/// The `WHERE` clause of a query's label filter (parameters from `$4`, a key then its value for each
/// label). A label the server set wins over the one the node enrolled (or reports, when reported labels
/// are trusted), as in the node's view. Per backend: `->>` keys here, `json_extract` paths in SQLite.
fn label_filter(q: &NodeQuery) -> String {
    let own = if q.trust_reported_labels {
        "reported_labels"
    } else {
        "enrolled_labels"
    };
    let mut clauses = vec!["TRUE".to_string()];
    for i in 0..q.labels.len() {
        let (k, v) = (4 + 2 * i, 5 + 2 * i);
        clauses.push(format!(
            "COALESCE(labels::jsonb ->> ${k}, {own}::jsonb ->> ${k}) = ${v}"
        ));
    }
    clauses.join(" AND ")
}

/// `sqlx::query` with the page's common parameters bound: now, the policy, then the labels.
macro_rules! page_query {
    ($sql:expr, $q:expr) => {{
        // Built only from our own constants and parameter numbers; values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe($sql))
            .bind($q.now)
            .bind($q.liveness.not_ready_after)
            .bind($q.liveness.offline_after);
        for (k, v) in &$q.labels {
            query = query.bind(k).bind(v);
        }
        query
    }};
}

pub(super) async fn nodes_page(
    pool: &PgPool,
    q: &NodeQuery,
) -> Result<(Vec<NodeRecord>, NodeCounts), StoreError> {
    use sqlx::Row;
    let filter = label_filter(q);
    let next = 4 + 2 * q.labels.len();

    let mut counts = NodeCounts::default();
    let count_sql = format!(
        "SELECT status, count(*) FROM (SELECT {STATUS} AS status FROM nodes WHERE {filter}) s GROUP BY status"
    );
    for row in page_query!(count_sql, q).fetch_all(pool).await? {
        let status: String = row.try_get(0)?;
        let n = usize::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
        match status.as_str() {
            "Ready" => counts.ready = n,
            "NotReady" => counts.not_ready = n,
            _ => counts.offline = n,
        }
    }

    let (status_clause, lim) = match q.status {
        Some(_) => (format!("AND ({STATUS}) = ${next}"), next + 1),
        None => (String::new(), next),
    };
    let page_sql = format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE {filter} {status_clause} ORDER BY name LIMIT ${lim} OFFSET ${}",
        lim + 1
    );
    let mut query = page_query!(page_sql, q);
    if let Some(s) = q.status {
        query = query.bind(status_name(s));
    }
    let rows = query
        .bind(big(q.limit))
        .bind(big(q.offset))
        .fetch_all(pool)
        .await?;
    let nodes = readable("node", rows.iter().map(decode_node));
    Ok((nodes, counts))
}

/// A task's row: (id, target, spec, created_by, created_at, max_parallel, signature).
type TaskRow = (
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<i64>,
    Option<String>,
);

/// The row as both stores read it (`max_parallel` is a `bigint` here).
fn text(row: TaskRow) -> TaskText {
    let (id, target, spec, created_by, created_at, max_parallel, signature) = row;
    let max_parallel = max_parallel.map(|m| u32::try_from(m).unwrap_or(u32::MAX));
    (
        id,
        target,
        spec,
        created_by,
        created_at,
        max_parallel,
        signature,
    )
}

pub(super) async fn task_summaries(
    pool: &PgPool,
    limit: usize,
) -> Result<Vec<TaskSummary>, StoreError> {
    // Per backend: `seq` here, `rowid` in SQLite; the ids as an array here, numbered parameters there.
    let rows: Vec<TaskRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks ORDER BY created_at DESC, seq DESC LIMIT $1"
    )))
    .bind(big(limit))
    .fetch_all(pool)
    .await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    // Every listed task's runs counted in one statement.
    let grouped: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT task_id, state, count(*) FROM task_runs WHERE task_id = ANY($1)
         GROUP BY task_id, state ORDER BY task_id, state",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_task: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (task, state, n) in grouped {
        by_task.entry(task).or_default().push((state, n));
    }
    let summaries: Vec<_> = rows
        .into_iter()
        .map(|row| {
            let runs = by_task.remove(&row.0).unwrap_or_default();
            task_summary(text(row), runs)
        })
        .collect();
    Ok(readable("task", summaries.into_iter()))
}

pub(super) async fn task_page(
    pool: &PgPool,
    id: &str,
    q: &RunQuery,
) -> Result<Option<TaskPage>, StoreError> {
    let row: Option<TaskRow> = sqlx::query_as(sql::tasks::BY_ID.pg)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let runs: Vec<(String, i64)> = sqlx::query_as(sql::tasks::RUNS_BY_STATE.pg)
        .bind(id)
        .fetch_all(pool)
        .await?;
    let summary = task_summary(text(row), runs)?;
    // Absent filters are bound as NULL, so one statement serves every query. Per backend: typed NULLs and
    // an array here; SQLite's statement names only the filters asked for, the nodes one parameter each.
    let state = q.state.map(|s| s.as_str());
    let nodes: Option<&[String]> = (!q.nodes.is_empty()).then_some(q.nodes.as_slice());
    const FILTER: &str = "task_id = $1 AND ($2::text IS NULL OR state = $2)
                          AND ($3::text[] IS NULL OR node_id = ANY($3))";
    let total = if nodes.is_none() {
        summary.count(q.state)
    } else {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM task_runs WHERE {FILTER}"
        )))
        .bind(id)
        .bind(state)
        .bind(nodes)
        .fetch_one(pool)
        .await?;
        count(n)
    };
    let runs: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT run FROM task_runs WHERE {FILTER} ORDER BY seq LIMIT $4 OFFSET $5"
    )))
    .bind(id)
    .bind(state)
    .bind(nodes)
    .bind(big(q.limit))
    .bind(big(q.offset))
    .fetch_all(pool)
    .await?;
    let runs = runs
        .iter()
        .map(|r| from_json(r, "task run"))
        .collect::<Result<Vec<TaskRun>, _>>()?;
    Ok(Some(TaskPage {
        summary,
        runs,
        total,
    }))
}

pub(super) async fn manifest_counts(pool: &PgPool) -> Result<Vec<ManifestCounts>, StoreError> {
    // Built only from our own constants (the resource states' names).
    let rows: Vec<(i32, Option<String>, i32, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql::manifests::COUNTS.as_str()))
            .fetch_all(pool)
            .await?;
    Ok(group_manifest_counts(rows.into_iter().map(
        |(kind, manifest, rank, n)| (i64::from(kind), manifest, i64::from(rank), n),
    )))
}

pub(super) async fn convergence_page(
    pool: &PgPool,
    q: &ConvergenceQuery,
) -> Result<(Vec<ConvergenceRow>, usize), StoreError> {
    // Per backend: `->>` and typed NULL tests (`$1::text`) here, `json_extract` in SQLite.
    const COLUMNS: &str = "n.id, n.name, (d.state::jsonb ->> 'generation')::bigint, v.report";
    const JOINS: &str = "LEFT JOIN node_desired d ON d.node_id = n.id
                         LEFT JOIN node_convergence v ON v.node_id = n.id";
    if q.manifest.is_none() && q.state.is_none() {
        // Every node, reported or not: a page read by name.
        let rows: Vec<ConvergenceText> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM nodes n {JOINS} ORDER BY n.name LIMIT $1 OFFSET $2"
        )))
        .bind(big(q.limit))
        .bind(big(q.offset))
        .fetch_all(pool)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM nodes")
            .fetch_one(pool)
            .await?;
        return Ok((decode_convergence(rows)?, count(total)));
    }
    // Nodes reporting resources (of the manifest, when one is named: a range of the manifest's index),
    // each with its worst state, selected once for both the count and the page.
    let of_manifest = if q.manifest.is_some() {
        "WHERE manifest = $1"
    } else {
        "WHERE $1::text IS NULL"
    };
    let sql = format!(
        "WITH sel AS MATERIALIZED (
            SELECT node_id AS id, max({rank}) AS worst FROM node_resources {of_manifest}
            GROUP BY node_id),
         matched AS MATERIALIZED (
            SELECT sel.id AS id, n.name AS name FROM sel JOIN nodes n ON n.id = sel.id
            WHERE $2::int IS NULL OR sel.worst = $2)
         SELECT (SELECT count(*) FROM matched), p.id, p.name,
                (d.state::jsonb ->> 'generation')::bigint, v.report
         FROM (SELECT 1) one
         LEFT JOIN (SELECT id, name FROM matched ORDER BY name LIMIT $3 OFFSET $4) p ON TRUE
         LEFT JOIN node_desired d ON d.node_id = p.id
         LEFT JOIN node_convergence v ON v.node_id = p.id
         ORDER BY p.name",
        rank = rank_sql()
    );
    let rank = q
        .state
        .and_then(|s| RESOURCE_STATES.iter().position(|r| *r == s))
        .map(|i| i32::try_from(i).unwrap_or(0));
    type Found = (
        i64,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let found: Vec<Found> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(q.manifest.as_deref())
        .bind(rank)
        .bind(big(q.limit))
        .bind(big(q.offset))
        .fetch_all(pool)
        .await?;
    let mut total = 0;
    let mut rows = Vec::new();
    for (n, id, name, generation, report) in found {
        total = n;
        if let (Some(id), Some(name)) = (id, name) {
            rows.push((id, name, generation, report));
        }
    }
    Ok((decode_convergence(rows)?, count(total)))
}

pub(super) async fn node_task_runs(
    pool: &PgPool,
    node_id: &str,
    limit: usize,
) -> Result<Vec<NodeTaskRun>, StoreError> {
    // Per backend: `seq` here, `rowid` in SQLite.
    let rows: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT r.task_id, t.spec, t.created_at, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
         WHERE r.node_id = $1 ORDER BY t.created_at DESC, t.seq DESC LIMIT $2",
    )
    .bind(node_id)
    .bind(big(limit))
    .fetch_all(pool)
    .await?;
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
