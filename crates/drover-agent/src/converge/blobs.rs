//! Content by SHA-256 for File resources: a local cache in the state dir, filled from the server over the
//! agent's own stream (`BlobRequest` out, `BlobData` pieces back), so a fleet-wide apply opens no
//! connection per file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1::{self, AgentMessage, agent_message::Msg};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Largest blob accepted, as the server's largest message.
const MAX_BLOB: usize = 64 * 1024 * 1024;
/// How long a fetch may take in all.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Pending {
    sha256: String,
    data: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, FetchError>>,
}

/// Why content could not be fetched from the server.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not connected to the server; content is fetched once the link is back")]
    NotConnected,
    #[error("the link to the server broke")]
    LinkBroke,
    #[error("the link to the server broke during the fetch")]
    LinkBrokeDuring,
    #[error("the fetch was abandoned")]
    Abandoned,
    #[error("no content {sha256} from the server within {after:?}")]
    TimedOut { sha256: String, after: Duration },
    #[error("the server cannot send content {sha256}: {message}")]
    Refused { sha256: String, message: String },
    #[error("content {0} arrived out of order")]
    OutOfOrder(String),
    #[error("content {0} is larger than {MAX_BLOB} bytes")]
    TooLarge(String),
    #[error("the server sent content that does not hash to {0}")]
    WrongHash(String),
}

/// Why [`Blobs::get`] has no content.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0:?} is not a SHA-256")]
    NotSha256(String),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Fetches in flight over the current stream.
