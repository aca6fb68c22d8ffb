//! The statements both backends run as one text: written once, in PostgreSQL's spelling (`$1`, `TRUE`,
//! `NOT revoked`, `ON CONFLICT ... DO NOTHING`, `count(*) FILTER`), which the bundled SQLite reads too once
//! its placeholders are `?1` (numbered parameters, the same numbers). `Sql::sqlite` is made from `Sql::pg`
//! at compile time. A statement whose dialects differ (arrays and `unnest`, JSON operators, `rowid`
//! against `seq`, row locks) stays in its backend, with a note saying why. Each shared statement is
//! prepared on both backends by the tests (here, and `conformance` for PostgreSQL).

use std::sync::LazyLock;

use super::codec::rank_sql;

/// One statement in each backend's spelling.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sql {
    /// As PostgreSQL takes it (`$1`).
    pub pg: &'static str,
    /// As SQLite takes it (`?1`).
    pub sqlite: &'static str,
}

/// SQLite's spelling of `pg`, byte for byte the same but for `$N` outside quotes, which reads `?N`.
/// `N` is `pg.len()`. Evaluated at compile time (by `shared!`), where a `?` outside quotes (which SQLite
/// would take for a parameter of its own) fails the build.
pub(super) const fn sqlite_bytes<const N: usize>(pg: &str) -> [u8; N] {
    let pg = pg.as_bytes();
    let mut out = [0u8; N];
    let (mut i, mut quoted) = (0, false);
    while i < N {
        let b = pg[i];
        if b == b'\'' {
            quoted = !quoted;
        }
        assert!(
            quoted || b != b'?',
            "a shared statement has a `?` outside quotes"
        );
        let placeholder = !quoted && b == b'$' && i + 1 < N && pg[i + 1].is_ascii_digit();
        out[i] = if placeholder { b'?' } else { b };
        i += 1;
    }
    out
}

/// Text known to be UTF-8 (ASCII `$` replaced by ASCII `?` in a `&str`), at compile time.
pub(super) const fn utf8(bytes: &'static [u8]) -> &'static str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => panic!("a shared statement is not UTF-8"),
    }
}

/// A `Sql` from a statement in PostgreSQL's spelling (a constant expression).
macro_rules! shared {
    ($pg:expr) => {{
        const PG: &str = $pg;
        const BYTES: [u8; PG.len()] = $crate::store::sql::sqlite_bytes::<{ PG.len() }>(PG);
        const SQLITE: &[u8] = &BYTES;
        $crate::store::sql::Sql {
            pg: PG,
            sqlite: $crate::store::sql::utf8(SQLITE),
        }
    }};
}

