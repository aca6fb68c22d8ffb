//! A small Docker Engine API client over the local unix socket (Docker and Podman both serve it).

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no container engine answers on this node: {}", no_engine_hint(docker_host.as_deref(), tried))]
    NoEngine {
        /// `DOCKER_HOST` as the agent found it, when set.
        docker_host: Option<String>,
        /// The sockets looked for, in order.
        tried: Vec<PathBuf>,
    },
    #[error("the container engine connection failed: {0}")]
    Io(String),
    #[error("the container engine refused: {message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("the container engine sent something unreadable: {0}")]
    Decode(String),
    /// The engine answered a pull with 200 and then reported its failure in the progress stream (the
    /// Docker API's way: a registry that cannot be reached, an image it does not have).
    #[error("the pull failed: {0}")]
    Pull(String),
}

/// What to do about a missing engine, naming what was looked for.
fn no_engine_hint(docker_host: Option<&str>, tried: &[PathBuf]) -> String {
    let tried = tried
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match docker_host {
        Some(host) if host.starts_with("unix://") => format!(
            "DOCKER_HOST={host} names {tried}, which does not exist; start the engine's API socket there, or \
             fix or unset DOCKER_HOST in the agent's environment (unset, the agent tries /var/run/docker.sock \
             and Podman's sockets)"
        ),
        Some(host) => format!(
            "DOCKER_HOST={host} is not a unix:// socket, the only kind the agent speaks to; set \
             DOCKER_HOST=unix:///PATH/TO/SOCKET in the agent's environment, or unset it"
        ),
        None => format!(
            "tried {tried} and none exists; start Docker, or Podman's API socket (`systemctl enable --now \
             podman.socket`), or set DOCKER_HOST=unix:///PATH/TO/SOCKET in the agent's environment"
        ),
    }
}

/// Candidate sockets, in order: Docker's, Podman's (root, then rootless); with `DOCKER_HOST` set, only
/// the one it names, as the docker CLI does (a socket it does not name is not the engine asked for).
fn sockets(docker_host: Option<&str>) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(host) = docker_host {
        if let Some(p) = host.strip_prefix("unix://") {
            paths.push(PathBuf::from(p));
        }
        return paths;
    }
    paths.push("/var/run/docker.sock".into());
    paths.push("/run/podman/podman.sock".into());
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        paths.push(PathBuf::from(dir).join("podman/podman.sock"));
    }
    paths
}

pub struct Docker {
    socket: PathBuf,
}

impl Docker {
    /// The first engine socket that exists.
    pub fn find() -> Result<Self, DockerError> {
        let docker_host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty());
        let tried = sockets(docker_host.as_deref());
        match tried.iter().find(|p| p.exists()) {
            Some(socket) => Ok(Self {
                socket: socket.clone(),
            }),
            None => Err(DockerError::NoEngine { docker_host, tried }),
        }
    }

    /// Sends one request on a fresh connection and returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
    ) -> Result<Response<Incoming>, DockerError> {
        self.send_json(method, path, None).await
    }

    /// Like `send`, with a JSON body.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response<Incoming>, DockerError> {
        let io = |e: &dyn std::fmt::Display| DockerError::Io(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                DockerError::Io(format!(
                    "cannot connect to {}: {e} (is the engine running?)",
                    self.socket.display()
                ))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "docker")
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| io(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io(&e))?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(DockerError::Api {
            status: status.as_u16(),
            message,
        })
    }

    /// A request whose answer is JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, DockerError> {
        let resp = self.send(method, path).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| DockerError::Io(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| DockerError::Decode(e.to_string()))
    }

    /// A request with a JSON body whose answer is JSON.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, DockerError> {
        let resp = self.send_json(Method::POST, path, Some(body)).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| DockerError::Io(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| DockerError::Decode(e.to_string()))
    }

    /// Pulls `image`: the answer is a stream of JSON progress lines, one of which carries the error when
    /// the pull fails (with HTTP 200). Read a frame at a time, keeping at most `MAX_PULL_LINE` of a line.
    pub async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let path = format!("/images/create?fromImage={}", segment(image));
        let mut body = self.send(Method::POST, &path).await?.into_body();
        let mut line: Vec<u8> = Vec::new();
        let mut failure = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| DockerError::Io(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for &b in data.iter() {
                if b == b'\n' {
                    failure = failure.or_else(|| pull_error(&line));
                    line.clear();
                } else if line.len() < MAX_PULL_LINE {
                    line.push(b);
                }
            }
        }
        match failure.or_else(|| pull_error(&line)) {
            Some(message) => Err(DockerError::Pull(message)),
            None => Ok(()),
        }
    }

    /// A request whose answer has no body worth reading.
    pub async fn call(&self, method: Method, path: &str) -> Result<(), DockerError> {
        let resp = self.send(method, path).await?;
        let _ = resp.into_body().collect().await;
        Ok(())
    }
}

/// The most of one pull progress line kept (errors are short; progress lines are too).
const MAX_PULL_LINE: usize = 64 * 1024;

/// The error a pull progress line reports, if it reports one.
fn pull_error(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v["error"]
        .as_str()
        .or_else(|| v["errorDetail"]["message"].as_str())
        .map(str::to_string)
}

/// The engine's name of a manifest's container resource `id`.
pub fn name_for(id: &str) -> String {
    format!("drover-{id}")
}

/// Escapes a container name or id for a URL path.
pub use drover_types::url::percent_encode as segment;

#[cfg(test)]
mod tests {
    use super::pull_error;

    #[test]
    fn a_pull_reports_its_failure_in_its_progress_stream() {
        assert_eq!(
            pull_error(br#"{"status":"Pulling from library/busybox"}"#),
            None
        );
        assert_eq!(
            pull_error(br#"{"error":"dial tcp 127.0.0.1:1: connect: connection refused"}"#)
                .as_deref(),
            Some("dial tcp 127.0.0.1:1: connect: connection refused")
        );
        assert_eq!(
            pull_error(br#"{"errorDetail":{"message":"manifest unknown"}}"#).as_deref(),
            Some("manifest unknown")
        );
        assert_eq!(pull_error(b"not json"), None);
    }
}
