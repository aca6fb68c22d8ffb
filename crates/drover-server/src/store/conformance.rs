//! The store's behaviour, checked on every backend: each case gets a fresh, empty store and uses only the
//! `Store` trait. `cases!` runs every case as its own test on SQLite, and all of them on a throwaway
//! PostgreSQL cluster (started once for the run, stopped and removed at its end, even when a case fails).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_types::manifest::{DesiredState, Manifest, NodeConvergence};
use drover_types::operator::{OperatorInfo, Role};
use drover_types::signing::Signature;
use drover_types::task::{AuditEntry, LateExit, RunState, Task, TaskRun};
use drover_types::token::{JoinTokenInfo, TokenRefusal};
use drover_types::{Capabilities, Labels, LivenessPolicy, Metrics, NodeStatus, Transport};

use super::prelude::*;
use super::{
    AuditFilter, ConvergencePage, DesiredVersion, Heartbeat, JoinTokenRecord, MetricsHistory,
    NodeQuery, NodeRecord, NodeRecordPage, OperatorRecord, OutputRecord, PgStore, RunPatch,
    SilentRun, SqliteStore, Store, StoreError, StoredOutput, TokenUse,
};

type Case = fn(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Declares the cases: one SQLite test each, and `CASES` for the PostgreSQL run.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        const CASES: &[(&str, Case)] = &[$((stringify!($name), |s| Box::pin($name(s)))),*];

        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SqliteStore::open(&dir.path().join("db")).unwrap();
                    super::$name(Arc::new(store)).await;
                }
            )*
        }
    };
}

cases!(
    nodes_names_and_bounded_history,
    nodes_change_in_place_and_are_found_by_name_and_token,
    heartbeats_in_one_batch_skip_nodes_that_are_gone,
    the_history_keeps_one_sample_per_interval_and_every_beat_is_the_latest,
    join_token_limits_are_enforced,
    a_token_stored_with_an_unreadable_expiry_is_listed_and_refused,
    operators_are_stored_found_by_token_and_revoked,
    a_transition_names_the_state_it_leaves_and_a_final_state_is_final,
    a_late_exit_is_kept_only_beside_a_run_the_server_ended,
    concurrent_writes_are_committed_together_and_each_is_atomic,
    tasks_are_listed_newest_first_and_summarized,
    open_runs_are_found_by_node_and_by_silence,
    output_is_kept_once_in_arrival_order,
    output_is_read_within_a_byte_budget,
    manifest_versions_only_go_up_and_signing_again_keeps_the_generation,
    desired_state_is_compare_and_set_on_its_generation,
    a_desired_state_names_the_content_its_files_have,
    retention_deletes_old_finished_tasks_and_trims_output_oldest_first,
    a_page_of_nodes_is_filtered_by_status_and_labels_and_counted_by_status,
    a_task_page_counts_its_runs_and_reads_a_page_of_them,
    manifests_are_counted_by_state_and_their_nodes_read_a_page_at_a_time,
    a_newer_report_replaces_the_states_counted_and_a_deleted_node_leaves_the_counts,
    blobs_audit_and_fleet_counts,
    rollouts_are_kept_whole_and_a_manifest_keeps_its_newest_revisions,
);

/// Every case on one fresh PostgreSQL cluster, each in its own database, all at once. Fails (never
/// passes quietly) when PostgreSQL is not installed.
#[test]
fn postgres_store_passes_every_case() {
    let pg = drover_testkit::Postgres::start().unwrap_or_else(|e| panic!("{e:#}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();
    let pg_only: &[(&str, PgCase)] = &[
        ("pg_migrations_run_once", |s| {
            Box::pin(pg_migrations_run_once(s))
        }),
        ("pg_every_shared_statement_prepares", |s| {
            Box::pin(pg_every_shared_statement_prepares(s))
        }),
        ("pg_an_unreadable_audit_entry_leaves_the_rest_listed", |s| {
            Box::pin(pg_an_unreadable_audit_entry_leaves_the_rest_listed(s))
        }),
        (
            "pg_migration_3_fills_resource_states_from_the_reports_kept",
            |s| {
                Box::pin(pg_migration_3_fills_resource_states_from_the_reports_kept(
                    s,
                ))
            },
        ),
    ];
    for (i, (name, case)) in CASES.iter().enumerate() {
        let db = format!("case{i}");
        pg.create_database(&db).unwrap();
        let url = pg.url(&db);
        runs.push((
            *name,
            runtime.spawn(async move {
                let store = PgStore::connect(&url)
                    .await
                    .expect("connects to the test cluster");
                case(Arc::new(store)).await
            }),
        ));
    }
    for (i, (name, case)) in pg_only.iter().enumerate() {
        let db = format!("pg{i}");
        pg.create_database(&db).unwrap();
        let url = pg.url(&db);
        runs.push((*name, runtime.spawn(async move { case(url).await })));
    }
    let failed: Vec<String> = runtime.block_on(async {
        let mut failed = Vec::new();
        for (name, run) in runs {
            if let Err(e) = run.await {
                failed.push(format!("{name}: {e}"));
            }
        }
        failed
    });
    drop(runtime);
    drop(pg);
    assert!(
        failed.is_empty(),
        "failed on PostgreSQL:\n{}",
        failed.join("\n")
    );
}

type PgCase = fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>>;

async fn pg_migrations_run_once(url: String) {
    let store = PgStore::connect(&url).await.unwrap();
    store.insert_node(&node("a", "alpha")).await.unwrap();
    assert!(store.schema_version().await.unwrap() > 0);
    drop(store);
    // Two replicas starting together against the migrated database: both open it, nothing runs twice.
    let (a, b) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.get_node("a").await.unwrap().is_some());
    assert_eq!(
        a.schema_version().await.unwrap(),
        b.schema_version().await.unwrap()
    );
}

/// Every statement shared with SQLite (`store::sql`), as PostgreSQL spells it, is one it takes.
async fn pg_every_shared_statement_prepares(url: String) {
    use sqlx::{Executor, SqlSafeStr};
    let store = PgStore::connect(&url).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let counts = super::sql::manifests::COUNTS.as_str();
    let every = super::sql::every().into_iter().map(|sql| sql.pg);
    for sql in every.chain([counts]) {
        if let Err(e) = (&mut *conn).prepare(sql.into_sql_str()).await {
            panic!("{sql}: {e}");
        }
    }
}

/// A database at version 2 (before `node_resources`) with a report kept: the migration fills the table
/// from it, so the counts read what the report says.
async fn pg_migration_3_fills_resource_states_from_the_reports_kept(url: String) {
    use drover_types::manifest::ResourceState::{Failed, Ready};

    let store = PgStore::connect(&url).await.unwrap();
    store.insert_node(&node("a", "alpha")).await.unwrap();
    store
        .put_convergence(
            "a",
            &states_report(2, &[("r1", "m1", Ready), ("r2", "m1", Failed)]),
        )
        .await
        .unwrap();
    drop(store);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE node_resources; ALTER TABLE manifests DROP COLUMN signed_version;
         DROP TABLE rollouts; DROP TABLE manifest_revisions; UPDATE drover_schema SET version = 2",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = PgStore::connect(&url).await.unwrap();
    let counts = store.manifest_counts().await.unwrap();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].nodes, vec![(Failed, 1)]);
}

