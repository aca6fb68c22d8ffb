//! Pages of large lists in SQLite: the statements behind `list_nodes_page`, `task_summaries`, `task_page`
//! and `node_task_runs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use drover_types::NodeStatus;
use drover_types::task::{RUN_STATES, RunState, TaskRun};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::{NODE_COLUMNS, RawNode, StoreError, from_json, raw_node, readable, ts};
use crate::store::{
    NodeCounts, NodeQuery, NodeRecord, NodeTaskRun, RunQuery, TaskPage, TaskSummary,
};

/// A node's status in SQL, as `LivenessPolicy::status` computes it from `last_seen` and the interval:
/// `?1` is now, `?2` and `?3` the policy's `not_ready_after` and `offline_after` (missed intervals).
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
/// the node's view.
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

fn run_state(text: &str) -> Result<RunState, StoreError> {
    from_json(&format!("\"{text}\""), "run state")
}

/// A task's row: (id, target, spec, created_by, created_at, max_parallel, signature).
type TaskRow = (
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<u32>,
    Option<String>,
);

const TASK_COLUMNS: &str = "id, target, spec, created_by, created_at, max_parallel, signature";

fn task_row(r: &rusqlite::Row) -> rusqlite::Result<TaskRow> {
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

fn summary(row: TaskRow, mut runs: Vec<(RunState, usize)>) -> Result<TaskSummary, StoreError> {
    let (id, target, spec, created_by, created_at, max_parallel, signature) = row;
    // In the order states are declared (Pending, Running, Succeeded, …), as pages show them.
    runs.sort_by_key(|(s, _)| RUN_STATES.iter().position(|r| r == s));
    Ok(TaskSummary {
        target: from_json(&target, "task target")?,
        spec: from_json(&spec, "task spec")?,
        signature: signature
            .map(|s| from_json(&s, "task signature"))
            .transpose()?,
        id,
        created_by,
        created_at,
        max_parallel,
        runs,
    })
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
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
    let mut counts: HashMap<String, Vec<(RunState, usize)>> = HashMap::new();
    let grouped = stmt.query_map(params_from_iter(rows.iter().map(|r| &r.0)), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in grouped {
        let (task, state, n) = row?;
        counts
            .entry(task)
            .or_default()
            .push((run_state(&state)?, count(n)));
    }
    let summaries = rows.into_iter().map(|row| {
        let runs = counts.remove(&row.0).unwrap_or_default();
        summary(row, runs)
    });
    Ok(readable("task", summaries.collect::<Vec<_>>().into_iter()))
}

pub(super) fn task_page(
    c: &Connection,
    id: &str,
    q: &RunQuery,
) -> Result<Option<TaskPage>, StoreError> {
    let row = c
        .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
        .query_row([id], task_row)
        .optional()?;
    let Some(row) = row else {
        return Ok(None);
    };
    let runs = c
        .prepare_cached("SELECT state, COUNT(*) FROM task_runs WHERE task_id = ?1 GROUP BY state")?
        .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(s, n)| Ok((run_state(&s)?, count(n))))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let summary = summary(row, runs)?;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use drover_types::{Capabilities, Labels, LivenessPolicy, NodeStatus, Transport};

    use crate::store::{NodeQuery, NodeRecord, SqliteStore, Store};

    fn node(i: usize, seen_ago_ms: Option<i64>, labels: &[(&str, &str)]) -> NodeRecord {
        let now = Utc::now();
        NodeRecord {
            id: format!("id-{i:03}"),
            name: format!("node-{i:03}"),
            transport: Transport::Grpc,
            labels: Labels::new(),
            reported_labels: Labels::new(),
            enrolled_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: None,
            registered_at: now,
            last_seen: seen_ago_ms.map(|ms| now - chrono::Duration::milliseconds(ms)),
            heartbeat_interval_ms: 1000,
            capabilities: Capabilities::default(),
            metrics: None,
            node_token_sha256: None,
        }
    }

    fn query(
        status: Option<NodeStatus>,
        labels: &[(&str, &str)],
        offset: usize,
        limit: usize,
    ) -> NodeQuery {
        NodeQuery {
            status,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            offset,
            limit,
            now: Utc::now(),
            liveness: LivenessPolicy::default(),
            trust_reported_labels: false,
        }
    }

    #[tokio::test]
    async fn a_page_of_nodes_is_filtered_by_status_and_labels_and_counted_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        // 0-9 ready, 10-14 not ready (3 intervals silent), 15-19 offline (never seen, or 10 intervals).
        for i in 0..20 {
            let seen = match i {
                0..10 => Some(100),
                10..15 => Some(3000),
                15..18 => Some(10_000),
                _ => None,
            };
            let zone = if i % 2 == 0 { "a" } else { "b" };
            store
                .insert_node(&node(i, seen, &[("zone", zone)]))
                .await
                .unwrap();
        }
        // A label the server set wins over the enrolled one.
        store
            .modify_node(
                "id-000",
                Box::new(|n| {
                    n.labels.insert("zone".into(), "b".into());
                }),
            )
            .await
            .unwrap();

        let (nodes, counts) = store
            .list_nodes_page(&query(None, &[], 0, 7))
            .await
            .unwrap();
        assert_eq!((counts.ready, counts.not_ready, counts.offline), (10, 5, 5));
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "node-000", "node-001", "node-002", "node-003", "node-004", "node-005", "node-006"
            ]
        );

        let (nodes, _) = store
            .list_nodes_page(&query(None, &[], 14, 7))
            .await
            .unwrap();
        assert_eq!(nodes.len(), 6, "the last page holds what is left");

        let (nodes, counts) = store
            .list_nodes_page(&query(Some(NodeStatus::NotReady), &[], 0, 100))
            .await
            .unwrap();
        assert_eq!(counts.of(Some(NodeStatus::NotReady)), 5);
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["node-010", "node-011", "node-012", "node-013", "node-014"]
        );
        // The store's status is the one the liveness policy gives.
        let policy = LivenessPolicy::default();
        for n in &nodes {
            let status = policy.status(
                n.last_seen,
                Duration::from_millis(n.heartbeat_interval_ms),
                Utc::now(),
            );
            assert_eq!(status, NodeStatus::NotReady, "{}", n.name);
        }

        let (nodes, counts) = store
            .list_nodes_page(&query(Some(NodeStatus::Ready), &[("zone", "a")], 0, 100))
            .await
            .unwrap();
        // Even nodes 2..8 are in zone a and ready; node 0 was moved to zone b by the server.
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-002", "node-004", "node-006", "node-008"]);
        assert_eq!((counts.ready, counts.not_ready, counts.offline), (4, 3, 2));

        let (nodes, counts) = store
            .list_nodes_page(&query(None, &[("zone", "nowhere")], 0, 100))
            .await
            .unwrap();
        assert!(nodes.is_empty());
        assert_eq!(counts.total(), 0);
    }

    #[tokio::test]
    async fn a_task_page_counts_its_runs_and_reads_a_page_of_them() {
        use drover_types::task::RunState::{Failed, Pending, Running};

        use crate::store::{RunPatch, RunQuery};

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let t1 = super::super::tests::task("t1", &["a", "b", "c", "d", "e"]);
        store.insert_task(&t1).await.unwrap();
        store
            .insert_task(&super::super::tests::task("t2", &["a"]))
            .await
            .unwrap();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        store
            .transition_runs("t1", ids(&["b", "d"]), &[Pending], RunPatch::to(Running))
            .await
            .unwrap();
        store
            .transition_runs("t1", ids(&["d"]), &[Running], RunPatch::end(Failed, "x"))
            .await
            .unwrap();

        // The list: newest first, every task's runs counted in one read.
        let list = store.task_summaries(10).await.unwrap();
        let listed: Vec<_> = list
            .iter()
            .map(|t| (t.id.as_str(), t.count(None)))
            .collect();
        assert_eq!(listed, [("t2", 1), ("t1", 5)]);
        assert_eq!(list[1].runs, [(Pending, 3), (Running, 1), (Failed, 1)]);
        assert_eq!((list[1].done(), list[1].state()), (1, "Running"));

        let page = |state, offset, limit, nodes: &[&str]| {
            let q = RunQuery {
                state,
                nodes: ids(nodes),
                offset,
                limit,
            };
            let store = &store;
            async move { store.task_page("t1", &q).await.unwrap().unwrap() }
        };
        let names = |p: &crate::store::TaskPage| {
            p.runs.iter().map(|r| r.node_id.clone()).collect::<Vec<_>>()
        };
        let p = page(None, 2, 2, &[]).await;
        assert_eq!((names(&p), p.total), (ids(&["c", "d"]), 5));
        assert_eq!(p.summary.count(Some(Failed)), 1);
        assert_eq!(p.runs[1].state, Failed, "the runs as they are now");
        let p = page(Some(Pending), 0, 10, &[]).await;
        assert_eq!((names(&p), p.total), (ids(&["a", "c", "e"]), 3));
        let p = page(Some(Pending), 1, 1, &[]).await;
        assert_eq!((names(&p), p.total), (ids(&["c"]), 3));
        let p = page(None, 0, 10, &["e", "a", "zz"]).await;
        assert_eq!((names(&p), p.total), (ids(&["a", "e"]), 2));
        assert!(
            store
                .task_page("nope", &RunQuery::default())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn manifests_are_counted_by_state_and_their_nodes_read_a_page_at_a_time() {
        use drover_types::manifest::ResourceState::{Failed, Pending, Ready};
        use drover_types::manifest::{NodeConvergence, ResourceState, ResourceStatus};

        use crate::store::{ConvergenceQuery, ManifestCounts};

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        for i in 0..4 {
            store.insert_node(&node(i, Some(100), &[])).await.unwrap();
        }
        let report = |resources: &[(&str, &str, ResourceState)]| NodeConvergence {
            observed_generation: 1,
            resources: resources
                .iter()
                .map(|(id, m, s)| ResourceStatus::new(id, m, "file", *s))
                .collect(),
            ..NodeConvergence::default()
        };
        let reports = [
            report(&[
                ("r1", "m1", Ready),
                ("r2", "m1", Ready),
                ("x", "m2", Failed),
            ]),
            report(&[("r1", "m1", Ready), ("r2", "m1", Pending)]),
            report(&[("x", "m2", Ready)]),
        ];
        for (i, r) in reports.iter().enumerate() {
            store
                .put_convergence(&format!("id-{i:03}"), r)
                .await
                .unwrap();
        }

        let mut counts = store.manifest_counts().await.unwrap();
        for c in &mut counts {
            c.resources.sort_by_key(|(s, _)| s.as_str());
            c.nodes.sort_by_key(|(s, _)| s.as_str());
        }
        assert_eq!(
            counts,
            [
                ManifestCounts {
                    manifest: "m1".into(),
                    resources: vec![(Pending, 1), (Ready, 3)],
                    nodes: vec![(Pending, 1), (Ready, 1)],
                },
                ManifestCounts {
                    manifest: "m2".into(),
                    resources: vec![(Failed, 1), (Ready, 1)],
                    nodes: vec![(Failed, 1), (Ready, 1)],
                },
            ]
        );

        let page = |manifest: Option<&str>, state, offset, limit| {
            let q = ConvergenceQuery {
                manifest: manifest.map(String::from),
                state,
                offset,
                limit,
            };
            let store = &store;
            async move {
                let (rows, total) = store.convergence_page(&q).await.unwrap();
                let names: Vec<String> = rows.into_iter().map(|r| r.1).collect();
                (names, total)
            }
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            page(Some("m1"), None, 0, 10).await,
            (names(&["node-000", "node-001"]), 2)
        );
        assert_eq!(
            page(Some("m1"), Some(Pending), 0, 10).await,
            (names(&["node-001"]), 1)
        );
        assert_eq!(
            page(Some("m2"), Some(Failed), 0, 10).await,
            (names(&["node-000"]), 1)
        );
        // Every node, a report or not.
        assert_eq!(
            page(None, None, 2, 2).await,
            (names(&["node-002", "node-003"]), 4)
        );
        // A node's state over all its resources is the worst of them.
        assert_eq!(
            page(None, Some(Ready), 0, 10).await,
            (names(&["node-002"]), 1)
        );
        assert_eq!(
            page(Some("m1"), None, 5, 10).await,
            (Vec::new(), 2),
            "past the end the total is still counted"
        );
        assert_eq!(page(Some("none"), None, 0, 10).await, (Vec::new(), 0));
    }
}
