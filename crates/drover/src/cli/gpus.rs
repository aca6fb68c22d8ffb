//! The GPU section of `drover nodes show`: the latest sample of the node's `gpus` plugin session.

use drover_types::gpu::{GpuReport, GpuSample};
use drover_types::session::SessionDetail;

use super::client::{Client, ClientError, segment};
use super::output::{ago, table};
use super::safe::safe;

/// The node's latest GPU report, or `None` when it has no `gpus` session (an older agent, the plugin
/// turned off) or the payload is not one.
pub async fn latest(
    client: &Client,
    node_id: &str,
) -> anyhow::Result<Option<(SessionDetail, GpuReport)>> {
    let path = format!("/api/v1/nodes/{}/sessions/gpus", segment(node_id));
    let detail: SessionDetail = match client.get(&path).await {
        Ok(d) => d,
        Err(ClientError::Api { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let report = detail
        .payload
        .clone()
        .and_then(|p| serde_json::from_value::<GpuReport>(p).ok());
    Ok(report.map(|r| (detail, r)))
}

fn num(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map(|v| format!("{v:.digits$}{unit}"))
        .unwrap_or_else(|| "-".into())
}

fn of(used: String, total: String) -> String {
    if total == "-" {
        used
    } else {
        format!("{used} / {total}")
    }
}

fn row(g: &GpuSample) -> Vec<String> {
    let int = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    vec![
        g.index.to_string(),
        g.uuid.clone().unwrap_or_else(|| "-".into()),
        num(g.utilization_pct, 0, " %"),
        of(
            int(g.memory_used_mib),
            format!("{} MiB", int(g.memory_total_mib)),
        ),
        num(g.temperature_c, 0, " C"),
        of(num(g.power_draw_w, 1, ""), num(g.power_limit_w, 0, " W")),
        match (g.ecc_corrected, g.ecc_uncorrected) {
            (None, None) => "-".into(),
            (c, u) => format!("{}/{}", int(c), int(u)),
        },
        if g.throttle_reasons.is_empty() {
            "-".into()
        } else {
            g.throttle_reasons.join(",")
        },
    ]
}

/// Prints the section under the node's details.
pub fn print(detail: &SessionDetail, report: &GpuReport) {
    let when = ago(detail.info.last_update);
    if !report.available {
        match &report.error {
            Some(e) => println!("\nGPU metrics ({when}): nvidia-smi failed: {}", safe(e)),
            None => println!("\nGPU metrics ({when}): none (no nvidia-smi on the node)"),
        }
        return;
    }
    println!("\nGPU metrics ({when}):");
    let mut t = table(&[
        "GPU", "UUID", "UTIL", "MEMORY", "TEMP", "POWER", "ECC C/U", "THROTTLE",
    ]);
    for g in &report.gpus {
        t.add_row(row(g));
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_as_a_person_expects() {
        let g = GpuSample {
            index: 0,
            uuid: Some("GPU-e1".into()),
            utilization_pct: Some(100.0),
            memory_used_mib: Some(13097),
            memory_total_mib: Some(81559),
            temperature_c: Some(55.0),
            power_draw_w: Some(663.31),
            power_limit_w: Some(700.0),
            ecc_corrected: Some(0),
            ecc_uncorrected: Some(0),
            ..Default::default()
        };
        assert_eq!(
            row(&g),
            [
                "0",
                "GPU-e1",
                "100 %",
                "13097 / 81559 MiB",
                "55 C",
                "663.3 / 700 W",
                "0/0",
                "-"
            ]
        );
        let bare = row(&GpuSample::default());
        assert_eq!(bare[3], "- / - MiB");
        assert_eq!(bare[5], "-");
    }
}
