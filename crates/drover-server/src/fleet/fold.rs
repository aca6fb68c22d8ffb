//! Writes folded per task: while one write for a task is in flight, the writes that arrive for it wait and
//! go together into the next one. A fan-out's thousand runs then cost a few statements instead of a
//! thousand. In PostgreSQL this matters most for output, whose insert holds the task's output lock until it
//! commits (readers page by row, so a task's rows become visible in row order): one insert per run would
//! queue every run behind the others.
//!
//! A write's error is the writer's own type `E`, handed to every caller of the batch (so `Clone`); what
//! goes wrong in the fold itself is a [`FoldError`], turned into `E`. `E` is [`FoldFailure`] (the store's
//! error or the fold's) unless a fold names another: its writers then give that.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use tokio::sync::oneshot;

/// What goes wrong in the fold rather than in a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// The task serving the batch ended before answering (it panicked, or the runtime is shutting down).
    #[error("the task's writer stopped")]
    WriterStopped,
    /// A writer broke its contract: one result per item.
    #[error("a write gave {results} results for {items} items")]
    Miscounted { results: usize, items: usize },
}

/// A batch's failure, as every caller of the batch gets it: the store's error (shared, as callers are
/// many) or the fold's own. The error type of folds that name none.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FoldFailure {
    #[error(transparent)]
    Store(Arc<crate::store::StoreError>),
    #[error(transparent)]
    Fold(#[from] FoldError),
}

impl From<crate::store::StoreError> for FoldFailure {
    fn from(e: crate::store::StoreError) -> Self {
        FoldFailure::Store(Arc::new(e))
    }
}

type Waiter<O, E> = (usize, oneshot::Sender<Result<Vec<O>, E>>);

/// A batch being written, as a boxed future (what named writers return).
pub(crate) type Written<O, E = FoldFailure> =
    std::pin::Pin<Box<dyn Future<Output = Result<Vec<O>, E>> + Send>>;

/// What waits for a task's next write: the items, and who gave how many of them.
struct Queued<I, O, E> {
    items: Vec<I>,
    waiters: Vec<Waiter<O, E>>,
}

/// Tasks with a write in flight (present in the map), and what waits for their next one.
type Tasks<I, O, E> = Arc<Mutex<HashMap<String, Queued<I, O, E>>>>;

/// Per task, the write in flight and what waits for the next one.
pub(crate) struct Fold<I, O, E = FoldFailure>(Tasks<I, O, E>);

impl<I, O, E> Default for Fold<I, O, E> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<I, O, E> Fold<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: From<FoldError> + Clone + Send + 'static,
{
    /// Writes `items` for `task_id` with whatever else is queued for it, and returns their results (one per
    /// item, in order) once written. `write` gets every queued item of a batch, one caller's together and
    /// in order, and returns one result per item; the caller that finds the task idle supplies the `write`
    /// that serves the batches until the task is idle again.
    pub(crate) async fn write<W, F>(
        &self,
        task_id: &str,
        items: Vec<I>,
        write: W,
    ) -> Result<Vec<O>, E>
    where
        W: Fn(String, Vec<I>) -> F + Send + 'static,
        F: Future<Output = Result<Vec<O>, E>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let waiter = (items.len(), tx);
        let idle = {
            let mut tasks = lock(&self.0);
            match tasks.get_mut(task_id) {
                Some(q) => {
                    q.items.extend(items);
                    q.waiters.push(waiter);
                    false
                }
                None => {
                    let q = Queued {
                        items,
                        waiters: vec![waiter],
                    };
                    tasks.insert(task_id.to_string(), q);
                    true
                }
            }
        };
        if idle {
            let (tasks, task_id) = (self.0.clone(), task_id.to_string());
            tokio::spawn(drain(tasks, task_id, write));
        }
        rx.await
            .unwrap_or_else(|_| Err(FoldError::WriterStopped.into()))
    }
}

