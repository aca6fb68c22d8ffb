//! What the `gpus` daemon plugin reports: one sample per NVIDIA GPU, parsed from
//! `nvidia-smi --query-gpu=… --format=csv,noheader,nounits`. The server keeps it as the session's payload
//! (`GET /api/v1/nodes/{id}/sessions/gpus`), the CLI shows it, `/metrics` exports it.

use serde::{Deserialize, Serialize};

use crate::limits::MAX_GPUS;

/// Every field the plugin asks for, in this order (the order of `nvidia-smi`'s columns). The names are
/// those drivers since 2020 accept; `clocks_throttle_reasons.active` is printed as
/// `clocks_event_reasons.active` by newer ones, but both spellings are accepted as a query.
pub const FULL_QUERY: &[&str] = &[
    "index",
    "uuid",
    "utilization.gpu",
    "utilization.memory",
    "memory.used",
    "memory.total",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "ecc.errors.corrected.volatile.total",
    "ecc.errors.uncorrected.volatile.total",
    "clocks_throttle_reasons.active",
    "clocks.sm",
    "clocks.mem",
    "fan.speed",
    "pstate",
];

/// What is asked when a driver refuses `FULL_QUERY` (an old one that lacks a field): the essentials, index
/// and uuid through power limit.
pub const CORE_QUERY: &[&str] = FULL_QUERY.split_at(9).0;

/// The plugin's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuReport {
    /// Whether `nvidia-smi` ran and answered. False on a node without an NVIDIA driver: `gpus` is empty.
    pub available: bool,
    /// Why `nvidia-smi` did not answer, when it is installed but failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub gpus: Vec<GpuSample>,
}

/// One GPU at one moment. A field the driver does not report (`[N/A]`, `[Not Supported]`) is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GpuSample {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Percent of time a kernel ran over the last sample period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<f64>,
    /// Percent of time device memory was read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_draw_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
    /// Corrected ECC errors since the driver loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors since the driver loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected: Option<u64>,
    /// NVML's bitmask of active clock throttle ("event") reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_mask: Option<u64>,
    /// The mask's reasons by name (`gpu_idle`, `sw_power_cap`, `hw_thermal_slowdown`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle_reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_clock_mhz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pstate: Option<String>,
}