async fn pg_an_unreadable_audit_entry_leaves_the_rest_listed(url: String) {
    let store = PgStore::connect(&url).await.unwrap();
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
        .execute_raw("INSERT INTO audit (at, actor, action, target, detail) VALUES (now(), 'x', 'y', 'z', '{')")
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

/// A plain gRPC node, never seen.
/// The agent version a node of `blobs_audit_and_fleet_counts` reports.
const AGENT_VERSION_SEEN: &str = "0.1.9";

pub(super) fn node(id: &str, name: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        name: name.into(),
        transport: Transport::Grpc,
        labels: Default::default(),
        reported_labels: Default::default(),
        enrolled_labels: Default::default(),
        ip: None,
        registered_at: Utc::now(),
        last_seen: None,
        heartbeat_interval_ms: 10_000,
        capabilities: Capabilities::default(),
        metrics: None,
        node_token_sha256: None,
    }
}

async fn nodes_names_and_bounded_history(store: Arc<dyn Store>) {
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
                .record_heartbeat("a", Utc::now(), &m, MetricsHistory::every_beat(4))
                .await
                .unwrap()
        );
    }
    let history = store.metrics_history("a", 100).await.unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[3].metrics.cpu_usage, 9.0);
    assert!(
        !store
            .record_heartbeat(
                "zz",
                Utc::now(),
                &Metrics::default(),
                MetricsHistory::every_beat(4)
            )
            .await
            .unwrap()
    );
    assert!(store.delete_node("a").await.unwrap());
    assert!(store.metrics_history("a", 100).await.unwrap().is_empty());
}

async fn join_token_limits_are_enforced(store: Arc<dyn Store>) {
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
        store
            .use_join_token("t1", "wrong", now)
            .await
            .unwrap()
            .into_result(),
        Err(TokenRefusal::Unknown)
    );
    assert!(
        store
            .use_join_token("t1", "s", now)
            .await
            .unwrap()
            .into_result()
            .is_ok()
    );
    assert_eq!(
        store
            .use_join_token("t1", "s", now)
            .await
            .unwrap()
            .into_result(),
        Err(TokenRefusal::Exhausted(1))
    );
    let later = now + chrono::Duration::hours(2);
    store.revoke_join_token("t1").await.unwrap();
    assert_eq!(
        store
            .use_join_token("t1", "s", later)
            .await
            .unwrap()
            .into_result(),
        Err(TokenRefusal::Revoked)
    );

    // Many agents at once: a limited token is used exactly as often as it allows.
    let mut limited = rec.clone();
    limited.info.id = "t5".into();
    limited.info.max_uses = Some(5);
    store.insert_join_token(&limited).await.unwrap();
    let racers = (0..40).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.use_join_token("t5", "s", now).await.unwrap() })
    });
    let outcomes = futures_util::future::join_all(racers).await;
    let used = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(TokenUse::Used(_))))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(TokenUse::Refused(TokenRefusal::Exhausted(5)))))
        .count();
    assert_eq!((used, refused), (5, 35), "{outcomes:?}");
}

async fn a_token_stored_with_an_unreadable_expiry_is_listed_and_refused(store: Arc<dyn Store>) {
    // What an older server stored for `ttl: 100000y`: a six-digit year RFC 3339 cannot carry.
    let now = Utc::now();
    let far = now
        .checked_add_signed(chrono::Duration::days(100_000 * 365))
        .unwrap();
    let mut rec = JoinTokenRecord {
        info: JoinTokenInfo {
            id: "far".into(),
            created_at: now,
            expires_at: far,
            max_uses: None,
            uses: 0,
            labels: Default::default(),
            revoked: false,
        },
        secret_sha256: "s".into(),
    };
    store.insert_join_token(&rec).await.unwrap();
    rec.info.id = "fine".into();
    rec.info.expires_at = now + chrono::Duration::hours(1);
    store.insert_join_token(&rec).await.unwrap();
    let listed = store.list_join_tokens().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let far_one = listed.iter().find(|t| t.id == "far").unwrap();
    assert!(far_one.expires_at < now, "counts as expired: {far_one:?}");
    assert_eq!(
        store
            .use_join_token("far", "s", now)
            .await
            .unwrap()
            .into_result(),
        Err(TokenRefusal::Expired)
    );
    assert!(
        store
            .use_join_token("fine", "s", now)
            .await
            .unwrap()
            .into_result()
            .is_ok()
    );
    assert!(store.revoke_join_token("far").await.unwrap());
}

pub(super) fn task(id: &str, nodes: &[&str]) -> Task {
    Task {
        id: id.into(),
        target: drover_types::task::Target::All,
        spec: drover_types::task::TaskSpec::Exec {
            argv: vec!["true".into()],
            shell: None,
            env: Default::default(),
            cwd: None,
            user: None,
            timeout_ms: None,
            grace_ms: None,
        },
        created_by: "admin".into(),
        created_at: Utc::now(),
        max_parallel: None,
        signature: None,
        runs: nodes
            .iter()
            .map(|n| TaskRun {
                node_id: n.to_string(),
                node_name: n.to_string(),
                state: RunState::Pending,
                exit_code: None,
                signal: None,
                error: None,
                started_at: None,
                finished_at: None,
                late_exit: None,
            })
            .collect(),
    }
}

