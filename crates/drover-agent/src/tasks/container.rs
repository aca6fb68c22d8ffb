//! Container operations as tasks, through the Docker Engine API.

use std::time::Duration;

use drover_types::task::ContainerOp;
use http_body_util::BodyExt;
use hyper::Method;
use tokio::sync::{mpsc, watch};

use super::Ended;
use crate::docker::{Docker, DockerError, segment};
use crate::inventory::containers;

fn failed(e: DockerError) -> Ended {
    match e {
        DockerError::Api {
            status: 404,
            message,
        } => Ended {
            state: "Failed",
            exit_code: Some(1),
            signal: None,
            error: message,
        },
        e => Ended::error(e.to_string()),
    }
}

/// One container operation, as the task spec gave it.
pub struct Job {
    pub op: ContainerOp,
    pub container: Option<String>,
    pub all: bool,
    pub follow: bool,
    pub tail: Option<u32>,
    pub timeout: Option<Duration>,
}

pub async fn run(
    job: Job,
    emit: mpsc::Sender<(u8, Vec<u8>)>,
    mut cancel: watch::Receiver<bool>,
) -> Ended {
    let Job {
        op,
        container,
        all,
        follow,
        tail,
        timeout,
    } = job;
    let work = async {
        let docker = Docker::find().map_err(failed)?;
        let name = match op {
            ContainerOp::List => String::new(),
            _ => resolve(&docker, container.as_deref().unwrap_or_default())
                .await
                .map_err(failed)?,
        };
        let name = segment(&name);
        match op {
            ContainerOp::List => {
                let list = containers::try_list(all).await.map_err(failed)?;
                for c in list {
                    let line = format!("{}\t{}\t{}\t{}\n", c.id, c.name, c.image, c.state);
                    let _ = emit.send((1, line.into_bytes())).await;
                }
            }
            ContainerOp::Start => docker
                .call(Method::POST, &format!("/containers/{name}/start"))
                .await
                .map_err(failed)?,
            ContainerOp::Stop => docker
                .call(Method::POST, &format!("/containers/{name}/stop?t=10"))
                .await
                .map_err(failed)?,
            ContainerOp::Restart => docker
                .call(Method::POST, &format!("/containers/{name}/restart?t=10"))
                .await
                .map_err(failed)?,
            ContainerOp::Remove => docker
                .call(Method::DELETE, &format!("/containers/{name}?force=true"))
                .await
                .map_err(failed)?,
            ContainerOp::Logs => {
                let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
                let path = format!(
                    "/containers/{name}/logs?stdout=true&stderr=true&follow={follow}&tail={tail}"
                );
                let resp = docker.send(Method::GET, &path).await.map_err(failed)?;
                stream_logs(resp.into_body(), &emit)
                    .await
                    .map_err(|e| Ended::error(e.to_string()))?;
            }
        }
        Ok::<Ended, Ended>(Ended::ok())
    };
    let limit = super::time_limit(timeout);
    tokio::select! {
        r = work => r.unwrap_or_else(|e| e),
        _ = super::cancelled(&mut cancel) => Ended { state: "Cancelled", exit_code: None, signal: None, error: String::new() },
        _ = limit => Ended { state: "TimedOut", exit_code: None, signal: None, error: String::new() },
    }
}

/// The engine's name for the container the user named. A manifest's container resource `web` runs as
/// `drover-web`; users know it by its resource id, so that id finds it too when no container has the name
/// itself. When neither exists the error names both, and where to look.
async fn resolve(docker: &Docker, name: &str) -> Result<String, DockerError> {
    let exists = |n: String| async move {
        match docker
            .call(Method::GET, &format!("/containers/{}/json", segment(&n)))
            .await
        {
            Ok(()) => Ok(true),
            Err(DockerError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    };
    if exists(name.to_string()).await? {
        return Ok(name.to_string());
    }
    if name.starts_with("drover-") {
        return Err(not_found(format!("no such container: {name}")));
    }
    let managed = crate::docker::name_for(name);
    if exists(managed.clone()).await? {
        return Ok(managed);
    }
    Err(not_found(format!(
        "no such container: {name} (nor {managed}, the name of a manifest's container resource {name}); `drover containers NODE list --all` shows the names"
    )))
}

fn not_found(message: String) -> DockerError {
    DockerError::Api {
        status: 404,
        message,
    }
}

/// Demultiplexes the engine's log stream (8-byte frame headers: stream, 0, 0, 0, big-endian size) into lines.
async fn stream_logs(
    mut body: hyper::body::Incoming,
    emit: &mpsc::Sender<(u8, Vec<u8>)>,
) -> Result<(), hyper::Error> {
    let mut buf: Vec<u8> = Vec::new();
    let mut lines: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
        }
        while buf.len() >= 8 {
            let size = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + size {
                break;
            }
            let stream: u8 = if buf[0] == 2 { 2 } else { 1 };
            let payload: Vec<u8> = buf.drain(..8 + size).skip(8).collect();
            let pending = &mut lines[usize::from(stream - 1)];
            pending.extend_from_slice(&payload);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if emit.send((stream, line)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    for (i, rest) in lines.into_iter().enumerate() {
        if !rest.is_empty() {
            let _ = emit.send((i as u8 + 1, rest)).await;
        }
    }
    Ok(())
}
