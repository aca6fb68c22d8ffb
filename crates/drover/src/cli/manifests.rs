//! `drover apply`, `drover manifests`, `drover delete manifest`, `drover status`: desired state.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use drover_types::manifest::{Applied, NodePlan, NodeStatusReport, ResourceState, StoredManifest};
use drover_types::node::HTTP_NODE_TAKES_NO_WORK;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, Subscription, segment};
use super::output::{ago, print_json, table};
use super::safe::safe;
use super::usage::UsageContext;

/// How long `drover apply` waits for the server to store a manifest and compute every node's desired state.
const APPLY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover apply -f web.yaml\n  \
    drover apply -f web.yaml --wait --timeout 5m\n  \
    drover apply -f web.yaml --dry-run            # what each node would change\n\n\
    A manifest (YAML or JSON):\n  \
    name: web\n  \
    selector: {role: edge}\n  \
    resources:\n    \
      - id: motd\n      \
        file: {path: /etc/motd, content: \"hello\\n\", mode: \"0644\"}\n    \
      - id: app\n      \
        container: {image: localhost/busybox:latest, command: [httpd, -f, -p, \"8080\"]}")]
pub struct ApplyArgs {
    /// The manifest file (YAML or JSON).
    #[arg(short, long)]
    file: std::path::PathBuf,
    /// Wait until every targeted node reports the new state converged (follows pushed status events;
    /// rides out a server restart). Targets not connected are not waited for once every connected one
    /// converged: they are listed as pending and the exit code is 6. HTTP nodes are no targets.
    #[arg(long)]
    wait: bool,
    /// Change nothing: ask each node what it would change, and print the plans.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m")]
    timeout: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    sign: super::keys::SignArgs,
}

/// Reads a manifest file: YAML (JSON is YAML too).
fn read_manifest(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_saphyr::from_str::<serde_json::Value>(&text)
        .with_context(|| format!("{} is not valid YAML", path.display()))
}

/// Uploads every `file.source` to the server's blob store and replaces it with the content's SHA-256.
async fn upload_sources(
    manifest: &mut serde_json::Value,
    base: &std::path::Path,
    client: &Client,
) -> anyhow::Result<()> {
    use sha2::Digest;
    // In the `apiVersion`/`kind` envelope, the resources are under `spec`; the server unwraps it.
    let fields = match manifest.get("spec").is_some() {
        true => manifest.get_mut("spec"),
        false => Some(manifest),
    };
    let Some(resources) = fields
        .and_then(|m| m.get_mut("resources"))
        .and_then(|r| r.as_array_mut())
    else {
        return Ok(());
    };
    for r in resources {
        let Some(file) = r.get_mut("file").and_then(|f| f.as_object_mut()) else {
            continue;
        };
        let Some(source) = file
            .get("source")
            .and_then(|s| s.as_str())
            .map(str::to_string)
        else {
            continue;
        };
        let path = base.join(&source);
        let data = std::fs::read(&path)
            .with_context(|| format!("cannot read source {}", path.display()))?;
        let sha = hex::encode(sha2::Sha256::digest(&data));
        client
            .put_bytes(&format!("/api/v1/blobs/{sha}"), data)
            .await?;
        file.remove("source");
        file.insert("sha256".into(), serde_json::Value::String(sha));
    }
    Ok(())
}

