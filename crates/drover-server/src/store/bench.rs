//! Store-level benchmarks on a SQLite store filled through the `Store` trait: the operator's convergence
//! reads (`manifest_counts`, `convergence_page`) and a fan-out's run transitions. Ignored by default; run
//! them on the profiling build:
//! `cargo test --profile profiling -p drover-server --lib store::bench -- --ignored --nocapture`
//! (`NODES`, default 5000; `RESOURCES` per report, default 1; `BATCH`, nodes per transition, default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_types::manifest::{NodeConvergence, ResourceState, ResourceStatus};

use super::RunPatch;
use super::conformance::{node, task};
use super::prelude::*;
use super::{ConvergenceQuery, SqliteStore};
use drover_types::task::RunState;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A report as an agent sends one: `resources` file resources of manifest `m0` (and `m1` for every other
/// one), one node in 10 with a failed one.
fn report(i: usize, resources: usize) -> NodeConvergence {
    let resources = (0..resources)
        .map(|r| {
            let state = if i.is_multiple_of(10) && r == 0 {
                ResourceState::Failed
            } else {
                ResourceState::Ready
            };
            let mut s = ResourceStatus::new(
                &format!("/etc/drover/file-{r}"),
                &format!("m{}", r % 2),
                "file",
                state,
            );
            s.details = serde_json::json!({ "sha256": format!("{:064x}", i * 1000 + r) });
            s
        })
        .collect();
    NodeConvergence {
        observed_generation: 1,
        resources,
        ..NodeConvergence::default()
    }
}

/// min / median / max milliseconds of `n` runs of `f`.
async fn timed<F, Fut>(n: usize, mut f: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut took: Vec<Duration> = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        f().await;
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.2} / {:.2} / {:.2} ms",
        ms(took[0]),
        ms(took[n / 2]),
        ms(took[n - 1])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand (see the module's doc)"]
async fn convergence_reads_at_fleet_size() {
    let (nodes, resources) = (env("NODES", 5000), env("RESOURCES", 1));
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let fill = Instant::now();
    for i in 0..nodes {
        let id = format!("id-{i:05}");
        store
            .insert_node(&node(&id, &format!("sim-{i:05}")))
            .await
            .unwrap();
    }
    let reports = Instant::now();
    for i in 0..nodes {
        store
            .put_convergence(&format!("id-{i:05}"), &report(i, resources))
            .await
            .unwrap();
    }
    println!(
        "{nodes} nodes, {resources} resources each: filled in {:.1} s (reports {:.1} s)",
        fill.elapsed().as_secs_f64(),
        reports.elapsed().as_secs_f64()
    );
    let page = |manifest: Option<&str>, state, offset| ConvergenceQuery {
        manifest: manifest.map(String::from),
        state,
        offset,
        limit: 50,
    };
    let runs = 20;
    let counts = timed(runs, || async {
        let c = store.manifest_counts().await.unwrap();
        assert!(!c.is_empty());
    })
    .await;
    println!("manifest_counts: {counts}");
    for (what, q) in [
        ("m0, page 50", page(Some("m0"), None, nodes / 2)),
        (
            "m0 Failed",
            page(Some("m0"), Some(ResourceState::Failed), 0),
        ),
        ("any Failed", page(None, Some(ResourceState::Failed), 0)),
        ("every node, page 50", page(None, None, nodes / 2)),
    ] {
        let took = timed(runs, || async {
            let total = store.convergence_page(&q).await.unwrap().total;
            assert!(total > 0);
        })
        .await;
        println!("convergence_page {what}: {took}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand (see the module's doc)"]
async fn run_transitions_of_a_fan_out() {
    let (nodes, batch) = (env("NODES", 5000), env("BATCH", 1000).max(1));
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let ids: Vec<String> = (0..nodes).map(|i| format!("id-{i:05}")).collect();
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    for round in 0..3 {
        let id = format!("task-{round}");
        store.insert_task(&task(&id, &names)).await.unwrap();
        const PENDING: &[RunState] = &[RunState::Pending];
        const RUNNING: &[RunState] = &[RunState::Running];
        for (from, to) in [(PENDING, RunState::Running), (RUNNING, RunState::Succeeded)] {
            let start = Instant::now();
            let mut moved = 0;
            for slice in ids.chunks(batch) {
                moved += store
                    .transition_runs(&id, slice.to_vec(), from, RunPatch::to(to))
                    .await
                    .unwrap()
                    .len();
            }
            assert_eq!(moved, nodes);
            println!(
                "{id}: {nodes} runs to {to:?} in batches of {batch}: {:.1} ms",
                start.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}
