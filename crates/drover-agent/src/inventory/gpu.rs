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
    match run(&[QUERY, "--format=csv,noheader,nounits"]).await {
        Ok(out) => parse(&out),
        Err(_) => Vec::new(),
    }
}

/// Why `nvidia-smi` gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SmiError {
    /// Not installed where GPU hosts keep it: the node has no NVIDIA driver.
    #[error("nvidia-smi is not installed")]
    NotFound,
    #[error("nvidia-smi did not answer within {0:?}")]
    Timeout(Duration),
    #[error("nvidia-smi failed ({status}): {message}")]
    Failed { status: String, message: String },
}

/// How long one `nvidia-smi` call may take; a hung driver must not hold a plugin or inventory up.
const SMI_DEADLINE: Duration = Duration::from_secs(5);
/// The most of its output that is read: a few GPUs' CSV is a few hundred bytes.
const MAX_OUTPUT: usize = 256 * 1024;

/// Runs `nvidia-smi` (the first of `CANDIDATES` that exists) with `args`; its stdout on success.
pub async fn run(args: &[&str]) -> Result<String, SmiError> {
    for program in CANDIDATES {
        let run = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(SMI_DEADLINE, run).await {
            Err(_) => return Err(SmiError::Timeout(SMI_DEADLINE)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(Err(e)) => {
                return Err(SmiError::Failed {
                    status: "not started".into(),
                    message: e.to_string(),
                });
            }
            Ok(Ok(out)) => out,
        };
        let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
        if out.status.success() {
            return Ok(text(&out.stdout));
        }
        let mut message = text(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = text(&out.stdout).trim().to_string();
        }
        drover_types::limits::clip(&mut message, drover_types::limits::MAX_TEXT);
        return Err(SmiError::Failed {
            status: out.status.to_string(),
            message,
        });
    }
    Err(SmiError::NotFound)
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

    #[test]
    fn parses_a_real_h100_inventory() {
        let gpus = super::parse(include_str!(
            "../../../drover-testkit/fixtures/nvidia-smi-h100/inventory.csv"
        ));
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(
            gpus[0].uuid.as_deref(),
            Some("GPU-e129e46f-a911-1285-27fd-5b0c4c6d79a6")
        );
        assert_eq!(gpus[0].mem_mb, Some(81559));
        assert_eq!(gpus[0].driver_version.as_deref(), Some("580.159.04"));
    }
}
