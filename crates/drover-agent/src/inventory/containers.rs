//! Containers from the Docker Engine API (Docker and Podman both serve it). No engine means an empty list.

use std::time::Duration;

use drover_types::RunningContainer;
use serde::Deserialize;

use crate::docker::{Docker, DockerError};

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

/// Containers (`all`: stopped ones too); `None` when no engine answers in time.
pub async fn list(all: bool, timeout: Duration) -> Option<Vec<RunningContainer>> {
    tokio::time::timeout(timeout, try_list(all))
        .await
        .ok()?
        .ok()
}

pub async fn try_list(all: bool) -> Result<Vec<RunningContainer>, DockerError> {
    let path = if all {
        "/containers/json?all=true"
    } else {
        "/containers/json"
    };
    let list: Vec<ApiContainer> = Docker::find()?.json(hyper::Method::GET, path).await?;
    Ok(list.into_iter().map(convert).collect())
}

fn convert(c: ApiContainer) -> RunningContainer {
    RunningContainer {
        id: c.id.chars().take(12).collect(),
        name: c
            .names
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        image: c.image,
        state: c.state,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn converts_engine_entries() {
        let c: super::ApiContainer = serde_json::from_str(
            r#"{"Id":"0123456789abcdef","Names":["/web"],"Image":"busybox","State":"running"}"#,
        )
        .unwrap();
        let c = super::convert(c);
        assert_eq!((c.name.as_str(), c.id.as_str()), ("web", "0123456789ab"));
    }
}
