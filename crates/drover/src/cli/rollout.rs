//! `drover rollout`: a manifest's rollout, wave by wave, and what operators do to it.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use drover_types::manifest::StoredManifest;
use drover_types::rollout::{Outcome, RolloutState, RolloutStatus};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, segment};
use super::output::{print_json, table};
use super::safe::safe;

/// `apply --wait` and `rollout status --watch` of a rollout that paused (a tripped wave, an
/// infrastructure failure, an operator).
pub const EXIT_PAUSED: i32 = 8;
/// ... that was reverted or aborted.
pub const EXIT_REVERTED: i32 = 9;
/// How often a follower reads the rollout again.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover rollout status web\n  drover rollout status web --watch\n  drover rollout pause web\n  drover rollout resume web\n  drover rollout promote web     # skip the bake: the next wave starts now\n  drover rollout undo web        # the whole fleet back to the previous revision\n  drover rollout history web -o json\n\nExit codes of `status --watch`: 0 complete, 8 paused, 9 reverted or aborted."
)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// A rollout's state, its waves counted by outcome, and its failing nodes.
    Status {
        /// The manifest's name.
        name: String,
        /// Follow it until it completes, pauses, is reverted or aborted.
        #[arg(long)]
        watch: bool,
        /// With --watch: give up after this long.
        #[arg(long, default_value = "1h")]
        timeout: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Every manifest's rollout.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Stop a rollout where it is; the nodes changed keep the new revision.
    Pause { name: String },
    /// Go on with a paused rollout (the wave under way is judged again).
    Resume { name: String },
    /// Stop a rollout for good; nodes keep what they have.
    Abort { name: String },
    /// Skip the bake: the next wave starts now (and held nodes get the revision).
    Promote { name: String },
    /// Put the whole fleet back on the previous revision, as a new rollout.
    Undo { name: String },
    /// The manifest's kept revisions, newest first.
    History {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

pub async fn run(args: RolloutArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        RolloutCommand::Status {
            name,
            watch: true,
            timeout,
            ..
        } => {
            let timeout = drover_types::duration::parse_duration(&timeout)
                .map_err(|e| super::UsageError(format!("--timeout: {e}")))?;
            follow(client, &name, timeout).await
        }
        RolloutCommand::Status { name, output, .. } => status(client, &name, output).await,
        RolloutCommand::List { output } => list(client, output).await,
        RolloutCommand::History { name, output } => history(client, &name, output).await,
        RolloutCommand::Pause { name } => command(client, &name, "pause").await,
        RolloutCommand::Resume { name } => command(client, &name, "resume").await,
        RolloutCommand::Abort { name } => command(client, &name, "abort").await,
        RolloutCommand::Promote { name } => command(client, &name, "promote").await,
        RolloutCommand::Undo { name } => command(client, &name, "undo").await,
    }
}

async fn status(client: &Client, name: &str, output: OutputFormat) -> anyhow::Result<()> {
    let status: RolloutStatus = client
        .get(&format!("/api/v1/rollouts/{}", segment(name)))
        .await?;
    match output {
        OutputFormat::Json => print_json(&status),
        OutputFormat::Table => {
            print_status(&status);
            Ok(())
        }
    }
}

async fn list(client: &Client, output: OutputFormat) -> anyhow::Result<()> {
    let all: Vec<RolloutStatus> = client.get("/api/v1/rollouts").await?;
    if output == OutputFormat::Json {
        return print_json(&all);
    }
    let mut t = table(&[
        "MANIFEST",
        "STATE",
        "REVISION",
        "WAVE",
        "CONVERGED",
        "FAILED",
    ]);
    for s in &all {
        let total: usize = s.waves.iter().map(|w| w.nodes).sum();
        let converged: usize = s.waves.iter().map(|w| w.converged).sum();
        let failed: usize = s
            .waves
            .iter()
            .map(|w| w.change_failed + w.infra_failed)
            .sum();
        t.add_row(vec![
            safe(&s.manifest).to_string(),
            s.state.as_str().to_string(),
            revisions(s),
            format!("{}/{}", s.wave, s.waves.len()),
            format!("{converged}/{total}"),
            failed.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn history(client: &Client, name: &str, output: OutputFormat) -> anyhow::Result<()> {
    let revisions: Vec<StoredManifest> = client
        .get(&format!("/api/v1/rollouts/{}/history", segment(name)))
        .await?;
    if output == OutputFormat::Json {
        return print_json(&revisions);
    }
    let mut t = table(&["GENERATION", "VERSION", "UPDATED", "RESOURCES", "SIGNED BY"]);
    for r in &revisions {
        t.add_row(vec![
            r.generation.to_string(),
            r.manifest.version.to_string(),
            r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.manifest.resources.len().to_string(),
            r.signature
                .as_ref()
                .map_or_else(|| "-".to_string(), |s| safe(&s.key).to_string()),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn command(client: &Client, name: &str, command: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/rollouts/{}/{command}", segment(name));
    let status: Option<RolloutStatus> = client.request(Method::POST, &path, None::<&()>).await?;
    if let Some(status) = status {
        print_status(&status);
    }
    Ok(())
}

fn revisions(s: &RolloutStatus) -> String {
    match s.previous_revision {
        Some(p) => format!("{p} -> {}", s.revision),
        None => format!("(new) -> {}", s.revision),
    }
}

fn print_status(s: &RolloutStatus) {
    println!(
        "rollout of {}: {} (revision {}), wave {} of {}",
        safe(&s.manifest),
        s.state.as_str(),
        revisions(s),
        s.wave,
        s.waves.len()
    );
    if let Some(reason) = &s.reason {
        println!("  {}", safe(reason));
    }
    for (facet, values) in &s.covered {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        println!(
            "  first wave covers {}: {}",
            safe(facet),
            safe(&values.join(", "))
        );
    }
    let mut t = table(&[
        "WAVE",
        "NODES",
        "CONVERGED",
        "CHANGE FAILED",
        "INFRA FAILED",
        "UNREACHABLE",
        "PENDING",
    ]);
    for (i, w) in s.waves.iter().enumerate() {
        let mark = if w.reverted {
            " (reverted)"
        } else if i + 1 == s.wave && !s.state.is_final() {
            " <"
        } else {
            ""
        };
        t.add_row(vec![
            format!("{}{mark}", i + 1),
            w.nodes.to_string(),
            w.converged.to_string(),
            w.change_failed.to_string(),
            w.infra_failed.to_string(),
            w.unreachable.to_string(),
            w.pending.to_string(),
        ]);
    }
    println!("{t}");
    if !s.failing.is_empty() {
        println!("failing nodes:");
        for f in &s.failing {
            let what = match f.outcome {
                Outcome::InfraFailed => "infrastructure",
                _ => "change",
            };
            println!(
                "  {} (wave {}, {what}): {}",
                safe(&f.node),
                f.wave,
                safe(f.reason.as_deref().unwrap_or(""))
            );
        }
    }
}

/// Follows a rollout until it ends or pauses, with a progress bar of its converged nodes; the exit code
/// says how it ended (0 complete, `EXIT_PAUSED`, `EXIT_REVERTED`).
pub async fn follow(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let path = format!("/api/v1/rollouts/{}", segment(name));
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes converged {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s: RolloutStatus = client.get(&path).await?;
        let total: usize = s.waves.iter().map(|w| w.nodes).sum();
        let converged: usize = s.waves.iter().map(|w| w.converged).sum();
        bar.set_length(total as u64);
        bar.set_position(converged as u64);
        bar.set_message(format!(
            "wave {}/{} {}",
            s.wave,
            s.waves.len(),
            s.state.as_str()
        ));
        let code = match s.state {
            RolloutState::Complete => Some(0),
            RolloutState::Paused => Some(EXIT_PAUSED),
            RolloutState::Reverted | RolloutState::Aborted => Some(EXIT_REVERTED),
            RolloutState::Progressing | RolloutState::Baking => None,
        };
        if let Some(code) = code {
            bar.finish_and_clear();
            print_status(&s);
            if code != 0 {
                std::process::exit(code);
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bar.finish_and_clear();
            print_status(&s);
            bail!("the rollout did not end within {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
