//! Container resources through the Docker Engine API: created with labels naming the resource and a hash of
//! its spec, recreated when the spec changes, started when found stopped, probed by the agent's own health
//! check (engines without systemd never run theirs).

use std::time::Duration;

use drover_types::manifest::{ContainerSpec, PullPolicy, parse_port};
use hyper::Method;
use serde_json::{Value, json};

use super::Outcome;
use crate::docker::{Docker, DockerError, segment};

fn err(e: DockerError) -> String {
    e.to_string()
}

pub fn name_for(id: &str) -> String {
    format!("drover-{id}")
}

pub async fn reconcile(
    id: &str,
    spec: &ContainerSpec,
    hash: &str,
    dry: bool,
) -> Result<Outcome, String> {
    let docker = Docker::find().map_err(err)?;
    let name = name_for(id);
    let path = format!("/containers/{}/json", segment(&name));
    let mut changes = Vec::new();
    let mut created = false;
    let existing: Option<Value> = match docker.json(Method::GET, &path).await {
        Ok(v) => Some(v),
        Err(DockerError::Api { status: 404, .. }) => None,
        Err(e) => return Err(err(e)),
    };
    if dry {
        let action = match &existing {
            None => Some("create the container".to_string()),
            Some(c) if c["Config"]["Labels"]["drover.spec"].as_str() != Some(hash) => {
                Some("recreate the container (spec changed)".to_string())
            }
            Some(c) if c["State"]["Running"] != true => Some("start the container".to_string()),
            Some(_) => None,
        };
        return Ok(Outcome {
            changed: action,
            details: Value::Null,
            created: existing.is_none(),
            handle: name,
        });
    }
    let current = match existing {
        Some(c) if c["Config"]["Labels"]["drover.spec"].as_str() == Some(hash) => Some(c),
        Some(_) => {
            docker
                .call(
                    Method::DELETE,
                    &format!("/containers/{}?force=true", segment(&name)),
                )
                .await
                .map_err(err)?;
            changes.push("the spec changed; recreated".to_string());
            None
        }
        None => None,
    };
    if current.is_none() {
        ensure_image(&docker, spec).await?;
        let body = create_body(id, spec, hash);
        docker
            .post_json::<Value>(
                &format!("/containers/create?name={}", segment(&name)),
                &body,
            )
            .await
            .map_err(err)?;
        created = true;
        if changes.is_empty() {
            changes.push("container was missing".to_string());
        }
    }
    let state = docker
        .json::<Value>(Method::GET, &path)
        .await
        .map_err(err)?;
    if state["State"]["Running"] != true {
        if !created {
            changes.push(format!(
                "container was {}",
                state["State"]["Status"].as_str().unwrap_or("not running")
            ));
        }
        docker
            .call(
                Method::POST,
                &format!("/containers/{}/start", segment(&name)),
            )
            .await
            .map_err(err)?;
    }
    let state = docker
        .json::<Value>(Method::GET, &path)
        .await
        .map_err(err)?;
    let mut health = Value::Null;
    if let Some(check) = &spec.health {
        // The engine runs no health checks without systemd: the agent probes, a few tries a second apart.
        let tries = check.retries.unwrap_or(3).max(1);
        let mut code = -1;
        for attempt in 0..tries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            code = exec(&docker, &name, &check.command).await?;
            if code == 0 {
                break;
            }
        }
        health = json!(if code == 0 { "healthy" } else { "unhealthy" });
        if code != 0 {
            return Err(format!("the health check exited {code} ({tries} tries)"));
        }
    }
    Ok(Outcome {
        changed: (!changes.is_empty()).then(|| changes.join(", ")),
        details: json!({
            "container_id": state["Id"].as_str().map(|s| s.chars().take(12).collect::<String>()),
            "state": state["State"]["Status"],
            "restart_count": state["RestartCount"],
            "health": health,
        }),
        created: true,
        handle: name,
    })
}

async fn ensure_image(docker: &Docker, spec: &ContainerSpec) -> Result<(), String> {
    let present = match docker
        .call(
            Method::GET,
            &format!("/images/{}/json", segment(&spec.image)),
        )
        .await
    {
        Ok(()) => true,
        Err(DockerError::Api { status: 404, .. }) => false,
        Err(e) => return Err(err(e)),
    };
    let pull = match spec.pull {
        PullPolicy::Always => true,
        PullPolicy::IfNotPresent => !present,
        PullPolicy::Never => false,
    };
    if pull {
        docker
            .call(
                Method::POST,
                &format!("/images/create?fromImage={}", segment(&spec.image)),
            )
            .await
            .map_err(|e| format!("cannot pull {}: {}", spec.image, err(e)))?;
    } else if !present {
        return Err(format!(
            "image {} is not on this node and its pull policy is never",
            spec.image
        ));
    }
    Ok(())
}

fn create_body(id: &str, spec: &ContainerSpec, hash: &str) -> Value {
    let mut exposed = serde_json::Map::new();
    let mut bindings = serde_json::Map::new();
    for p in &spec.ports {
        if let Some((ip, host, ctr)) = parse_port(p) {
            let key = format!("{ctr}/tcp");
            exposed.insert(key.clone(), json!({}));
            bindings.insert(
                key,
                json!([{"HostIp": ip.unwrap_or_default(), "HostPort": host.to_string()}]),
            );
        }
    }
    let mut body = json!({
        "Image": spec.image,
        "Env": spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Labels": {"drover.resource": id, "drover.spec": hash},
        "ExposedPorts": exposed,
        "HostConfig": {
            "PortBindings": bindings,
            "Binds": spec.volumes,
            "RestartPolicy": {"Name": spec.restart.clone().unwrap_or_else(|| "no".into())},
            // An init process makes stop quick and reaps zombies.
            "Init": true,
        },
    });
    if !spec.command.is_empty() {
        body["Cmd"] = json!(spec.command);
    }
    body
}

/// Runs a command in the container and returns its exit code.
async fn exec(docker: &Docker, name: &str, command: &[String]) -> Result<i64, String> {
    let created: Value = docker
        .post_json(
            &format!("/containers/{}/exec", segment(name)),
            &json!({"Cmd": command, "AttachStdout": true, "AttachStderr": true}),
        )
        .await
        .map_err(err)?;
    let exec_id = created["Id"]
        .as_str()
        .ok_or("the engine returned no exec id")?
        .to_string();
    let run = async {
        let resp = docker
            .send_json(
                Method::POST,
                &format!("/exec/{exec_id}/start"),
                Some(&json!({"Detach": false, "Tty": false})),
            )
            .await
            .map_err(err)?;
        use http_body_util::BodyExt;
        let _ = resp.into_body().collect().await;
        Ok::<(), String>(())
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| "the health check timed out".to_string())??;
    let info: Value = docker
        .json(Method::GET, &format!("/exec/{exec_id}/json"))
        .await
        .map_err(err)?;
    Ok(info["ExitCode"].as_i64().unwrap_or(-1))
}

pub async fn delete(name: &str) -> Result<(), String> {
    let docker = Docker::find().map_err(err)?;
    match docker
        .call(
            Method::DELETE,
            &format!("/containers/{}?force=true", segment(name)),
        )
        .await
    {
        Ok(()) | Err(DockerError::Api { status: 404, .. }) => Ok(()),
        Err(e) => Err(err(e)),
    }
}
