//! The embedded store: one SQLite file in WAL mode; writes are committed in groups by one writer thread,
//! reads run beside it.

mod audit;
mod blobs;
mod convergence;
mod counts;
mod desired;
mod fleet;
mod manifests;
mod nodes;
mod operators;
mod output;
mod pages;
mod pool;
mod rollouts;
mod schema;
mod tasks;
mod tokens;

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
use super::prelude::*;
use super::sql;
use super::{
    AuditFilter, ConvergencePage, DesiredVersion, FleetCounts, Heartbeat, JoinTokenRecord,
    ManifestCounts, MetricsHistory, NodeChange, NodeQuery, NodeRecord, NodeRecordPage, NodeTaskRun,
    OpenRun, OutputRecord, PutManifest, RunPatch, RunQuery, SilentRun, StoreError, StoredDesired,
    StoredOutput, TaskPage, TaskSummary, TokenUse,
};
use drover_types::manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest};
use drover_types::rollout::Rollout;
use drover_types::signing::Signature;
use drover_types::task::{AuditEntry, LateExit, RunState, Task, TaskRun};
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
/// its size. False for no such node. Per backend: here a node at a time, inside the one writer's
/// transaction; PostgreSQL's `beats` writes a batch as statements over arrays.
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

/// A row of `sql::NODE_COLUMNS`.
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

fn load_task(c: &Connection, id: &str) -> Result<Option<Task>, StoreError> {
    let row = row(c, sql::tasks::LOAD.sqlite, [id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, DateTime<Utc>>(3)?,
            r.get::<_, Option<u32>>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })
    .optional()?;
    let Some((target, spec, created_by, created_at, max_parallel, signature)) = row else {
        return Ok(None);
    };
    // Per backend: SQLite keeps a task's run order in its implicit `rowid`, PostgreSQL in `seq`.
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
        let last = MIGRATIONS
            .iter()
            .position(|m| m.contains("ADD COLUMN signed_version"))
            .unwrap();
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
