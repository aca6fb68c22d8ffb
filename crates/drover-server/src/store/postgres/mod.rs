//! The PostgreSQL store, for a fleet that outgrows one machine: the same records as SQLite's, in a
//! database several server replicas can share. Every write is one statement or one transaction, and the
//! writes many nodes cause (heartbeats, output, run transitions) are one statement over arrays.

mod counts;
mod pages;
mod schema;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use drover_types::manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest};
use drover_types::operator::OperatorInfo;
use drover_types::signing::Signature;
use drover_types::task::{AuditEntry, LateExit, RunState, Task, TaskRun, TaskSpec};
use drover_types::{
    Metrics, MetricsSample, Transport,
    token::{JoinTokenInfo, TokenRefusal},
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, Postgres, Row};

use super::codec::{
    CurrentManifest, from_json, manifest_put, patch_json, readable, runs_in_order_asked, to_json,
};
use super::{
    AuditFilter, ConvergenceQuery, ConvergenceRow, FleetCounts, JoinTokenRecord, ManifestCounts,
    MetricsHistory, NodeChange, NodeCounts, NodeQuery, NodeRecord, NodeTaskRun, OperatorRecord,
    OutputRecord, PutManifest, RunPatch, RunQuery, Sealed, Store, StoreError, TaskPage,
    TaskSummary,
};
use crate::percent::percent_decode;
use schema::MIGRATIONS;

/// Connections kept at most: reads and writes run side by side, each on its own.
const MAX_CONNECTIONS: u32 = 16;
/// How long a statement waits for a free connection (or a new one) before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock keys (first half): migrations, a task's output, a manifest's name.
pub(super) const LOCK_MIGRATE: i32 = 0x6472_0001;
const LOCK_OUTPUT: i32 = 0x6472_0002;
const LOCK_MANIFEST: i32 = 0x6472_0003;
/// The cluster's bootstrap data.
const LOCK_BOOTSTRAP: i32 = 0x6472_0004;
/// Leader-only work (sweeps, retention): a session lock, held on its own connection.
const LOCK_LEADER: i32 = 0x6472_0005;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            e => StoreError::Db(Box::new(e)),
        }
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// A count or size for a `BIGINT` column (ours never reach `i64::MAX`; one that did would saturate).
fn big(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A `BIGINT` read back as an unsigned count (negative ones, which we never write, read as 0).
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A database URL fit for logs and errors: its password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    // The user info ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// The value of the first of `keys` in the URL's query, percent-decoded.
fn query_param(url: &str, keys: &[&str]) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        keys.contains(&k).then(|| percent_decode(v))
    })
}

const SSLMODE_KEYS: &[&str] = &["sslmode", "ssl-mode"];
const SSLROOTCERT_KEYS: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];

/// The connect options for a `--database` URL. TLS only when asked for (`sslmode=` in the URL, or
/// `PGSSLMODE`): libpq's default `prefer` would take an unverified TLS connection or fall back to plain
/// without a word, hiding a downgrade; plain stays plain (loopback tests, benchmarks), and a server
/// that demands TLS gets an error naming the option to add.
fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    use sqlx::postgres::PgSslMode;
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Unavailable(format!("bad --database URL: {e}")))?
        .application_name("drover");
    let root_cert = query_param(url, SSLROOTCERT_KEYS)
        .or_else(|| std::env::var("PGSSLROOTCERT").ok())
        .filter(|c| !c.is_empty());
    if let Some(path) = root_cert
        .as_deref()
        .filter(|c| !c.starts_with("-----BEGIN"))
    {
        // sqlx would only say "error reading file" at the first connection.
        std::fs::metadata(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "--database: cannot read sslrootcert={path}: {e} (give the PEM file of the CA that signed PostgreSQL's certificate)"
            ))
        })?;
    }
    let asked = query_param(url, SSLMODE_KEYS).is_some() || std::env::var_os("PGSSLMODE").is_some();
    match options.get_ssl_mode() {
        _ if !asked => options = options.ssl_mode(PgSslMode::Disable),
        // As libpq: `require` with a root certificate verifies the chain (not the name), where sqlx
        // alone would ignore the certificate.
        PgSslMode::Require if root_cert.is_some() => {
            options = options.ssl_mode(PgSslMode::VerifyCa)
        }
        _ => {}
    }
    Ok(options)
}

