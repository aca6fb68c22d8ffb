//! Each node's desired and actual state in JetStream KV (`drover server --nats`): the buckets
//! `desired-state` and `actual-state`, keyed by node id. PostgreSQL stays the source of truth; the buckets
//! are derived from it (written after the store took a change, rebuilt from it when behind), so losing
//! them loses nothing.
//!
//! - Writes are compare-and-set on the entry's KV revision and never put an older generation over a newer
//!   one: two replicas writing one node at once both land in order, whichever comes first.
//! - Every replica watches both buckets from the last revision it saw: the replica holding a node's stream
//!   delivers desired state another replica wrote, and every replica tells its status followers
//!   (`/api/v1/status/events`) of changes other replicas made.
//! - NATS down: a write fails at once with one warning, and the node is rewritten from PostgreSQL once
//!   NATS is back; a watch that ends is made again from its last revision, with backoff.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use drover_types::manifest::NodeConvergence;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{NatsError, subject_token};
use crate::reach::message::DesiredUpdate;
use crate::store::DesiredStateStore;

/// Attempts at one compare-and-set: each lost attempt means another write landed, and each writer lands
/// at most once, so this covers 32 writers of one node at once (two replicas make two).
const WRITE_TRIES: usize = 32;
/// Waits between attempts to watch a bucket again: from this, doubling.
const REWATCH_FIRST: Duration = Duration::from_millis(250);
const REWATCH_MAX: Duration = Duration::from_secs(10);
/// How often nodes whose write failed are looked at again (rewritten once NATS is connected).
const CATCH_UP_EVERY: Duration = Duration::from_secs(2);
/// Nodes rewritten at once when catching up.
const CATCH_UP_AT_ONCE: usize = 64;
/// Room kept in a NATS message for the record's other fields and the publish's headers.
const PAYLOAD_MARGIN: usize = 4096;
/// Nodes remembered as behind at most (one entry per node of the fleet; a bound all the same).
const MAX_BEHIND: usize = 1 << 20;

/// The two buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    Desired,
    Actual,
}

impl Bucket {
    pub const ALL: [Bucket; 2] = [Bucket::Desired, Bucket::Actual];

    pub fn name(self) -> &'static str {
        match self {
            Bucket::Desired => "desired-state",
            Bucket::Actual => "actual-state",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("{0:?} is not a node id")]
    BadKey(String),
    #[error("NATS is not connected")]
    Disconnected,
    #[error("cannot read {bucket}/{key}: {reason}")]
    Read {
        bucket: &'static str,
        key: String,
        reason: String,
    },
    #[error("cannot write {bucket}/{key}: {reason}")]
    Write {
        bucket: &'static str,
        key: String,
        reason: String,
    },
    #[error("{bucket}/{key} changed {WRITE_TRIES} times while this replica wrote it; gave up")]
    Contended { bucket: &'static str, key: String },
}

/// JetStream refused or failed a request about a bucket (its own errors differ by request).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JetStreamError(Box<dyn std::error::Error + Send + Sync>);

impl JetStreamError {
    fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        JetStreamError(Box::new(e))
    }
}

/// A bucket's value for a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The replica that wrote it: its own watch skips it (it already told its followers and agents).
    pub by: String,
    /// Desired: the generation. Actual: the generation the node reports it observed.
    pub generation: u64,
    /// Actual: when the report arrived (ms since the epoch), ordering reports of one generation; 0 for
    /// desired state, where one generation has one content.
    #[serde(default)]
    pub at_ms: i64,
    /// Desired: the state's JSON, as in `DesiredStateUpdate`. Actual: the report's JSON. Empty when it
    /// does not fit in a NATS message (reports may be larger than NATS's 1 MB default): the store has it.
    pub body: String,
}

impl Record {
    fn rank(&self) -> (u64, i64) {
        (self.generation, self.at_ms)
    }
}