impl<I, E> Fold<I, (), E>
where
    I: Send + 'static,
    E: From<FoldError> + Clone + Send + 'static,
{
    /// As [`Fold::write`], for writes that give back nothing but whether they worked.
    pub(crate) async fn write_all<W, F>(
        &self,
        task_id: &str,
        items: Vec<I>,
        write: W,
    ) -> Result<(), E>
    where
        W: Fn(String, Vec<I>) -> F + Send + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let each = move |task_id, items: Vec<I>| {
            let n = items.len();
            let written = write(task_id, items);
            async move { written.await.map(|()| vec![(); n]) }
        };
        self.write(task_id, items, each).await.map(|_| ())
    }
}

/// Writes what is queued for the task until nothing is, then leaves the task idle.
async fn drain<I, O, E, W, F>(tasks: Tasks<I, O, E>, task_id: String, write: W)
where
    E: From<FoldError> + Clone,
    W: Fn(String, Vec<I>) -> F,
    F: Future<Output = Result<Vec<O>, E>>,
{
    loop {
        let (items, waiters) = {
            let mut map = lock(&tasks);
            let Some(q) = map.get_mut(&task_id) else {
                return;
            };
            if q.waiters.is_empty() {
                map.remove(&task_id);
                return;
            }
            (std::mem::take(&mut q.items), std::mem::take(&mut q.waiters))
        };
        let expected = items.len();
        let written = write(task_id.clone(), items)
            .await
            .and_then(|r| match r.len() {
                n if n == expected => Ok(r),
                results => Err(FoldError::Miscounted {
                    results,
                    items: expected,
                }
                .into()),
            });
        match written {
            Ok(results) => {
                let mut results = results.into_iter();
                for (n, tx) in waiters {
                    let _ = tx.send(Ok(results.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for (_, tx) in waiters {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A write that records its batch and answers item * 10, once the gate opens.
    fn writer(
        batches: Batches,
        gate: tokio::sync::watch::Receiver<bool>,
    ) -> impl Fn(String, Vec<u32>) -> Written<u32, FoldError> + Send + 'static {
        move |_task, items| {
            let (batches, mut gate) = (batches.clone(), gate.clone());
            Box::pin(async move {
                lock(&batches).push(items.clone());
                let _ = gate.wait_for(|open| *open).await;
                Ok(items.iter().map(|i| i * 10).collect())
            })
        }
    }

    #[tokio::test]
    async fn writes_arriving_while_one_is_in_flight_go_together_and_each_gets_its_own_results() {
        let fold: Arc<Fold<u32, u32, FoldError>> = Arc::default();
        let batches: Batches = Arc::default();
        let (release, gate) = tokio::sync::watch::channel(false);
        let spawn = |items: Vec<u32>| {
            let (fold, w) = (fold.clone(), writer(batches.clone(), gate.clone()));
            tokio::spawn(async move { fold.write("t", items, w).await })
        };
        let first = spawn(vec![1]);
        while lock(&batches).is_empty() {
            tokio::task::yield_now().await;
        }
        let (second, third) = (spawn(vec![2, 3]), spawn(vec![4]));
        while lock(&fold.0).get("t").map(|q| q.items.len()) != Some(3) {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(vec![10]));
        assert_eq!(second.await.unwrap(), Ok(vec![20, 30]));
        assert_eq!(third.await.unwrap(), Ok(vec![40]));
        assert_eq!(*lock(&batches), vec![vec![1], vec![2, 3, 4]]);
        assert!(lock(&fold.0).is_empty(), "idle again");
    }

    #[tokio::test]
    async fn a_writer_that_miscounts_fails_its_batch_with_the_folds_own_error() {
        let fold: Fold<u32, u32, FoldError> = Fold::default();
        let short = |_task, _items| async { Ok(Vec::new()) };
        assert_eq!(
            fold.write("t", vec![1, 2], short).await,
            Err(FoldError::Miscounted {
                results: 0,
                items: 2
            })
        );
        // As a failure of the batch, where the writers report the store's errors.
        let fold: Fold<u32, u32> = Fold::default();
        let short = |_task, _items| async { Ok(Vec::new()) };
        let e = fold.write("t", vec![1], short).await.unwrap_err();
        assert_eq!(e.to_string(), "a write gave 0 results for 1 items");
    }
}
