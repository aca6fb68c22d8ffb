//! The built-in daemon plugins.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::{DEFAULT_DEADLINE, DEFAULT_INTERVAL, DaemonEntry, DaemonPlugin, PluginError, payload};
use crate::inventory::{Collector, containers, disks, systemd};

pub fn entries() -> Vec<DaemonEntry> {
    vec![
        DaemonEntry {
            name: "metrics",
            make: || Box::new(Metrics(None)),
            interval: Duration::from_secs(5),
            // Includes a container-engine query, which may take up to a second itself.
            deadline: Duration::from_secs(2),
        },
        DaemonEntry {
            name: "disks",
            make: || Box::new(Disks),
            interval: DEFAULT_INTERVAL,
            deadline: DEFAULT_DEADLINE,
        },
        DaemonEntry {
            name: "network",
            make: || Box::new(Network),
            interval: DEFAULT_INTERVAL,
            deadline: DEFAULT_DEADLINE,
        },
        DaemonEntry {
            name: "containers",
            make: || Box::new(Containers),
            interval: DEFAULT_INTERVAL,
            deadline: Duration::from_secs(2),
        },
        DaemonEntry {
            name: "systemd_units",
            make: || Box::new(SystemdUnits),
            interval: Duration::from_secs(30),
            deadline: Duration::from_secs(2),
        },
    ]
}

/// The heartbeat's metrics at a finer grain.
struct Metrics(Option<Collector>);

#[async_trait]
impl DaemonPlugin for Metrics {
    async fn start(&mut self) -> Result<Value, PluginError> {
        self.0 = Some(Collector::new().map_err(PluginError::new)?);
        self.update()
            .await?
            .ok_or_else(|| PluginError::new("no metrics"))
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        let collector = self
            .0
            .as_mut()
            .ok_or_else(|| PluginError::new("not started"))?;
        Ok(Some(payload(&collector.metrics().await)?))
    }
}

/// Mounted filesystems and their usage.
struct Disks;

#[async_trait]
impl DaemonPlugin for Disks {
    async fn start(&mut self) -> Result<Value, PluginError> {
        self.update()
            .await?
            .ok_or_else(|| PluginError::new("no disks"))
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        let list = tokio::task::spawn_blocking(disks::disks)
            .await
            .map_err(PluginError::new)?;
        Ok(Some(payload(&list)?))
    }
}

#[derive(Serialize)]
struct Interface {
    name: String,
    mac: String,
    addresses: Vec<String>,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_errors: u64,
    tx_errors: u64,
}

/// Interfaces, addresses and byte counters.
struct Network;

#[async_trait]
impl DaemonPlugin for Network {
    async fn start(&mut self) -> Result<Value, PluginError> {
        self.update()
            .await?
            .ok_or_else(|| PluginError::new("no interfaces"))
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        let networks = sysinfo::Networks::new_with_refreshed_list().map_err(PluginError::new)?;
        let mut list: Vec<Interface> = networks
            .iter()
            .map(|(name, data)| Interface {
                name: name.to_string_lossy().into_owned(),
                mac: data.mac_address().to_string(),
                addresses: data
                    .ip_networks()
                    .iter()
                    .map(|n| format!("{}/{}", n.addr, n.prefix))
                    .collect(),
                rx_bytes: data.total_received(),
                tx_bytes: data.total_transmitted(),
                rx_errors: data.total_errors_on_received(),
                tx_errors: data.total_errors_on_transmitted(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(payload(&list)?))
    }
}

#[derive(Serialize)]
struct ContainerReport {
    /// Whether a container engine answered.
    engine: bool,
    containers: Vec<drover_types::RunningContainer>,
}

/// Containers through the Docker Engine API (Docker or Podman).
struct Containers;

#[async_trait]
impl DaemonPlugin for Containers {
    async fn start(&mut self) -> Result<Value, PluginError> {
        self.update()
            .await?
            .ok_or_else(|| PluginError::new("no report"))
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        let list = containers::list(true, Duration::from_secs(1)).await;
        Ok(Some(payload(&ContainerReport {
            engine: list.is_some(),
            containers: list.unwrap_or_default(),
        })?))
    }
}

#[derive(Serialize)]
struct UnitReport {
    /// Whether systemd runs on this node.
    systemd: bool,
    failed: Vec<systemd::UnitState>,
    running: Vec<systemd::UnitState>,
}

/// Failed and running systemd units.
struct SystemdUnits;

#[async_trait]
impl DaemonPlugin for SystemdUnits {
    async fn start(&mut self) -> Result<Value, PluginError> {
        self.update()
            .await?
            .ok_or_else(|| PluginError::new("no report"))
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        if !systemd::running() {
            return Ok(Some(payload(&UnitReport {
                systemd: false,
                failed: vec![],
                running: vec![],
            })?));
        }
        let units = systemd::units().await.map_err(PluginError::new)?;
        let (failed, running) = units.into_iter().partition(|u| u.active == "failed");
        Ok(Some(payload(&UnitReport {
            systemd: true,
            failed,
            running,
        })?))
    }
}