#[derive(Default)]
pub struct Fetcher {
    link: Mutex<Option<mpsc::Sender<AgentMessage>>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Fetcher {
    pub fn connected(&self, tx: mpsc::Sender<AgentMessage>) {
        *lock(&self.link) = Some(tx);
    }

    /// The stream is gone: what was in flight fails (the reconciler retries with backoff).
    pub fn disconnected(&self) {
        *lock(&self.link) = None;
        for (_, p) in lock(&self.pending).drain() {
            let _ = p.reply.send(Err(FetchError::LinkBrokeDuring));
        }
    }

    /// A piece from the server. Pieces come in order; anything else fails the fetch.
    pub fn data(&self, piece: v1::BlobData) {
        let mut pending = lock(&self.pending);
        let Some(p) = pending.get_mut(&piece.request_id) else {
            return;
        };
        let outcome = if !piece.error.is_empty() {
            Some(Err(FetchError::Refused {
                sha256: p.sha256.clone(),
                message: piece.error,
            }))
        } else if piece.offset != p.data.len() as u64 {
            Some(Err(FetchError::OutOfOrder(p.sha256.clone())))
        } else if p.data.len() + piece.data.len() > MAX_BLOB {
            Some(Err(FetchError::TooLarge(p.sha256.clone())))
        } else {
            p.data.extend_from_slice(&piece.data);
            piece.last.then(|| Ok(std::mem::take(&mut p.data)))
        };
        if let Some(outcome) = outcome
            && let Some(p) = pending.remove(&piece.request_id)
        {
            let _ = p.reply.send(outcome);
        }
    }

    /// Fetches content over the current stream and checks that it hashes to its name.
    pub async fn fetch(&self, sha256: &str) -> Result<Vec<u8>, FetchError> {
        let blob = self.fetch_unchecked(sha256).await?;
        if hex::encode(Sha256::digest(&blob)) != sha256 {
            return Err(FetchError::WrongHash(sha256.to_string()));
        }
        Ok(blob)
    }

    async fn fetch_unchecked(&self, sha256: &str) -> Result<Vec<u8>, FetchError> {
        let tx = lock(&self.link).clone().ok_or(FetchError::NotConnected)?;
        let request_id = uuid_like();
        let (reply, rx) = oneshot::channel();
        lock(&self.pending).insert(
            request_id.clone(),
            Pending {
                sha256: sha256.to_string(),
                data: Vec::new(),
                reply,
            },
        );
        let request = v1::BlobRequest {
            request_id: request_id.clone(),
            sha256: sha256.to_string(),
        };
        let outcome = async {
            tx.send(AgentMessage {
                msg: Some(Msg::BlobRequest(request)),
            })
            .await
            .map_err(|_| FetchError::LinkBroke)?;
            match tokio::time::timeout(FETCH_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(FetchError::Abandoned),
                Err(_) => Err(FetchError::TimedOut {
                    sha256: sha256.to_string(),
                    after: FETCH_TIMEOUT,
                }),
            }
        }
        .await;
        lock(&self.pending).remove(&request_id);
        outcome
    }
}

/// The content sent inside a desired state update that hashes to its name.
pub fn verified_inline(inline: &[v1::InlineBlob]) -> impl Iterator<Item = &v1::InlineBlob> {
    inline
        .iter()
        .filter(|b| hex::encode(Sha256::digest(&b.data)) == b.sha256)
}

/// A request id unique within this agent's lifetime.
fn uuid_like() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

/// Content by SHA-256: the cache first, then the server.
#[derive(Clone)]
pub struct Blobs {
    pub cache: PathBuf,
    pub fetcher: Arc<Fetcher>,
}

impl Blobs {
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            fetcher: Arc::default(),
        }
    }

    /// Keeps the content that came inside a desired state update, so the resources naming it need no
    /// fetch: only what hashes to its name and what the state (`state_json`) names, so the cache holds
    /// nothing the node was not told to use. The rest is dropped (and fetched when needed).
    pub fn keep_inline(&self, inline: &[v1::InlineBlob], state_json: &str) {
        for blob in verified_inline(inline).filter(|b| state_json.contains(&b.sha256)) {
            let cached = self.cache.join(&blob.sha256);
            if cached.exists() {
                continue;
            }
            // No fsync on the link's path: what a crash loses is checked on read and fetched again.
            if let Err(e) = drover_files::create_private_dir(&self.cache)
                .and_then(|()| drover_files::replace(&cached, &blob.data, true))
            {
                tracing::warn!(
                    "cannot keep content {} sent with the desired state: {e}",
                    blob.sha256
                );
            }
        }
    }

    pub async fn get(&self, sha256: &str) -> Result<Vec<u8>, BlobError> {
        if !(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(BlobError::NotSha256(sha256.to_string()));
        }
        let cached = self.cache.join(sha256);
        if let Ok(data) = std::fs::read(&cached)
            && hex::encode(Sha256::digest(&data)) == sha256
        {
            return Ok(data);
        }
        let blob = self.fetcher.fetch(sha256).await?;
        if drover_files::create_private_dir(&self.cache).is_ok() {
            let _ = drover_files::write_atomic(&cached, &blob, true);
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_are_assembled_in_order_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().join("blobs"));
        let (tx, mut rx) = mpsc::channel(4);
        blobs.fetcher.connected(tx);
        let content = b"hello, fleet".to_vec();
        let sha = hex::encode(Sha256::digest(&content));
        let fetcher = blobs.fetcher.clone();
        let server = tokio::spawn(async move {
            let Some(AgentMessage {
                msg: Some(Msg::BlobRequest(r)),
            }) = rx.recv().await
            else {
                panic!("expected a blob request");
            };
            fetcher.data(v1::BlobData {
                request_id: r.request_id.clone(),
                offset: 0,
                data: b"hello, ".to_vec(),
                last: false,
                error: String::new(),
            });
            fetcher.data(v1::BlobData {
                request_id: r.request_id,
                offset: 7,
                data: b"fleet".to_vec(),
                last: true,
                error: String::new(),
            });
        });
        assert_eq!(blobs.get(&sha).await.unwrap(), content);
        server.await.unwrap();
        // Cached now: no link needed.
        blobs.fetcher.disconnected();
        assert_eq!(blobs.get(&sha).await.unwrap(), content);
        assert!(
            blobs
                .get(&"0".repeat(64))
                .await
                .unwrap_err()
                .to_string()
                .contains("not connected")
        );
    }

    #[tokio::test]
    async fn content_sent_with_the_desired_state_is_kept_when_it_hashes_to_a_name_the_state_has() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(dir.path().join("blobs"));
        let good = b"listen 8080\n".to_vec();
        let good_sha = hex::encode(Sha256::digest(&good));
        let forged_sha = hex::encode(Sha256::digest(b"the real content"));
        let other = b"not named by the state".to_vec();
        let other_sha = hex::encode(Sha256::digest(&other));
        let state = format!(
            r#"{{"resources":[{{"file":{{"sha256":"{good_sha}"}}}},{{"file":{{"sha256":"{forged_sha}"}}}}]}}"#
        );
        blobs.keep_inline(
            &[
                v1::InlineBlob {
                    sha256: other_sha.clone(),
                    data: other,
                },
                v1::InlineBlob {
                    sha256: good_sha.clone(),
                    data: good.clone(),
                },
                v1::InlineBlob {
                    sha256: forged_sha.clone(),
                    data: b"something else".to_vec(),
                },
                // Not a name a file may have.
                v1::InlineBlob {
                    sha256: "../escape".into(),
                    data: b"x".to_vec(),
                },
            ],
            &state,
        );
        // Not connected: the good one comes from the cache, the forged one is not there.
        assert_eq!(blobs.get(&good_sha).await.unwrap(), good);
        assert!(
            blobs
                .get(&forged_sha)
                .await
                .unwrap_err()
                .to_string()
                .contains("not connected")
        );
        assert!(!dir.path().join("escape").exists());
        assert!(!dir.path().join("blobs").join(other_sha).exists());
    }
}
