//! The PostgreSQL schema, as versioned migrations.
//!
//! It holds what SQLite's schema holds after all its migrations (store/sqlite/schema.rs), in PostgreSQL's
//! types: times are `timestamptz` (microseconds), flags `boolean`, bytes `bytea`; JSON stays text, read
//! as `jsonb` where a statement looks inside it. SQLite's implicit `rowid` order (a task's runs in node
//! order, tasks created in the same instant) is an explicit identity column `seq`.

/// Versioned schema: entry N moves the database from version N to N+1 (kept in `drover_schema`). Never
/// edit a released entry.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    max_uses BIGINT,
    uses BIGINT NOT NULL DEFAULT 0,
    labels TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    transport TEXT NOT NULL,
    labels TEXT NOT NULL,
    ip TEXT,
    registered_at TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ,
    heartbeat_interval_ms BIGINT NOT NULL,
    capabilities TEXT NOT NULL,
    metrics TEXT,
    node_token_sha256 TEXT,
    reported_labels TEXT NOT NULL DEFAULT '{}',
    enrolled_labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX nodes_token ON nodes(node_token_sha256);
CREATE TABLE metrics_history (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX metrics_history_node ON metrics_history(node_id, seq);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    max_parallel BIGINT,
    signature TEXT
);
CREATE INDEX tasks_created ON tasks(created_at);
CREATE TABLE task_runs (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    run TEXT NOT NULL,
    final BOOLEAN NOT NULL,
    state TEXT NOT NULL DEFAULT 'Pending',
    PRIMARY KEY (task_id, node_id)
);
CREATE INDEX task_runs_open ON task_runs(node_id, final);
CREATE INDEX task_runs_task_state ON task_runs(task_id, state);
CREATE INDEX task_runs_node_state ON task_runs(node_id, state);
CREATE TABLE task_output (
    row BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    data BYTEA NOT NULL,
    UNIQUE (task_id, node_id, seq)
);
CREATE INDEX task_output_task ON task_output(task_id, row);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at);
CREATE TABLE manifests (
    name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    signature TEXT
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
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
"#,
    // The cluster's bootstrap data (CA and admin token), sealed with the cluster secret: one row at most.
    r#"
CREATE TABLE cluster_bootstrap (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    salt BYTEA NOT NULL,
    nonce BYTEA NOT NULL,
    sealed BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    // Each node's resource states beside its report (`pos`: the resource's place in the report), so the
    // manifests pages and the status page count and filter with indexed reads instead of reading every
    // report's JSON. Written with the report; filled here from the reports kept so far.
    r#"
CREATE TABLE node_resources (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    pos BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (node_id, pos)
);
CREATE INDEX node_resources_manifest ON node_resources(manifest, node_id, state);
INSERT INTO node_resources (node_id, pos, manifest, resource, state)
SELECT v.node_id, r.pos - 1, r.e ->> 'manifest', COALESCE(r.e ->> 'id', ''), COALESCE(r.e ->> 'state', '')
FROM node_convergence v,
     jsonb_array_elements(CASE WHEN jsonb_typeof(v.report::jsonb -> 'resources') = 'array'
                          THEN v.report::jsonb -> 'resources' ELSE '[]'::jsonb END) WITH ORDINALITY r(e, pos)
WHERE jsonb_typeof(r.e -> 'manifest') = 'string';
"#,
    // The newest signed version of each manifest (see the SQLite schema for why).
    r#"
ALTER TABLE manifests ADD COLUMN signed_version BIGINT;
UPDATE manifests SET signed_version =
    LEAST(COALESCE((manifest::jsonb ->> 'version')::numeric, 0), 9007199254740991)::bigint
WHERE signature IS NOT NULL;
"#,
    // Rollouts (see the SQLite schema).
    r#"
CREATE TABLE rollouts (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE manifest_revisions (
    name TEXT NOT NULL,
    generation BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (name, generation)
);
"#,
];
