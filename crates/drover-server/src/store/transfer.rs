//! `drover migrate`: copies a SQLite store's rows into an empty PostgreSQL database, keeping every id and
//! order column (output cursors, audit ids, the order of tasks and of a task's runs), so a server started
//! on it sees the same fleet. One PostgreSQL transaction: a failed copy leaves the database empty.

use std::path::Path;

use chrono::{DateTime, Datelike, Utc};
use rusqlite::types::{Type, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sqlx::{PgConnection, Row};

use super::StoreError;
use super::postgres::{LOCK_MIGRATE, PgStore};

/// Rows copied per statement at most, and bytes (of text and binary values) a batch stops after.
const BATCH_ROWS: i64 = 1000;
const BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(
        "no drover store at {0} (is it a server's data dir? `drover migrate` copies a stopped server's drover.db)"
    )]
    NoSource(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the PostgreSQL database is not empty (it has rows in {}): drover migrate copies into an empty database only; to start over, drop it and create it again (dropdb drover; createdb --owner drover drover)",
        .0.join(", ")
    )]
    TargetNotEmpty(Vec<&'static str>),
    #[error("cannot copy {table}.{column} (SQLite row {rowid}): {reason}")]
    Value {
        table: &'static str,
        column: &'static str,
        rowid: i64,
        reason: ValueError,
    },
}

/// Why one SQLite value cannot be copied (`TransferError::Value` says where it is).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("text that is not UTF-8")]
    NotUtf8,
    #[error("expected {expected}, found {found:?}")]
    Type { expected: &'static str, found: Type },
    #[error("{0:?} is not an RFC 3339 time")]
    NotATime(String),
}

impl From<rusqlite::Error> for TransferError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<sqlx::Error> for TransferError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// How a column is read from SQLite and bound for PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    /// SQLite's 0/1.
    Bool,
    /// RFC 3339 text.
    Time,
    /// A join token's time: one the SQLite store cannot read counts as the Unix epoch there (the token
    /// reads as expired), and so it does here.
    TokenTime,
    Bytes,
}

struct Table {
    name: &'static str,
    /// Columns with the same name on both sides.
    columns: &'static [(&'static str, Kind)],
    /// PostgreSQL's explicit order column that SQLite keeps as its implicit `rowid`.
    rowid_as: Option<&'static str>,
    /// The identity column whose sequence must continue after the copied rows.
    identity: Option<&'static str>,
}

use Kind::*;

/// Every table of the store, parents before the rows that refer to them.
const TABLES: &[Table] = &[
    Table {
        name: "join_tokens",
        columns: &[
            ("id", Text),
            ("secret_sha256", Text),
            ("created_at", TokenTime),
            ("expires_at", TokenTime),
            ("max_uses", Int),
            ("uses", Int),
            ("labels", Text),
            ("revoked", Bool),
        ],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "operators",
        columns: &[
            ("name", Text),
            ("role", Text),
            ("token_sha256", Text),
            ("created_at", Time),
            ("created_by", Text),
            ("revoked", Bool),
        ],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "nodes",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("transport", Text),
            ("labels", Text),
            ("ip", Text),
            ("registered_at", Time),
            ("last_seen", Time),
            ("heartbeat_interval_ms", Int),
            ("capabilities", Text),
            ("metrics", Text),
            ("node_token_sha256", Text),
            ("reported_labels", Text),
            ("enrolled_labels", Text),
        ],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "metrics_history",
        columns: &[
            ("node_id", Text),
            ("seq", Int),
            ("at", Time),
            ("metrics", Text),
        ],
        rowid_as: None,
        identity: Some("seq"),
    },
    Table {
        name: "tasks",
        columns: &[
            ("id", Text),
            ("target", Text),
            ("spec", Text),
            ("created_by", Text),
            ("created_at", Time),
            ("max_parallel", Int),
            ("signature", Text),
        ],
        rowid_as: Some("seq"),
        identity: Some("seq"),
    },
    Table {
        name: "task_runs",
        columns: &[
            ("task_id", Text),
            ("node_id", Text),
            ("run", Text),
            ("final", Bool),
            ("state", Text),
        ],
        rowid_as: Some("seq"),
        identity: Some("seq"),
    },
    Table {
        name: "task_output",
        columns: &[
            ("row", Int),
            ("task_id", Text),
            ("node_id", Text),
            ("seq", Int),
            ("stream", Int),
            ("data", Bytes),
        ],
        rowid_as: None,
        identity: Some("row"),
    },
    Table {
        name: "audit",
        columns: &[
            ("id", Int),
            ("at", Time),
            ("actor", Text),
            ("action", Text),
            ("target", Text),
            ("detail", Text),
        ],
        rowid_as: None,
        identity: Some("id"),
    },
    Table {
        name: "manifests",
        columns: &[
            ("name", Text),
            ("generation", Int),
            ("manifest", Text),
            ("updated_at", Time),
            ("signature", Text),
            ("signed_version", Int),
        ],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "manifest_revisions",
        columns: &[("name", Text), ("generation", Int), ("body", Text)],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "rollouts",
        columns: &[("name", Text), ("body", Text)],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "node_desired",
        columns: &[("node_id", Text), ("state", Text), ("hash", Text)],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "node_convergence",
        columns: &[("node_id", Text), ("report", Text)],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "node_resources",
        columns: &[
            ("node_id", Text),
            ("pos", Int),
            ("manifest", Text),
            ("resource", Text),
            ("state", Text),
        ],
        rowid_as: None,
        identity: None,
    },
    Table {
        name: "blobs",
        columns: &[("sha256", Text), ("data", Bytes)],
        rowid_as: None,
        identity: None,
    },
];