async fn a_transition_names_the_state_it_leaves_and_a_final_state_is_final(store: Arc<dyn Store>) {
    store.insert_task(&task("t", &["a", "b"])).await.unwrap();
    let started = RunPatch {
        started_at: Some(Utc::now()),
        ..RunPatch::to(RunState::Running)
    };
    let moved = store
        .transition_runs(
            "t",
            vec!["a".into(), "b".into()],
            &[RunState::Pending],
            started.clone(),
        )
        .await
        .unwrap();
    assert_eq!(moved.len(), 2);
    // The exit lands first; a late "Running" write from a copy taken before can no longer win.
    let exit = RunPatch {
        exit_code: Some(0),
        finished_at: Some(Utc::now()),
        ..RunPatch::to(RunState::Succeeded)
    };
    let done = store
        .transition_runs("t", vec!["a".into()], OPEN, exit)
        .await
        .unwrap();
    assert_eq!(done[0].state, RunState::Succeeded);
    assert_eq!(done[0].exit_code, Some(0));
    assert!(
        done[0].started_at.is_some(),
        "a patch keeps what it does not set"
    );
    let again = store
        .transition_runs("t", vec!["a".into()], &[RunState::Pending], started)
        .await
        .unwrap();
    assert!(again.is_empty());
    let lost = store
        .transition_runs(
            "t",
            vec!["a".into()],
            OPEN,
            RunPatch::end(RunState::Lost, "x"),
        )
        .await
        .unwrap();
    assert!(lost.is_empty(), "a final state is never left");
    assert_eq!(
        store.get_run("t", "a").await.unwrap().unwrap().state,
        RunState::Succeeded
    );
    assert_eq!(store.count_runs("t", OPEN).await.unwrap(), 1);
    assert_eq!(
        store
            .runs_in_state("t", &[RunState::Running], 10)
            .await
            .unwrap()[0]
            .node_id,
        "b"
    );
}

async fn a_late_exit_is_kept_only_beside_a_run_the_server_ended(store: Arc<dyn Store>) {
    store.insert_task(&task("t", &["a", "b"])).await.unwrap();
    store
        .transition_runs(
            "t",
            vec!["a".into()],
            OPEN,
            RunPatch::end(RunState::Lost, "gone"),
        )
        .await
        .unwrap();
    store
        .transition_runs(
            "t",
            vec!["b".into()],
            OPEN,
            RunPatch::to(RunState::Succeeded),
        )
        .await
        .unwrap();
    let late = LateExit {
        state: RunState::Failed,
        exit_code: Some(3),
        signal: None,
        error: None,
        at: Utc::now(),
    };
    let kept = store
        .record_late_exit("t", "a", late.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.state, RunState::Lost);
    assert_eq!(kept.late_exit.as_ref().unwrap().exit_code, Some(3));
    assert!(
        store
            .record_late_exit("t", "a", late.clone())
            .await
            .unwrap()
            .is_none(),
        "only once"
    );
    assert!(
        store
            .record_late_exit("t", "b", late)
            .await
            .unwrap()
            .is_none(),
        "an agent's own exit is not overwritten by a duplicate"
    );
}

async fn concurrent_writes_are_committed_together_and_each_is_atomic(store: Arc<dyn Store>) {
    for i in 0..50 {
        store
            .insert_node(&node(&format!("n{i}"), &format!("name{i}")))
            .await
            .unwrap();
    }
    let beats = (0..50).flat_map(|i| {
        let store = store.clone();
        (0..20).map(move |k| {
            let store = store.clone();
            async move {
                let m = Metrics {
                    cpu_usage: k as f64,
                    ..Metrics::default()
                };
                store
                    .record_heartbeat(
                        &format!("n{i}"),
                        Utc::now(),
                        &m,
                        MetricsHistory::every_beat(5),
                    )
                    .await
            }
        })
    });
    let results = futures_util::future::join_all(beats).await;
    assert!(results.iter().all(|r| matches!(r, Ok(true))));
    for i in 0..50 {
        assert_eq!(
            store
                .metrics_history(&format!("n{i}"), 100)
                .await
                .unwrap()
                .len(),
            5
        );
    }
    // A failing write leaves the others in its batch alone.
    let (x, y) = (node("x", "name1"), node("y", "fresh"));
    let (a, b) = tokio::join!(store.insert_node(&x), store.insert_node(&y));
    assert!(matches!(a, Err(StoreError::NameTaken(_))));
    assert!(b.is_ok());
    assert!(store.get_node("y").await.unwrap().is_some());
}

async fn manifest_versions_only_go_up_and_signing_again_keeps_the_generation(
    store: Arc<dyn Store>,
) {
    let manifest = |version: u64, content: &str| -> Manifest {
        serde_json::from_value(serde_json::json!({"name": "web", "version": version,
            "resources": [{"id": "f", "file": {"path": "/x", "content": content}}]}))
        .unwrap()
    };
    let sig = |key: &str| Signature {
        key: key.into(),
        sig: "s".into(),
    };
    let now = Utc::now();
    let put = store
        .put_manifest(&manifest(2, "a"), Some(&sig("k1")), now)
        .await
        .unwrap();
    assert_eq!((put.generation, put.changed), (1, true));
    let put = store
        .put_manifest(&manifest(2, "a"), Some(&sig("k2")), now)
        .await
        .unwrap();
    assert_eq!(
        (put.generation, put.changed, put.resigned),
        (1, false, true)
    );
    assert_eq!(
        store.list_manifests().await.unwrap()[0].signature,
        Some(sig("k2"))
    );
    for refused in [manifest(1, "a"), manifest(2, "changed")] {
        assert!(matches!(
            store.put_manifest(&refused, Some(&sig("k2")), now).await,
            Err(StoreError::ManifestVersion { have: 2, .. })
        ));
    }
    let put = store
        .put_manifest(&manifest(3, "changed"), Some(&sig("k2")), now)
        .await
        .unwrap();
    assert_eq!((put.generation, put.changed), (2, true));
    // An unsigned write far above does not move what a signer must exceed (3): 4 signed goes through.
    store
        .put_manifest(&manifest(1 << 50, "unsigned"), None, now)
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_manifest(&manifest(3, "again"), Some(&sig("k2")), now)
            .await,
        Err(StoreError::ManifestVersion { have: 3, .. })
    ));
    let put = store
        .put_manifest(&manifest(4, "signed"), Some(&sig("k2")), now)
        .await
        .unwrap();
    assert_eq!((put.generation, put.signed_version), (4, Some(4)));
    // Unsigned writes still only go up from what is stored.
    assert!(matches!(
        store.put_manifest(&manifest(2, "down"), None, now).await,
        Err(StoreError::ManifestVersion { have: 4, .. })
    ));
}