pub async fn apply(args: ApplyArgs, client: &Client) -> anyhow::Result<()> {
    let mut manifest = read_manifest(&args.file)?;
    let base = args
        .file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    upload_sources(&mut manifest, &base, client).await?;
    // Signed after the upload: the signature covers each source's SHA-256, so the content too.
    let manifest = args.sign.manifest(manifest)?;
    if args.dry_run {
        return dry_run(client, &manifest, args.output).await;
    }
    // The server answers once every node's desired state is computed: at fleet size that can take
    // longer than an ordinary request's 30 s.
    let applied: Applied = client
        .request_with_timeout(
            Method::POST,
            "/api/v1/manifests",
            Some(&manifest),
            Some(APPLY_PATIENCE),
        )
        .await
        .with_context(|| format!("{} was not applied", args.file.display()))?
        .context("the server returned nothing")?;
    match args.output {
        OutputFormat::Json if !args.wait => return print_json(&applied),
        _ => print_applied(&applied),
    }
    if args.wait {
        let timeout = drover_types::duration::parse_duration(&args.timeout).usage("--timeout")?;
        if applied.rollout.is_some() {
            return super::rollout::follow(client, &applied.name, timeout).await;
        }
        let waited = wait_converged(
            client,
            &applied.name,
            &applied.nodes,
            &applied.offline,
            timeout,
        )
        .await?;
        if !waited.is_empty() {
            eprintln!(
                "pending, not connected: {} (each converges when its agent reconnects; `drover status` follows them)",
                some_names(&waited)
            );
            std::process::exit(EXIT_NOT_CONNECTED);
        }
    }
    Ok(())
}

