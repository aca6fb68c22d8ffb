//! The embedded store: one SQLite file in WAL mode; writes are committed in groups by one writer thread,
//! reads run beside it.

mod convergence;
mod counts;
mod operators;
mod pages;
mod pool;
mod schema;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use drover_types::{
    Metrics, MetricsSample, Transport,
    token::{JoinTokenInfo, TokenRefusal},
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{
    CurrentManifest, from_json, manifest_put, patch_json, readable, runs_in_order_asked,
    state_list, to_json,
};
use super::{
    AuditFilter, ConvergenceQuery, ConvergenceRow, FleetCounts, JoinTokenRecord, ManifestCounts,
    MetricsHistory, NodeChange, NodeCounts, NodeQuery, NodeRecord, NodeTaskRun, OperatorRecord,
    OutputRecord, PutManifest, RunPatch, RunQuery, Store, StoreError, TaskPage, TaskSummary,
};
use drover_types::manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest};
use drover_types::operator::OperatorInfo;
use drover_types::signing::Signature;
use drover_types::task::{AuditEntry, LateExit, RunState, Task, TaskRun, TaskSpec};
use pool::Pool;
use schema::MIGRATIONS;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            pool: Arc::new(Pool::open(path, migrate)?),
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.pool.read(f).await
    }

    /// A write, committed together with the others queued meanwhile; atomic on its own.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.pool.write(f).await
    }
}

/// Brings the file's schema up to date (also for `drover migrate`, which reads it whole).
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// One heartbeat: the node's latest metrics and, when `history` takes it, a sample, the history pruned to
/// its size. False for no such node.
fn beat(
    c: &Connection,
    id: &str,
    at: DateTime<Utc>,
    json: &str,
    history: MetricsHistory,
) -> Result<bool, StoreError> {
    let Some(newest) = row(
        c,
        "UPDATE nodes SET last_seen = ?2, metrics = ?3 WHERE id = ?1 RETURNING history_at",
        params![id, ts(at), json],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()?
    else {
        return Ok(false);
    };
    // A sample whose time cannot be read does not stop the history.
    let newest = newest.and_then(|t| parse_ts(&t, "metrics time").ok());
    if !history.samples(newest, at) {
        return Ok(true);
    }
    exec(
        c,
        "UPDATE nodes SET history_at = ?2 WHERE id = ?1",
        params![id, ts(at)],
    )?;
    exec(
        c,
        "INSERT INTO metrics_history (node_id, at, metrics) VALUES (?1, ?2, ?3)",
        params![id, ts(at), json],
    )?;
    exec(
        c,
        "DELETE FROM metrics_history WHERE node_id = ?1 AND seq <=
           (SELECT seq FROM metrics_history WHERE node_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
        params![id, history.keep.min(i64::MAX as usize) as i64],
    )?;
    Ok(true)
}

/// `Connection::execute` through the statement cache: hot paths run the same few statements thousands of
/// times a second, and parsing SQL each time was a visible share of the server's time.
fn exec(c: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache.
fn row<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

fn parse_ts(text: &str, what: &'static str) -> Result<DateTime<Utc>, StoreError> {
    // Stored as JSON strings' content; reuse serde's RFC 3339 parsing for one error type.
    from_json(&format!("\"{text}\""), what)
}

/// A token's stored time. One that cannot be read (an older server stored lifetimes too long for its format)
/// reads as the Unix epoch: the token is still listed, refused as expired, and can be revoked.
fn token_time(row: &Row, column: &str, id: &str) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(column)?;
    // Years past 9999 do not survive RFC 3339 (JSON, the CLI): they count as unreadable too.
    match text.parse::<DateTime<Utc>>() {
        Ok(t) if t.year() <= 9999 => Ok(t),
        _ => {
            tracing::warn!(token = %id, "join token {column} {text:?} is unreadable; it counts as expired");
            Ok(DateTime::<Utc>::UNIX_EPOCH)
        }
    }
}

fn token_info(row: &Row) -> rusqlite::Result<(JoinTokenInfo, String)> {
    let labels: String = row.get("labels")?;
    let labels = serde_json::from_str(&labels).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let id: String = row.get("id")?;
    let info = JoinTokenInfo {
        created_at: token_time(row, "created_at", &id)?,
        expires_at: token_time(row, "expires_at", &id)?,
        id,
        max_uses: row.get("max_uses")?,
        uses: row.get("uses")?,
        labels,
        revoked: row.get("revoked")?,
    };
    Ok((info, row.get("secret_sha256")?))
}

struct RawNode {
    id: String,
    name: String,
    transport: String,
    labels: String,
    ip: Option<String>,
    registered_at: String,
    last_seen: Option<String>,
    heartbeat_interval_ms: i64,
    capabilities: String,
    metrics: Option<String>,
    node_token_sha256: Option<String>,
    reported_labels: String,
    enrolled_labels: String,
}

const NODE_COLUMNS: &str = "id, name, transport, labels, ip, registered_at, last_seen, \
     heartbeat_interval_ms, capabilities, metrics, node_token_sha256, reported_labels, \
     enrolled_labels";

fn raw_node(row: &Row) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        id: row.get(0)?,
        name: row.get(1)?,
        transport: row.get(2)?,
        labels: row.get(3)?,
        ip: row.get(4)?,
        registered_at: row.get(5)?,
        last_seen: row.get(6)?,
        heartbeat_interval_ms: row.get(7)?,
        capabilities: row.get(8)?,
        metrics: row.get(9)?,
        node_token_sha256: row.get(10)?,
        reported_labels: row.get(11)?,
        enrolled_labels: row.get(12)?,
    })
}