async fn a_desired_state_names_the_content_its_files_have(store: Arc<dyn Store>) {
    store.insert_node(&node("a", "alpha")).await.unwrap();
    store.insert_node(&node("b", "beta")).await.unwrap();
    let (mine, other) = ("1".repeat(64), "2".repeat(64));
    let state: DesiredState = serde_json::from_value(serde_json::json!({
        "generation": 1,
        "resources": [
            {"manifest": "m", "id": "inline", "file": {"path": "/etc/a", "content": other}},
            {"manifest": "m", "id": "by-hash", "file": {"path": "/etc/b", "sha256": mine}},
            {"manifest": "m", "id": "unit", "systemd_unit": {"name": "x.service"}},
        ],
    }))
    .unwrap();
    assert!(store.put_desired("a", &state, "h").await.unwrap());
    assert!(store.desired_names_blob("a", &mine).await.unwrap());
    // Only a file's `sha256` names content: not the same text elsewhere, nor another node's state.
    assert!(!store.desired_names_blob("a", &other).await.unwrap());
    assert!(!store.desired_names_blob("b", &mine).await.unwrap());
    assert!(!store.desired_names_blob("gone", &mine).await.unwrap());
}

async fn desired_state_is_compare_and_set_on_its_generation(store: Arc<dyn Store>) {
    store.insert_node(&node("a", "alpha")).await.unwrap();
    let state = |generation| DesiredState {
        generation,
        resources: vec![],
        conflicts: vec![],
        signed: vec![],
        health: Default::default(),
        fallback: Default::default(),
    };
    assert!(store.put_desired("a", &state(1), "h1").await.unwrap());
    assert!(
        !store.put_desired("a", &state(1), "h1b").await.unwrap(),
        "both saw none"
    );
    assert!(store.put_desired("a", &state(2), "h2").await.unwrap());
    assert!(!store.put_desired("a", &state(2), "h2b").await.unwrap());
    assert_eq!(store.get_desired("a").await.unwrap().unwrap().hash, "h2");
    // Reports cannot go back in generations.
    let report = |g| NodeConvergence {
        observed_generation: g,
        ..NodeConvergence::default()
    };
    store.put_convergence("a", &report(2)).await.unwrap();
    store.put_convergence("a", &report(1)).await.unwrap();
    assert_eq!(
        store
            .get_convergence("a")
            .await
            .unwrap()
            .unwrap()
            .observed_generation,
        2
    );
    let all = store.convergence_of(None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].node_name, "alpha");
    assert_eq!(
        (
            all[0].desired_generation,
            all[0].report.as_ref().unwrap().observed_generation
        ),
        (2, 2)
    );
    // Every node's version in one read; a node without a desired state is not listed.
    store.insert_node(&node("b", "beta")).await.unwrap();
    store.insert_node(&node("c", "gamma")).await.unwrap();
    assert!(store.put_desired("b", &state(1), "hb").await.unwrap());
    // Some nodes' convergence, by name; an id of no node is skipped.
    let some = store
        .convergence_of(Some(&["c".into(), "a".into(), "gone".into()]))
        .await
        .unwrap();
    let names: Vec<&str> = some.iter().map(|r| r.node_name.as_str()).collect();
    assert_eq!(names, ["alpha", "gamma"]);
    assert_eq!(
        (some[0].desired_generation, some[1].desired_generation),
        (2, 0)
    );
    assert!(some[1].report.is_none(), "gamma has not reported");
    let mut versions = store.desired_versions().await.unwrap();
    versions.sort();
    assert_eq!(
        versions,
        [
            DesiredVersion {
                node_id: "a".into(),
                generation: 2,
                hash: "h2".into()
            },
            DesiredVersion {
                node_id: "b".into(),
                generation: 1,
                hash: "hb".into()
            }
        ]
    );
}

async fn retention_deletes_old_finished_tasks_and_trims_output_oldest_first(store: Arc<dyn Store>) {
    let mut old = task("old", &["a"]);
    old.created_at = Utc::now() - chrono::Duration::days(30);
    store.insert_task(&old).await.unwrap();
    let mut running = task("running", &["a"]);
    running.created_at = Utc::now() - chrono::Duration::days(30);
    store.insert_task(&running).await.unwrap();
    store.insert_task(&task("new1", &["a"])).await.unwrap();
    store.insert_task(&task("new2", &["a"])).await.unwrap();
    for id in ["old", "new1", "new2"] {
        store
            .transition_runs(
                id,
                vec!["a".into()],
                OPEN,
                RunPatch::to(RunState::Succeeded),
            )
            .await
            .unwrap();
        let out = OutputRecord {
            node_id: "a".into(),
            seq: 0,
            stream: 1,
            data: vec![b'x'; 1000],
        };
        store.insert_output(id, vec![out]).await.unwrap();
    }
    let cutoff = Utc::now() - chrono::Duration::days(7);
    assert_eq!(store.delete_finished_tasks_before(cutoff).await.unwrap(), 1);
    assert!(store.get_task("old").await.unwrap().is_none());
    assert!(
        store.get_task("running").await.unwrap().is_some(),
        "open tasks stay"
    );
    assert_eq!(store.trim_output(1500).await.unwrap(), 1);
    assert!(
        store.output("new1", 0, 10).await.unwrap().is_empty(),
        "the oldest goes first"
    );
    assert_eq!(store.output("new2", 0, 10).await.unwrap().len(), 1);
}