/// One column of a batch, as the array PostgreSQL unnests.
enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn new(kind: Kind) -> Self {
        match kind {
            Text => Self::Text(Vec::new()),
            Int => Self::Int(Vec::new()),
            Bool => Self::Bool(Vec::new()),
            Time | TokenTime => Self::Time(Vec::new()),
            Bytes => Self::Bytes(Vec::new()),
        }
    }

    fn pg_array(&self) -> &'static str {
        match self {
            Self::Text(_) => "text[]",
            Self::Int(_) => "bigint[]",
            Self::Bool(_) => "boolean[]",
            Self::Time(_) => "timestamptz[]",
            Self::Bytes(_) => "bytea[]",
        }
    }

    /// Appends one SQLite value; returns the bytes it holds (for the batch's size).
    fn push(&mut self, kind: Kind, value: ValueRef<'_>) -> Result<usize, ValueError> {
        let wrong = |expected, v: ValueRef<'_>| ValueError::Type {
            expected,
            found: v.data_type(),
        };
        let text = |v: ValueRef<'_>| match v {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => String::from_utf8(t.to_vec())
                .map(Some)
                .map_err(|_| ValueError::NotUtf8),
            other => Err(wrong("text", other)),
        };
        let int = |v: ValueRef<'_>| match v {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            other => Err(wrong("an integer", other)),
        };
        match self {
            Self::Text(col) => {
                let t = text(value)?;
                let n = t.as_ref().map_or(0, String::len);
                col.push(t);
                Ok(n)
            }
            Self::Int(col) => {
                col.push(int(value)?);
                Ok(8)
            }
            Self::Bool(col) => {
                col.push(int(value)?.map(|i| i != 0));
                Ok(1)
            }
            Self::Time(col) => {
                let t = match text(value)? {
                    None => None,
                    Some(s) => match (s.parse::<DateTime<Utc>>(), kind) {
                        (Ok(t), _) if t.year() <= 9999 => Some(t),
                        (_, TokenTime) => Some(DateTime::<Utc>::UNIX_EPOCH),
                        _ => return Err(ValueError::NotATime(s)),
                    },
                };
                col.push(t);
                Ok(8)
            }
            Self::Bytes(col) => {
                let b = match value {
                    ValueRef::Null => None,
                    ValueRef::Blob(b) | ValueRef::Text(b) => Some(b.to_vec()),
                    other => return Err(wrong("bytes", other)),
                };
                let n = b.as_ref().map_or(0, Vec::len);
                col.push(b);
                Ok(n)
            }
        }
    }

    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Self::Text(v) => q.bind(v),
            Self::Int(v) => q.bind(v),
            Self::Bool(v) => q.bind(v),
            Self::Time(v) => q.bind(v),
            Self::Bytes(v) => q.bind(v),
        }
    }
}