/// What a failed first connection means for the user, with the `--database` option that fixes it.
fn explain_connect_error(e: &sqlx::Error, options: &PgConnectOptions) -> String {
    use sqlx::postgres::PgSslMode;
    let mode = options.get_ssl_mode();
    match e {
        // pg_hba.conf has only `hostssl` lines for us: "no pg_hba.conf entry ... no encryption"
        // (PostgreSQL 14+), "SSL off" before.
        sqlx::Error::Database(db)
            if matches!(mode, PgSslMode::Disable)
                && db.code().as_deref() == Some("28000")
                && (db.message().contains("no encryption") || db.message().contains("SSL off")) =>
        {
            format!(
                "PostgreSQL requires TLS: add sslmode=require (and sslrootcert=FILE, or sslmode=verify-full&sslrootcert=FILE to check its certificate and name) to --database ({})",
                db.message()
            )
        }
        sqlx::Error::Tls(t) if t.to_string().contains("does not support TLS") => format!(
            "PostgreSQL does not offer TLS: turn `ssl = on` there, or leave sslmode out of --database for a plain connection ({e})"
        ),
        sqlx::Error::Tls(_) | sqlx::Error::Io(_)
            if matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
                && (matches!(e, sqlx::Error::Tls(_)) || e.to_string().contains("certificate")) =>
        {
            let full = matches!(mode, PgSslMode::VerifyFull);
            format!(
                "TLS to PostgreSQL failed: {e} (with sslmode={} its certificate must be signed by the CA in sslrootcert=FILE in --database, or by one the system trusts{})",
                if full { "verify-full" } else { "verify-ca" },
                if full {
                    ", and name the host in --database"
                } else {
                    ""
                }
            )
        }
        e => e.to_string(),
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connection to which the leader lock belongs, while this replica holds it: the lock lives as long as
    /// the session, so it goes with the replica (or its connection) and another takes it.
    leader: std::sync::Arc<tokio::sync::Mutex<Option<PgConnection>>>,
    options: PgConnectOptions,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or `?host=/socket/dir` for a unix
    /// socket) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = connect_options(url)?;
        // One connection first, for its own error: the pool would only say that it timed out.
        let first = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| format!("no answer within {ACQUIRE_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| explain_connect_error(&e, &options)));
        if let Err(e) = first {
            return Err(StoreError::Unavailable(format!("{}: {e}", redact_url(url))));
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact_url(url))))?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            leader: Default::default(),
            options,
        })
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<usize, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT version FROM drover_schema")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// The cluster's sealed bootstrap data, or what `make` seals when there is none yet (then stored, and
    /// the bool is true). Under a lock: replicas starting together make it once.
    pub async fn bootstrap_data<E: From<StoreError>>(
        &self,
        make: impl FnOnce() -> Result<Sealed, E>,
    ) -> Result<(Sealed, bool), E> {
        let run = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
                .bind(LOCK_BOOTSTRAP)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query("SELECT salt, nonce, sealed FROM cluster_bootstrap WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
            let have = match row {
                Some(row) => Some(Sealed {
                    salt: row.try_get("salt")?,
                    nonce: row.try_get("nonce")?,
                    data: row.try_get("sealed")?,
                }),
                None => None,
            };
            Ok::<_, StoreError>((tx, have))
        };
        let (mut tx, have) = run.await?;
        if let Some(sealed) = have {
            return Ok((sealed, false));
        }
        let sealed = make()?;
        let store = async {
            sqlx::query(
                "INSERT INTO cluster_bootstrap (id, salt, nonce, sealed) VALUES (1, $1, $2, $3)",
            )
            .bind(&sealed.salt)
            .bind(&sealed.nonce)
            .bind(&sealed.data)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        };
        store.await?;
        Ok((sealed, true))
    }

    /// Its connections (for `drover migrate`, which copies into it in one transaction).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs SQL directly: for tests that need rows the store itself never writes.
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &'static str) -> Result<(), StoreError> {
        sqlx::raw_sql(sql).execute(&self.pool).await?;
        Ok(())
    }
}