fn paged_node(i: usize, seen_ago_ms: Option<i64>, labels: &[(&str, &str)]) -> NodeRecord {
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

async fn a_page_of_nodes_is_filtered_by_status_and_labels_and_counted_by_status(
    store: Arc<dyn Store>,
) {
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
            .insert_node(&paged_node(i, seen, &[("zone", zone)]))
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

    let NodeRecordPage { nodes, counts } = store
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

    let NodeRecordPage { nodes, .. } = store
        .list_nodes_page(&query(None, &[], 14, 7))
        .await
        .unwrap();
    assert_eq!(nodes.len(), 6, "the last page holds what is left");

    let NodeRecordPage { nodes, counts } = store
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

    let NodeRecordPage { nodes, counts } = store
        .list_nodes_page(&query(Some(NodeStatus::Ready), &[("zone", "a")], 0, 100))
        .await
        .unwrap();
    // Even nodes 2..8 are in zone a and ready; node 0 was moved to zone b by the server.
    let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-002", "node-004", "node-006", "node-008"]);
    assert_eq!((counts.ready, counts.not_ready, counts.offline), (4, 3, 2));

    let NodeRecordPage { nodes, counts } = store
        .list_nodes_page(&query(None, &[("zone", "nowhere")], 0, 100))
        .await
        .unwrap();
    assert!(nodes.is_empty());
    assert_eq!(counts.total(), 0);
}

const OPEN: &[RunState] = &[RunState::Pending, RunState::Running];

const NO_LATE_EXIT: Option<LateExit> = None;

async fn nodes_change_in_place_and_are_found_by_name_and_token(store: Arc<dyn Store>) {
    let mut a = node("a", "alpha");
    a.transport = Transport::Http;
    a.node_token_sha256 = Some("tok".into());
    a.labels.insert("zone".into(), "lab".into());
    store.insert_node(&a).await.unwrap();
    store.insert_node(&node("b", "beta")).await.unwrap();
    let found = store.get_node_by_token("tok").await.unwrap().unwrap();
    assert_eq!((found.id.as_str(), found.transport), ("a", Transport::Http));
    assert_eq!(found.labels.get("zone").map(String::as_str), Some("lab"));
    assert!(store.get_node_by_token("other").await.unwrap().is_none());
    let renamed = store
        .modify_node("a", Box::new(|n| n.name = "gamma".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.name, "gamma");
    assert_eq!(
        store.get_node_by_name("gamma").await.unwrap().unwrap().id,
        "a"
    );
    assert!(matches!(
        store
            .modify_node("a", Box::new(|n| n.name = "beta".into()))
            .await,
        Err(StoreError::NameTaken(_))
    ));
    assert_eq!(
        store.get_node("a").await.unwrap().unwrap().name,
        "gamma",
        "a refused change changes nothing"
    );
    assert!(
        store
            .modify_node("zz", Box::new(|_| {}))
            .await
            .unwrap()
            .is_none()
    );
    let names: Vec<_> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["beta", "gamma"]);
}

async fn heartbeats_in_one_batch_skip_nodes_that_are_gone(store: Arc<dyn Store>) {
    store.insert_node(&node("a", "alpha")).await.unwrap();
    store.insert_node(&node("b", "beta")).await.unwrap();
    let at = Utc::now();
    let m = |cpu: f64| Metrics {
        cpu_usage: cpu,
        ..Metrics::default()
    };
    store
        .record_heartbeats(
            vec![
                beat("a", at, m(1.0)),
                beat("gone", at, m(2.0)),
                beat("b", at, m(3.0)),
                beat("a", at, m(4.0)),
            ],
            MetricsHistory::every_beat(10),
        )
        .await
        .unwrap();
    let a = store.get_node("a").await.unwrap().unwrap();
    assert_eq!(
        a.metrics.unwrap().cpu_usage,
        4.0,
        "the last beat in a batch is the latest"
    );
    assert!(a.last_seen.is_some());
    let history: Vec<f64> = store
        .metrics_history("a", 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.metrics.cpu_usage)
        .collect();
    assert_eq!(history, [1.0, 4.0]);
    assert_eq!(store.metrics_history("b", 10).await.unwrap().len(), 1);
    assert!(store.metrics_history("gone", 10).await.unwrap().is_empty());
}

async fn the_history_keeps_one_sample_per_interval_and_every_beat_is_the_latest(
    store: Arc<dyn Store>,
) {
    store.insert_node(&node("a", "alpha")).await.unwrap();
    let history = MetricsHistory {
        keep: 3,
        every: Duration::from_secs(60),
    };
    let start = "2026-01-01T00:00:05Z".parse::<DateTime<Utc>>().unwrap();
    // A beat every 10 s; its CPU figure is its second.
    let beat = |s: i64| {
        let m = Metrics {
            cpu_usage: s as f64,
            ..Metrics::default()
        };
        Heartbeat {
            node_id: "a".to_string(),
            at: start + chrono::Duration::seconds(s),
            metrics: m,
        }
    };
    let samples = |store: Arc<dyn Store>| async move {
        let h = store.metrics_history("a", 10).await.unwrap();
        h.iter().map(|s| s.metrics.cpu_usage).collect::<Vec<_>>()
    };
    // In one batch, 0..=60 s: the first beat of each minute of the clock is a sample.
    let batch = (0..=6).map(|i| beat(i * 10)).collect();
    store.record_heartbeats(batch, history).await.unwrap();
    assert_eq!(samples(store.clone()).await, [0.0, 60.0]);
    // One at a time: 70 s is in the same minute as 60 s, 120 s starts the next.
    for s in [70, 120, 130] {
        let b = beat(s);
        assert!(
            store
                .record_heartbeat(&b.node_id, b.at, &b.metrics, history)
                .await
                .unwrap()
        );
    }
    assert_eq!(samples(store.clone()).await, [0.0, 60.0, 120.0]);
    let a = store.get_node("a").await.unwrap().unwrap();
    assert_eq!(
        a.metrics.unwrap().cpu_usage,
        130.0,
        "every beat is the latest"
    );
    assert_eq!(a.last_seen, Some(start + chrono::Duration::seconds(130)));
    // The history stays at its size, the oldest sample going first.
    let b = beat(180);
    store
        .record_heartbeat(&b.node_id, b.at, &b.metrics, history)
        .await
        .unwrap();
    assert_eq!(samples(store.clone()).await, [60.0, 120.0, 180.0]);
}

async fn operators_are_stored_found_by_token_and_revoked(store: Arc<dyn Store>) {
    let op = |name: &str, sha: &str, role| OperatorRecord {
        info: OperatorInfo {
            name: name.into(),
            role,
            created_at: Utc::now(),
            created_by: "admin".into(),
            revoked: false,
        },
        token_sha256: sha.into(),
    };
    assert!(
        store
            .put_operator(&op("ann", "s1", Role::Operator))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_operator(&op("ann", "s2", Role::Viewer))
            .await
            .unwrap(),
        "an active name is kept"
    );
    assert!(
        store
            .put_operator(&op("bob", "s3", Role::Viewer))
            .await
            .unwrap()
    );
    let ann = store.operator_by_token("s1").await.unwrap().unwrap();
    assert_eq!((ann.name.as_str(), ann.role), ("ann", Role::Operator));
    assert!(store.operator_by_token("s2").await.unwrap().is_none());
    assert!(store.revoke_operator("ann").await.unwrap());
    assert!(!store.revoke_operator("ann").await.unwrap());
    assert!(store.operator_by_token("s1").await.unwrap().is_none());
    let listed = store.list_operators().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].revoked && !listed[1].revoked);
    assert!(
        store
            .put_operator(&op("ann", "s4", Role::Viewer))
            .await
            .unwrap(),
        "a revoked name is given again"
    );
    assert_eq!(
        store.operator_by_token("s4").await.unwrap().unwrap().role,
        Role::Viewer
    );
}

