//! What the node is (capabilities, reported once per connection) and how it is doing (metrics, every
//! heartbeat). Collection is cheap by design: /proc reads, one statvfs, one local socket query.

pub mod containers;
pub mod disks;
pub mod gpu;
pub mod systemd;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use drover_types::{Capabilities, Metrics, VERSION};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Networks, RefreshKind, System};

const MIB: u64 = 1024 * 1024;

/// Total and available bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a properly sized out-parameter.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let frsize = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * frsize, stat.f_bavail as u64 * frsize))
}

fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as u32 } else { 1 }
}

/// Keeps the state CPU usage needs between samples.
pub struct Collector {
    system: System,
}

impl Collector {
    /// Fails only where the platform offers no system information at all.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let mut system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        )?;
        // CPU usage is a difference between two readings: take the first one now.
        system.refresh_cpu_usage();
        Ok(Self { system })
    }

    /// The node's capabilities.
    pub async fn capabilities(&mut self) -> Capabilities {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let ips = Networks::new_with_refreshed_list()
            .map(|n| n.values().cloned_ips())
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
            .map(|ip| ip.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Capabilities {
            hostname: System::host_name().ok(),
            os: Some(std::env::consts::OS.to_string()),
            os_version: System::long_os_version().ok(),
            arch: Some(std::env::consts::ARCH.to_string()),
            kernel: System::kernel_version().ok(),
            cpu_count: Some(online_cpus()),
            mem_mb: Some(self.system.total_memory() / MIB),
            disk_mb: disk_space(Path::new("/")).map(|(total, _)| total / MIB),
            gpus: gpu::detect().await,
            ips,
            agent_version: Some(VERSION.to_string()),
            extra: Default::default(),
        }
    }

    /// One heartbeat's metrics.
    pub async fn metrics(&mut self) -> Metrics {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = self.system.total_memory().max(1);
        let load = System::load_average().ok();
        Metrics {
            cpu_usage: round2(f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0)),
            mem_usage: round2(
                (self.system.used_memory() as f64 / total as f64 * 100.0).clamp(0.0, 100.0),
            ),
            disk_free_mb: disk_space(Path::new("/"))
                .map(|(_, free)| free / MIB)
                .unwrap_or(0),
            load1: load.as_ref().map(|l| l.one),
            load5: load.as_ref().map(|l| l.five),
            load15: load.as_ref().map(|l| l.fifteen),
            uptime_s: System::uptime().ok(),
            running_containers: containers::running(Duration::from_secs(1)).await,
        }
    }
}

/// Addresses of every interface.
trait ClonedIps {
    fn cloned_ips(self) -> Vec<IpAddr>;
}

impl<'a, I: Iterator<Item = &'a sysinfo::NetworkData>> ClonedIps for I {
    fn cloned_ips(self) -> Vec<IpAddr> {
        self.flat_map(|data| data.ip_networks().iter().map(|n| n.addr))
            .collect()
    }
}

/// One process, as `list_processes` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub cmd: Vec<String>,
    pub cpu_usage: f32,
    pub mem_kb: u64,
    pub user_id: Option<String>,
    pub status: String,
}

/// Processes whose name contains `name` (all when `None`), highest CPU first, at most `limit`.
/// Blocking: it samples CPU twice, a short interval apart.
pub fn processes(name: Option<&str>, limit: usize) -> Result<Vec<Process>, sysinfo::Error> {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, UpdateKind};
    let kind = ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .with_user(UpdateKind::OnlyIfNotSet);
    let mut system = System::new()?;
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    let mut list: Vec<Process> = system
        .processes()
        .values()
        .filter(|p| name.is_none_or(|n| p.name().to_string_lossy().contains(n)))
        .map(|p| Process {
            pid: p.pid().as_u32(),
            name: p.name().to_string_lossy().into_owned(),
            cmd: p
                .cmd()
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect(),
            cpu_usage: p.cpu_usage(),
            mem_kb: p.memory() / 1024,
            user_id: p.user_id().map(|u| u.to_string()),
            status: p.status().to_string(),
        })
        .collect();
    list.sort_by(|a, b| b.cpu_usage.total_cmp(&a.cpu_usage).then(a.pid.cmp(&b.pid)));
    list.truncate(limit);
    Ok(list)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_this_machine() {
        let mut c = Collector::new().unwrap();
        let caps = c.capabilities().await;
        assert_eq!(caps.os.as_deref(), Some(std::env::consts::OS));
        assert!(caps.cpu_count.unwrap() >= 1);
        assert!(caps.mem_mb.unwrap() > 0);
        assert!(caps.disk_mb.unwrap() > 0);
        let m = c.metrics().await;
        assert!(m.validate().is_ok(), "{m:?}");
        assert!(m.mem_usage > 0.0);
        assert!(m.uptime_s.unwrap() > 0);
    }
}