/// Writes `record` under `key` unless the entry there ranks the same or higher; compare-and-set on the
/// entry's revision, reading again when another write landed first. `Some(revision)` when written.
pub async fn put_newer(
    store: &kv::Store,
    bucket: Bucket,
    key: &str,
    record: &Record,
) -> Result<Option<u64>, KvError> {
    let key = subject_token(key).ok_or_else(|| KvError::BadKey(key.to_string()))?;
    let value: Vec<u8> = serde_json::to_vec(record).unwrap_or_default();
    let failed = |reason: String| KvError::Write {
        bucket: bucket.name(),
        key: key.to_string(),
        reason,
    };
    for _ in 0..WRITE_TRIES {
        let current = store.entry(key).await.map_err(|e| KvError::Read {
            bucket: bucket.name(),
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let revision = match current {
            Some(entry) => {
                // An unreadable value is replaced: it carries no generation to keep.
                let kept = entry.operation == kv::Operation::Put
                    && serde_json::from_slice::<Record>(&entry.value)
                        .is_ok_and(|old| old.rank() >= record.rank());
                if kept {
                    return Ok(None);
                }
                entry.revision
            }
            // Revision 0: only if the key has no entry yet.
            None => 0,
        };
        match store.update(key, value.clone().into(), revision).await {
            Ok(written) => return Ok(Some(written)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Err(KvError::Contended {
        bucket: bucket.name(),
        key: key.to_string(),
    })
}

/// Makes a bucket, or opens it as it is (another replica made it). The stream is made as
/// `create_key_value` would, without its account query, which nats-server 2.9's answer does not satisfy.
async fn open_bucket(js: &jetstream::Context, bucket: Bucket) -> Result<kv::Store, JetStreamError> {
    use jetstream::stream::{Config, DiscardPolicy, StorageType};
    let name = bucket.name();
    let config = Config {
        name: format!("KV_{name}"),
        description: Some("drover: each node's state, derived from PostgreSQL".to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(JetStreamError::new)?;
    js.get_key_value(name).await.map_err(JetStreamError::new)
}

/// The buckets, as one replica uses them.
pub struct StateKv {
    client: async_nats::Client,
    js: jetstream::Context,
    desired: kv::Store,
    actual: kv::Store,
    /// This replica, in the records it writes.
    me: String,
    /// Whether writes are failing now: the first failure is a warning, the next ones wait for a success.
    failing: AtomicBool,
    /// Nodes whose write failed, rewritten from PostgreSQL once NATS is connected again.
    behind: Mutex<HashSet<(Bucket, String)>>,
}

impl StateKv {
    /// Makes (or opens) both buckets; fails when JetStream is off.
    pub async fn open(client: &async_nats::Client) -> Result<Self, NatsError> {
        let js = jetstream::new(client.clone());
        let open = |bucket: Bucket| {
            let js = js.clone();
            async move {
                open_bucket(&js, bucket)
                    .await
                    .map_err(|e| NatsError::Buckets {
                        bucket: bucket.name(),
                        reason: e.to_string(),
                    })
            }
        };
        let desired = open(Bucket::Desired).await?;
        let actual = open(Bucket::Actual).await?;
        Ok(Self {
            client: client.clone(),
            js,
            desired,
            actual,
            me: hex::encode(rand::random::<[u8; 8]>()),
            failing: AtomicBool::new(false),
            behind: Mutex::default(),
        })
    }

    fn store(&self, bucket: Bucket) -> &kv::Store {
        match bucket {
            Bucket::Desired => &self.desired,
            Bucket::Actual => &self.actual,
        }
    }

    fn behind(&self) -> std::sync::MutexGuard<'_, HashSet<(Bucket, String)>> {
        crate::sync::lock(&self.behind)
    }

    /// Writes a node's record; a failure is logged and remembered, never returned (PostgreSQL has it).
    async fn write(
        &self,
        bucket: Bucket,
        node_id: &str,
        generation: u64,
        at_ms: i64,
        body: String,
    ) {
        let room = self
            .client
            .server_info()
            .max_payload
            .saturating_sub(PAYLOAD_MARGIN);
        let body = if body.len() > room {
            String::new()
        } else {
            body
        };
        let record = Record {
            by: self.me.clone(),
            generation,
            at_ms,
            body,
        };
        // Not connected: fail at once rather than wait for an acknowledgement that cannot come.
        let written = if self.client.connection_state() == async_nats::connection::State::Connected
        {
            put_newer(self.store(bucket), bucket, node_id, &record).await
        } else {
            Err(KvError::Disconnected)
        };
        match written {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("writing node state to JetStream KV again");
                }
            }
            Err(KvError::BadKey(_)) => {}
            Err(e) => {
                let mut behind = self.behind();
                if behind.len() < MAX_BEHIND {
                    behind.insert((bucket, node_id.to_string()));
                }
                drop(behind);
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!("{e}");
                } else {
                    tracing::warn!(
                        "{e}; PostgreSQL has it, and the KV is rewritten from it once NATS is back (further failures are logged at debug level)"
                    );
                }
            }
        }
    }

    /// A watch of `bucket` from `next` (the revision after the last one seen; `None`: from now on).
    async fn watch(
        &self,
        bucket: Bucket,
        next: Option<u64>,
    ) -> Result<(kv::Watch, u64), JetStreamError> {
        // Made again if NATS lost it (a server started on an empty store): derived data, rebuilt as nodes
        // change and attach.
        let store = open_bucket(&self.js, bucket).await?;
        let last = store
            .status()
            .await
            .map_err(JetStreamError::new)?
            .info
            .state
            .last_sequence;
        let from = match next {
            None => last + 1,
            // The bucket is younger than what this replica saw: it was lost and made again.
            Some(n) if n > last + 1 => 1,
            Some(n) => n,
        };
        let watch = store
            .watch_all_from_revision(from)
            .await
            .map_err(JetStreamError::new)?;
        Ok((watch, from))
    }
}

/// What a replica does with a change another replica made to a node's state (the desired-state service).
pub trait StateObserver: Send + Sync + 'static {
    /// A node's desired or actual state changed: tell the status followers here.
    fn changed(&self, node_id: &str);
    /// Another replica wrote a node's desired state (`state_json`, empty when it was too large for NATS:
    /// the store has it): deliver it when the node's stream is here.
    fn desired_elsewhere(self: Arc<Self>, node_id: String, generation: u64, state_json: String);
}

impl StateKv {
    /// After the store took a node's new desired state: into the KV, for the replica holding its stream.
    pub async fn desired_written(&self, node_id: &str, update: &DesiredUpdate) {
        let body = update.state_json.clone();
        self.write(Bucket::Desired, node_id, update.generation, 0, body)
            .await;
    }

    /// After the store took a node's report: into the KV, for the other replicas' status followers.
    pub async fn actual_written(&self, node_id: &str, report: &NodeConvergence) {
        let at_ms = report.reported_at.map_or(0, |t| t.timestamp_millis());
        let body = serde_json::to_string(report).unwrap_or_default();
        self.write(
            Bucket::Actual,
            node_id,
            report.observed_generation,
            at_ms,
            body,
        )
        .await;
    }

    /// Rewrites from the store the nodes whose KV write failed, if NATS is connected now.
    async fn catch_up(&self, store: &dyn DesiredStateStore) {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return;
        }
        let nodes: Vec<(Bucket, String)> = self.behind().drain().collect();
        if nodes.is_empty() {
            return;
        }
        tracing::info!(
            nodes = nodes.len(),
            "rewriting node state to JetStream KV from the store"
        );
        futures_util::stream::iter(nodes)
            .for_each_concurrent(CATCH_UP_AT_ONCE, |(bucket, node)| async move {
                // Read now, not before: what the store holds when it is written.
                let read = match bucket {
                    Bucket::Desired => match store.get_desired(&node).await {
                        Ok(Some(d)) => {
                            self.desired_written(&node, &DesiredUpdate::bare(&d.state))
                                .await;
                            Ok(())
                        }
                        other => other.map(drop),
                    },
                    Bucket::Actual => match store.get_convergence(&node).await {
                        Ok(Some(report)) => {
                            self.actual_written(&node, &report).await;
                            Ok(())
                        }
                        other => other.map(drop),
                    },
                };
                if let Err(e) = read {
                    tracing::warn!(node = %node, "cannot read a node's state to rewrite it to JetStream KV: {e}");
                    let mut behind = self.behind();
                    if behind.len() < MAX_BEHIND {
                        behind.insert((bucket, node));
                    }
                }
            })
            .await;
    }

    /// A change in a bucket, from this replica's watch.
    fn state_changed(&self, observer: Arc<dyn StateObserver>, bucket: Bucket, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let Some(node) = subject_token(&entry.key) else {
            return;
        };
        let record: Record = match serde_json::from_slice(&entry.value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(node = %node, bucket = bucket.name(), "ignored an unreadable KV entry: {e}");
                return;
            }
        };
        if record.by == self.me {
            return;
        }
        observer.changed(node);
        if bucket == Bucket::Desired {
            observer.desired_elsewhere(node.to_string(), record.generation, record.body);
        }
    }
}

