//! Fake but plausible node data: capabilities and metrics for Hello and heartbeats, and daemon-plugin
//! payloads shaped like the real plugins'. Payloads are a pure function of (agent, plugin, version), so an
//! agent keeps no copy of what it sent: a new version means "changed".

use drover_types::{Capabilities, Metrics, RunningContainer};
use serde_json::{Value, json};

/// A small deterministic generator (splitmix64): same seed, same numbers.
pub struct Gen(u64);

impl Gen {
    pub fn new(agent: u32, salt: u64, version: u32) -> Self {
        Self(
            (u64::from(agent) << 32 | u64::from(version))
                ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    /// A percentage with one decimal.
    pub fn percent(&mut self, lo: u64, hi: u64) -> f64 {
        self.range(lo * 10, hi * 10) as f64 / 10.0
    }
}

pub fn hostname(agent: u32) -> String {
    format!("sim-{agent:05}")
}

fn ip(agent: u32) -> String {
    format!(
        "10.{}.{}.{}",
        64 + (agent >> 16) % 64,
        (agent >> 8) & 255,
        agent & 255
    )
}

/// The kernel a Debian 12 node of this arch runs.
fn kernel(arch: &str) -> &'static str {
    match arch {
        "aarch64" => "6.1.0-28-arm64",
        "armv7" | "armv7l" => "6.1.0-28-armmp",
        _ => "6.1.0-28-amd64",
    }
}

pub fn capabilities(agent: u32, arch: &str) -> Capabilities {
    let mut g = Gen::new(agent, 1, 0);
    let cpus = [2, 4, 8, 16, 32, 64][g.range(0, 6) as usize];
    Capabilities {
        hostname: Some(hostname(agent)),
        os: Some("linux".into()),
        os_version: Some("Debian GNU/Linux 12 (bookworm)".into()),
        arch: Some(arch.into()),
        kernel: Some(kernel(arch).into()),
        cpu_count: Some(cpus),
        mem_mb: Some(u64::from(cpus) * 4096),
        disk_mb: Some(g.range(64, 2048) * 1024),
        gpus: vec![],
        ips: vec![ip(agent)],
        agent_version: Some(drover_types::VERSION.into()),
        extra: Default::default(),
    }
}

/// Metrics that wander a little from beat to beat.
pub fn metrics(agent: u32, beat: u32) -> Metrics {
    let mut g = Gen::new(agent, 2, beat);
    let load1 = g.range(0, 400) as f64 / 100.0;
    Metrics {
        cpu_usage: g.percent(1, 60),
        mem_usage: g.percent(10, 80),
        disk_free_mb: g.range(10, 900) * 1024,
        load1: Some(load1),
        load5: Some(load1 * 0.9),
        load15: Some(load1 * 0.8),
        uptime_s: Some(86_400 + u64::from(beat) * 10),
        running_containers: vec![],
    }
}

/// The payload of one of the agent's daemon plugins, shaped like the real one.
pub fn session_payload(plugin: &str, agent: u32, version: u32) -> Value {
    let salt = plugin
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut g = Gen::new(agent, salt, version);
    match plugin {
        "metrics" => serde_json::to_value(metrics(agent, version)).unwrap_or(Value::Null),
        "disks" => json!([
            disk(&mut g, "/", "/dev/sda2", "ext4", 200_000),
            disk(&mut g, "/boot/efi", "/dev/sda1", "vfat", 512),
            disk(&mut g, "/var/lib/data", "/dev/nvme0n1p1", "xfs", 1_800_000),
        ]),
        "network" => json!([
            {"name": "eth0", "mac": format!("52:54:00:{:02x}:{:02x}:{:02x}", (agent >> 16) & 255, (agent >> 8) & 255, agent & 255),
             "addresses": [format!("{}/16", ip(agent))], "rx_bytes": g.range(1 << 30, 1 << 40),
             "tx_bytes": g.range(1 << 28, 1 << 38), "rx_errors": 0, "tx_errors": g.range(0, 3)},
            {"name": "lo", "mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1/8", "::1/128"],
             "rx_bytes": g.range(1 << 20, 1 << 30), "tx_bytes": g.range(1 << 20, 1 << 30), "rx_errors": 0, "tx_errors": 0},
        ]),
        "containers" => {
            let n = g.range(1, 4);
            let containers: Vec<RunningContainer> = (0..n)
                .map(|i| RunningContainer {
                    id: format!("{:016x}", g.next()),
                    name: format!("app-{i}"),
                    image: "registry.example.com/app:1.4".into(),
                    state: "running".into(),
                })
                .collect();
            json!({"engine": true, "containers": containers})
        }
        "systemd_units" => {
            let failed = if g.range(0, 10) == 0 {
                vec![unit("backup.service", "failed", "failed", "Nightly backup")]
            } else {
                vec![]
            };
            json!({"systemd": true, "failed": failed, "running": [
                unit("sshd.service", "active", "running", "OpenBSD Secure Shell server"),
                unit("drover-agent.service", "active", "running", "drover agent"),
                unit("systemd-journald.service", "active", "running", "Journal Service"),
                // Transient units come and go on real nodes; they are what makes this payload change.
                unit(&format!("run-u{}.scope", g.range(1, 100_000)), "active", "running", "/usr/bin/backup"),
            ]})
        }
        other => json!({"plugin": other, "version": version, "value": g.next()}),
    }
}

fn disk(g: &mut Gen, mount: &str, device: &str, fs: &str, total_mb: u64) -> Value {
    let free = g.range(total_mb / 10, total_mb);
    json!({"mount_point": mount, "device": device, "fs_type": fs, "total_mb": total_mb, "free_mb": free,
           "used_percent": ((total_mb - free) * 1000 / total_mb) as f64 / 10.0})
}

fn unit(name: &str, active: &str, sub: &str, description: &str) -> Value {
    json!({"unit": name, "load": "loaded", "active": active, "sub": sub, "description": description})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_plausible_sized_and_stable_per_version() {
        for plugin in [
            "metrics",
            "disks",
            "network",
            "containers",
            "systemd_units",
            "other",
        ] {
            let a = session_payload(plugin, 42, 3).to_string();
            assert_eq!(a, session_payload(plugin, 42, 3).to_string(), "{plugin}");
            assert_ne!(a, session_payload(plugin, 42, 4).to_string(), "{plugin}");
            assert_ne!(a, session_payload(plugin, 43, 3).to_string(), "{plugin}");
            if plugin != "other" {
                assert!((60..2000).contains(&a.len()), "{plugin}: {} bytes", a.len());
            }
        }
    }

    #[test]
    fn capabilities_and_metrics_pass_the_servers_checks() {
        for agent in [0, 1, 65_535, 19_000] {
            let caps = capabilities(agent, "aarch64");
            assert_eq!(caps.hostname.as_deref(), Some(hostname(agent).as_str()));
            assert_eq!(caps.arch.as_deref(), Some("aarch64"));
            assert_eq!(caps.kernel.as_deref(), Some("6.1.0-28-arm64"));
            for beat in 0..50 {
                metrics(agent, beat).validate().unwrap();
            }
        }
        assert_eq!(hostname(7), "sim-00007");
    }
}