async fn tasks_are_listed_newest_first_and_summarized(store: Arc<dyn Store>) {
    let mut older = task("abc-1", &["a", "b", "c"]);
    older.created_at = Utc::now() - chrono::Duration::minutes(5);
    older.max_parallel = Some(2);
    store.insert_task(&older).await.unwrap();
    store.insert_task(&task("abd-2", &["a"])).await.unwrap();
    store
        .transition_runs(
            "abc-1",
            vec!["b".into()],
            OPEN,
            RunPatch::to(RunState::Failed),
        )
        .await
        .unwrap();
    let listed = store.list_tasks(10).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["abd-2", "abc-1"]);
    let runs: Vec<_> = listed[1].runs.iter().map(|r| r.node_id.as_str()).collect();
    assert_eq!(runs, ["a", "b", "c"], "runs keep the task's node order");
    assert_eq!(listed[1].max_parallel, Some(2));
    assert_eq!(store.list_tasks(1).await.unwrap().len(), 1);
    let summaries = store.task_summaries(10).await.unwrap();
    assert_eq!(summaries[1].id, "abc-1");
    assert_eq!(
        summaries[1].runs,
        [(RunState::Pending, 2), (RunState::Failed, 1)],
        "counted in the order states are declared"
    );
    assert_eq!(summaries[1].max_parallel, Some(2));
    assert_eq!(summaries[1].state(), "Running");
    let mine = store.node_task_runs("a", 10).await.unwrap();
    let ids: Vec<_> = mine.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(ids, ["abd-2", "abc-1"]);
    let mut prefixed = store.task_ids_with_prefix("ab", 10).await.unwrap();
    prefixed.sort();
    assert_eq!(prefixed, ["abc-1", "abd-2"]);
    assert_eq!(
        store.task_ids_with_prefix("abc", 10).await.unwrap(),
        ["abc-1"]
    );
    assert_eq!(store.task_ids_with_prefix("ab", 1).await.unwrap().len(), 1);
    assert!(store.get_task("none").await.unwrap().is_none());
}

async fn open_runs_are_found_by_node_and_by_silence(store: Arc<dyn Store>) {
    let mut quiet = node("a", "alpha");
    quiet.last_seen = Some(Utc::now() - chrono::Duration::hours(1));
    store.insert_node(&quiet).await.unwrap();
    let mut heard = node("b", "beta");
    heard.last_seen = Some(Utc::now());
    store.insert_node(&heard).await.unwrap();
    store.insert_task(&task("t1", &["a", "b"])).await.unwrap();
    store.insert_task(&task("t2", &["a"])).await.unwrap();
    store
        .transition_runs(
            "t2",
            vec!["a".into()],
            OPEN,
            RunPatch::to(RunState::Succeeded),
        )
        .await
        .unwrap();
    let open = store.open_runs_for_node("a").await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].task_id.as_str(), open[0].run.node_id.as_str()),
        ("t1", "a")
    );
    assert!(open[0].run.late_exit == NO_LATE_EXIT);
    let silent = store
        .open_runs_silent_since(Utc::now() - chrono::Duration::minutes(10))
        .await
        .unwrap();
    assert_eq!(
        silent,
        [SilentRun {
            task_id: "t1".to_string(),
            node_id: "a".to_string()
        }]
    );
}

