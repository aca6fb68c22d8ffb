//! Pages of large lists in PostgreSQL: the statements behind `list_nodes_page`, `task_summaries` and
//! `node_task_runs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use drover_types::NodeStatus;
use drover_types::task::RunState;
use sqlx::PgPool;

use super::{StoreError, big, decode_node, from_json, readable};
use crate::store::{NodeCounts, NodeQuery, NodeRecord, NodeTaskRun, TaskSummary};

/// A node's status in SQL, as `LivenessPolicy::status` computes it from `last_seen` and the interval:
/// `$1` is now, `$2` and `$3` the policy's `not_ready_after` and `offline_after` (missed intervals).
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
/// are trusted), as in the node's view.
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
        "SELECT {} FROM nodes WHERE {filter} {status_clause} ORDER BY name LIMIT ${lim} OFFSET ${}",
        super::node_columns!(),
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

fn run_state(text: &str) -> Result<RunState, StoreError> {
    from_json(&format!("\"{text}\""), "run state")
}

pub(super) async fn task_summaries(
    pool: &PgPool,
    limit: usize,
) -> Result<Vec<TaskSummary>, StoreError> {
    let rows: Vec<(String, String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, target, spec, created_by, created_at FROM tasks
         ORDER BY created_at DESC, seq DESC LIMIT $1",
    )
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
    let summaries = rows
        .into_iter()
        .map(|(id, target, spec, created_by, created_at)| {
            let runs = by_task
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|(s, n)| Ok((run_state(&s)?, usize::try_from(n).unwrap_or(0))))
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(TaskSummary {
                target: from_json(&target, "task target")?,
                spec: from_json(&spec, "task spec")?,
                id,
                created_by,
                created_at,
                runs,
            })
        });
    Ok(readable("task", summaries))
}

pub(super) async fn node_task_runs(
    pool: &PgPool,
    node_id: &str,
    limit: usize,
) -> Result<Vec<NodeTaskRun>, StoreError> {
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