/// `apply --dry-run`: what each selected node would do, changing nothing.
async fn dry_run(
    client: &Client,
    manifest: &serde_json::Value,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let answer: serde_json::Value = client
        .request(
            Method::POST,
            "/api/v1/manifests?dry_run=true",
            Some(manifest),
        )
        .await?
        .context("the server returned nothing")?;
    let plans: Vec<NodePlan> = serde_json::from_value(answer["nodes"].clone())?;
    if output == OutputFormat::Json {
        return print_json(&plans);
    }
    for p in &plans {
        match &p.error {
            Some(e) => println!("{}: {}", safe(&p.node), safe(e)),
            None => {
                println!("{}:", safe(&p.node));
                let mut t = table(&["RESOURCE", "KIND", "ACTION", "DETAIL"]);
                for i in &p.plan {
                    t.add_row(vec![
                        i.id.clone(),
                        i.kind.to_string(),
                        i.action.to_string(),
                        i.detail.clone(),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    if plans.is_empty() {
        println!("no node is selected by this manifest");
    }
    Ok(())
}

/// The line saying what an apply did, and which selected nodes take no work.
fn print_applied(applied: &Applied) {
    eprintln!(
        "manifest {} {} (manifest generation {}), targeting {} node(s)",
        safe(&applied.name),
        if applied.changed {
            "applied"
        } else {
            "unchanged"
        },
        applied.generation,
        applied.nodes.len()
    );
    if let Some(plan) = &applied.rollout {
        let sizes: Vec<String> = plan.waves.iter().map(usize::to_string).collect();
        eprintln!(
            "rollout: {} wave(s) of {} node(s)",
            plan.waves.len(),
            sizes.join(", ")
        );
        for (facet, values) in &plan.covered {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            eprintln!(
                "  first wave covers {}: {}",
                safe(facet),
                safe(&values.join(", "))
            );
        }
    }
    // Selected, but not targets: said once, not waited for, not counted.
    if !applied.http_nodes.is_empty() {
        eprintln!(
            "{}: {HTTP_NODE_TAKES_NO_WORK} (selected, not targeted)",
            some_names(&applied.http_nodes)
        );
    }
}

/// Exit code of `drover apply --wait` when only targets that are not connected are left to converge.
const EXIT_NOT_CONNECTED: i32 = 6;
/// Names listed in one line at most; a fleet's worth is summed up.
const NAMES_SHOWN: usize = 10;

/// Node names for a line of text: the first few, escaped, and how many more.
fn some_names(names: &[String]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| safe(n).into_owned())
        .collect();
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Waits on the server's pushed status events (no polling) until every node in `nodes` converged, except
/// those of `offline` (not connected at the apply): those are waited for only while others are, and the
/// ones still not converged are returned. The stream starts with the whole status, read after
/// subscribing, so nothing since the apply is missed; it resumes by itself across a server restart.
async fn wait_converged(
    client: &Client,
    manifest: &str,
    nodes: &[String],
    offline: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let bar = ProgressBar::new(nodes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes converged {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = Subscription::new(client, "/api/v1/status/events".into(), false);
    let mut waiting = Waiting::new(manifest, nodes, offline);
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, events.next()).await else {
            bar.finish_and_clear();
            explain_waiting(manifest, nodes, &waiting.status);
            bail!("not converged within {timeout:?}");
        };
        let Some(event) = next? else {
            bail!("the server ended the status stream");
        };
        match event.name.as_str() {
            "status" => {
                let all: Vec<NodeStatusReport> = serde_json::from_str(&event.data)?;
                waiting.clear();
                for report in all {
                    waiting.keep(report);
                }
            }
            "node" => waiting.keep(serde_json::from_str(&event.data)?),
            _ => continue,
        }
        if events.has_buffered() {
            continue;
        }
        bar.set_position(waiting.converged as u64);
        if waiting.converged == waiting.wanted.len() {
            bar.finish_and_clear();
            eprintln!("all {} node(s) converged", nodes.len());
            return Ok(Vec::new());
        }
        // Nodes not connected converge only once they reconnect: waiting for them would wait for that.
        if waiting.connected_done() {
            bar.finish_and_clear();
            eprintln!(
                "{}/{} node(s) converged: every connected one",
                waiting.converged,
                nodes.len()
            );
            return Ok(offline
                .iter()
                .filter(|n| {
                    !waiting
                        .status
                        .get(*n)
                        .is_some_and(|s| s.converged_for(manifest))
                })
                .cloned()
                .collect());
        }
        // Refused (by a node's policy), unknown or conflicting resources never converge by waiting.
        if waiting.stuck > 0 {
            bar.finish_and_clear();
            explain_waiting(manifest, nodes, &waiting.status);
            bail!(
                "some resources cannot converge: refused by a node's policy, unknown to the node, or in conflict"
            );
        }
    }
}

/// The latest status of each node an apply waits for, with running counts of those converged (in all, and
/// of those not connected at the apply) and those stuck: at fleet size every event must cost the same, not a
/// look at every node.
struct Waiting<'a> {
    /// The manifest applied: only its resources are judged.
    manifest: &'a str,
    wanted: HashSet<&'a str>,
    offline: HashSet<&'a str>,
    status: HashMap<String, NodeStatusReport>,
    converged: usize,
    converged_offline: usize,
    stuck: usize,
}

impl<'a> Waiting<'a> {
    fn new(manifest: &'a str, nodes: &'a [String], offline: &'a [String]) -> Self {
        let wanted: HashSet<&str> = nodes.iter().map(String::as_str).collect();
        Self {
            manifest,
            offline: offline
                .iter()
                .map(String::as_str)
                .filter(|n| wanted.contains(n))
                .collect(),
            wanted,
            status: HashMap::new(),
            converged: 0,
            converged_offline: 0,
            stuck: 0,
        }
    }

    fn clear(&mut self) {
        self.status.clear();
        self.converged = 0;
        self.converged_offline = 0;
        self.stuck = 0;
    }

    /// Whether every node connected at the apply converged.
    fn connected_done(&self) -> bool {
        self.converged - self.converged_offline == self.wanted.len() - self.offline.len()
    }

    /// Takes a node's newer report in place of its last (reports of nodes not waited for are dropped).
    fn keep(&mut self, report: NodeStatusReport) {
        if !self.wanted.contains(report.node_name.as_str()) {
            return;
        }
        let manifest = self.manifest;
        let counts = |r: &NodeStatusReport| {
            (
                usize::from(r.converged_for(manifest)),
                usize::from(!r.stuck_for(manifest).is_empty()),
            )
        };
        let offline = usize::from(self.offline.contains(report.node_name.as_str()));
        let (converged, stuck) = counts(&report);
        self.converged += converged;
        self.converged_offline += converged * offline;
        self.stuck += stuck;
        if let Some(old) = self.status.insert(report.node_name.clone(), report) {
            let (converged, stuck) = counts(&old);
            self.converged -= converged;
            self.converged_offline -= converged * offline;
            self.stuck -= stuck;
        }
    }
}

/// Says, per node not converged, where it stands.
fn explain_waiting(manifest: &str, nodes: &[String], status: &HashMap<String, NodeStatusReport>) {
    for node in nodes {
        let Some(s) = status.get(node) else {
            eprintln!("{}: no status reported", safe(node));
            continue;
        };
        if s.converged_for(manifest) {
            continue;
        }
        eprintln!(
            "{}: at desired generation {} of {}",
            safe(&s.node_name),
            s.convergence.observed_generation,
            s.desired_generation
        );
        for r in s
            .convergence
            .resources
            .iter()
            .filter(|r| r.manifest == manifest && r.state != ResourceState::Ready)
        {
            eprintln!(
                "  {} ({}): {:?} {}",
                safe(&r.id),
                safe(r.kind.as_str()),
                r.state,
                safe(r.error.as_deref().unwrap_or(""))
            );
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  drover manifests\n  drover manifests show web -o json")]
pub struct ManifestsArgs {
    #[command(subcommand)]
    command: Option<ManifestsCommand>,
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum ManifestsCommand {
    /// List manifests (the default).
    List,
    /// One manifest in full.
    Show { name: String },
}

pub async fn manifests(args: ManifestsArgs, client: &Client) -> anyhow::Result<()> {
    match args.command.unwrap_or(ManifestsCommand::List) {
        ManifestsCommand::List => {
            let list: Vec<StoredManifest> = client.get("/api/v1/manifests").await?;
            match args.output {
                OutputFormat::Json => print_json(&list),
                OutputFormat::Table => {
                    let mut t = table(&["NAME", "GENERATION", "SELECTOR", "RESOURCES", "UPDATED"]);
                    for m in &list {
                        t.add_row(vec![
                            m.manifest.name.clone(),
                            m.generation.to_string(),
                            super::output::labels(&m.manifest.selector),
                            m.manifest.resources.len().to_string(),
                            ago(Some(m.updated_at)),
                        ]);
                    }
                    println!("{t}");
                    Ok(())
                }
            }
        }
        ManifestsCommand::Show { name } => {
            let m: StoredManifest = client
                .get(&format!("/api/v1/manifests/{}", segment(&name)))
                .await?;
            print_json(&m)
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  drover delete manifest web")]
pub struct DeleteArgs {
    #[command(subcommand)]
    what: DeleteWhat,
}

#[derive(Debug, Subcommand)]
enum DeleteWhat {
    /// Delete a manifest; agents remove what it gave them.
    Manifest { name: String },
}

pub async fn delete(args: DeleteArgs, client: &Client) -> anyhow::Result<()> {
    match args.what {
        DeleteWhat::Manifest { name } => {
            client
                .request::<serde_json::Value>(
                    Method::DELETE,
                    &format!("/api/v1/manifests/{}", segment(&name)),
                    None::<&()>,
                )
                .await?;
            eprintln!("deleted manifest {name}");
            Ok(())
        }
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover status\n  drover status pi-kitchen\n  drover status -o json"
)]
pub struct StatusArgs {
    /// One node: its resources.
    node: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub async fn status(args: StatusArgs, client: &Client) -> anyhow::Result<()> {
    match args.node {
        None => {
            let all: Vec<NodeStatusReport> = client.get("/api/v1/status").await?;
            if args.output == OutputFormat::Json {
                return print_json(&all);
            }
            // A node's desired generation counts changes to its own desired state (from any manifest): not
            // a manifest's generation.
            let mut t = table(&["NODE", "OBSERVED/DESIRED GEN", "RESOURCES", "CONDITIONS"]);
            for s in &all {
                let ready = s
                    .convergence
                    .resources
                    .iter()
                    .filter(|r| r.state == ResourceState::Ready)
                    .count();
                let conditions: Vec<&str> = s
                    .convergence
                    .conditions
                    .iter()
                    .filter(|c| c.status)
                    .map(|c| c.kind.as_str())
                    .collect();
                t.add_row(vec![
                    s.node_name.clone(),
                    format!(
                        "{}/{}",
                        s.convergence.observed_generation, s.desired_generation
                    ),
                    format!("{ready}/{}", s.convergence.resources.len()),
                    conditions.join(","),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        Some(node) => {
            let s: NodeStatusReport = client
                .get(&format!("/api/v1/nodes/{}/status", segment(&node)))
                .await?;
            if args.output == OutputFormat::Json {
                return print_json(&s);
            }
            println!(
                "Node: {}   desired generation {} (observed {})",
                safe(&s.node_name),
                s.desired_generation,
                s.convergence.observed_generation
            );
            let mut t = table(&[
                "RESOURCE", "MANIFEST", "KIND", "STATE", "DETAILS", "ERROR", "DRIFT",
            ]);
            for r in &s.convergence.resources {
                t.add_row(vec![
                    r.id.clone(),
                    r.manifest.clone(),
                    r.kind.to_string(),
                    format!("{:?}", r.state),
                    if r.details.is_null() {
                        String::new()
                    } else {
                        r.details.to_string()
                    },
                    r.error.clone().unwrap_or_default(),
                    r.drift
                        .last()
                        .map(|d| format!("{} ({})", d.what, ago(Some(d.at))))
                        .unwrap_or_default(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_types::manifest::{NodeConvergence, ResourceKind, ResourceStatus};

    fn report(
        name: &str,
        generation: u64,
        observed: u64,
        state: ResourceState,
    ) -> NodeStatusReport {
        NodeStatusReport {
            node_id: format!("id-{name}"),
            node_name: name.into(),
            desired_generation: generation,
            convergence: NodeConvergence {
                observed_generation: observed,
                resources: vec![ResourceStatus::new("f", "m", ResourceKind::File, state)],
                ..Default::default()
            },
        }
    }

    #[test]
    fn waiting_counts_each_node_by_its_latest_report_only() {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let mut w = Waiting::new("m", &nodes, &[]);
        w.keep(report("a", 2, 2, ResourceState::Ready));
        w.keep(report("a", 2, 2, ResourceState::Ready));
        w.keep(report("other", 2, 2, ResourceState::Ready));
        assert_eq!((w.converged, w.stuck), (1, 0), "one node, counted once");
        w.keep(report("b", 2, 2, ResourceState::Refused));
        assert_eq!((w.converged, w.stuck), (1, 1));
        w.keep(report("a", 3, 2, ResourceState::Ready));
        w.keep(report("b", 2, 2, ResourceState::Ready));
        assert_eq!(
            (w.converged, w.stuck),
            (1, 0),
            "a newer report replaces the last"
        );
        w.clear();
        assert_eq!((w.converged, w.stuck, w.status.len()), (0, 0, 0));
    }

    #[test]
    fn waiting_judges_only_the_applied_manifests_resources() {
        let nodes = vec!["a".to_string()];
        let mut w = Waiting::new("m", &nodes, &[]);
        let mut r = report("a", 2, 2, ResourceState::Ready);
        // Another manifest's resource on the same node, refused there: not the applied manifest's concern.
        r.convergence.resources.push(ResourceStatus::new(
            "other",
            "unsigned",
            ResourceKind::File,
            ResourceState::Refused,
        ));
        w.keep(r);
        assert_eq!((w.converged, w.stuck), (1, 0));
    }

    #[test]
    fn waiting_is_done_once_every_connected_node_converged() {
        let nodes = vec!["on".to_string(), "off".to_string()];
        let offline = vec!["off".to_string(), "not-a-target".to_string()];
        let mut w = Waiting::new("m", &nodes, &offline);
        assert!(!w.connected_done());
        w.keep(report("on", 2, 2, ResourceState::Ready));
        assert!(w.connected_done(), "the offline node is not waited for");
        // One that reconnects and converges counts, and never twice.
        w.keep(report("off", 2, 2, ResourceState::Ready));
        w.keep(report("off", 2, 2, ResourceState::Ready));
        assert_eq!((w.converged, w.converged_offline), (2, 1));
        w.keep(report("on", 3, 2, ResourceState::Ready));
        assert!(!w.connected_done(), "a newer generation to converge to");
        assert_eq!((w.converged, w.converged_offline), (1, 1));
    }
}