/// Rows copied, per table, in copy order.
pub type Counts = Vec<(&'static str, u64)>;

/// Copies the SQLite store at `db` into the empty PostgreSQL database at `url` (its schema made first).
/// The SQLite file is brought to this version's schema first, as a server start would.
pub async fn sqlite_to_postgres(db: &Path, url: &str) -> Result<Counts, TransferError> {
    let missing = || TransferError::NoSource(db.display().to_string());
    if !db.is_file() {
        return Err(missing());
    }
    let mut source = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|_| missing())?;
    source.busy_timeout(std::time::Duration::from_secs(5))?;
    super::sqlite::migrate(&mut source)?;
    // One snapshot for the whole copy.
    source.execute_batch("BEGIN")?;

    let target = PgStore::connect(url).await?;
    let mut tx = target.pool().begin().await?;
    // The lock migrations take: a server started on the database meanwhile waits for the copy.
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_MIGRATE)
        .execute(&mut *tx)
        .await?;
    let mut not_empty = Vec::new();
    for table in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", table.name);
        // Built only from the constant table list above.
        let any: bool = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if any {
            not_empty.push(table.name);
        }
    }
    if !not_empty.is_empty() {
        return Err(TransferError::TargetNotEmpty(not_empty));
    }
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push((table.name, copy_table(&source, &mut tx, table).await?));
    }
    tx.commit().await?;
    source.execute_batch("COMMIT")?;
    Ok(counts)
}

async fn copy_table(
    source: &Connection,
    tx: &mut PgConnection,
    table: &'static Table,
) -> Result<u64, TransferError> {
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
    let select = format!(
        "SELECT rowid, {} FROM {} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        names.join(", "),
        table.name
    );
    let mut pg_names = names.clone();
    pg_names.extend(table.rowid_as);
    let mut kinds: Vec<Kind> = table.columns.iter().map(|(_, k)| *k).collect();
    kinds.extend(table.rowid_as.map(|_| Int));
    let arrays: Vec<String> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| format!("${}::{}", i + 1, Column::new(*k).pg_array()))
        .collect();
    let insert = format!(
        "INSERT INTO {} ({}) {} SELECT * FROM unnest({})",
        table.name,
        pg_names.join(", "),
        if table.identity.is_some() {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        },
        arrays.join(", ")
    );
    let mut after = i64::MIN;
    let mut copied = 0u64;
    loop {
        let (batch, rows, last) = read_batch(source, &select, table, &kinds, after)?;
        if rows == 0 {
            break;
        }
        // Built only from the constant table list above.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()));
        for column in &batch {
            q = column.bind(q);
        }
        q.execute(&mut *tx).await?;
        copied += rows;
        after = last;
    }
    if let Some(col) = table.identity {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{t}', '{col}'), (SELECT COALESCE(MAX({col}), 0) + 1 FROM {t}), false)",
            t = table.name
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    }
    Ok(copied)
}

/// The rows after `after` (a rowid), up to a batch's rows or bytes: the columns, how many rows, the last rowid.
fn read_batch(
    source: &Connection,
    select: &str,
    table: &'static Table,
    kinds: &[Kind],
    after: i64,
) -> Result<(Vec<Column>, u64, i64), TransferError> {
    let mut columns: Vec<Column> = kinds.iter().map(|k| Column::new(*k)).collect();
    let mut stmt = source.prepare_cached(select)?;
    let mut rows = stmt.query(rusqlite::params![after, BATCH_ROWS])?;
    let (mut n, mut last, mut bytes) = (0u64, after, 0usize);
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        for (i, (column, kind)) in columns.iter_mut().zip(kinds).enumerate() {
            let value = match table.columns.get(i) {
                Some(_) => row.get_ref(i + 1)?,
                // The order column PostgreSQL keeps explicitly.
                None => ValueRef::Integer(rowid),
            };
            bytes = bytes.saturating_add(column.push(*kind, value).map_err(|reason| {
                TransferError::Value {
                    table: table.name,
                    column: table.columns.get(i).map_or("rowid", |(name, _)| name),
                    rowid,
                    reason,
                }
            })?);
        }
        n += 1;
        last = rowid;
        if bytes >= BATCH_BYTES {
            break;
        }
    }
    Ok((columns, n, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_cannot_be_copied_says_why() {
        let why = |kind, value| Column::new(kind).push(kind, value).unwrap_err().to_string();
        assert_eq!(
            why(Time, ValueRef::Text(b"yesterday")),
            "\"yesterday\" is not an RFC 3339 time"
        );
        assert_eq!(
            why(Int, ValueRef::Text(b"1")),
            "expected an integer, found Text"
        );
        assert_eq!(
            why(Bytes, ValueRef::Integer(1)),
            "expected bytes, found Integer"
        );
        assert_eq!(why(Text, ValueRef::Text(b"\xff")), "text that is not UTF-8");
        // A join token's unreadable time is the epoch, as the SQLite store reads it.
        assert!(
            Column::new(TokenTime)
                .push(TokenTime, ValueRef::Text(b"never"))
                .is_ok()
        );
    }
}
