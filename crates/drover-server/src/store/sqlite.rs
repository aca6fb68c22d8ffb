//! The embedded store: one SQLite file in WAL mode, driven from a blocking thread.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drover_types::{
    Metrics, MetricsSample, Transport,
    token::{JoinTokenInfo, TokenRefusal},
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{AuditFilter, JoinTokenRecord, NodeRecord, OutputRecord, Store, StoreError};
use drover_types::manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest};
use drover_types::task::{AuditEntry, Task, TaskRun, TaskSpec};

/// Versioned schema: entry N moves the database from `user_version` N to N+1. Never edit a released entry.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    transport TEXT NOT NULL,
    labels TEXT NOT NULL,
    ip TEXT,
    registered_at TEXT NOT NULL,
    last_seen TEXT,
    heartbeat_interval_ms INTEGER NOT NULL,
    capabilities TEXT NOT NULL,
    metrics TEXT,
    node_token_sha256 TEXT
);
CREATE TABLE metrics_history (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX metrics_history_node ON metrics_history(node_id, seq);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN reported_labels TEXT NOT NULL DEFAULT '{}';
"#,
    r#"
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    max_parallel INTEGER
);
CREATE INDEX tasks_created ON tasks(created_at);
CREATE TABLE task_runs (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    run TEXT NOT NULL,
    final INTEGER NOT NULL,
    PRIMARY KEY (task_id, node_id)
);
CREATE INDEX task_runs_open ON task_runs(node_id, final);
CREATE TABLE task_output (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (task_id, node_id, seq)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at);
"#,
    // Replaying a task's output walks this index in row order instead of sorting every row per page.
    r#"
CREATE INDEX task_output_task ON task_output(task_id);
"#,
    r#"
CREATE TABLE manifests (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE node_desired (
    node_id TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE node_convergence (
    node_id TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    report TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
"#,
];

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in a blocking thread.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back).
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing our own plain data types cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt { what, source })
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

fn parse_ts(text: &str, what: &'static str) -> Result<DateTime<Utc>, StoreError> {
    // Stored as JSON strings' content; reuse serde's RFC 3339 parsing for one error type.
    from_json(&format!("\"{text}\""), what)
}

