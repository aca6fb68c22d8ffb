//! Conversions between wire messages and the shared model. Empty proto strings mean "unknown".

use crate::v1;
use drover_types as t;

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn non_zero<N: Default + PartialEq>(n: N) -> Option<N> {
    (n != N::default()).then_some(n)
}

impl From<t::Capabilities> for v1::Capabilities {
    fn from(c: t::Capabilities) -> Self {
        Self {
            hostname: c.hostname.unwrap_or_default(),
            os: c.os.unwrap_or_default(),
            os_version: c.os_version.unwrap_or_default(),
            arch: c.arch.unwrap_or_default(),
            kernel: c.kernel.unwrap_or_default(),
            cpu_count: c.cpu_count.unwrap_or_default(),
            mem_mb: c.mem_mb.unwrap_or_default(),
            disk_mb: c.disk_mb.unwrap_or_default(),
            gpus: c.gpus.into_iter().map(Into::into).collect(),
            ips: c.ips,
            agent_version: c.agent_version.unwrap_or_default(),
        }
    }
}

impl From<v1::Capabilities> for t::Capabilities {
    fn from(c: v1::Capabilities) -> Self {
        Self {
            hostname: non_empty(c.hostname),
            os: non_empty(c.os),
            os_version: non_empty(c.os_version),
            arch: non_empty(c.arch),
            kernel: non_empty(c.kernel),
            cpu_count: non_zero(c.cpu_count),
            mem_mb: non_zero(c.mem_mb),
            disk_mb: non_zero(c.disk_mb),
            gpus: c.gpus.into_iter().map(Into::into).collect(),
            ips: c.ips,
            agent_version: non_empty(c.agent_version),
            extra: Default::default(),
        }
    }
}

impl From<t::Gpu> for v1::Gpu {
    fn from(g: t::Gpu) -> Self {
        Self {
            index: g.index.unwrap_or_default(),
            name: g.name,
            uuid: g.uuid.unwrap_or_default(),
            mem_mb: g.mem_mb.unwrap_or_default(),
            driver_version: g.driver_version.unwrap_or_default(),
        }
    }
}

impl From<v1::Gpu> for t::Gpu {
    fn from(g: v1::Gpu) -> Self {
        Self {
            index: Some(g.index),
            name: g.name,
            uuid: non_empty(g.uuid),
            mem_mb: non_zero(g.mem_mb),
            driver_version: non_empty(g.driver_version),
        }
    }
}

impl From<t::Metrics> for v1::Metrics {
    fn from(m: t::Metrics) -> Self {
        Self {
            cpu_usage: m.cpu_usage,
            mem_usage: m.mem_usage,
            disk_free_mb: m.disk_free_mb,
            load1: m.load1.unwrap_or_default(),
            load5: m.load5.unwrap_or_default(),
            load15: m.load15.unwrap_or_default(),
            uptime_s: m.uptime_s.unwrap_or_default(),
            running_containers: m
                .running_containers
                .into_iter()
                .map(|c| v1::RunningContainer {
                    id: c.id,
                    name: c.name,
                    image: c.image,
                    state: c.state,
                })
                .collect(),
        }
    }
}

impl From<v1::Metrics> for t::Metrics {
    fn from(m: v1::Metrics) -> Self {
        // A drover agent always sends every field, so zero loads are real zeros.
        Self {
            cpu_usage: m.cpu_usage,
            mem_usage: m.mem_usage,
            disk_free_mb: m.disk_free_mb,
            load1: Some(m.load1),
            load5: Some(m.load5),
            load15: Some(m.load15),
            uptime_s: Some(m.uptime_s),
            running_containers: m
                .running_containers
                .into_iter()
                .map(|c| t::RunningContainer {
                    id: c.id,
                    name: c.name,
                    image: c.image,
                    state: c.state,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_survive_the_wire() {
        let caps = t::Capabilities {
            hostname: Some("pi-1".into()),
            os: Some("linux".into()),
            cpu_count: Some(4),
            mem_mb: Some(1024),
            gpus: vec![t::Gpu {
                index: Some(0),
                name: "H100".into(),
                ..Default::default()
            }],
            ips: vec!["10.0.0.2".into()],
            ..Default::default()
        };
        let back: t::Capabilities = v1::Capabilities::from(caps.clone()).into();
        assert_eq!(back, caps);
    }
}