impl RawNode {
    fn decode(self) -> Result<NodeRecord, StoreError> {
        Ok(NodeRecord {
            transport: if self.transport == "http" {
                Transport::Http
            } else {
                Transport::Grpc
            },
            labels: from_json(&self.labels, "node labels")?,
            reported_labels: from_json(&self.reported_labels, "node reported labels")?,
            enrolled_labels: from_json(&self.enrolled_labels, "node enrolled labels")?,
            registered_at: parse_ts(&self.registered_at, "node registered_at")?,
            last_seen: self
                .last_seen
                .as_deref()
                .map(|t| parse_ts(t, "node last_seen"))
                .transpose()?,
            heartbeat_interval_ms: self.heartbeat_interval_ms.max(1) as u64,
            capabilities: from_json(&self.capabilities, "node capabilities")?,
            metrics: self
                .metrics
                .as_deref()
                .map(|m| from_json(m, "node metrics"))
                .transpose()?,
            id: self.id,
            name: self.name,
            ip: self.ip,
            node_token_sha256: self.node_token_sha256,
        })
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.write(move |c| {
            exec(c,
                "INSERT INTO join_tokens (id, secret_sha256, created_at, expires_at, max_uses, uses, labels, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    t.info.id,
                    t.secret_sha256,
                    ts(t.info.created_at),
                    ts(t.info.expires_at),
                    t.info.max_uses,
                    t.info.uses,
                    to_json(&t.info.labels),
                    t.info.revoked
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT * FROM join_tokens ORDER BY created_at")?;
            let rows = stmt.query_map([], token_info)?;
            Ok(readable(
                "join token",
                rows.map(|r| r.map(|(info, _)| info).map_err(StoreError::from)),
            ))
        })
        .await
    }

    async fn get_join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(row(
                c,
                "SELECT * FROM join_tokens WHERE id = ?1",
                [&id],
                token_info,
            )
            .optional()?
            .map(|(info, secret_sha256)| JoinTokenRecord {
                info,
                secret_sha256,
            }))
        })
        .await
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(exec(c, "UPDATE join_tokens SET revoked = 1 WHERE id = ?1", [id])? > 0)
        })
        .await
    }

    async fn use_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<JoinTokenInfo, TokenRefusal>, StoreError> {
        let (id, secret) = (id.to_string(), secret_sha256.to_string());
        self.write(move |c| {
            let tx = c;
            let found = row(
                tx,
                "SELECT * FROM join_tokens WHERE id = ?1",
                [&id],
                token_info,
            )
            .optional()?;
            let Some((mut info, stored_secret)) = found else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            let record = JoinTokenRecord {
                info: info.clone(),
                secret_sha256: stored_secret,
            };
            if let Err(refusal) = record.check(&secret, now) {
                return Ok(Err(refusal));
            }
            exec(
                tx,
                "UPDATE join_tokens SET uses = uses + 1 WHERE id = ?1",
                [&id],
            )?;
            info.uses += 1;
            Ok(Ok(info))
        })
        .await
    }

    async fn put_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError> {
        let o = operator.clone();
        self.write(move |c| operators::put(c, &o)).await
    }

    async fn list_operators(&self) -> Result<Vec<OperatorInfo>, StoreError> {
        self.read(operators::list).await
    }

    async fn operator_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        let sha = token_sha256.to_string();
        self.read(move |c| operators::by_token(c, &sha)).await
    }

    async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| operators::revoke(c, &name)).await
    }

    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node.clone();
        self.write(move |c| {
            let result = exec(c,
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    n.id,
                    n.name,
                    n.transport.as_str(),
                    to_json(&n.labels),
                    n.ip,
                    ts(n.registered_at),
                    n.last_seen.map(ts),
                    n.heartbeat_interval_ms as i64,
                    to_json(&n.capabilities),
                    n.metrics.as_ref().map(to_json),
                    n.node_token_sha256,
                    to_json(&n.reported_labels),
                    to_json(&n.enrolled_labels)
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
                other => other.map(|_| ()).map_err(Into::into),
            }
        })
        .await
    }

    async fn modify_node(
        &self,
        id: &str,
        change: NodeChange,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            let Some(mut n) = row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
                [&id],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()?
            else {
                return Ok(None);
            };
            change(&mut n);
            let result = exec(
                c,
                "UPDATE nodes SET name = ?2, labels = ?3, ip = ?4, heartbeat_interval_ms = ?5,
                 capabilities = ?6, node_token_sha256 = ?7, reported_labels = ?8, enrolled_labels = ?9
                 WHERE id = ?1",
                params![
                    n.id,
                    n.name,
                    to_json(&n.labels),
                    n.ip,
                    n.heartbeat_interval_ms as i64,
                    to_json(&n.capabilities),
                    n.node_token_sha256,
                    to_json(&n.reported_labels),
                    to_json(&n.enrolled_labels)
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
                other => other.map(|_| Some(n)).map_err(Into::into),
            }
        })
        .await
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
                [id],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()
        })
        .await
    }

    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?1"),
                [name],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()
        })
        .await
    }

    async fn get_node_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let sha = token_sha256.to_string();
        self.read(move |c| {
            row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE node_token_sha256 = ?1"),
                [sha],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"))?;
            let raws = stmt
                .query_map([], raw_node)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(RawNode::decode).collect()
        })
        .await
    }

    async fn list_nodes_page(
        &self,
        query: &NodeQuery,
    ) -> Result<(Vec<NodeRecord>, NodeCounts), StoreError> {
        let q = query.clone();
        self.read(move |c| pages::nodes_page(c, &q)).await
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| Ok(exec(c, "DELETE FROM nodes WHERE id = ?1", [id])? > 0))
            .await
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        history: MetricsHistory,
    ) -> Result<bool, StoreError> {
        let (id, json) = (id.to_string(), to_json(metrics));
        self.write(move |c| beat(c, &id, at, &json, history)).await
    }

    async fn record_heartbeats(
        &self,
        beats: Vec<(String, DateTime<Utc>, Metrics)>,
        history: MetricsHistory,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            for (id, at, metrics) in &beats {
                beat(c, id, *at, &to_json(metrics), history)?;
            }
            Ok(())
        })
        .await
    }

    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT at, metrics FROM metrics_history WHERE node_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![id, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut samples = rows
                .into_iter()
                .map(|(at, m)| {
                    Ok(MetricsSample {
                        at: parse_ts(&at, "metrics time")?,
                        metrics: from_json(&m, "metrics sample")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            samples.reverse();
            Ok(samples)
        })
        .await
    }

    async fn insert_task(&self, task: &Task) -> Result<(), StoreError> {
        let t = task.clone();
        self.write(move |c| {
            let tx = c;
            exec(tx,
                "INSERT INTO tasks (id, target, spec, created_by, created_at, max_parallel, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.id, to_json(&t.target), to_json(&t.spec), t.created_by, t.created_at, t.max_parallel, t.signature.as_ref().map(to_json)],
            )?;
            for run in &t.runs {
                exec(tx,
                    "INSERT INTO task_runs (task_id, node_id, run, final, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.id, run.node_id, to_json(run), run.state.is_final(), run.state.as_str()],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn transition_runs(
        &self,
        task_id: &str,
        node_ids: Vec<String>,
        from: &'static [RunState],
        patch: RunPatch,
    ) -> Result<Vec<TaskRun>, StoreError> {
        let id = task_id.to_string();
        let changes = patch_json(&patch);
        self.write(move |c| {
            // One statement for the batch: the guard is `state IN (from)`, so a run moved meanwhile is left
            // alone.
            let mut stmt = c.prepare_cached(&format!(
                "UPDATE task_runs SET run = json_patch(run, ?3), state = ?4, final = ?5
                 WHERE task_id = ?1 AND node_id IN (SELECT value FROM json_each(?2))
                   AND state IN ({}) RETURNING node_id, run",
                state_list(from)
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        id,
                        to_json(&node_ids),
                        changes,
                        patch.state.as_str(),
                        patch.state.is_final()
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            runs_in_order_asked(&node_ids, rows)
        })
        .await
    }

    async fn record_late_exit(
        &self,
        task_id: &str,
        node_id: &str,
        late: LateExit,
    ) -> Result<Option<TaskRun>, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        let patch = to_json(&serde_json::json!({ "late_exit": late }));
        self.write(move |c| {
            let run: Option<String> = row(c,
                    &format!(
                        "UPDATE task_runs SET run = json_patch(run, ?3)
                         WHERE task_id = ?1 AND node_id = ?2 AND json_extract(run, '$.late_exit') IS NULL
                           AND (state IN ('Lost', 'Unreachable')
                                OR (state = 'Cancelled' AND json_extract(run, '$.error') = '{}'))
                         RETURNING run",
                        super::SERVER_ONLY_CANCEL
                    ),
                    params![t, n, patch],
                    |r| r.get(0),
                )
                .optional()?;
            run.map(|r| from_json(&r, "task run")).transpose()
        })
        .await
    }

    async fn get_run(&self, task_id: &str, node_id: &str) -> Result<Option<TaskRun>, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        self.read(move |c| {
            let run: Option<String> = row(
                c,
                "SELECT run FROM task_runs WHERE task_id = ?1 AND node_id = ?2",
                params![t, n],
                |r| r.get(0),
            )
            .optional()?;
            run.map(|r| from_json(&r, "task run")).transpose()
        })
        .await
    }

    async fn runs_in_state(
        &self,
        task_id: &str,
        states: &'static [RunState],
        limit: usize,
    ) -> Result<Vec<TaskRun>, StoreError> {
        let t = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT run FROM task_runs WHERE task_id = ?1 AND state IN ({}) ORDER BY rowid LIMIT ?2",
                state_list(states)
            ))?;
            let runs = stmt
                .query_map(params![t, limit.min(i64::MAX as usize) as i64], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            runs.iter().map(|r| from_json(r, "task run")).collect()
        })
        .await
    }

    async fn count_runs(
        &self,
        task_id: &str,
        states: &'static [RunState],
    ) -> Result<usize, StoreError> {
        let t = task_id.to_string();
        self.read(move |c| {
            let n: i64 = row(
                c,
                &format!(
                    "SELECT count(*) FROM task_runs WHERE task_id = ?1 AND state IN ({})",
                    state_list(states)
                ),
                [t],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as usize)
        })
        .await
    }

    async fn open_runs_for_node(
        &self,
        node_id: &str,
    ) -> Result<Vec<(String, TaskRun, TaskSpec)>, StoreError> {
        let node_id = node_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT t.id, t.spec, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
                 WHERE r.node_id = ?1 AND r.state IN ('Pending', 'Running')",
            )?;
            let rows = stmt
                .query_map([node_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, spec, run)| {
                    Ok((
                        id,
                        from_json(&run, "task run")?,
                        from_json(&spec, "task spec")?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn open_runs_silent_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT r.task_id, r.node_id FROM task_runs r JOIN nodes n ON n.id = r.node_id
                 WHERE r.state IN ('Pending', 'Running') AND (n.last_seen IS NULL OR n.last_seen < ?1)",
            )?;
            let rows = stmt
                .query_map([ts(cutoff)], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_finished_tasks_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            Ok(exec(c,
                "DELETE FROM tasks WHERE created_at < ?1 AND NOT EXISTS
                   (SELECT 1 FROM task_runs r WHERE r.task_id = tasks.id AND r.state IN ('Pending', 'Running'))",
                [cutoff],
            )?)
        })
        .await
    }

    async fn trim_output(&self, max_bytes: u64) -> Result<usize, StoreError> {
        self.write(move |c| {
            let total: i64 =
                row(c, "SELECT coalesce(sum(length(data)), 0) FROM task_output", [], |r| {
                    r.get(0)
                })?;
            let mut excess = (total.max(0) as u64).saturating_sub(max_bytes);
            if excess == 0 {
                return Ok(0);
            }
            let mut stmt = c.prepare(
                "SELECT t.id, (SELECT coalesce(sum(length(o.data)), 0) FROM task_output o WHERE o.task_id = t.id)
                 FROM tasks t WHERE NOT EXISTS
                   (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.state IN ('Pending', 'Running'))
                 ORDER BY t.created_at",
            )?;
            let sizes = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut trimmed = 0;
            for (id, size) in sizes {
                if excess == 0 {
                    break;
                }
                if size <= 0 {
                    continue;
                }
                exec(c, "DELETE FROM task_output WHERE task_id = ?1", [&id])?;
                excess = excess.saturating_sub(size as u64);
                trimmed += 1;
            }
            Ok(trimmed)
        })
        .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_string();
        self.read(move |c| load_task(c, &id)).await
    }

    async fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |c| {
            let mut stmt =
                c.prepare("SELECT id FROM tasks WHERE substr(id, 1, length(?1)) = ?1 LIMIT ?2")?;
            let ids = stmt
                .query_map(params![prefix, limit as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await
    }

    async fn list_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare("SELECT id FROM tasks ORDER BY created_at DESC, rowid DESC LIMIT ?1")?;
            let ids = stmt
                .query_map([limit as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut tasks = Vec::new();
            for id in ids {
                tasks.extend(load_task(c, &id)?);
            }
            Ok(tasks)
        })
        .await
    }

    async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
        self.read(move |c| pages::task_summaries(c, limit)).await
    }

    async fn task_page(&self, id: &str, query: &RunQuery) -> Result<Option<TaskPage>, StoreError> {
        let (id, query) = (id.to_string(), query.clone());
        self.read(move |c| pages::task_page(c, &id, &query)).await
    }

    async fn node_task_runs(
        &self,
        node_id: &str,
        limit: usize,
    ) -> Result<Vec<NodeTaskRun>, StoreError> {
        let id = node_id.to_string();
        self.read(move |c| pages::node_task_runs(c, &id, limit))
            .await
    }

    async fn insert_output(
        &self,
        task_id: &str,
        chunks: Vec<OutputRecord>,
    ) -> Result<(), StoreError> {
        let id = task_id.to_string();
        self.write(move |c| {
            let tx = c;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO task_output (task_id, node_id, seq, stream, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for ch in &chunks {
                    stmt.execute(params![id, ch.node_id, ch.seq as i64, ch.stream, ch.data])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn output(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, StoreError> {
        let id = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT row, node_id, seq, stream, data FROM task_output WHERE task_id = ?1 AND row > ?2 ORDER BY row LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![id, after, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        OutputRecord {
                            node_id: r.get(1)?,
                            seq: r.get::<_, i64>(2)? as u64,
                            stream: r.get(3)?,
                            data: r.get(4)?,
                        },
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn output_within(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, StoreError> {
        let id = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT row, node_id, seq, stream, data FROM task_output WHERE task_id = ?1 AND row > ?2 ORDER BY row LIMIT ?3",
            )?;
            // Stepped row by row: rows past the byte budget are never read.
            let mut rows = stmt.query(params![id, after, limit as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while bytes < max_bytes.max(1)
                && let Some(r) = rows.next()?
            {
                let data: Vec<u8> = r.get(4)?;
                bytes += data.len();
                out.push((
                    r.get::<_, i64>(0)?,
                    OutputRecord {
                        node_id: r.get(1)?,
                        seq: r.get::<_, i64>(2)? as u64,
                        stream: r.get(3)?,
                        data,
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        self.write(move |c| {
            let max: Option<i64> = row(
                c,
                "SELECT MAX(seq) FROM task_output WHERE task_id = ?1 AND node_id = ?2",
                params![t, n],
                |r| r.get(0),
            )?;
            Ok(max.map(|m| m as u64 + 1).unwrap_or(0))
        })
        .await
    }

    async fn insert_audits(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        self.write(move |c| {
            for e in &entries {
                exec(
                    c,
                    "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![e.at, e.actor, e.action, e.target, to_json(&e.detail)],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        self.read(counts::counts).await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = filter.clone();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, target, detail FROM audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
                   AND (?3 IS NULL OR instr(target, ?3) > 0) AND (?4 IS NULL OR at >= ?4)
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![f.actor, f.action, f.target, f.since, f.limit as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, DateTime<Utc>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )?;
            let entries = rows.map(|row| {
                let (id, at, actor, action, target, detail) = row?;
                Ok(AuditEntry {
                    id,
                    at,
                    actor,
                    action,
                    target,
                    detail: from_json(&detail, "audit detail")?,
                })
            });
            Ok(readable("audit entry", entries))
        })
        .await
    }

    async fn put_manifest(
        &self,
        manifest: &Manifest,
        signature: Option<&Signature>,
        now: DateTime<Utc>,
    ) -> Result<PutManifest, StoreError> {
        let (m, json) = (manifest.clone(), to_json(manifest));
        let sig = signature.map(to_json);
        self.write(move |c| {
            let tx = c;
            let current: Option<(i64, String, Option<String>, Option<i64>)> = row(tx, "SELECT generation, manifest, signature, signed_version FROM manifests WHERE name = ?1", [&m.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            let current = current.as_ref().map(|(g, old, old_sig, signed)| CurrentManifest {
                generation: u64::try_from(*g).unwrap_or(0),
                json: old.as_str(),
                sig: old_sig.as_deref(),
                signed_version: signed.and_then(|v| u64::try_from(v).ok()),
            });
            let put = manifest_put(current, &m, &json, sig.as_deref())?;
            if put.changed || put.resigned {
                let signed_version = put.signed_version.and_then(|v| i64::try_from(v).ok());
                exec(tx,
                    "INSERT INTO manifests (name, generation, manifest, updated_at, signature, signed_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(name) DO UPDATE SET generation = ?2, manifest = ?3, updated_at = ?4, signature = ?5, signed_version = ?6",
                    params![m.name, put.generation as i64, json, now, sig, signed_version],
                )?;
            }
            Ok(put)
        })
        .await
    }

    async fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT generation, manifest, updated_at, signature FROM manifests ORDER BY name",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, DateTime<Utc>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(g, m, at, sig)| {
                    Ok(StoredManifest {
                        generation: g as u64,
                        updated_at: at,
                        manifest: from_json(&m, "manifest")?,
                        signature: sig
                            .map(|s| from_json(&s, "manifest signature"))
                            .transpose()?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_manifest(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| Ok(exec(c, "DELETE FROM manifests WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn get_desired(
        &self,
        node_id: &str,
    ) -> Result<Option<(DesiredState, String)>, StoreError> {
        let id = node_id.to_string();
        self.read(move |c| {
            let row: Option<(String, String)> = row(
                c,
                "SELECT state, hash FROM node_desired WHERE node_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            row.map(|(s, h)| Ok((from_json(&s, "desired state")?, h)))
                .transpose()
        })
        .await
    }

    async fn desired_names_blob(&self, node_id: &str, sha256: &str) -> Result<bool, StoreError> {
        let (id, sha) = (node_id.to_string(), sha256.to_string());
        self.read(move |c| {
            Ok(row(
                c,
                "SELECT EXISTS (SELECT 1 FROM node_desired d, json_each(d.state, '$.resources') r
                  WHERE d.node_id = ?1 AND json_extract(r.value, '$.file.sha256') = ?2)",
                [id, sha],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn desired_versions(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT node_id, json_extract(state, '$.generation'), hash FROM node_desired",
            )?;
            let rows = stmt.query_map([], |r| {
                // A generation that is not an integer reads as none (see `codec::generation`).
                let generation = r.get::<_, Option<i64>>(1).ok().flatten();
                Ok((r.get(0)?, super::codec::generation(generation), r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let (id, json, hash) = (node_id.to_string(), to_json(state), hash.to_string());
        let previous = state.generation.saturating_sub(1) as i64;
        self.write(move |c| {
            let n = if previous == 0 {
                exec(
                    c,
                    "INSERT INTO node_desired (node_id, state, hash) VALUES (?1, ?2, ?3)
                     ON CONFLICT(node_id) DO NOTHING",
                    params![id, json, hash],
                )?
            } else {
                exec(
                    c,
                    "UPDATE node_desired SET state = ?2, hash = ?3
                     WHERE node_id = ?1 AND json_extract(state, '$.generation') = ?4",
                    params![id, json, hash, previous],
                )?
            };
            Ok(n > 0)
        })
        .await
    }

    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError> {
        let (id, json) = (node_id.to_string(), to_json(report));
        let resources: Vec<_> = report
            .resources
            .iter()
            .map(|r| (r.manifest.clone(), r.id.clone(), r.state.as_str()))
            .collect();
        self.write(move |c| {
            let kept = exec(c,
                "INSERT INTO node_convergence (node_id, report) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET report = ?2
                 WHERE json_extract(report, '$.observed_generation') <= json_extract(?2, '$.observed_generation')",
                params![id, json],
            )?;
            if kept > 0 {
                convergence::put_resources(c, &id, &resources)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError> {
        let id = node_id.to_string();
        self.read(move |c| {
            let row: Option<String> = row(
                c,
                "SELECT report FROM node_convergence WHERE node_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
            row.map(|r| from_json(&r, "convergence report")).transpose()
        })
        .await
    }

    async fn convergence_of(
        &self,
        ids: Option<&[String]>,
    ) -> Result<Vec<ConvergenceRow>, StoreError> {
        let ids = ids.map(|ids| serde_json::to_string(ids).unwrap_or_default());
        self.read(move |c| {
            // Two statements, so the one for a few nodes looks each up by its key.
            let mut stmt = c.prepare_cached(&format!(
                "SELECT n.id, n.name, json_extract(d.state, '$.generation'), v.report FROM nodes n
                 LEFT JOIN node_desired d ON d.node_id = n.id
                 LEFT JOIN node_convergence v ON v.node_id = n.id {} ORDER BY n.name",
                if ids.is_some() {
                    "WHERE n.id IN (SELECT value FROM json_each(?1))"
                } else {
                    "WHERE ?1 IS NULL"
                }
            ))?;
            let rows = stmt
                .query_map([ids], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            super::codec::decode_convergence(rows)
        })
        .await
    }

    async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, StoreError> {
        self.read(convergence::manifest_counts).await
    }

    async fn convergence_page(
        &self,
        query: &ConvergenceQuery,
    ) -> Result<(Vec<ConvergenceRow>, usize), StoreError> {
        let query = query.clone();
        self.read(move |c| convergence::convergence_page(c, &query))
            .await
    }

    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let sha = sha256.to_string();
        self.write(move |c| {
            exec(
                c,
                "INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?1, ?2)",
                params![sha, data],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = sha256.to_string();
        self.read(move |c| {
            Ok(
                row(c, "SELECT data FROM blobs WHERE sha256 = ?1", [sha], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }
}

fn load_task(c: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let row = row(
        c,
        "SELECT target, spec, created_by, created_at, max_parallel, signature FROM tasks WHERE id = ?1",
        [id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, DateTime<Utc>>(3)?,
                r.get::<_, Option<u32>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        },
    )
    .optional()?;
    let Some((target, spec, created_by, created_at, max_parallel, signature)) = row else {
        return Ok(None);
    };
    let mut stmt = c.prepare("SELECT run FROM task_runs WHERE task_id = ?1 ORDER BY rowid")?;
    let runs = stmt
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .map(|r| from_json(r, "task run"))
        .collect::<Result<Vec<TaskRun>, _>>()?;
    Ok(Some(Task {
        id: id.to_string(),
        target: from_json(&target, "task target")?,
        spec: from_json(&spec, "task spec")?,
        created_by,
        created_at,
        max_parallel,
        signature: signature
            .map(|s| from_json(&s, "task signature"))
            .transpose()?,
        runs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::node;

    /// An in-memory database at schema version `version`: its first `version` migrations applied.
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn
    }

    #[test]
    fn the_signed_version_migration_keeps_what_signers_must_exceed() {
        let last = MIGRATIONS.len() - 1;
        assert!(MIGRATIONS[last].contains("signed_version"));
        let conn = at_version(last);
        conn.execute_batch(
            "INSERT INTO manifests (name, generation, manifest, updated_at, signature) VALUES
               ('signed', 1, '{\"name\":\"signed\",\"version\":7,\"resources\":[]}', '2026-01-01T00:00:00Z', '{}'),
               ('huge', 1, '{\"name\":\"huge\",\"version\":18446744073709551615,\"resources\":[]}', '2026-01-01T00:00:00Z', '{}'),
               ('plain', 1, '{\"name\":\"plain\",\"version\":9,\"resources\":[]}', '2026-01-01T00:00:00Z', NULL)",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[last]).unwrap();
        let floor = |name: &str| -> Option<i64> {
            conn.query_row(
                "SELECT signed_version FROM manifests WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(floor("signed"), Some(7));
        assert_eq!(floor("huge"), Some((1 << 53) - 1));
        assert_eq!(floor("plain"), None);
    }

    #[test]
    fn migration_8_binds_the_labels_existing_nodes_report() {
        let mut conn = at_version(7);
        conn.execute(
            "INSERT INTO nodes (id, name, transport, labels, registered_at, heartbeat_interval_ms, capabilities, reported_labels)
             VALUES ('a', 'alpha', 'grpc', '{\"zone\":\"lab\",\"role\":\"edge\"}', '2026-01-01T00:00:00Z', 1000, '{}', '{\"role\":\"db\",\"gpu\":\"yes\"}')",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let (labels, enrolled): (String, String) = conn
            .query_row(
                "SELECT labels, enrolled_labels FROM nodes WHERE id = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let parse = |text: &str| serde_json::from_str::<drover_types::Labels>(text).unwrap();
        let want = |args: &[&str]| drover_types::labels::parse_labels(args).unwrap();
        assert_eq!(
            parse(&labels),
            want(&["zone=lab", "role=edge"]),
            "unchanged"
        );
        assert_eq!(
            parse(&enrolled),
            want(&["role=db", "gpu=yes"]),
            "what the node was selected by stays bound"
        );
    }

    #[test]
    fn migration_11_fills_resource_states_from_the_reports_kept() {
        use drover_types::manifest::ResourceState::{Failed, Ready};

        let mut conn = at_version(10);
        let report = crate::store::conformance::states_report(
            1,
            &[
                ("r1", "m1", Ready),
                ("r2", "m1", Failed),
                ("x", "m2", Ready),
            ],
        );
        conn.execute_batch(
            "INSERT INTO nodes (id, name, transport, labels, registered_at, heartbeat_interval_ms, capabilities)
             VALUES ('a', 'alpha', 'grpc', '{}', '2026-01-01T00:00:00Z', 1000, '{}'),
                    ('b', 'beta', 'grpc', '{}', '2026-01-01T00:00:00Z', 1000, '{}');
             INSERT INTO node_convergence (node_id, report) VALUES ('b', '{not json');",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO node_convergence (node_id, report) VALUES ('a', ?1)",
            [to_json(&report)],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let counts = convergence::manifest_counts(&conn).unwrap();
        let nodes: Vec<_> = counts
            .iter()
            .map(|c| (c.manifest.as_str(), c.nodes.clone()))
            .collect();
        assert_eq!(nodes, [("m1", vec![(Failed, 1)]), ("m2", vec![(Ready, 1)])]);
        let ids: Vec<String> = conn
            .prepare("SELECT resource FROM node_resources WHERE node_id = 'a' ORDER BY pos")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            ids,
            ["r1", "r2", "x"],
            "in the report's order; the unreadable report is skipped"
        );
    }

    #[test]
    fn migration_12_keeps_the_history_to_a_sample_a_minute_across_the_upgrade() {
        let mut conn = at_version(11);
        conn.execute_batch(
            "INSERT INTO nodes (id, name, transport, labels, registered_at, heartbeat_interval_ms, capabilities)
             VALUES ('a', 'alpha', 'grpc', '{}', '2026-01-01T00:00:00Z', 1000, '{}'),
                    ('b', 'beta', 'grpc', '{}', '2026-01-01T00:00:00Z', 1000, '{}');
             INSERT INTO metrics_history (node_id, at, metrics) VALUES
                 ('a', '2026-01-01T00:00:05+00:00', '{}'), ('a', '2026-01-01T00:00:10+00:00', '{}');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let history = MetricsHistory {
            keep: 10,
            every: std::time::Duration::from_secs(60),
        };
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let beat_at = |id: &str, t: &str| beat(&conn, id, at(t), "{}", history).unwrap();
        let samples = |id: &str| -> i64 {
            conn.query_row(
                "SELECT count(*) FROM metrics_history WHERE node_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        // a's newest sample (00:00:10) is found in its row: a beat in that minute adds none.
        assert!(beat_at("a", "2026-01-01T00:00:40Z"));
        assert_eq!(samples("a"), 2);
        assert!(beat_at("a", "2026-01-01T00:01:00Z"));
        assert_eq!(samples("a"), 3, "the next minute's first beat is a sample");
        // b had none: its first beat is one.
        assert!(beat_at("b", "2026-01-01T00:00:40Z"));
        assert_eq!(samples("b"), 1);
        assert!(!beat_at("nobody", "2026-01-01T00:00:40Z"), "no such node");
    }

    #[tokio::test]
    async fn an_unreadable_audit_entry_leaves_the_rest_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let entry = AuditEntry {
            id: 0,
            at: Utc::now(),
            actor: "admin".into(),
            action: "token.create".into(),
            target: "t".into(),
            detail: serde_json::json!({}),
        };
        store.insert_audits(vec![entry]).await.unwrap();
        store
            .write(|c| {
                exec(
                    c,
                    "INSERT INTO audit (at, actor, action, target, detail) VALUES ('never', 'x', 'y', 'z', '{')",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let listed = store
            .list_audit(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].action, "token.create");
    }

    #[tokio::test]
    async fn reopening_keeps_the_schema_version_and_runs_no_migration_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        store.insert_node(&node("a", "alpha")).await.unwrap();
        drop(store);
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        assert!(store.get_node("a").await.unwrap().is_some());
    }
}
