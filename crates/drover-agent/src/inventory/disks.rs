//! Mounted filesystems and their usage, from /proc/mounts and statvfs.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    pub mount_point: String,
    pub device: String,
    pub fs_type: String,
    pub total_mb: u64,
    pub free_mb: u64,
    pub used_percent: f64,
}

/// Filesystem types that are not storage.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
    "overlay",
    "squashfs",
    "ramfs",
];

pub fn disks() -> Vec<Disk> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (device, mount_point, fs_type) = (*f.first()?, unescape(f.get(1)?), *f.get(2)?);
            if PSEUDO.contains(&fs_type) || !seen.insert(mount_point.clone()) {
                return None;
            }
            let (total, free) = super::disk_space(std::path::Path::new(&mount_point))?;
            if total == 0 {
                return None;
            }
            let mb = 1024 * 1024;
            Some(Disk {
                device: device.to_string(),
                fs_type: fs_type.to_string(),
                total_mb: total / mb,
                free_mb: free / mb,
                used_percent: ((total - free.min(total)) as f64 / total as f64 * 1000.0).round()
                    / 10.0,
                mount_point,
            })
        })
        .collect()
}

/// /proc/mounts escapes spaces and a few other bytes as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_root_filesystem() {
        let disks = super::disks();
        assert!(disks.iter().any(|d| d.mount_point == "/"), "{disks:?}");
    }
}