async fn output_is_kept_once_in_arrival_order(store: Arc<dyn Store>) {
    store.insert_task(&task("t", &["a", "b"])).await.unwrap();
    let chunk = |node: &str, seq: u64, data: &str| OutputRecord {
        node_id: node.into(),
        seq,
        stream: if seq.is_multiple_of(2) { 1 } else { 2 },
        data: data.as_bytes().to_vec(),
    };
    assert_eq!(store.stored_seq("t", "a").await.unwrap(), 0);
    store
        .insert_output(
            "t",
            vec![
                chunk("a", 0, "a0"),
                chunk("b", 0, "b0"),
                chunk("a", 1, "a1"),
            ],
        )
        .await
        .unwrap();
    // Sent again after a reconnect: kept once.
    store
        .insert_output(
            "t",
            vec![
                chunk("a", 1, "again"),
                chunk("a", 2, "a2"),
                chunk("a", 2, "dup"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.stored_seq("t", "a").await.unwrap(), 3);
    assert_eq!(store.stored_seq("t", "b").await.unwrap(), 1);
    let all = store.output("t", 0, 100).await.unwrap();
    let text: Vec<_> = all
        .iter()
        .map(|o| String::from_utf8_lossy(&o.record.data).to_string())
        .collect();
    assert_eq!(text, ["a0", "b0", "a1", "a2"]);
    assert_eq!(all[2].record.stream, 2);
    // Paged by the row cursor.
    let first = store.output("t", 0, 2).await.unwrap();
    let rest = store.output("t", first[1].row, 100).await.unwrap();
    assert_eq!(first.len() + rest.len(), 4);
    assert_eq!(rest[0].record.data, b"a1");
}

async fn output_is_read_within_a_byte_budget(store: Arc<dyn Store>) {
    store.insert_task(&task("t", &["a"])).await.unwrap();
    let records = (0..10u64)
        .map(|seq| OutputRecord {
            node_id: "a".into(),
            seq,
            stream: 1,
            data: vec![b'x'; 100 * (seq as usize + 1)],
        })
        .collect();
    store.insert_output("t", records).await.unwrap();
    let seqs = |page: &[StoredOutput]| page.iter().map(|o| o.record.seq).collect::<Vec<_>>();
    // 100 + 200 + 300 reach 600: the row that reaches the budget is the last one.
    let page = store.output_within("t", 0, 100, 600).await.unwrap();
    assert_eq!(seqs(&page), [0, 1, 2]);
    let page = store.output_within("t", 0, 100, 601).await.unwrap();
    assert_eq!(seqs(&page), [0, 1, 2, 3]);
    // The first row comes however large; the row limit still holds.
    let rest = store.output_within("t", page[3].row, 100, 1).await.unwrap();
    assert_eq!(seqs(&rest), [4]);
    assert_eq!(rest[0].record.data.len(), 500);
    let page = store.output_within("t", 0, 2, usize::MAX).await.unwrap();
    assert_eq!(seqs(&page), [0, 1]);
    let all = store.output_within("t", 0, 100, 1 << 20).await.unwrap();
    assert_eq!(seqs(&all), (0..10).collect::<Vec<_>>());
    assert!(
        store
            .output_within("t", all[9].row, 100, 1 << 20)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn blobs_audit_and_fleet_counts(store: Arc<dyn Store>) {
    store.put_blob("h", b"content".to_vec()).await.unwrap();
    store.put_blob("h", b"content".to_vec()).await.unwrap();
    assert_eq!(store.get_blob("h").await.unwrap().unwrap(), b"content");
    assert!(store.get_blob("other").await.unwrap().is_none());

    let start = Utc::now();
    // One batch: the entries keep their order.
    let entries = [
        ("admin", "task.create", "all"),
        ("ann", "task.cancel", "node-1"),
        ("ann", "task.create", "node-12"),
    ]
    .into_iter()
    .map(|(actor, action, target)| AuditEntry {
        id: 0,
        at: Utc::now(),
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        detail: serde_json::json!({"n": 1}),
    })
    .collect();
    store.insert_audits(entries).await.unwrap();
    let list = |f: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .list_audit(&AuditFilter { limit: 10, ..f })
                .await
                .unwrap()
        }
    };
    let all = list(AuditFilter::default()).await;
    assert_eq!(all.len(), 3);
    assert!(all[0].id > all[1].id, "newest first");
    let targets: Vec<&str> = all.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(
        targets,
        ["node-12", "node-1", "all"],
        "a batch keeps its order"
    );
    assert_eq!(all[0].detail, serde_json::json!({"n": 1}));
    let by_ann = list(AuditFilter {
        actor: Some("ann".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_ann.len(), 2);
    let creates = list(AuditFilter {
        action: Some("task.create".into()),
        target: Some("node-1".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].target, "node-12");
    assert_eq!(
        list(AuditFilter {
            since: Some(start - chrono::Duration::seconds(1)),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    assert!(
        list(AuditFilter {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .is_empty()
    );

    let mut alpha = node("a", "alpha");
    alpha.capabilities.agent_version = Some(AGENT_VERSION_SEEN.into());
    store.insert_node(&alpha).await.unwrap();
    store.insert_task(&task("t1", &["a", "b"])).await.unwrap();
    store.insert_task(&task("t2", &["a"])).await.unwrap();
    store
        .transition_runs(
            "t2",
            vec!["a".into()],
            OPEN,
            RunPatch::to(RunState::Succeeded),
        )
        .await
        .unwrap();
    let report: NodeConvergence = serde_json::from_value(serde_json::json!({
        "observed_generation": 1, "conditions": [],
        "resources": [{"id": "f", "manifest": "web", "kind": "File", "state": "Ready"}, {"id": "g", "manifest": "web", "kind": "File", "state": "Failed"}]
    }))
    .unwrap();
    store.put_convergence("a", &report).await.unwrap();
    let manifest: Manifest =
        serde_json::from_value(serde_json::json!({"name": "web", "resources": []})).unwrap();
    store
        .put_manifest(&manifest, None, Utc::now())
        .await
        .unwrap();
    let mut counts = store.fleet_counts().await.unwrap();
    counts.runs_by_state.sort();
    counts.tasks_by_state.sort();
    counts.resources_by_state.sort();
    assert_eq!(counts.nodes.len(), 1);
    assert_eq!(counts.nodes[0].heartbeat_interval_ms, 10_000);
    assert_eq!(
        counts.nodes_by_agent_version,
        [(AGENT_VERSION_SEEN.to_string(), 1)],
        "the version the node's capabilities name"
    );
    assert_eq!(
        counts.runs_by_state,
        [("Pending".to_string(), 2), ("Succeeded".to_string(), 1)]
    );
    assert_eq!(
        counts.tasks_by_state,
        [("Running".to_string(), 1), ("Succeeded".to_string(), 1)]
    );
    assert_eq!(counts.manifests, 1);
    assert_eq!(
        counts.resources_by_state,
        [("Failed".to_string(), 1), ("Ready".to_string(), 1)]
    );
}

async fn a_task_page_counts_its_runs_and_reads_a_page_of_them(store: Arc<dyn Store>) {
    use drover_types::task::RunState::{Failed, Pending, Running};

    use crate::store::RunQuery;

    let t1 = task("t1", &["a", "b", "c", "d", "e"]);
    store.insert_task(&t1).await.unwrap();
    store.insert_task(&task("t2", &["a"])).await.unwrap();
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
        let store = store.clone();
        async move { store.task_page("t1", &q).await.unwrap().unwrap() }
    };
    let names =
        |p: &crate::store::TaskPage| p.runs.iter().map(|r| r.node_id.clone()).collect::<Vec<_>>();
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

async fn manifests_are_counted_by_state_and_their_nodes_read_a_page_at_a_time(
    store: Arc<dyn Store>,
) {
    use drover_types::manifest::ResourceState::{Failed, Pending, Ready};
    use drover_types::manifest::{NodeConvergence, ResourceState, ResourceStatus};

    use crate::store::{ConvergenceQuery, ManifestCounts};

    for i in 0..4 {
        let (id, name) = (format!("id-{i:03}"), format!("node-{i:03}"));
        store.insert_node(&node(&id, &name)).await.unwrap();
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
        let store = store.clone();
        async move {
            let ConvergencePage { rows, total } = store.convergence_page(&q).await.unwrap();
            let names: Vec<String> = rows.into_iter().map(|r| r.node_name).collect();
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

/// A report of `generation` with these (resource id, manifest, state).
pub(super) fn states_report(
    generation: u64,
    resources: &[(&str, &str, drover_types::manifest::ResourceState)],
) -> NodeConvergence {
    NodeConvergence {
        observed_generation: generation,
        resources: resources
            .iter()
            .map(|(id, m, s)| drover_types::manifest::ResourceStatus::new(id, m, "file", *s))
            .collect(),
        ..NodeConvergence::default()
    }
}

/// What the counts and pages read follows a node's latest report (an older one changes nothing) and
/// forgets a deleted node.
async fn a_newer_report_replaces_the_states_counted_and_a_deleted_node_leaves_the_counts(
    store: Arc<dyn Store>,
) {
    use drover_types::manifest::ResourceState::{Failed, Pending, Ready};

    use crate::store::{ConvergenceQuery, ManifestCounts};

    for (id, name) in [("a", "alpha"), ("b", "beta")] {
        store.insert_node(&node(id, name)).await.unwrap();
    }
    let put = |id: &'static str, report: NodeConvergence| {
        let store = store.clone();
        async move { store.put_convergence(id, &report).await.unwrap() }
    };
    put(
        "a",
        states_report(1, &[("r1", "m1", Failed), ("r2", "m1", Pending)]),
    )
    .await;
    put(
        "b",
        states_report(1, &[("r1", "m1", Ready), ("x", "m2", Failed)]),
    )
    .await;
    // A newer report replaces a's resources (one fewer, one more manifest); an older one is ignored.
    put(
        "a",
        states_report(2, &[("r1", "m1", Ready), ("y", "m2", Ready)]),
    )
    .await;
    put("a", states_report(1, &[("r1", "m1", Failed)])).await;
    let counts = || {
        let store = store.clone();
        async move {
            let mut counts = store.manifest_counts().await.unwrap();
            for c in &mut counts {
                c.resources.sort_by_key(|(s, _)| s.as_str());
                c.nodes.sort_by_key(|(s, _)| s.as_str());
            }
            counts
        }
    };
    assert_eq!(
        counts().await,
        [
            ManifestCounts {
                manifest: "m1".into(),
                resources: vec![(Ready, 2)],
                nodes: vec![(Ready, 2)],
            },
            ManifestCounts {
                manifest: "m2".into(),
                resources: vec![(Failed, 1), (Ready, 1)],
                nodes: vec![(Failed, 1), (Ready, 1)],
            },
        ]
    );
    let page = |manifest: Option<&str>, state| {
        let q = ConvergenceQuery {
            manifest: manifest.map(String::from),
            state,
            offset: 0,
            limit: 10,
        };
        let store = store.clone();
        async move {
            let ConvergencePage { rows, total } = store.convergence_page(&q).await.unwrap();
            let got: Vec<(String, u64)> = rows
                .into_iter()
                .map(|r| (r.node_name, r.report.map_or(0, |c| c.observed_generation)))
                .collect();
            (got, total)
        }
    };
    assert_eq!(
        page(None, Some(Ready)).await,
        (vec![("alpha".to_string(), 2)], 1),
        "a's worst state is its newest report's"
    );
    assert_eq!(
        page(None, Some(Failed)).await,
        (vec![("beta".to_string(), 1)], 1)
    );
    let fleet = store.fleet_counts().await.unwrap();
    assert_eq!(
        fleet.resources_by_state.iter().map(|(_, n)| n).sum::<u64>(),
        4
    );

    assert!(store.delete_node("b").await.unwrap());
    assert_eq!(
        counts().await,
        [
            ManifestCounts {
                manifest: "m1".into(),
                resources: vec![(Ready, 1)],
                nodes: vec![(Ready, 1)],
            },
            ManifestCounts {
                manifest: "m2".into(),
                resources: vec![(Ready, 1)],
                nodes: vec![(Ready, 1)],
            },
        ]
    );
    assert_eq!(page(Some("m2"), Some(Failed)).await, (Vec::new(), 0));
    assert_eq!(
        page(Some("m2"), None).await,
        (vec![("alpha".to_string(), 2)], 1)
    );
    let fleet = store.fleet_counts().await.unwrap();
    assert_eq!(fleet.resources_by_state, vec![("Ready".to_string(), 2)]);
}

fn beat(node: &str, at: DateTime<Utc>, metrics: Metrics) -> Heartbeat {
    Heartbeat {
        node_id: node.to_string(),
        at,
        metrics,
    }
}

async fn rollouts_are_kept_whole_and_a_manifest_keeps_its_newest_revisions(store: Arc<dyn Store>) {
    use drover_types::manifest::StoredManifest;
    use drover_types::rollout::{Rollout, RolloutPolicy, RolloutState, WavePlan};
    let revision = |generation: u64| {
        StoredManifest {
        generation,
        updated_at: Utc::now(),
        manifest: serde_json::from_value(serde_json::json!({
            "name": "web", "resources": [{"id": "f", "file": {"path": "/tmp/x", "content": generation.to_string()}}]
        }))
        .unwrap(),
        signature: None,
    }
    };
    for g in 1..=5 {
        store.put_manifest_revision(&revision(g), 3).await.unwrap();
    }
    // A generation kept already stays as it was.
    let mut again = revision(5);
    again.manifest.version = 9;
    store.put_manifest_revision(&again, 3).await.unwrap();
    let kept: Vec<u64> = store
        .manifest_revisions("web", 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.generation)
        .collect();
    assert_eq!(kept, [5, 4, 3]);
    assert_eq!(
        store
            .manifest_revision("web", 4)
            .await
            .unwrap()
            .map(|m| m.manifest.version),
        Some(0)
    );
    assert_eq!(
        store
            .manifest_revision("web", 5)
            .await
            .unwrap()
            .map(|m| m.manifest.version),
        Some(0)
    );
    assert!(store.manifest_revision("web", 1).await.unwrap().is_none());

    let mut rollout = Rollout {
        manifest: "web".into(),
        revision: 5,
        previous_revision: Some(4),
        state: RolloutState::Progressing,
        policy: RolloutPolicy {
            waves: vec![],
            spread_by: vec![],
            max_in_flight: None,
            bake: Some("1s".into()),
            wave_deadline: None,
            max_failures: None,
            min_sample: None,
            on_failure: Default::default(),
            on_unreachable: Default::default(),
            health: vec![],
        },
        plan: WavePlan {
            waves: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
            covered: Default::default(),
        },
        wave: 0,
        wave_started_at: Utc::now(),
        baking_since: None,
        reverted_waves: Default::default(),
        held: Default::default(),
        in_wave: Default::default(),
        reason: None,
        started_by: "admin".into(),
        started_at: Utc::now(),
        updated_at: Utc::now(),
        recomputing: false,
        completed: None,
    };
    assert!(store.get_rollout("web").await.unwrap().is_none());
    store.put_rollout(&rollout).await.unwrap();
    rollout.wave = 1;
    rollout.state = RolloutState::Baking;
    store.put_rollout(&rollout).await.unwrap();
    assert_eq!(
        store.get_rollout("web").await.unwrap(),
        Some(rollout.clone())
    );
    assert_eq!(store.list_rollouts().await.unwrap(), [rollout]);
    assert!(store.delete_rollout("web").await.unwrap());
    assert!(!store.delete_rollout("web").await.unwrap());
    assert!(store.list_rollouts().await.unwrap().is_empty());
}
