//! The schema, as versioned migrations.

/// Versioned schema: entry N moves the database from `user_version` N to N+1. Never edit a released entry.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // Run states as a column, so every transition can name the state it leaves.
    r#"
ALTER TABLE task_runs ADD COLUMN state TEXT NOT NULL DEFAULT 'Pending';
UPDATE task_runs SET state = json_extract(run, '$.state');
CREATE INDEX task_runs_task_state ON task_runs(task_id, state);
CREATE INDEX task_runs_node_state ON task_runs(node_id, state);
"#,
    // Selection now uses only the labels the operator controls: the server's (`labels`) over those the
    // agent reported when it enrolled (`enrolled_labels`); what nodes report later waits for acceptance.
    // Nodes enrolled before keep what they were selected by: their reported labels become bound.
    r#"
ALTER TABLE nodes ADD COLUMN enrolled_labels TEXT NOT NULL DEFAULT '{}';
UPDATE nodes SET enrolled_labels = reported_labels;
"#,
    // Operators: each with a role and an API token kept only as its SHA-256.
    r#"
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"#,
    // Signatures beside what they sign: an operator's over a manifest (its generation ignores it) and
    // over a task's spec, both JSON of drover_types::signing types; NULL when unsigned.
    r#"
ALTER TABLE manifests ADD COLUMN signature TEXT;
ALTER TABLE tasks ADD COLUMN signature TEXT;
"#,
    // Each node's resource states beside its report (`pos`: the resource's place in the report), so the
    // manifests pages and the status page count and filter with indexed reads instead of reading every
    // report's JSON. Written with the report; filled here from the reports kept so far.
    r#"
CREATE TABLE node_resources (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    resource TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (node_id, pos)
);
CREATE INDEX node_resources_manifest ON node_resources(manifest, node_id, state);
INSERT INTO node_resources (node_id, pos, manifest, resource, state)
SELECT node_id, pos, manifest, COALESCE(resource, ''), COALESCE(state, '') FROM (
    SELECT v.node_id AS node_id, r.key AS pos,
           CASE WHEN r.type = 'object' THEN json_extract(r.value, '$.manifest') END AS manifest,
           CASE WHEN r.type = 'object' THEN json_extract(r.value, '$.id') END AS resource,
           CASE WHEN r.type = 'object' THEN json_extract(r.value, '$.state') END AS state
    FROM node_convergence v JOIN nodes n ON n.id = v.node_id, json_each(v.report, '$.resources') r
    WHERE json_valid(v.report) AND json_type(v.report, '$.resources') = 'array')
WHERE typeof(manifest) = 'text';
"#,
    // The time of each node's newest history sample beside its latest beat, so a heartbeat learns whether
    // it starts a new sample from the row it updates anyway instead of a read of the history's index (at
    // 19,000 nodes that read was most of the store's page reads at idle). Written with each sample.
    r#"
ALTER TABLE nodes ADD COLUMN history_at TEXT;
UPDATE nodes SET history_at =
    (SELECT at FROM metrics_history WHERE node_id = nodes.id ORDER BY seq DESC LIMIT 1);
"#,
    // The newest signed version of each manifest, which a signed write must reach: unsigned writes no
    // longer raise it (a version set unsigned cannot lock signers out). Versions past 2^53-1 are refused
    // now; any stored before count as that.
    r#"
ALTER TABLE manifests ADD COLUMN signed_version INTEGER;
UPDATE manifests SET signed_version =
    MIN(COALESCE(CAST(json_extract(manifest, '$.version') AS REAL), 0), 9007199254740991)
WHERE signature IS NOT NULL;
"#,
    // Rollouts (issue 25): each manifest's rollout as one document, and the manifests' recent revisions,
    // which nodes not yet in a rollout's wave keep and a revert goes back to.
    r#"
CREATE TABLE rollouts (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE manifest_revisions (
    name TEXT NOT NULL,
    generation INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (name, generation)
);
"#,
];
