//! The `gpus` daemon plugin: what each NVIDIA GPU is doing (utilization, memory, temperature, power, ECC
//! errors, throttle reasons), from `nvidia-smi --query-gpu=… --format=csv,noheader,nounits`, the tool that
//! ships with the driver (as inventory finds it; docs/decisions.md). A node without it reports
//! `{"available": false, "gpus": []}`, so the session is Active and says plainly that there is nothing to see.

use std::time::Duration;

use async_trait::async_trait;
use drover_types::gpu::{CORE_QUERY, FULL_QUERY, GpuReport, parse_samples};
use serde_json::Value;

use super::{DaemonEntry, DaemonPlugin, PluginError, payload};
use crate::inventory::gpu::{SmiError, run};

pub fn entry() -> DaemonEntry {
    DaemonEntry {
        name: "gpus",
        make: || Box::new(Gpus::default()),
        interval: Duration::from_secs(10),
        // nvidia-smi takes 50-300 ms on a loaded host; one that hangs is cut off by its own 5 s limit.
        deadline: Duration::from_secs(6),
    }
}

#[derive(Default)]
struct Gpus {
    /// The driver refused `FULL_QUERY` (it lacks a field): ask for the essentials from then on.
    core_only: bool,
}

fn query(fields: &[&str]) -> String {
    format!("--query-gpu={}", fields.join(","))
}

impl Gpus {
    async fn sample(&mut self) -> GpuReport {
        let mut fields = if self.core_only {
            CORE_QUERY
        } else {
            FULL_QUERY
        };
        let mut result = run(&[&query(fields), "--format=csv,noheader,nounits"]).await;
        if matches!(result, Err(SmiError::Failed { .. })) && !self.core_only {
            let core = run(&[&query(CORE_QUERY), "--format=csv,noheader,nounits"]).await;
            if core.is_ok() {
                tracing::info!(
                    "nvidia-smi refused the full GPU query; reporting the essentials only"
                );
                self.core_only = true;
                fields = CORE_QUERY;
                result = core;
            }
        }
        report(fields, result)
    }
}

/// The payload for one `nvidia-smi` answer.
fn report(fields: &[&str], result: Result<String, SmiError>) -> GpuReport {
    match result {
        Ok(csv) => GpuReport {
            available: true,
            error: None,
            gpus: parse_samples(fields, &csv),
        },
        Err(SmiError::NotFound) => GpuReport::default(),
        Err(e) => GpuReport {
            available: false,
            error: Some(e.to_string()),
            gpus: Vec::new(),
        },
    }
}

#[async_trait]
impl DaemonPlugin for Gpus {
    async fn start(&mut self) -> Result<Value, PluginError> {
        payload(&self.sample().await)
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        Ok(Some(payload(&self.sample().await)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: &str = include_str!("../../../drover-testkit/fixtures/nvidia-smi-h100/metrics.csv");
    const BUSY: &str =
        include_str!("../../../drover-testkit/fixtures/nvidia-smi-h100/metrics-busy.csv");
    const BUSY_UNITS: &str = include_str!(
        "../../../drover-testkit/fixtures/nvidia-smi-h100/metrics-busy-with-header.csv"
    );
    const UUID: &str = "GPU-e129e46f-a911-1285-27fd-5b0c4c6d79a6";

    #[test]
    fn parses_an_idle_h100() {
        let r = report(FULL_QUERY, Ok(IDLE.to_string()));
        assert!(r.available);
        let g = &r.gpus[..];
        assert_eq!(g.len(), 1);
        let g = &g[0];
        assert_eq!((g.index, g.uuid.as_deref()), (0, Some(UUID)));
        assert_eq!(g.utilization_pct, Some(0.0));
        assert_eq!(g.memory_used_mib, Some(0));
        assert_eq!(g.memory_total_mib, Some(81559));
        assert_eq!(g.temperature_c, Some(38.0));
        assert_eq!(g.power_draw_w, Some(107.79));
        assert_eq!(g.power_limit_w, Some(700.0));
        assert_eq!((g.ecc_corrected, g.ecc_uncorrected), (Some(0), Some(0)));
        assert_eq!(g.throttle_mask, Some(1));
        assert_eq!(g.throttle_reasons, vec!["gpu_idle".to_string()]);
        assert_eq!(g.sm_clock_mhz, Some(465.0));
        assert_eq!(g.fan_pct, None, "a data-centre GPU has no fan: [N/A]");
        assert_eq!(g.pstate.as_deref(), Some("P0"));
    }

    #[test]
    fn parses_a_busy_h100_with_and_without_units() {
        let plain = &parse_samples(FULL_QUERY, BUSY)[0];
        assert_eq!(plain.utilization_pct, Some(100.0));
        assert_eq!(plain.memory_utilization_pct, Some(9.0));
        assert_eq!(plain.memory_used_mib, Some(13097));
        assert_eq!(plain.temperature_c, Some(55.0));
        assert_eq!(plain.power_draw_w, Some(663.31));
        assert_eq!(plain.throttle_mask, Some(0));
        assert!(plain.throttle_reasons.is_empty());
        // `--format=csv`: a header line (skipped) and units after the numbers.
        let units = parse_samples(FULL_QUERY, BUSY_UNITS);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].utilization_pct, Some(100.0));
        assert_eq!(units[0].memory_used_mib, Some(13097));
        assert_eq!(units[0].power_draw_w, Some(663.04));
        assert_eq!(units[0].sm_clock_mhz, Some(1980.0));
    }

    #[test]
    fn no_tool_is_an_empty_list_and_a_failing_one_says_why() {
        assert_eq!(
            report(FULL_QUERY, Err(SmiError::NotFound)),
            GpuReport::default()
        );
        let failed = report(
            FULL_QUERY,
            Err(SmiError::Failed {
                status: "exit status: 9".into(),
                message:
                    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
                        .into(),
            }),
        );
        assert!(!failed.available && failed.gpus.is_empty());
        assert!(failed.error.unwrap().contains("couldn't communicate"));
    }
}