fn token_info(row: &Row) -> rusqlite::Result<(JoinTokenInfo, String)> {
    let labels: String = row.get("labels")?;
    let labels = serde_json::from_str(&labels).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let info = JoinTokenInfo {
        id: row.get("id")?,
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
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
}

const NODE_COLUMNS: &str = "id, name, transport, labels, ip, registered_at, last_seen, \
     heartbeat_interval_ms, capabilities, metrics, node_token_sha256, reported_labels";

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
        self.call(move |c| {
            c.execute(
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
        self.call(|c| {
            let mut stmt = c.prepare("SELECT * FROM join_tokens ORDER BY created_at")?;
            let rows = stmt.query_map([], token_info)?;
            Ok(rows
                .map(|r| r.map(|(info, _)| info))
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(c.execute("UPDATE join_tokens SET revoked = 1 WHERE id = ?1", [id])? > 0)
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
        self.call(move |c| {
            let tx = c.transaction()?;
            let found = tx
                .query_row("SELECT * FROM join_tokens WHERE id = ?1", [&id], token_info)
                .optional()?;
            let Some((mut info, stored_secret)) = found else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            if stored_secret != secret {
                return Ok(Err(TokenRefusal::Unknown));
            }
            if info.revoked {
                return Ok(Err(TokenRefusal::Revoked));
            }
            if info.expires_at <= now {
                return Ok(Err(TokenRefusal::Expired));
            }
            if let Some(max) = info.max_uses
                && info.uses >= max
            {
                return Ok(Err(TokenRefusal::Exhausted(max)));
            }
            tx.execute(
                "UPDATE join_tokens SET uses = uses + 1 WHERE id = ?1",
                [&id],
            )?;
            tx.commit()?;
            info.uses += 1;
            Ok(Ok(info))
        })
        .await
    }

    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node.clone();
        self.call(move |c| {
            let result = c.execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
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
                    to_json(&n.reported_labels)
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
                other => other.map(|_| ()).map_err(Into::into),
            }
        })
        .await
    }

    async fn update_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node.clone();
        self.call(move |c| {
            let result = c.execute(
                "UPDATE nodes SET name = ?2, transport = ?3, labels = ?4, ip = ?5, registered_at = ?6,
                 last_seen = ?7, heartbeat_interval_ms = ?8, capabilities = ?9, metrics = ?10,
                 node_token_sha256 = ?11, reported_labels = ?12 WHERE id = ?1",
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
                    to_json(&n.reported_labels)
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
                other => other.map(|_| ()).map_err(Into::into),
            }
        })
        .await
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
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
        self.call(move |c| {
            c.query_row(
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

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.call(|c| {
            let mut stmt = c.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"))?;
            let raws = stmt
                .query_map([], raw_node)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(RawNode::decode).collect()
        })
        .await
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM nodes WHERE id = ?1", [id])? > 0))
            .await
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        keep: usize,
    ) -> Result<bool, StoreError> {
        let (id, json) = (id.to_string(), to_json(metrics));
        self.call(move |c| {
            let tx = c.transaction()?;
            let updated = tx.execute(
                "UPDATE nodes SET last_seen = ?2, metrics = ?3 WHERE id = ?1",
                params![id, ts(at), json],
            )?;
            if updated == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO metrics_history (node_id, at, metrics) VALUES (?1, ?2, ?3)",
                params![id, ts(at), json],
            )?;
            tx.execute(
                "DELETE FROM metrics_history WHERE node_id = ?1 AND seq <=
                   (SELECT seq FROM metrics_history WHERE node_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![id, keep as i64],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
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
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO tasks (id, target, spec, created_by, created_at, max_parallel) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.id, to_json(&t.target), to_json(&t.spec), t.created_by, t.created_at, t.max_parallel],
            )?;
            for run in &t.runs {
                tx.execute(
                    "INSERT INTO task_runs (task_id, node_id, run, final) VALUES (?1, ?2, ?3, ?4)",
                    params![t.id, run.node_id, to_json(run), run.state.is_final()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn update_run(&self, task_id: &str, run: &TaskRun) -> Result<(), StoreError> {
        let (id, run) = (task_id.to_string(), run.clone());
        self.call(move |c| {
            c.execute(
                // A final state is final: a stale copy (the Running that `pump` writes after sending
                // TaskStart, when the node already answered) must not undo it.
                "UPDATE task_runs SET run = ?3, final = ?4 WHERE task_id = ?1 AND node_id = ?2 AND final = 0",
                params![id, run.node_id, to_json(&run), run.state.is_final()],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_string();
        self.call(move |c| load_task(c, &id)).await
    }

    async fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.call(move |c| {
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
        self.call(move |c| {
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

    async fn running_tasks_for_node(
        &self,
        node_id: &str,
    ) -> Result<Vec<(String, TaskSpec)>, StoreError> {
        let node_id = node_id.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT t.id, t.spec, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
                 WHERE r.node_id = ?1 AND r.final = 0",
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
            let mut out = Vec::new();
            for (id, spec, run) in rows {
                let run: TaskRun = from_json(&run, "task run")?;
                if run.state == drover_types::task::RunState::Running {
                    out.push((id, from_json(&spec, "task spec")?));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn insert_output(
        &self,
        task_id: &str,
        chunks: Vec<OutputRecord>,
    ) -> Result<(), StoreError> {
        let id = task_id.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO task_output (task_id, node_id, seq, stream, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for ch in &chunks {
                    stmt.execute(params![id, ch.node_id, ch.seq as i64, ch.stream, ch.data])?;
                }
            }
            tx.commit()?;
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
        self.call(move |c| {
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

    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        self.call(move |c| {
            let max: Option<i64> = c.query_row(
                "SELECT MAX(seq) FROM task_output WHERE task_id = ?1 AND node_id = ?2",
                params![t, n],
                |r| r.get(0),
            )?;
            Ok(max.map(|m| m as u64 + 1).unwrap_or(0))
        })
        .await
    }

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at, e.actor, e.action, e.target, to_json(&e.detail)],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = filter.clone();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, target, detail FROM audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
                   AND (?3 IS NULL OR instr(target, ?3) > 0) AND (?4 IS NULL OR at >= ?4)
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt
                .query_map(
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
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(id, at, actor, action, target, detail)| {
                    Ok(AuditEntry {
                        id,
                        at,
                        actor,
                        action,
                        target,
                        detail: from_json(&detail, "audit detail")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn put_manifest(
        &self,
        manifest: &Manifest,
        now: DateTime<Utc>,
    ) -> Result<(u64, bool), StoreError> {
        let (m, json) = (manifest.clone(), to_json(manifest));
        self.call(move |c| {
            let tx = c.transaction()?;
            let current: Option<(i64, String)> = tx
                .query_row("SELECT generation, manifest FROM manifests WHERE name = ?1", [&m.name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (generation, changed) = match current {
                Some((g, old)) if old == json => (g as u64, false),
                Some((g, _)) => (g as u64 + 1, true),
                None => (1, true),
            };
            if changed {
                tx.execute(
                    "INSERT INTO manifests (name, generation, manifest, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(name) DO UPDATE SET generation = ?2, manifest = ?3, updated_at = ?4",
                    params![m.name, generation as i64, json, now],
                )?;
            }
            tx.commit()?;
            Ok((generation, changed))
        })
        .await
    }

    async fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT generation, manifest, updated_at FROM manifests ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, DateTime<Utc>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(g, m, at)| {
                    Ok(StoredManifest {
                        generation: g as u64,
                        updated_at: at,
                        manifest: from_json(&m, "manifest")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_manifest(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |c| Ok(c.execute("DELETE FROM manifests WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn get_desired(
        &self,
        node_id: &str,
    ) -> Result<Option<(DesiredState, String)>, StoreError> {
        let id = node_id.to_string();
        self.call(move |c| {
            let row: Option<(String, String)> = c
                .query_row(
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

    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<(), StoreError> {
        let (id, json, hash) = (node_id.to_string(), to_json(state), hash.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO node_desired (node_id, state, hash) VALUES (?1, ?2, ?3)
                 ON CONFLICT(node_id) DO UPDATE SET state = ?2, hash = ?3",
                params![id, json, hash],
            )?;
            Ok(())
        })
        .await
    }

    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError> {
        let (id, json) = (node_id.to_string(), to_json(report));
        self.call(move |c| {
            c.execute(
                "INSERT INTO node_convergence (node_id, report) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET report = ?2",
                params![id, json],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError> {
        let id = node_id.to_string();
        self.call(move |c| {
            let row: Option<String> = c
                .query_row(
                    "SELECT report FROM node_convergence WHERE node_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            row.map(|r| from_json(&r, "convergence report")).transpose()
        })
        .await
    }

    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let sha = sha256.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?1, ?2)",
                params![sha, data],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = sha256.to_string();
        self.call(move |c| {
            Ok(
                c.query_row("SELECT data FROM blobs WHERE sha256 = ?1", [sha], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }
}

fn load_task(c: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let row = c
        .query_row(
            "SELECT target, spec, created_by, created_at, max_parallel FROM tasks WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, DateTime<Utc>>(3)?,
                    r.get::<_, Option<u32>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((target, spec, created_by, created_at, max_parallel)) = row else {
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
        runs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::Capabilities;

    fn node(id: &str, name: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            transport: Transport::Grpc,
            labels: Default::default(),
            reported_labels: Default::default(),
            ip: None,
            registered_at: Utc::now(),
            last_seen: None,
            heartbeat_interval_ms: 10_000,
            capabilities: Capabilities::default(),
            metrics: None,
            node_token_sha256: None,
        }
    }

    #[tokio::test]
    async fn nodes_names_and_bounded_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        store.insert_node(&node("a", "alpha")).await.unwrap();
        assert!(matches!(
            store.insert_node(&node("b", "alpha")).await,
            Err(StoreError::NameTaken(_))
        ));
        for i in 0..10 {
            let m = Metrics {
                cpu_usage: i as f64,
                ..Metrics::default()
            };
            assert!(
                store
                    .record_heartbeat("a", Utc::now(), &m, 4)
                    .await
                    .unwrap()
            );
        }
        let history = store.metrics_history("a", 100).await.unwrap();
        assert_eq!(history.len(), 4);
        assert_eq!(history[3].metrics.cpu_usage, 9.0);
        assert!(
            !store
                .record_heartbeat("zz", Utc::now(), &Metrics::default(), 4)
                .await
                .unwrap()
        );
        assert!(store.delete_node("a").await.unwrap());
        assert!(store.metrics_history("a", 100).await.unwrap().is_empty());
        // Reopening keeps the schema version and runs no migration twice.
        drop(store);
        SqliteStore::open(&dir.path().join("db")).unwrap();
    }

    #[tokio::test]
    async fn join_token_limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let now = Utc::now();
        let rec = JoinTokenRecord {
            info: JoinTokenInfo {
                id: "t1".into(),
                created_at: now,
                expires_at: now + chrono::Duration::hours(1),
                max_uses: Some(1),
                uses: 0,
                labels: Default::default(),
                revoked: false,
            },
            secret_sha256: "s".into(),
        };
        store.insert_join_token(&rec).await.unwrap();
        assert_eq!(
            store.use_join_token("t1", "wrong", now).await.unwrap(),
            Err(TokenRefusal::Unknown)
        );
        assert!(store.use_join_token("t1", "s", now).await.unwrap().is_ok());
        assert_eq!(
            store.use_join_token("t1", "s", now).await.unwrap(),
            Err(TokenRefusal::Exhausted(1))
        );
        let later = now + chrono::Duration::hours(2);
        store.revoke_join_token("t1").await.unwrap();
        assert_eq!(
            store.use_join_token("t1", "s", later).await.unwrap(),
            Err(TokenRefusal::Revoked)
        );
    }
}