/// Watches both buckets, and rewrites nodes whose write failed once NATS is back, while `observer` lives.
pub fn watch(
    kv: Arc<StateKv>,
    observer: Weak<dyn StateObserver>,
    store: Arc<dyn DesiredStateStore>,
) {
    for bucket in Bucket::ALL {
        tokio::spawn(watch_bucket(kv.clone(), observer.clone(), bucket));
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CATCH_UP_EVERY);
        loop {
            tick.tick().await;
            if observer.strong_count() == 0 {
                return;
            }
            kv.catch_up(store.as_ref()).await;
        }
    });
}

/// Follows a bucket while the observer lives, watching again from the last revision seen when the watch
/// ends or fails (NATS restarted or unreachable), with backoff.
async fn watch_bucket(kv: Arc<StateKv>, observer: Weak<dyn StateObserver>, bucket: Bucket) {
    let mut next = None;
    let mut pause = REWATCH_FIRST;
    // Whether the watch is down after having worked: said once as a warning, and once when it is back.
    let mut lost = false;
    loop {
        if observer.strong_count() == 0 {
            return;
        }
        match kv.watch(bucket, next).await {
            Ok((mut watch, from)) => {
                next = Some(from);
                if std::mem::take(&mut lost) {
                    tracing::info!(bucket = bucket.name(), from, "watching node state again");
                }
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => {
                            pause = REWATCH_FIRST;
                            next = Some(entry.revision.saturating_add(1));
                            let Some(o) = observer.upgrade() else { return };
                            kv.state_changed(o, bucket, entry);
                        }
                        Err(e) => {
                            tracing::warn!(
                                bucket = bucket.name(),
                                "the watch of node state failed: {e}; watching again from where it stopped once NATS answers"
                            );
                            lost = true;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(bucket = bucket.name(), "cannot watch: {e}");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REWATCH_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64, at_ms: i64) -> Record {
        Record {
            by: "test".into(),
            generation,
            at_ms,
            body: format!("{{\"generation\":{generation}}}"),
        }
    }

    async fn read(store: &kv::Store, key: &str) -> Record {
        let value = store.get(key).await.unwrap().expect("an entry");
        serde_json::from_slice(&value).unwrap()
    }

    /// Many writers of one node at once, each with another generation, against a real nats-server: the
    /// highest stays, every write that landed came after a lower one, and none failed on a stale revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_keep_the_highest_generation() {
        let nats = drover_testkit::Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
        let client = async_nats::connect(nats.url()).await.unwrap();
        let kv = StateKv::open(&client).await.unwrap();
        const WRITERS: u64 = 24;
        for round in 0..4 {
            let key = format!("3f2b8c1e-9a4d-4e6f-8b2a-00000000000{round}");
            // Generations 1..=24 in a scrambled order, all started at once.
            let writes = (0..WRITERS).map(|i| {
                let generation = (i * 7 + round) % WRITERS + 1;
                let (store, key) = (&kv.desired, &key);
                async move {
                    let written =
                        put_newer(store, Bucket::Desired, key, &record(generation, 0)).await;
                    (generation, written)
                }
            });
            let mut landed: Vec<(u64, u64)> = futures_util::future::join_all(writes)
                .await
                .into_iter()
                .filter_map(|(generation, written)| {
                    let written =
                        written.unwrap_or_else(|e| panic!("generation {generation}: {e}"));
                    written.map(|revision| (revision, generation))
                })
                .collect();
            assert_eq!(
                read(&kv.desired, &key).await.generation,
                WRITERS,
                "the highest stays"
            );
            // In revision order, each write that landed raised the generation: none replaced a higher one.
            landed.sort();
            assert!(
                landed.windows(2).all(|w| w[0].1 < w[1].1),
                "writes in revision order: {landed:?}"
            );
            assert_eq!(landed.last().map(|l| l.1), Some(WRITERS));
        }
    }

    #[tokio::test]
    async fn an_older_record_never_replaces_a_newer_one() {
        let nats = drover_testkit::Nats::start().unwrap_or_else(|e| panic!("{e:#}"));
        let client = async_nats::connect(nats.url()).await.unwrap();
        let kv = StateKv::open(&client).await.unwrap();
        let key = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b";
        let put = |r: Record| {
            let store = kv.store(Bucket::Actual).clone();
            async move { put_newer(&store, Bucket::Actual, key, &r).await.unwrap() }
        };
        assert!(put(record(5, 100)).await.is_some(), "the first is created");
        assert!(
            put(record(4, 900)).await.is_none(),
            "a lower generation is kept out"
        );
        assert!(
            put(record(5, 100)).await.is_none(),
            "the same one is not written again"
        );
        assert!(
            put(record(5, 50)).await.is_none(),
            "an earlier report of one generation is kept out"
        );
        assert!(
            put(record(5, 200)).await.is_some(),
            "a later report of one generation replaces it"
        );
        assert_eq!(read(&kv.actual, key).await, record(5, 200));
        assert!(
            matches!(
                put_newer(&kv.actual, Bucket::Actual, "a.b", &record(9, 0)).await,
                Err(KvError::BadKey(_))
            ),
            "only node ids are keys"
        );
        // A bucket written by a replica, opened again by another, keeps its entries.
        let again = StateKv::open(&client).await.unwrap();
        assert_eq!(read(&again.actual, key).await, record(5, 200));
    }
}
