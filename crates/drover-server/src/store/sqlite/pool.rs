//! Connections to the SQLite file: one writer thread that commits the writes queued meanwhile together
//! (group commit: a thousand heartbeats cost one transaction, not a thousand), and a few readers, which WAL
//! lets run beside the writer.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;
use crate::sync::lock;

/// Writes committed together at most.
const MAX_BATCH: usize = 1024;
/// Writes queued at most before writers wait.
const QUEUE: usize = 16 * 1024;
/// Read connections.
const READERS: usize = 3;

/// Hands a write's result to its caller once the batch it ran in is committed (or not).
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;
/// One write: runs inside the batch's transaction, in its own savepoint; says whether it succeeded.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Deliver) + Send>;

pub(super) struct Pool {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Each queued write runs in its own savepoint, whose journal SQLite keeps as a temporary file by
    // default: every page a write touched was written there first.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

impl Pool {
    /// Opens the file, lets `prepare` (migrations) run on the writer first, then starts the writer thread.
    pub fn open(
        path: &Path,
        prepare: impl FnOnce(&mut Connection) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let mut writer = open(path)?;
        // 8 MiB of pages instead of SQLite's 2: at 19,000 nodes every heartbeat and every desired state
        // written reads a page the default cache had just dropped (a fleet-wide apply took 8.7-11.1 s here
        // before, 6.9-7.0 s after). Readers keep the default: each holds only what its query needs.
        writer.pragma_update(None, "cache_size", -8192)?;
        prepare(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| open(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("drover-store-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(|e| StoreError::Task(format!("cannot start the store's writer: {e}")))?;
        Ok(Self {
            jobs,
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Runs `f` in the writer's current transaction. Returns once that transaction is committed, so what
    /// `f` wrote is visible to every later read.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let deliver: Deliver = Box::new(move |commit_error| {
                let result = match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(StoreError::Task(format!("commit failed: {e}"))),
                    (r, _) => r,
                };
                let _ = tx.send(result);
            });
            (ok, deliver)
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Task("the store's writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Task("the store's writer has stopped".into()))?
    }

    /// Runs `f` on a read connection in a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // Take a free reader if there is one, else wait for the one in turn.
            for i in 0..readers.len() {
                if let Ok(conn) = readers[(start + i) % readers.len()].try_lock() {
                    return f(&conn);
                }
            }
            f(&lock(&readers[start % readers.len()]))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn write_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        let in_transaction = run("BEGIN IMMEDIATE").is_ok();
        let mut delivers = Vec::with_capacity(jobs.len());
        for job in jobs {
            // A failing write rolls back to its savepoint and leaves the others in the batch alone.
            let savepoint = in_transaction && run("SAVEPOINT job").is_ok();
            let (ok, deliver) = job(&conn);
            if savepoint {
                let end = if ok {
                    run("RELEASE job")
                } else {
                    run("ROLLBACK TO job").and_then(|_| run("RELEASE job"))
                };
                if let Err(e) = end {
                    tracing::error!("store savepoint: {e}");
                }
            }
            delivers.push(deliver);
        }
        let commit_error = if in_transaction {
            match run("COMMIT") {
                Ok(_) => None,
                Err(e) => {
                    let _ = run("ROLLBACK");
                    tracing::error!("cannot commit to the store: {e}");
                    Some(e.to_string())
                }
            }
        } else {
            None
        };
        for deliver in delivers {
            deliver(commit_error.as_deref());
        }
    }
}
