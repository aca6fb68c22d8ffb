//! NVIDIA GPUs through `nvidia-smi`, which ships with the driver. No driver or no tool: no GPUs.

use std::time::Duration;

use drover_types::Gpu;

const QUERY: &str = "--query-gpu=index,name,uuid,memory.total,driver_version";
/// Where GPU hosts and containers commonly keep the tool when it is not on PATH.
const CANDIDATES: &[&str] = &[
    "nvidia-smi",
    "/usr/bin/nvidia-smi",
    "/usr/local/nvidia/bin/nvidia-smi",
];

pub async fn detect() -> Vec<Gpu> {
    for program in CANDIDATES {
        let run = tokio::process::Command::new(program)
            .args([QUERY, "--format=csv,noheader,nounits"])
            .kill_on_drop(true)
            .output();
        if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(5), run).await
            && out.status.success()
        {
            return parse(&String::from_utf8_lossy(&out.stdout));
        }
    }
    Vec::new()
}

/// Parses `index, name, uuid, memory MiB, driver` lines; malformed lines are skipped.
pub fn parse(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 5 || f[1].is_empty() {
                return None;
            }
            Some(Gpu {
                index: f[0].parse().ok(),
                name: f[1].to_string(),
                uuid: Some(f[2].to_string()).filter(|s| !s.is_empty()),
                mem_mb: f[3].parse().ok(),
                driver_version: Some(f[4].to_string()).filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_nvidia_smi_csv() {
        let gpus = super::parse(
            "0, NVIDIA H100 80GB HBM3, GPU-5c8f, 81559, 550.54.15\n1, NVIDIA H100 80GB HBM3, GPU-aa11, 81559, 550.54.15\ngarbage\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].index, Some(1));
        assert_eq!(gpus[0].mem_mb, Some(81559));
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
    }
}
