//! Running containers from the Docker Engine API on its local socket (Docker and Podman both serve it).
//! One short HTTP/1.0 request; no engine means an empty list.

use std::path::PathBuf;
use std::time::Duration;

use drover_types::RunningContainer;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Responses larger than this are not a container list we can use.
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;

fn sockets() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && let Some(p) = host.strip_prefix("unix://")
    {
        paths.push(PathBuf::from(p));
    }
    paths.push("/var/run/docker.sock".into());
    paths.push("/run/podman/podman.sock".into());
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        paths.push(PathBuf::from(dir).join("podman/podman.sock"));
    }
    paths
}

#[derive(Deserialize)]
struct ApiContainer {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "State", default)]
    state: String,
}

/// Running containers; empty when no engine answers.
pub async fn running(timeout: Duration) -> Vec<RunningContainer> {
    list(false, timeout).await.unwrap_or_default()
}

/// Containers (`all`: stopped ones too) from the first engine that answers; `None` when none does.
pub async fn list(all: bool, timeout: Duration) -> Option<Vec<RunningContainer>> {
    for socket in sockets() {
        if !socket.exists() {
            continue;
        }
        if let Ok(Some(list)) = tokio::time::timeout(timeout, query(&socket, all)).await {
            return Some(list);
        }
    }
    None
}

async fn query(socket: &std::path::Path, all: bool) -> Option<Vec<RunningContainer>> {
    let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let path = if all {
        "/containers/json?all=true"
    } else {
        "/containers/json"
    };
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .ok()?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Option<Vec<RunningContainer>> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (head, body) = (&response[..split], &response[split + 4..]);
    if !head.starts_with(b"HTTP/1.") || head.get(9..12).is_none_or(|c| c != b"200") {
        return None;
    }
    let list: Vec<ApiContainer> = serde_json::from_slice(body).ok()?;
    Some(
        list.into_iter()
            .map(|c| RunningContainer {
                id: c.id.chars().take(12).collect(),
                name: c
                    .names
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image,
                state: c.state,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_an_engine_answer() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[{\"Id\":\"0123456789abcdef\",\"Names\":[\"/web\"],\"Image\":\"busybox\",\"State\":\"running\"}]";
        let list = super::parse_response(raw).unwrap();
        assert_eq!(list[0].name, "web");
        assert_eq!(list[0].id, "0123456789ab");
        assert!(super::parse_response(b"HTTP/1.0 500 Oops\r\n\r\n[]").is_none());
        assert!(super::parse_response(b"garbage").is_none());
    }
}
