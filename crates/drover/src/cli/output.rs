//! Tables for people, JSON for scripts, and the small formatters both views share.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, presets::NOTHING};
use serde::Serialize;

use super::safe::safe;

use drover_types::Labels;

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table for people. Every cell goes through [`safe`]: cells hold what nodes and other users report,
/// and a control character in one could clear the screen or overwrite other rows.
pub struct Table(comfy_table::Table);

impl Table {
    pub fn add_row(&mut self, cells: Vec<String>) -> &mut Self {
        // A plain cell (the usual case) is kept, not copied.
        let cells: Vec<String> = cells
            .into_iter()
            .map(|c| match safe(&c) {
                Cow::Borrowed(_) => c,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        self.0.add_row(cells);
        self
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    Table(t)
}

/// "12s ago", "3m ago", "never".
pub fn ago(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Megabytes as people read them.
pub fn mb(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(m) if m >= 1024 * 1024 => format!("{:.1}T", m as f64 / (1024.0 * 1024.0)),
        Some(m) if m >= 1024 => format!("{:.1}G", m as f64 / 1024.0),
        Some(m) => format!("{m}M"),
    }
}

pub fn pct(v: Option<f64>) -> String {
    v.map(|p| format!("{p:.1}")).unwrap_or_else(|| "-".into())
}

pub fn labels(l: &Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}
