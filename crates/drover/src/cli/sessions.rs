//! `drover sessions NODE [PLUGIN]`: a node's daemon-plugin sessions, or one plugin's latest payload.

use clap::Args;
use drover_types::session::{SessionDetail, SessionInfo, SessionSample};
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, segment};
use super::output::{ago, print_json, table};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover sessions pi-kitchen\n  \
    drover sessions pi-kitchen disks -o json      # the latest payload\n  \
    drover sessions pi-kitchen metrics --history  # recent payloads\n  \
    drover sessions pi-kitchen --terminate        # the agent recreates them")]
pub struct SessionsArgs {
    /// The node's id or name.
    node: String,
    /// A plugin: show its latest payload.
    plugin: Option<String>,
    /// Show the plugin's recent payloads instead of the latest.
    #[arg(long, requires = "plugin")]
    history: bool,
    /// Terminate the session (or all of the node's sessions); the agent recreates them.
    #[arg(long)]
    terminate: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub async fn run(args: SessionsArgs, client: &Client) -> anyhow::Result<()> {
    let base = format!("/api/v1/nodes/{}/sessions", segment(&args.node));
    if args.terminate {
        let path = match &args.plugin {
            Some(p) => format!("{base}/{}", segment(p)),
            None => base,
        };
        let r: Option<serde_json::Value> =
            client.request(Method::DELETE, &path, None::<&()>).await?;
        let n = r
            .as_ref()
            .and_then(|v| v["terminated"].as_u64())
            .unwrap_or(0);
        eprintln!("terminated {n} session(s); the agent recreates them");
        return Ok(());
    }
    match (&args.plugin, args.history) {
        (Some(p), true) => {
            let samples: Vec<SessionSample> = client
                .get(&format!("{base}/{}/history", segment(p)))
                .await?;
            print_json(&samples)
        }
        (Some(p), false) => {
            let detail: SessionDetail = client.get(&format!("{base}/{}", segment(p))).await?;
            match args.output {
                OutputFormat::Json => print_json(&detail.payload),
                OutputFormat::Table => {
                    print_table(std::slice::from_ref(&detail.info));
                    println!();
                    print_json(&detail.payload)
                }
            }
        }
        (None, _) => {
            let sessions: Vec<SessionInfo> = client.get(&base).await?;
            match args.output {
                OutputFormat::Json => print_json(&sessions),
                OutputFormat::Table => {
                    if sessions.is_empty() {
                        println!(
                            "No sessions: the node has not connected since the server started, or runs no daemon plugins."
                        );
                    } else {
                        print_table(&sessions);
                    }
                    Ok(())
                }
            }
        }
    }
}

fn print_table(sessions: &[SessionInfo]) {
    let mut t = table(&[
        "PLUGIN",
        "STATE",
        "SESSION",
        "LAST UPDATE",
        "SEQ",
        "MISSES",
        "INTERVAL",
        "DEADLINE",
    ]);
    for s in sessions {
        t.add_row(vec![
            s.plugin.clone(),
            format!("{:?}", s.state),
            s.session_id.chars().take(8).collect(),
            ago(s.last_update),
            s.seq.to_string(),
            s.deadline_misses.to_string(),
            format!("{}ms", s.interval_ms),
            format!("{}ms", s.deadline_ms),
        ]);
    }
    println!("{t}");
}
