//! Container resources through the Docker Engine API: created with labels naming the resource and a hash of
//! its spec, recreated when the spec changes, started when found stopped, probed by the agent's own health
//! check (engines without systemd never run theirs). Bind mounts are admitted by the node's policy before
//! any of this runs.

use std::time::Duration;

use drover_types::manifest::{ContainerSpec, Kind, PullPolicy, Resource, ResourceKind, parse_port};
use hyper::Method;
use serde_json::{Value, json};

use super::ConvergeCtx;
use super::reconciler::{ConvergeError, Outcome, Reconciler, Summary, Target};
use crate::docker::{Docker, DockerError, name_for, segment};

pub struct ContainerKind;

pub struct Observed {
    docker: Docker,
    existing: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Create,
    /// The spec changed: remove, then create.
    Recreate,
    /// Found in this state, not running.
    Start(String),
    Nothing,
}

pub struct Plan {
    docker: Docker,
    name: String,
    action: Action,
}

impl Plan {
    fn what(&self) -> Option<String> {
        match &self.action {
            Action::Create => Some("the container is missing".into()),
            Action::Recreate => Some("the spec changed; recreate".into()),
            Action::Start(state) => Some(format!("the container is {state}")),
            Action::Nothing => None,
        }
    }
}

impl Reconciler for ContainerKind {
    type Spec = ContainerSpec;
    type Observed = Observed;
    type Plan = Plan;
    const KIND: ResourceKind = ResourceKind::Container;

    fn spec(resource: &Resource) -> Option<&ContainerSpec> {
        match resource.kind() {
            Some(Kind::Container(c)) => Some(c),
            _ => None,
        }
    }

    async fn observe(
        &self,
        _ctx: &ConvergeCtx,
        target: &Target<'_, ContainerSpec>,
    ) -> Result<Observed, ConvergeError> {
        let docker = Docker::find()?;
        let path = format!("/containers/{}/json", segment(&name_for(target.id)));
        let existing = match docker.json(Method::GET, &path).await {
            Ok(v) => Some(v),
            Err(DockerError::Api { status: 404, .. }) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Observed { docker, existing })
    }

    fn plan(&self, target: &Target<'_, ContainerSpec>, o: Observed) -> Plan {
        let action = match &o.existing {
            None => Action::Create,
            Some(c) if c["Config"]["Labels"]["drover.spec"].as_str() != Some(target.hash) => {
                Action::Recreate
            }
            Some(c) if c["State"]["Running"] != true => Action::Start(
                c["State"]["Status"]
                    .as_str()
                    .unwrap_or("not running")
                    .to_string(),
            ),
            Some(_) => Action::Nothing,
        };
        Plan {
            docker: o.docker,
            name: name_for(target.id),
            action,
        }
    }

    fn summary(plan: &Plan) -> Summary {
        Summary {
            handle: plan.name.clone(),
            creates: plan.action == Action::Create,
            changes: plan.what().into_iter().collect(),
        }
    }

    async fn apply(
        &self,
        _ctx: &ConvergeCtx,
        target: &Target<'_, ContainerSpec>,
        plan: Plan,
    ) -> Result<Outcome, ConvergeError> {
        let (docker, name, spec) = (&plan.docker, &plan.name, target.spec);
        let path = format!("/containers/{}/json", segment(name));
        if plan.action == Action::Recreate {
            docker
                .call(
                    Method::DELETE,
                    &format!("/containers/{}?force=true", segment(name)),
                )
                .await?;
        }
        if matches!(plan.action, Action::Create | Action::Recreate) {
            ensure_image(docker, spec).await?;
            let body = create_body(target.id, spec, target.hash);
            docker
                .post_json::<Value>(&format!("/containers/create?name={}", segment(name)), &body)
                .await?;
        }
        let state = docker.json::<Value>(Method::GET, &path).await?;
        if state["State"]["Running"] != true {
            docker
                .call(
                    Method::POST,
                    &format!("/containers/{}/start", segment(name)),
                )
                .await?;
        }
        let state = docker.json::<Value>(Method::GET, &path).await?;
        let mut health = Value::Null;
        if let Some(check) = &spec.health {
            // The engine runs no health checks without systemd: the agent probes, a few tries a second apart.
            let tries = check.retries.unwrap_or(3).max(1);
            let mut code = -1;
            for attempt in 0..tries {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                code = exec(docker, name, &check.command).await?;
                if code == 0 {
                    break;
                }
            }
            health = json!(if code == 0 { "healthy" } else { "unhealthy" });
            if code != 0 {
                return Err(ConvergeError::Unhealthy { code, tries });
            }
        }
        Ok(Outcome {
            changed: plan.what(),
            details: json!({
                "container_id": state["Id"].as_str().map(|s| s.chars().take(12).collect::<String>()),
                "state": state["State"]["Status"],
                "restart_count": state["RestartCount"],
                "health": health,
            }),
            // Containers named drover-<id> are always the agent's own.
            created: true,
        })
    }

    async fn delete(&self, _ctx: &ConvergeCtx, name: &str) -> Result<(), ConvergeError> {
        let docker = Docker::find()?;
        match docker
            .call(
                Method::DELETE,
                &format!("/containers/{}?force=true", segment(name)),
            )
            .await
        {
            Ok(()) | Err(DockerError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

async fn ensure_image(docker: &Docker, spec: &ContainerSpec) -> Result<(), ConvergeError> {
    let present = match docker
        .call(
            Method::GET,
            &format!("/images/{}/json", segment(&spec.image)),
        )
        .await
    {
        Ok(()) => true,
        Err(DockerError::Api { status: 404, .. }) => false,
        Err(e) => return Err(e.into()),
    };
    let pull = match spec.pull {
        PullPolicy::Always => true,
        PullPolicy::IfNotPresent => !present,
        PullPolicy::Never => false,
    };
    if pull {
        docker
            .pull(&spec.image)
            .await
            .map_err(|source| ConvergeError::Pull {
                image: spec.image.clone(),
                source,
            })?;
    } else if !present {
        return Err(ConvergeError::NoImage(spec.image.clone()));
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
async fn exec(docker: &Docker, name: &str, command: &[String]) -> Result<i64, ConvergeError> {
    let created: Value = docker
        .post_json(
            &format!("/containers/{}/exec", segment(name)),
            &json!({"Cmd": command, "AttachStdout": true, "AttachStderr": true}),
        )
        .await?;
    let exec_id = created["Id"]
        .as_str()
        .ok_or(ConvergeError::NoExecId)?
        .to_string();
    let run = async {
        let resp = docker
            .send_json(
                Method::POST,
                &format!("/exec/{exec_id}/start"),
                Some(&json!({"Detach": false, "Tty": false})),
            )
            .await?;
        use http_body_util::BodyExt;
        let _ = resp.into_body().collect().await;
        Ok::<(), ConvergeError>(())
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| ConvergeError::HealthTimeout)??;
    let info: Value = docker
        .json(Method::GET, &format!("/exec/{exec_id}/json"))
        .await?;
    Ok(info["ExitCode"].as_i64().unwrap_or(-1))
}