/// Declares shared statements, and (for tests) `ALL`, every one of them.
macro_rules! statements {
    ($($(#[$doc:meta])* $name:ident = $pg:expr;)*) => {
        $($(#[$doc])* pub(in crate::store) const $name: super::Sql = shared!($pg);)*
        #[cfg(test)]
        pub(in crate::store) const ALL: &[super::Sql] = &[$($name),*];
    };
}

/// A node's columns, in `RawNode`'s order (a literal, for `concat!`).
macro_rules! node_columns {
    () => {
        "id, name, transport, labels, ip, registered_at, last_seen, heartbeat_interval_ms, \
         capabilities, metrics, node_token_sha256, reported_labels, enrolled_labels"
    };
}
pub(super) use node_columns;

/// A node's columns, for statements built at run time.
pub(super) const NODE_COLUMNS: &str = node_columns!();

/// A task's columns, as `TaskText` reads them.
macro_rules! task_columns {
    () => {
        "id, target, spec, created_by, created_at, max_parallel, signature"
    };
}

/// A task's columns, for statements built at run time.
pub(super) const TASK_COLUMNS: &str = task_columns!();

pub(super) mod tokens {
    statements! {
        INSERT = "INSERT INTO join_tokens
                    (id, secret_sha256, created_at, expires_at, max_uses, uses, labels, revoked)
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        LIST = "SELECT * FROM join_tokens ORDER BY created_at";
        BY_ID = "SELECT * FROM join_tokens WHERE id = $1";
        REVOKE = "UPDATE join_tokens SET revoked = TRUE WHERE id = $1";
    }
}

pub(super) mod operators {
    statements! {
        /// A new operator, or one replacing a revoked one of the same name (none when an active one has it).
        PUT = "INSERT INTO operators (name, role, token_sha256, created_at, created_by, revoked)
               VALUES ($1, $2, $3, $4, $5, FALSE)
               ON CONFLICT (name) DO UPDATE SET role = $2, token_sha256 = $3, created_at = $4,
                   created_by = $5, revoked = FALSE
               WHERE operators.revoked";
        LIST = "SELECT * FROM operators ORDER BY name";
        BY_TOKEN = "SELECT * FROM operators WHERE token_sha256 = $1 AND NOT revoked";
        REVOKE = "UPDATE operators SET revoked = TRUE WHERE name = $1 AND NOT revoked";
    }
}

pub(super) mod nodes {
    statements! {
        INSERT = concat!(
            "INSERT INTO nodes (", node_columns!(), ")
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        /// What `modify_node` writes back: everything but the id, the registration and the liveness.
        UPDATE = "UPDATE nodes SET name = $2, labels = $3, ip = $4, heartbeat_interval_ms = $5,
                    capabilities = $6, node_token_sha256 = $7, reported_labels = $8, enrolled_labels = $9
                  WHERE id = $1";
        BY_ID = concat!("SELECT ", node_columns!(), " FROM nodes WHERE id = $1");
        BY_NAME = concat!("SELECT ", node_columns!(), " FROM nodes WHERE name = $1");
        BY_TOKEN = concat!("SELECT ", node_columns!(), " FROM nodes WHERE node_token_sha256 = $1");
        LIST = concat!("SELECT ", node_columns!(), " FROM nodes ORDER BY name");
        DELETE = "DELETE FROM nodes WHERE id = $1";
        /// The newest samples first.
        METRICS_HISTORY = "SELECT at, metrics FROM metrics_history WHERE node_id = $1
                           ORDER BY seq DESC LIMIT $2";
    }
}

pub(super) mod tasks {
    statements! {
        INSERT = "INSERT INTO tasks (id, target, spec, created_by, created_at, max_parallel, signature)
                  VALUES ($1, $2, $3, $4, $5, $6, $7)";
        /// A task's row without its id (`load_task`).
        LOAD = "SELECT target, spec, created_by, created_at, max_parallel, signature
                FROM tasks WHERE id = $1";
        /// A task's row as `TaskText` reads it.
        BY_ID = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");
        RUN = "SELECT run FROM task_runs WHERE task_id = $1 AND node_id = $2";
        RUNS_BY_STATE = "SELECT state, count(*) FROM task_runs WHERE task_id = $1 GROUP BY state";
        OPEN_RUNS_SILENT_SINCE = "SELECT r.task_id, r.node_id
                                  FROM task_runs r JOIN nodes n ON n.id = r.node_id
                                  WHERE r.state IN ('Pending', 'Running')
                                    AND (n.last_seen IS NULL OR n.last_seen < $1)";
        DELETE_FINISHED_BEFORE = "DELETE FROM tasks WHERE created_at < $1 AND NOT EXISTS
                                    (SELECT 1 FROM task_runs r
                                     WHERE r.task_id = tasks.id AND r.state IN ('Pending', 'Running'))";
    }
}

pub(super) mod output {
    statements! {
        /// A task's output rows after a cursor, in arrival order.
        AFTER = "SELECT row, node_id, seq, stream, data FROM task_output
                 WHERE task_id = $1 AND row > $2 ORDER BY row LIMIT $3";
        MAX_SEQ = "SELECT max(seq) FROM task_output WHERE task_id = $1 AND node_id = $2";
    }
}

pub(super) mod manifests {
    statements! {
        CURRENT = "SELECT generation, manifest, signature, signed_version FROM manifests WHERE name = $1";
        PUT = "INSERT INTO manifests (name, generation, manifest, updated_at, signature, signed_version)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (name) DO UPDATE SET generation = $2, manifest = $3, updated_at = $4,
                   signature = $5, signed_version = $6";
        LIST = "SELECT generation, manifest, updated_at, signature FROM manifests ORDER BY name";
        DELETE = "DELETE FROM manifests WHERE name = $1";
    }

    /// Resources by state, and nodes by the worst state of their resources of each manifest (in the
    /// index's order: manifest, then node), as rows of (kind, manifest, rank, count) for
    /// `codec::group_manifest_counts`. No parameters; made once, the ranks being `RESOURCE_STATES`.
    pub(in crate::store) static COUNTS: super::LazyLock<String> = super::LazyLock::new(|| {
        format!(
            "SELECT 0, manifest, rank, count(*)
                FROM (SELECT manifest, {rank} AS rank FROM node_resources) r GROUP BY manifest, rank
             UNION ALL
             SELECT 1, manifest, worst, count(*)
                FROM (SELECT manifest, max({rank}) AS worst FROM node_resources GROUP BY manifest, node_id) w
                GROUP BY manifest, worst",
            rank = super::rank_sql()
        )
    });
}

pub(super) mod desired {
    statements! {
        GET = "SELECT state, hash FROM node_desired WHERE node_id = $1";
        /// A node's first desired state (none stored yet).
        CREATE = "INSERT INTO node_desired (node_id, state, hash) VALUES ($1, $2, $3)
                  ON CONFLICT (node_id) DO NOTHING";
    }
}

pub(super) mod convergence {
    statements! {
        GET = "SELECT report FROM node_convergence WHERE node_id = $1";
        /// A node's resource states, before those of its newly kept report replace them.
        CLEAR_RESOURCES = "DELETE FROM node_resources WHERE node_id = $1";
    }
}

pub(super) mod blobs {
    statements! {
        /// Storing content twice is harmless: the second is ignored.
        PUT = "INSERT INTO blobs (sha256, data) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        GET = "SELECT data FROM blobs WHERE sha256 = $1";
    }
}

/// What `/metrics` counts, each an aggregate.
pub(super) mod counts {
    statements! {
        NODES = "SELECT id, last_seen, heartbeat_interval_ms FROM nodes";
        RUNS_BY_STATE = "SELECT state, count(*) FROM task_runs GROUP BY state";
        /// A task's state as `Task::state` derives it from its runs: Running until every run is final,
        /// then Succeeded if all succeeded, Cancelled if all were cancelled, else Failed.
        TASKS_BY_STATE = "SELECT task_state, count(*) FROM (
            SELECT CASE
                WHEN count(*) FILTER (WHERE r.state IN ('Pending', 'Running')) > 0 THEN 'Running'
                WHEN count(*) FILTER (WHERE r.state <> 'Succeeded') = 0 THEN 'Succeeded'
                WHEN count(*) FILTER (WHERE r.state <> 'Cancelled') = 0 THEN 'Cancelled'
                ELSE 'Failed' END AS task_state
            FROM tasks t LEFT JOIN task_runs r ON r.task_id = t.id
            GROUP BY t.id) s
          GROUP BY task_state";
        MANIFESTS = "SELECT count(*) FROM manifests";
        RESOURCES_BY_STATE = "SELECT state, count(*) FROM node_resources GROUP BY state";
    }
}

pub(super) mod rollouts {
    statements! {
        GET = "SELECT body FROM rollouts WHERE name = $1";
        PUT = "INSERT INTO rollouts (name, body) VALUES ($1, $2)
               ON CONFLICT (name) DO UPDATE SET body = $2";
        LIST = "SELECT body FROM rollouts ORDER BY name";
        DELETE = "DELETE FROM rollouts WHERE name = $1";
        REVISION_PUT = "INSERT INTO manifest_revisions (name, generation, body) VALUES ($1, $2, $3)
                        ON CONFLICT (name, generation) DO NOTHING";
        REVISION_GET = "SELECT body FROM manifest_revisions WHERE name = $1 AND generation = $2";
        REVISIONS = "SELECT body FROM manifest_revisions WHERE name = $1
                     ORDER BY generation DESC LIMIT $2";
        /// Keeps a manifest's newest revisions: those from generation $2 on.
        REVISIONS_TRIM = "DELETE FROM manifest_revisions WHERE name = $1 AND generation < $2";
    }
}

/// Every shared statement, for the tests that prepare each on both backends.
#[cfg(test)]
pub(super) fn every() -> Vec<Sql> {
    let lists: [&[Sql]; 11] = [
        tokens::ALL,
        operators::ALL,
        nodes::ALL,
        tasks::ALL,
        output::ALL,
        manifests::ALL,
        desired::ALL,
        convergence::ALL,
        blobs::ALL,
        counts::ALL,
        rollouts::ALL,
    ];
    lists.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_reads_numbered_placeholders_and_nothing_inside_quotes_changes() {
        const S: Sql = shared!("SELECT $1, '$2 $.a', x$y, $12 FROM t WHERE a = $3");
        assert_eq!(
            S.sqlite,
            "SELECT ?1, '$2 $.a', x$y, ?12 FROM t WHERE a = ?3"
        );
        assert_eq!(S.pg, "SELECT $1, '$2 $.a', x$y, $12 FROM t WHERE a = $3");
    }

    #[test]
    fn every_shared_statement_prepares_on_sqlite() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::sqlite::migrate(&mut conn).unwrap();
        for sql in every() {
            if let Err(e) = conn.prepare(sql.sqlite) {
                panic!("{}: {e}", sql.sqlite);
            }
        }
        conn.prepare(&manifests::COUNTS).unwrap();
    }
}
