//! `drover audit`: who did what, where, when, with what result.

use clap::Args;
use drover_types::task::AuditEntry;

use super::OutputFormat;
use super::client::{Client, segment};
use super::output::{print_json, table};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover audit\n  drover audit --node pi-kitchen --since 24h\n  drover audit --action task.create -o json"
)]
pub struct AuditArgs {
    /// Entries about this node (its name).
    #[arg(long)]
    node: Option<String>,
    /// Entries by this actor.
    #[arg(long)]
    actor: Option<String>,
    /// Entries of this kind: task.create, task.finish, task.cancel.
    #[arg(long)]
    action: Option<String>,
    /// Only newer entries: a duration (24h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub async fn run(args: AuditArgs, client: &Client) -> anyhow::Result<()> {
    let mut query = vec![format!("limit={}", args.limit)];
    for (key, value) in [
        ("target", &args.node),
        ("actor", &args.actor),
        ("action", &args.action),
        ("since", &args.since),
    ] {
        if let Some(v) = value {
            query.push(format!("{key}={}", segment(v)));
        }
    }
    let entries: Vec<AuditEntry> = client
        .get(&format!("/api/v1/audit?{}", query.join("&")))
        .await?;
    match args.output {
        OutputFormat::Json => print_json(&entries),
        OutputFormat::Table => {
            let mut t = table(&["TIME", "ACTOR", "ACTION", "WHERE", "WHAT", "RESULT"]);
            for e in &entries {
                let what = e.detail["command"].as_str().unwrap_or_default().to_string();
                let result = match (e.detail["state"].as_str(), e.detail["exit_code"].as_i64()) {
                    (Some(s), Some(c)) => format!("{s} ({c})"),
                    (Some(s), None) => s.to_string(),
                    _ => String::new(),
                };
                t.add_row(vec![
                    e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    what,
                    result,
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}