/// NVML's clock throttle reason bits (nvml.h `nvmlClocksEventReason*`), by the names nvidia-smi uses.
pub const THROTTLE_REASONS: &[(u64, &str)] = &[
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// The names of the reasons set in `mask`; unknown bits are named by their value.
pub fn throttle_reasons(mask: u64) -> Vec<String> {
    let known: u64 = THROTTLE_REASONS.iter().map(|(bit, _)| bit).sum();
    let mut names: Vec<String> = THROTTLE_REASONS
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    if mask & !known != 0 {
        names.push(format!("0x{:x}", mask & !known));
    }
    names
}

/// A field's text as nvidia-smi prints it, or `None` for what it prints when a field does not apply or
/// cannot be read (`[N/A]`, `[Not Supported]`, `[Unknown Error]`, `[GPU is lost]`, …).
fn present(text: &str) -> Option<&str> {
    let t = text.trim();
    if t.is_empty() || t.starts_with('[') || t.eq_ignore_ascii_case("n/a") {
        None
    } else {
        // With `--format=csv` (units), values read "100 %", "663.04 W": the number is the first word.
        t.split_whitespace().next()
    }
}

fn number(text: &str) -> Option<f64> {
    present(text)?.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn count(text: &str) -> Option<u64> {
    present(text)?.parse().ok()
}

fn hex(text: &str) -> Option<u64> {
    let t = present(text)?;
    let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u64::from_str_radix(digits, 16).ok()
}

/// Parses nvidia-smi's CSV for the query `fields` (in that order). A line whose index is not a number (a
/// header, an error message) is skipped, and so is any line past `MAX_GPUS`.
pub fn parse_samples(fields: &[&str], csv: &str) -> Vec<GpuSample> {
    csv.lines()
        .filter_map(|line| {
            let values: Vec<&str> = line.split(',').map(str::trim).collect();
            let get = |name: &str| {
                fields
                    .iter()
                    .position(|f| *f == name)
                    .and_then(|i| values.get(i).copied())
                    .unwrap_or("")
            };
            let index = get("index").parse().ok()?;
            let throttle_mask = hex(get("clocks_throttle_reasons.active"));
            Some(GpuSample {
                index,
                uuid: present(get("uuid")).map(str::to_string),
                utilization_pct: number(get("utilization.gpu")),
                memory_utilization_pct: number(get("utilization.memory")),
                memory_used_mib: count(get("memory.used")),
                memory_total_mib: count(get("memory.total")),
                temperature_c: number(get("temperature.gpu")),
                power_draw_w: number(get("power.draw")),
                power_limit_w: number(get("power.limit")),
                ecc_corrected: count(get("ecc.errors.corrected.volatile.total")),
                ecc_uncorrected: count(get("ecc.errors.uncorrected.volatile.total")),
                throttle_reasons: throttle_mask.map(throttle_reasons).unwrap_or_default(),
                throttle_mask,
                sm_clock_mhz: number(get("clocks.sm")),
                memory_clock_mhz: number(get("clocks.mem")),
                fan_pct: number(get("fan.speed")),
                pstate: present(get("pstate"))
                    .filter(|p| p.len() <= 8)
                    .map(str::to_string),
            })
        })
        .take(MAX_GPUS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_values_are_absent_and_units_are_ignored() {
        let s = &parse_samples(
            FULL_QUERY,
            "1, GPU-x, [Not Supported], 5 %, 10 MiB, [N/A], 40, [Unknown Error], 300.00 W, [N/A], N/A, 0x0000000000000044, 1980 MHz, , [N/A], P2\n",
        )[0];
        assert_eq!(s.index, 1);
        assert_eq!(s.utilization_pct, None);
        assert_eq!(s.memory_utilization_pct, Some(5.0));
        assert_eq!(s.memory_used_mib, Some(10));
        assert_eq!(s.memory_total_mib, None);
        assert_eq!(s.power_draw_w, None);
        assert_eq!(s.power_limit_w, Some(300.0));
        assert_eq!((s.ecc_corrected, s.ecc_uncorrected), (None, None));
        assert_eq!(s.throttle_mask, Some(0x44));
        assert_eq!(
            s.throttle_reasons,
            vec![
                "sw_power_cap".to_string(),
                "hw_thermal_slowdown".to_string()
            ]
        );
        assert_eq!(s.memory_clock_mhz, None);
        assert_eq!(s.pstate.as_deref(), Some("P2"));
    }

    #[test]
    fn headers_errors_short_lines_and_nonsense_are_skipped_or_absent() {
        let csv = "index, uuid\nNVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n0\n3, GPU-y, NaN, inf, -5, 99999999999999999999999, 1e400\n";
        let s = parse_samples(FULL_QUERY, csv);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].uuid, None);
        assert_eq!(s[1].index, 3);
        assert_eq!(s[1].utilization_pct, None, "NaN is no utilization");
        assert_eq!(s[1].memory_utilization_pct, None, "inf is no utilization");
        assert_eq!(s[1].memory_used_mib, None, "negative memory");
        assert_eq!(s[1].memory_total_mib, None, "past u64");
        assert_eq!(s[1].temperature_c, None, "past f64");
        assert_eq!(throttle_reasons(0x1000), vec!["0x1000".to_string()]);
    }

    #[test]
    fn the_core_query_is_the_essentials() {
        assert_eq!(CORE_QUERY.first(), Some(&"index"));
        assert_eq!(CORE_QUERY.last(), Some(&"power.limit"));
    }

    #[test]
    fn at_most_max_gpus_lines_are_kept() {
        let csv: String = (0..1000).map(|i| format!("{i}, GPU-{i}\n")).collect();
        assert_eq!(parse_samples(CORE_QUERY, &csv).len(), MAX_GPUS);
    }
}
