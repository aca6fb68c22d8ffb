//! The PostgreSQL store, for a fleet that outgrows one machine: the same records as SQLite's, in a
//! database several server replicas can share. Every write is one statement or one transaction, and the
//! writes many nodes cause (heartbeats, output, run transitions) are one statement over arrays.

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
mod rollouts;
mod schema;
mod tasks;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use drover_types::manifest::{DesiredState, Manifest, NodeConvergence, StoredManifest};
use drover_types::operator::OperatorInfo;
use drover_types::rollout::Rollout;
use drover_types::signing::Signature;
use drover_types::task::{AuditEntry, LateExit, RunState, Task, TaskRun};
use drover_types::{
    Metrics, MetricsSample, Transport,
    token::{JoinTokenInfo, TokenRefusal},
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, Postgres, Row};

use super::codec::{
    CurrentManifest, from_json, manifest_put, patch_json, readable, runs_in_order_asked, to_json,
};
use super::prelude::*;
use super::sql::{self, node_columns};
use super::{
    AuditFilter, ConvergencePage, ConvergenceQuery, ConvergenceRow, DesiredVersion, FleetCounts,
    Heartbeat, JoinTokenRecord, ManifestCounts, MetricsHistory, NodeChange, NodeQuery, NodeRecord,
    NodeRecordPage, NodeTaskRun, OpenRun, OperatorRecord, OutputRecord, PutManifest, RunPatch,
    RunQuery, Sealed, SilentRun, StoreError, StoredDesired, StoredOutput, TaskPage, TaskSummary,
    TokenUse,
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
    let (l_ids, l_ats, l_metrics) = latest_beats(beats);
    // Per backend: a batch as statements over arrays; SQLite's writer runs `beat` for each node.
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
        record_history(&mut tx, beats, &l_ids, history).await?;
    }
    tx.commit().await?;
    Ok(updated)
}

/// Each node's latest beat of a batch as three columns, in node id order.
fn latest_beats(
    beats: &[(String, DateTime<Utc>, String)],
) -> (Vec<&str>, Vec<DateTime<Utc>>, Vec<&str>) {
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
    latest
        .into_iter()
        .fold(Default::default(), |mut acc, (i, a, m)| {
            acc.0.push(i);
            acc.1.push(a);
            acc.2.push(m);
            acc
        })
}

/// Inside the heartbeats' transaction: appends the beats `history` samples to the metrics history
/// and prunes each node's history to its size.
async fn record_history(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    beats: &[(String, DateTime<Utc>, String)],
    l_ids: &[&str],
    history: MetricsHistory,
) -> Result<(), StoreError> {
    let mut newest: std::collections::HashMap<String, DateTime<Utc>> = if history.every.is_zero() {
        Default::default()
    } else {
        sqlx::query_as(
            "SELECT DISTINCT ON (node_id) node_id, at FROM metrics_history
                 WHERE node_id = ANY($1) ORDER BY node_id, seq DESC",
        )
        .bind(l_ids)
        .fetch_all(&mut **tx)
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
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM metrics_history WHERE seq IN (
           SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY node_id ORDER BY seq DESC) AS n
                            FROM metrics_history WHERE node_id = ANY($1)) h
           WHERE h.n > $2)",
    )
    .bind(&pruned)
    .bind(big(history.keep))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn load_task<'e, E>(db: E, id: &str) -> Result<Option<Task>, StoreError>
where
    E: Executor<'e, Database = Postgres> + Copy,
{
    let row = sqlx::query(sql::tasks::LOAD.pg)
        .bind(id)
        .fetch_optional(db)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    // Per backend: PostgreSQL keeps a task's run order in `seq`, SQLite in its implicit `rowid`.
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