/// Applies the migrations not yet applied, each in its own transaction, under a lock: replicas started
/// together migrate once.
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_MIGRATE)
        .execute(&mut *tx)
        .await?;
    tx.execute("CREATE TABLE IF NOT EXISTS drover_schema (version BIGINT NOT NULL)")
        .await?;
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM drover_schema")
        .fetch_optional(&mut *tx)
        .await?;
    if version.is_none() {
        tx.execute("INSERT INTO drover_schema (version) VALUES (0)")
            .await?;
    }
    let version = usize::try_from(version.unwrap_or(0)).unwrap_or(0);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Task(format!(
            "the database's schema is at version {version}, newer than this server knows ({}): run a newer drover",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("UPDATE drover_schema SET version = $1")
            .bind(big(i + 1))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A node's columns, as a literal so statements naming them stay `&'static str` (sqlx's guard against
/// SQL built from data).
macro_rules! node_columns {
    () => {
        "id, name, transport, labels, ip, registered_at, last_seen, heartbeat_interval_ms, \
         capabilities, metrics, node_token_sha256, reported_labels, enrolled_labels"
    };
}
use node_columns;

fn decode_node(row: &PgRow) -> Result<NodeRecord, StoreError> {
    let transport: String = row.try_get("transport")?;
    let labels: String = row.try_get("labels")?;
    let reported: String = row.try_get("reported_labels")?;
    let enrolled: String = row.try_get("enrolled_labels")?;
    let capabilities: String = row.try_get("capabilities")?;
    let metrics: Option<String> = row.try_get("metrics")?;
    let interval: i64 = row.try_get("heartbeat_interval_ms")?;
    Ok(NodeRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        transport: if transport == "http" {
            Transport::Http
        } else {
            Transport::Grpc
        },
        labels: from_json(&labels, "node labels")?,
        reported_labels: from_json(&reported, "node reported labels")?,
        enrolled_labels: from_json(&enrolled, "node enrolled labels")?,
        ip: row.try_get("ip")?,
        registered_at: row.try_get("registered_at")?,
        last_seen: row.try_get("last_seen")?,
        heartbeat_interval_ms: unsigned(interval).max(1),
        capabilities: from_json(&capabilities, "node capabilities")?,
        metrics: metrics
            .as_deref()
            .map(|m| from_json(m, "node metrics"))
            .transpose()?,
        node_token_sha256: row.try_get("node_token_sha256")?,
    })
}

/// A token's stored time; years past 9999 (which RFC 3339, and so JSON and the CLI, cannot carry) read as
/// the Unix epoch, as in SQLite: the token is listed, refused as expired, and can be revoked.
fn token_time(row: &PgRow, column: &str, id: &str) -> Result<DateTime<Utc>, StoreError> {
    let t: DateTime<Utc> = row.try_get(column)?;
    if t.year() <= 9999 {
        Ok(t)
    } else {
        tracing::warn!(token = %id, "join token {column} {t} is unreadable; it counts as expired");
        Ok(DateTime::<Utc>::UNIX_EPOCH)
    }
}

fn decode_token(row: &PgRow) -> Result<JoinTokenRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let labels: String = row.try_get("labels")?;
    let max_uses: Option<i64> = row.try_get("max_uses")?;
    let uses: i64 = row.try_get("uses")?;
    Ok(JoinTokenRecord {
        info: JoinTokenInfo {
            created_at: token_time(row, "created_at", &id)?,
            expires_at: token_time(row, "expires_at", &id)?,
            max_uses: max_uses.map(|m| u32::try_from(m).unwrap_or(u32::MAX)),
            uses: u32::try_from(uses).unwrap_or(u32::MAX),
            labels: from_json(&labels, "join token labels")?,
            revoked: row.try_get("revoked")?,
            id,
        },
        secret_sha256: row.try_get("secret_sha256")?,
    })
}

fn decode_operator(row: &PgRow) -> Result<OperatorInfo, StoreError> {
    let role: String = row.try_get("role")?;
    Ok(OperatorInfo {
        name: row.try_get("name")?,
        role: from_json(&format!("\"{role}\""), "operator role")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked: row.try_get("revoked")?,
    })
}

fn state_names(states: &[RunState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

/// Heartbeats in one transaction: each node's latest sample, the samples `history` takes in its history,
/// and the history pruned to its size. Returns how many of the nodes exist.
async fn beats(
    pool: &PgPool,
    beats: &[(String, DateTime<Utc>, String)],
    history: MetricsHistory,
) -> Result<u64, StoreError> {
    // A node beating twice in one batch: its last beat is its latest (the order they came in).
    let mut latest: Vec<(&str, DateTime<Utc>, &str)> = Vec::with_capacity(beats.len());
    let mut seen = std::collections::HashMap::new();
    for (i, b) in beats.iter().enumerate() {
        seen.insert(b.0.as_str(), i);
    }
    for (i, b) in beats.iter().enumerate() {
        if seen.get(b.0.as_str()) == Some(&i) {
            latest.push((&b.0, b.1, &b.2));
        }
    }
    // One lock order for every batch, so two batches never wait on each other in a cycle.
    latest.sort_by(|a, b| a.0.cmp(b.0));
    let (l_ids, l_ats, l_metrics): (Vec<&str>, Vec<DateTime<Utc>>, Vec<&str>) = latest
        .into_iter()
        .fold(Default::default(), |mut acc, (i, a, m)| {
            acc.0.push(i);
            acc.1.push(a);
            acc.2.push(m);
            acc
        });
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE nodes SET last_seen = b.at, metrics = b.metrics
         FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS b(id, at, metrics)
         WHERE nodes.id = b.id",
    )
    .bind(&l_ids)
    .bind(&l_ats)
    .bind(&l_metrics)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated > 0 {
        let mut newest: std::collections::HashMap<String, DateTime<Utc>> =
            if history.every.is_zero() {
                Default::default()
            } else {
                sqlx::query_as(
                    "SELECT DISTINCT ON (node_id) node_id, at FROM metrics_history
                     WHERE node_id = ANY($1) ORDER BY node_id, seq DESC",
                )
                .bind(&l_ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect()
            };
        let mut sampled: Vec<&(String, DateTime<Utc>, String)> = Vec::with_capacity(beats.len());
        for b in beats {
            if history.samples(newest.get(&b.0).copied(), b.1) {
                newest.insert(b.0.clone(), b.1);
                sampled.push(b);
            }
        }
        let ids: Vec<&str> = sampled.iter().map(|b| b.0.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = sampled.iter().map(|b| b.1).collect();
        let metrics: Vec<&str> = sampled.iter().map(|b| b.2.as_str()).collect();
        let mut pruned = ids.clone();
        pruned.sort_unstable();
        pruned.dedup();
        sqlx::query(
            "INSERT INTO metrics_history (node_id, at, metrics)
             SELECT b.id, b.at, b.metrics
             FROM unnest($1::text[], $2::timestamptz[], $3::text[]) WITH ORDINALITY AS b(id, at, metrics, ord)
             JOIN nodes n ON n.id = b.id ORDER BY b.ord",
        )
        .bind(&ids)
        .bind(&ats)
        .bind(&metrics)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM metrics_history WHERE seq IN (
               SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY node_id ORDER BY seq DESC) AS n
                                FROM metrics_history WHERE node_id = ANY($1)) h
               WHERE h.n > $2)",
        )
        .bind(&pruned)
        .bind(big(history.keep))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(updated)
}

async fn load_task<'e, E>(db: E, id: &str) -> Result<Option<Task>, StoreError>
where
    E: Executor<'e, Database = Postgres> + Copy,
{
    let row = sqlx::query(
        "SELECT target, spec, created_by, created_at, max_parallel, signature FROM tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let runs: Vec<String> =
        sqlx::query_scalar("SELECT run FROM task_runs WHERE task_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(db)
            .await?;
    let target: String = row.try_get("target")?;
    let spec: String = row.try_get("spec")?;
    let signature: Option<String> = row.try_get("signature")?;
    let max_parallel: Option<i64> = row.try_get("max_parallel")?;
    Ok(Some(Task {
        id: id.to_string(),
        target: from_json(&target, "task target")?,
        spec: from_json(&spec, "task spec")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        max_parallel: max_parallel.map(|m| u32::try_from(m).unwrap_or(u32::MAX)),
        signature: signature
            .map(|s| from_json(&s, "task signature"))
            .transpose()?,
        runs: runs
            .iter()
            .map(|r| from_json(r, "task run"))
            .collect::<Result<Vec<TaskRun>, _>>()?,
    }))
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut held = self.leader.lock().await;
        if let Some(conn) = held.as_mut() {
            // Still the leader while the session that holds the lock answers.
            match sqlx::query("SELECT 1").execute(&mut *conn).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    *held = None;
                    return Err(e.into());
                }
            }
        }
        let mut conn =
            tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!("no answer within {ACQUIRE_TIMEOUT:?}"))
                })??;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 0)")
            .bind(LOCK_LEADER)
            .fetch_one(&mut conn)
            .await?;
        if got {
            *held = Some(conn);
        }
        Ok(got)
    }

    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = &token.info;
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_sha256, created_at, expires_at, max_uses, uses, labels, revoked)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&token.secret_sha256)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.max_uses.map(i64::from))
        .bind(i64::from(t.uses))
        .bind(to_json(&t.labels))
        .bind(t.revoked)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT * FROM join_tokens ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        Ok(readable(
            "join token",
            rows.iter().map(|r| decode_token(r).map(|t| t.info)),
        ))
    }

    async fn get_join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM join_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_token)
            .transpose()
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE join_tokens SET revoked = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn use_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<JoinTokenInfo, TokenRefusal>, StoreError> {
        let read = || async {
            let found = sqlx::query("SELECT * FROM join_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            found.as_ref().map(decode_token).transpose()
        };
        let Some(record) = read().await? else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        if let Err(refusal) = record.check(secret_sha256, now) {
            return Ok(Err(refusal));
        }
        // The use is counted in one guarded statement, so the row is locked only while it runs (an
        // enrolling fleet does not queue on one lock held across round trips), and racing agents on any
        // replica cannot overuse a limited token: the guard is checked under the row lock.
        let counted: Option<i64> = sqlx::query_scalar(
            "UPDATE join_tokens SET uses = uses + 1
             WHERE id = $1 AND NOT revoked AND (max_uses IS NULL OR uses < max_uses)
             RETURNING uses",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let mut info = record.info;
        match counted {
            Some(uses) => {
                info.uses = u32::try_from(uses).unwrap_or(u32::MAX);
                Ok(Ok(info))
            }
            // Revoked, deleted or used up between the read and the count: say which, as read now.
            None => Ok(Err(match read().await? {
                None => TokenRefusal::Unknown,
                Some(now_record) => match now_record.check(secret_sha256, now) {
                    Err(refusal) => refusal,
                    Ok(()) => TokenRefusal::Revoked,
                },
            })),
        }
    }

    async fn put_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError> {
        let o = &operator.info;
        let done = sqlx::query(
            "INSERT INTO operators (name, role, token_sha256, created_at, created_by, revoked)
             VALUES ($1, $2, $3, $4, $5, FALSE)
             ON CONFLICT (name) DO UPDATE SET role = $2, token_sha256 = $3, created_at = $4,
                 created_by = $5, revoked = FALSE
             WHERE operators.revoked",
        )
        .bind(&o.name)
        .bind(o.role.as_str())
        .bind(&operator.token_sha256)
        .bind(o.created_at)
        .bind(&o.created_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_operators(&self) -> Result<Vec<OperatorInfo>, StoreError> {
        let rows = sqlx::query("SELECT * FROM operators ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(readable("operator", rows.iter().map(decode_operator)))
    }

    async fn operator_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        sqlx::query("SELECT * FROM operators WHERE token_sha256 = $1 AND NOT revoked")
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_operator)
            .transpose()
    }

    async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE operators SET revoked = TRUE WHERE name = $1 AND NOT revoked")
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node;
        let result = sqlx::query(concat!(
            "INSERT INTO nodes (",
            node_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&n.id)
        .bind(&n.name)
        .bind(n.transport.as_str())
        .bind(to_json(&n.labels))
        .bind(&n.ip)
        .bind(n.registered_at)
        .bind(n.last_seen)
        .bind(big(n.heartbeat_interval_ms))
        .bind(to_json(&n.capabilities))
        .bind(n.metrics.as_ref().map(to_json))
        .bind(&n.node_token_sha256)
        .bind(to_json(&n.reported_labels))
        .bind(to_json(&n.enrolled_labels))
        .execute(&self.pool)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name.clone())),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn modify_node(
        &self,
        id: &str,
        change: NodeChange,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row stays locked from this read to the write: nothing changes it in between.
        let row = sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut n) = row.as_ref().map(decode_node).transpose()? else {
            return Ok(None);
        };
        change(&mut n);
        let result = sqlx::query(
            "UPDATE nodes SET name = $2, labels = $3, ip = $4, heartbeat_interval_ms = $5,
             capabilities = $6, node_token_sha256 = $7, reported_labels = $8, enrolled_labels = $9
             WHERE id = $1",
        )
        .bind(&n.id)
        .bind(&n.name)
        .bind(to_json(&n.labels))
        .bind(&n.ip)
        .bind(big(n.heartbeat_interval_ms))
        .bind(to_json(&n.capabilities))
        .bind(&n.node_token_sha256)
        .bind(to_json(&n.reported_labels))
        .bind(to_json(&n.enrolled_labels))
        .execute(&mut *tx)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit().await?;
                Ok(Some(n))
            }
        }
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(decode_node)
        .transpose()
    }

    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(decode_node)
        .transpose()
    }

    async fn get_node_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE node_token_sha256 = $1"
        ))
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(decode_node)
        .transpose()
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(decode_node)
        .collect()
    }

    async fn list_nodes_page(
        &self,
        query: &NodeQuery,
    ) -> Result<(Vec<NodeRecord>, NodeCounts), StoreError> {
        pages::nodes_page(&self.pool, query).await
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        history: MetricsHistory,
    ) -> Result<bool, StoreError> {
        let beat = [(id.to_string(), at, to_json(metrics))];
        Ok(beats(&self.pool, &beat, history).await? > 0)
    }

    async fn record_heartbeats(
        &self,
        list: Vec<(String, DateTime<Utc>, Metrics)>,
        history: MetricsHistory,
    ) -> Result<(), StoreError> {
        if list.is_empty() {
            return Ok(());
        }
        let encoded: Vec<_> = list
            .into_iter()
            .map(|(id, at, m)| (id, at, to_json(&m)))
            .collect();
        beats(&self.pool, &encoded, history).await?;
        Ok(())
    }

    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError> {
        let rows: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT at, metrics FROM metrics_history WHERE node_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(big(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut samples = rows
            .into_iter()
            .map(|(at, m)| {
                Ok(MetricsSample {
                    at,
                    metrics: from_json(&m, "metrics sample")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        samples.reverse();
        Ok(samples)
    }

    async fn insert_task(&self, task: &Task) -> Result<(), StoreError> {
        let t = task;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO tasks (id, target, spec, created_by, created_at, max_parallel, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(to_json(&t.target))
        .bind(to_json(&t.spec))
        .bind(&t.created_by)
        .bind(t.created_at)
        .bind(t.max_parallel.map(i64::from))
        .bind(t.signature.as_ref().map(to_json))
        .execute(&mut *tx)
        .await?;
        let nodes: Vec<&str> = t.runs.iter().map(|r| r.node_id.as_str()).collect();
        let runs: Vec<String> = t.runs.iter().map(to_json).collect();
        let finals: Vec<bool> = t.runs.iter().map(|r| r.state.is_final()).collect();
        let states: Vec<&str> = t.runs.iter().map(|r| r.state.as_str()).collect();
        // All runs in one statement, in the task's node order (their `seq` keeps it).
        sqlx::query(
            "INSERT INTO task_runs (task_id, node_id, run, final, state)
             SELECT $1, r.node_id, r.run, r.final, r.state
             FROM unnest($2::text[], $3::text[], $4::boolean[], $5::text[]) WITH ORDINALITY
                  AS r(node_id, run, final, state, ord)
             ORDER BY r.ord",
        )
        .bind(&t.id)
        .bind(&nodes)
        .bind(&runs)
        .bind(&finals)
        .bind(&states)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn transition_runs(
        &self,
        task_id: &str,
        node_ids: Vec<String>,
        from: &'static [RunState],
        patch: RunPatch,
    ) -> Result<Vec<TaskRun>, StoreError> {
        // One statement for every node: `state = ANY(from)` is the guard, so a run moved meanwhile by
        // another writer is left alone; `||` merges the patch's fields into the run's JSON.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "UPDATE task_runs SET run = (run::jsonb || $3::jsonb)::text, state = $4, final = $5
             WHERE task_id = $1 AND node_id = ANY($2) AND state = ANY($6)
             RETURNING node_id, run",
        )
        .bind(task_id)
        .bind(&node_ids)
        .bind(patch_json(&patch))
        .bind(patch.state.as_str())
        .bind(patch.state.is_final())
        .bind(state_names(from))
        .fetch_all(&self.pool)
        .await?;
        runs_in_order_asked(&node_ids, rows)
    }

    async fn record_late_exit(
        &self,
        task_id: &str,
        node_id: &str,
        late: LateExit,
    ) -> Result<Option<TaskRun>, StoreError> {
        let patch = to_json(&serde_json::json!({ "late_exit": late }));
        let run: Option<String> = sqlx::query_scalar(
            "UPDATE task_runs SET run = (run::jsonb || $3::jsonb)::text
             WHERE task_id = $1 AND node_id = $2 AND (run::jsonb ->> 'late_exit') IS NULL
               AND (state IN ('Lost', 'Unreachable')
                    OR (state = 'Cancelled' AND run::jsonb ->> 'error' = $4))
             RETURNING run",
        )
        .bind(task_id)
        .bind(node_id)
        .bind(patch)
        .bind(super::SERVER_ONLY_CANCEL)
        .fetch_optional(&self.pool)
        .await?;
        run.map(|r| from_json(&r, "task run")).transpose()
    }

    async fn get_run(&self, task_id: &str, node_id: &str) -> Result<Option<TaskRun>, StoreError> {
        let run: Option<String> =
            sqlx::query_scalar("SELECT run FROM task_runs WHERE task_id = $1 AND node_id = $2")
                .bind(task_id)
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
        run.map(|r| from_json(&r, "task run")).transpose()
    }

    async fn runs_in_state(
        &self,
        task_id: &str,
        states: &'static [RunState],
        limit: usize,
    ) -> Result<Vec<TaskRun>, StoreError> {
        let runs: Vec<String> = sqlx::query_scalar(
            "SELECT run FROM task_runs WHERE task_id = $1 AND state = ANY($2) ORDER BY seq LIMIT $3",
        )
        .bind(task_id)
        .bind(state_names(states))
        .bind(big(limit))
        .fetch_all(&self.pool)
        .await?;
        runs.iter().map(|r| from_json(r, "task run")).collect()
    }

    async fn count_runs(
        &self,
        task_id: &str,
        states: &'static [RunState],
    ) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task_runs WHERE task_id = $1 AND state = ANY($2)",
        )
        .bind(task_id)
        .bind(state_names(states))
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn open_runs_for_node(
        &self,
        node_id: &str,
    ) -> Result<Vec<(String, TaskRun, TaskSpec)>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT t.id, t.spec, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
             WHERE r.node_id = $1 AND r.state IN ('Pending', 'Running') ORDER BY r.seq",
        )
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, spec, run)| {
                Ok((
                    id,
                    from_json(&run, "task run")?,
                    from_json(&spec, "task spec")?,
                ))
            })
            .collect()
    }

    async fn open_runs_silent_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT r.task_id, r.node_id FROM task_runs r JOIN nodes n ON n.id = r.node_id
             WHERE r.state IN ('Pending', 'Running') AND (n.last_seen IS NULL OR n.last_seen < $1)",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn delete_finished_tasks_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let done = sqlx::query(
            "DELETE FROM tasks WHERE created_at < $1 AND NOT EXISTS
               (SELECT 1 FROM task_runs r WHERE r.task_id = tasks.id AND r.state IN ('Pending', 'Running'))",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn trim_output(&self, max_bytes: u64) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(octet_length(data)), 0)::bigint FROM task_output",
        )
        .fetch_one(&mut *tx)
        .await?;
        let mut excess = unsigned(total).saturating_sub(max_bytes);
        if excess == 0 {
            return Ok(0);
        }
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.id, (SELECT coalesce(sum(octet_length(o.data)), 0)::bigint FROM task_output o WHERE o.task_id = t.id)
             FROM tasks t WHERE NOT EXISTS
               (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.state IN ('Pending', 'Running'))
             ORDER BY t.created_at, t.seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut trimmed = Vec::new();
        for (id, size) in sizes {
            if excess == 0 {
                break;
            }
            if size <= 0 {
                continue;
            }
            excess = excess.saturating_sub(unsigned(size));
            trimmed.push(id);
        }
        sqlx::query("DELETE FROM task_output WHERE task_id = ANY($1)")
            .bind(&trimmed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(trimmed.len())
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        load_task(&self.pool, id).await
    }

    async fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM tasks WHERE starts_with(id, $1) LIMIT $2")
                .bind(prefix)
                .bind(big(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn list_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM tasks ORDER BY created_at DESC, seq DESC LIMIT $1")
                .bind(big(limit))
                .fetch_all(&self.pool)
                .await?;
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            tasks.extend(load_task(&self.pool, &id).await?);
        }
        Ok(tasks)
    }

    async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
        pages::task_summaries(&self.pool, limit).await
    }

    async fn task_page(&self, id: &str, query: &RunQuery) -> Result<Option<TaskPage>, StoreError> {
        pages::task_page(&self.pool, id, query).await
    }

    async fn node_task_runs(
        &self,
        node_id: &str,
        limit: usize,
    ) -> Result<Vec<NodeTaskRun>, StoreError> {
        pages::node_task_runs(&self.pool, node_id, limit).await
    }

    async fn insert_output(
        &self,
        task_id: &str,
        chunks: Vec<OutputRecord>,
    ) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let nodes: Vec<&str> = chunks.iter().map(|c| c.node_id.as_str()).collect();
        let seqs: Vec<i64> = chunks.iter().map(|c| big(c.seq)).collect();
        let streams: Vec<i64> = chunks.iter().map(|c| i64::from(c.stream)).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        let mut tx = self.pool.begin().await?;
        // Readers page through a task's output by `row`: holding this lock from taking rows to commit
        // makes a task's rows visible in row order, so a reader's cursor never passes one still uncommitted.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_OUTPUT)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO task_output (task_id, node_id, seq, stream, data)
             SELECT $1, c.node_id, c.seq, c.stream, c.data
             FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bytea[]) WITH ORDINALITY
                  AS c(node_id, seq, stream, data, ord)
             ORDER BY c.ord
             ON CONFLICT (task_id, node_id, seq) DO NOTHING",
        )
        .bind(task_id)
        .bind(&nodes)
        .bind(&seqs)
        .bind(&streams)
        .bind(&data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn output(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT row, node_id, seq, stream, data FROM task_output
             WHERE task_id = $1 AND row > $2 ORDER BY row LIMIT $3",
        )
        .bind(task_id)
        .bind(after)
        .bind(big(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(row, node_id, seq, stream, data)| {
                (
                    row,
                    OutputRecord {
                        node_id,
                        seq: unsigned(seq),
                        stream: u8::try_from(stream).unwrap_or(u8::MAX),
                        data,
                    },
                )
            })
            .collect())
    }

    async fn output_within(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(i64, OutputRecord)>, StoreError> {
        // Sizes first (octet_length reads a stored value's header, not the value), then only the rows that
        // start within the budget.
        let rows: Vec<(i64, String, i64, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT o.row, o.node_id, o.seq, o.stream, o.data FROM task_output o
             JOIN (SELECT row, sum(octet_length(data)) OVER (ORDER BY row) - octet_length(data) AS before
                   FROM task_output WHERE task_id = $1 AND row > $2 ORDER BY row LIMIT $3) w
               ON w.row = o.row
             WHERE w.before < $4
             ORDER BY o.row",
        )
        .bind(task_id)
        .bind(after)
        .bind(big(limit))
        .bind(big(max_bytes.max(1)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(row, node_id, seq, stream, data)| {
                (
                    row,
                    OutputRecord {
                        node_id,
                        seq: unsigned(seq),
                        stream: u8::try_from(stream).unwrap_or(u8::MAX),
                        data,
                    },
                )
            })
            .collect())
    }

    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError> {
        let max: Option<i64> = sqlx::query_scalar(
            "SELECT max(seq) FROM task_output WHERE task_id = $1 AND node_id = $2",
        )
        .bind(task_id)
        .bind(node_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(max.map(|m| unsigned(m).saturating_add(1)).unwrap_or(0))
    }

    async fn insert_audits(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let at: Vec<DateTime<Utc>> = entries.iter().map(|e| e.at).collect();
        let actor: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
        let action: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        let target: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        let detail: Vec<String> = entries.iter().map(|e| to_json(&e.detail)).collect();
        // In the order given: ids follow it.
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail)
             SELECT e.at, e.actor, e.action, e.target, e.detail
             FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[])
                  WITH ORDINALITY AS e(at, actor, action, target, detail, ord)
             ORDER BY e.ord",
        )
        .bind(&at)
        .bind(&actor)
        .bind(&action)
        .bind(&target)
        .bind(&detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_manifest(
        &self,
        manifest: &Manifest,
        signature: Option<&Signature>,
        now: DateTime<Utc>,
    ) -> Result<PutManifest, StoreError> {
        let (m, json) = (manifest, to_json(manifest));
        let sig = signature.map(to_json);
        let mut tx = self.pool.begin().await?;
        // One writer per name (a new name has no row to lock yet).
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_MANIFEST)
            .bind(&m.name)
            .execute(&mut *tx)
            .await?;
        let current: Option<(i64, String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT generation, manifest, signature, signed_version FROM manifests WHERE name = $1",
        )
        .bind(&m.name)
        .fetch_optional(&mut *tx)
        .await?;
        let current = current
            .as_ref()
            .map(|(g, old, old_sig, signed)| CurrentManifest {
                generation: unsigned(*g),
                json: old.as_str(),
                sig: old_sig.as_deref(),
                signed_version: signed.map(unsigned),
            });
        let put = manifest_put(current, m, &json, sig.as_deref())?;
        if put.changed || put.resigned {
            sqlx::query(
                "INSERT INTO manifests (name, generation, manifest, updated_at, signature, signed_version)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET generation = $2, manifest = $3, updated_at = $4,
                     signature = $5, signed_version = $6",
            )
            .bind(&m.name)
            .bind(big(put.generation))
            .bind(&json)
            .bind(now)
            .bind(&sig)
            .bind(put.signed_version.map(big))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(put)
    }

    async fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        let rows: Vec<(i64, String, DateTime<Utc>, Option<String>)> = sqlx::query_as(
            "SELECT generation, manifest, updated_at, signature FROM manifests ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(g, m, at, sig)| {
                Ok(StoredManifest {
                    generation: unsigned(g),
                    updated_at: at,
                    manifest: from_json(&m, "manifest")?,
                    signature: sig
                        .map(|s| from_json(&s, "manifest signature"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn delete_manifest(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM manifests WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_desired(
        &self,
        node_id: &str,
    ) -> Result<Option<(DesiredState, String)>, StoreError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT state, hash FROM node_desired WHERE node_id = $1")
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(s, h)| Ok((from_json(&s, "desired state")?, h)))
            .transpose()
    }

    async fn desired_names_blob(&self, node_id: &str, sha256: &str) -> Result<bool, StoreError> {
        // jsonb containment: some element of `resources` has `file.sha256` equal to the content's.
        let wanted = serde_json::json!({ "resources": [{ "file": { "sha256": sha256 } }] });
        let (named,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM node_desired WHERE node_id = $1 AND state::jsonb @> $2::jsonb)",
        )
        .bind(node_id)
        .bind(wanted.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(named)
    }

    async fn desired_versions(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        let rows: Vec<(String, Option<i64>, String)> = sqlx::query_as(
            "SELECT node_id, (state::jsonb ->> 'generation')::bigint, hash FROM node_desired",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, g, hash)| (id, super::codec::generation(g), hash))
            .collect())
    }

    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let json = to_json(state);
        let previous = big(state.generation.saturating_sub(1));
        let done = if previous == 0 {
            sqlx::query(
                "INSERT INTO node_desired (node_id, state, hash) VALUES ($1, $2, $3)
                 ON CONFLICT (node_id) DO NOTHING",
            )
            .bind(node_id)
            .bind(&json)
            .bind(hash)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query(
                "UPDATE node_desired SET state = $2, hash = $3
                 WHERE node_id = $1 AND (state::jsonb ->> 'generation')::numeric = $4",
            )
            .bind(node_id)
            .bind(&json)
            .bind(hash)
            .bind(previous)
            .execute(&self.pool)
            .await?
        };
        Ok(done.rows_affected() > 0)
    }

    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let kept = sqlx::query(
            "INSERT INTO node_convergence (node_id, report) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET report = EXCLUDED.report
             WHERE (node_convergence.report::jsonb ->> 'observed_generation')::numeric
                   <= (EXCLUDED.report::jsonb ->> 'observed_generation')::numeric",
        )
        .bind(node_id)
        .bind(to_json(report))
        .execute(&mut *tx)
        .await?;
        if kept.rows_affected() > 0 {
            // The report's resource states replace the node's (the row lock taken above orders
            // concurrent reports of one node).
            sqlx::query("DELETE FROM node_resources WHERE node_id = $1")
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
            let r = &report.resources;
            let manifests: Vec<&str> = r.iter().map(|r| r.manifest.as_str()).collect();
            let ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
            let states: Vec<&str> = r.iter().map(|r| r.state.as_str()).collect();
            sqlx::query(
                "INSERT INTO node_resources (node_id, pos, manifest, resource, state)
                 SELECT $1, r.pos - 1, r.manifest, r.resource, r.state
                 FROM UNNEST($2::text[], $3::text[], $4::text[])
                      WITH ORDINALITY r(manifest, resource, state, pos)",
            )
            .bind(node_id)
            .bind(&manifests)
            .bind(&ids)
            .bind(&states)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError> {
        let report: Option<String> =
            sqlx::query_scalar("SELECT report FROM node_convergence WHERE node_id = $1")
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
        report
            .map(|r| from_json(&r, "convergence report"))
            .transpose()
    }

    async fn convergence_of(
        &self,
        ids: Option<&[String]>,
    ) -> Result<Vec<(String, String, u64, Option<NodeConvergence>)>, StoreError> {
        let rows: Vec<(String, String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT n.id, n.name, (d.state::jsonb ->> 'generation')::bigint, v.report FROM nodes n
             LEFT JOIN node_desired d ON d.node_id = n.id
             LEFT JOIN node_convergence v ON v.node_id = n.id
             WHERE $1::text[] IS NULL OR n.id = ANY($1) ORDER BY n.name",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        super::codec::decode_convergence(rows)
    }

    async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, StoreError> {
        pages::manifest_counts(&self.pool).await
    }

    async fn convergence_page(
        &self,
        query: &ConvergenceQuery,
    ) -> Result<(Vec<ConvergenceRow>, usize), StoreError> {
        pages::convergence_page(&self.pool, query).await
    }

    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO blobs (sha256, data) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(sha256)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT data FROM blobs WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = filter;
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit
             WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
               AND ($3::text IS NULL OR strpos(target, $3) > 0)
               AND ($4::timestamptz IS NULL OR at >= $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(&f.actor)
        .bind(&f.action)
        .bind(&f.target)
        .bind(f.since)
        .bind(big(f.limit))
        .fetch_all(&self.pool)
        .await?;
        let entries = rows.iter().map(|r| {
            let detail: String = r.try_get("detail")?;
            Ok(AuditEntry {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                detail: from_json(&detail, "audit detail")?,
            })
        });
        Ok(readable("audit entry", entries))
    }

    async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        counts::counts(&self.pool).await
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use sqlx::postgres::PgSslMode;

    #[test]
    fn tls_is_used_only_when_the_url_asks_and_a_root_certificate_is_checked() {
        if std::env::var_os("PGSSLMODE").is_some() {
            return;
        }
        let mode = |url: &str| connect_options(url).unwrap().get_ssl_mode();
        // No sslmode: plain, not libpq's silent `prefer`.
        assert!(matches!(mode("postgres://u@h/db"), PgSslMode::Disable));
        assert!(matches!(
            mode("postgres://u@h/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@h/db?sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
        // As libpq: `require` with a root certificate checks the chain.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        let url = format!(
            "postgres://u@h/db?sslmode=require&sslrootcert={}",
            ca.display()
        );
        assert!(matches!(mode(&url), PgSslMode::VerifyCa));
        let missing = format!(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert={}.x",
            ca.display()
        );
        let err = connect_options(&missing).unwrap_err().to_string();
        assert!(err.contains("sslrootcert="), "{err}");
    }

    #[test]
    fn query_parameters_are_read_decoded() {
        let url = "postgres://u:p%40ss@h/db?application_name=x&ssl-root-cert=%2Fetc%2Fca%20b.pem";
        assert_eq!(
            query_param(url, SSLROOTCERT_KEYS).as_deref(),
            Some("/etc/ca b.pem")
        );
        assert_eq!(query_param(url, SSLMODE_KEYS), None);
        assert_eq!(query_param("postgres://u@h/db", SSLMODE_KEYS), None);
    }
}
