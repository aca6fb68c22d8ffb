//! `drover nodes`: the fleet at a glance, one node in full, its metrics history, deletion.

use clap::{Args, Subcommand};
use drover_types::{MetricsSample, Node};
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, segment};
use super::output::{ago, labels, mb, or_dash, pct, print_json, table};
use super::safe::safe;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover nodes\n  drover nodes -o json\n  drover nodes show pi-kitchen\n  drover nodes metrics pi-kitchen --limit 20\n  drover nodes label pi-kitchen role=edge gpu-\n  drover nodes accept-labels pi-kitchen\n  drover nodes delete pi-kitchen"
)]
pub struct NodesArgs {
    #[command(subcommand)]
    command: Option<NodesCommand>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// List nodes (the default).
    List {
        /// Nodes read per request: a large fleet comes a page at a time.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
    },
    /// Show one node in full (NODE is its id or name).
    Show { node: String },
    /// Show a node's recent metrics, oldest first (one sample a minute by default: the server's
    /// --metrics-history-interval).
    Metrics {
        node: String,
        /// How many samples.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Forget a node; its agent must enroll again to come back.
    Delete { node: String },
    /// Set (key=value) and remove (key-) the node's server-side labels.
    Label {
        node: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Let the labels the node reported after enrolling (shown as pending) count in selection.
    AcceptLabels { node: String },
}

pub async fn run(args: NodesArgs, client: &Client) -> anyhow::Result<()> {
    let output = args.output;
    match args
        .command
        .unwrap_or(NodesCommand::List { page_size: 1000 })
    {
        NodesCommand::List { page_size } => list(client, output, page_size).await,
        NodesCommand::Show { node } => show(client, output, &node).await,
        NodesCommand::Metrics { node, limit } => metrics(client, output, &node, limit).await,
        NodesCommand::Label { node, changes } => label(client, output, &node, &changes).await,
        NodesCommand::AcceptLabels { node } => accept_labels(client, output, &node).await,
        NodesCommand::Delete { node } => delete(client, output, &node).await,
    }
}

async fn list(client: &Client, output: OutputFormat, page_size: u16) -> anyhow::Result<()> {
    // A page at a time: the server reads and sends a page per request, whatever the fleet.
    let nodes: Vec<Node> = client
        .get_pages(&format!("/api/v1/nodes?limit={page_size}"))
        .await?;
    match output {
        OutputFormat::Json => print_json(&nodes),
        OutputFormat::Table => {
            print_list(&nodes);
            Ok(())
        }
    }
}

async fn show(client: &Client, output: OutputFormat, node: &str) -> anyhow::Result<()> {
    let node: Node = client
        .get(&format!("/api/v1/nodes/{}", segment(node)))
        .await?;
    match output {
        OutputFormat::Json => print_json(&node),
        OutputFormat::Table => {
            print_node(&node);
            if let Some((detail, report)) = super::gpus::latest(client, &node.id).await? {
                super::gpus::print(&detail, &report);
            }
            Ok(())
        }
    }
}

async fn metrics(
    client: &Client,
    output: OutputFormat,
    node: &str,
    limit: usize,
) -> anyhow::Result<()> {
    let samples: Vec<MetricsSample> = client
        .get(&format!(
            "/api/v1/nodes/{}/metrics?limit={limit}",
            segment(node)
        ))
        .await?;
    match output {
        OutputFormat::Json => print_json(&samples),
        OutputFormat::Table => {
            let mut t = table(&["TIME", "CPU %", "MEM %", "DISK FREE", "LOAD1", "CONTAINERS"]);
            for s in &samples {
                t.add_row(vec![
                    s.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    pct(Some(s.metrics.cpu_usage)),
                    pct(Some(s.metrics.mem_usage)),
                    mb(Some(s.metrics.disk_free_mb)),
                    pct(s.metrics.load1),
                    s.metrics.running_containers.len().to_string(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}

async fn label(
    client: &Client,
    output: OutputFormat,
    node: &str,
    changes: &[String],
) -> anyhow::Result<()> {
    let mut set = drover_types::Labels::new();
    let mut remove = Vec::new();
    for c in changes {
        match c.strip_suffix('-') {
            Some(key) if !c.contains('=') => remove.push(key.to_string()),
            _ => {
                let (k, v) = drover_types::labels::parse_label(c)?;
                set.insert(k, v);
            }
        }
    }
    let body = serde_json::json!({"set": set, "remove": remove});
    let node: Option<Node> = client
        .request(
            Method::POST,
            &format!("/api/v1/nodes/{}/labels", segment(node)),
            Some(&body),
        )
        .await?;
    if let Some(n) = node {
        match output {
            OutputFormat::Json => print_json(&n)?,
            OutputFormat::Table => {
                println!("{}", safe(&format!("{}: {}", n.name, labels(&n.labels))))
            }
        }
    }
    Ok(())
}

async fn accept_labels(client: &Client, output: OutputFormat, node: &str) -> anyhow::Result<()> {
    let before: Node = client
        .get(&format!("/api/v1/nodes/{}", segment(node)))
        .await?;
    let node: Option<Node> = client
        .request(
            Method::POST,
            &format!("/api/v1/nodes/{}/labels/accept", segment(node)),
            None::<&()>,
        )
        .await?;
    if let Some(n) = node {
        match output {
            OutputFormat::Json => print_json(&n)?,
            OutputFormat::Table if before.pending_labels.is_empty() => {
                println!(
                    "{}",
                    safe(&format!(
                        "{}: no pending labels; labels {}",
                        n.name,
                        labels(&n.labels)
                    ))
                )
            }
            OutputFormat::Table => println!(
                "{}",
                safe(&format!(
                    "{}: accepted {}; labels {}",
                    n.name,
                    labels(&before.pending_labels),
                    labels(&n.labels)
                ))
            ),
        }
    }
    Ok(())
}

async fn delete(client: &Client, output: OutputFormat, node: &str) -> anyhow::Result<()> {
    let deleted: Option<Node> = client
        .request(
            Method::DELETE,
            &format!("/api/v1/nodes/{}", segment(node)),
            None::<&()>,
        )
        .await?;
    match (output, deleted) {
        (OutputFormat::Json, Some(n)) => print_json(&n),
        (_, Some(n)) => {
            println!("{}", safe(&format!("deleted node {} ({})", n.name, n.id)));
            Ok(())
        }
        (_, None) => Ok(()),
    }
}

fn print_list(nodes: &[Node]) {
    if nodes.is_empty() {
        println!(
            "No nodes yet. Create a join token with `drover token create` and start an agent with it."
        );
        return;
    }
    let mut t = table(&[
        "NAME",
        "ID",
        "STATUS",
        "OS/ARCH",
        "CPUS",
        "MEMORY",
        "CPU %",
        "MEM %",
        "DISK FREE",
        "AGENT",
        "LAST SEEN",
        "LABELS",
    ]);
    for n in nodes {
        let c = &n.capabilities;
        // CPU and memory use change by the second: a node that is not Ready shows "-", not its last
        // reading as if current (`drover nodes show` gives the reading with its age).
        let m = n
            .metrics
            .as_ref()
            .filter(|_| n.status == drover_types::NodeStatus::Ready);
        let disk = n.metrics.as_ref().map(|m| m.disk_free_mb);
        t.add_row(vec![
            n.name.clone(),
            n.id.chars().take(8).collect(),
            n.status.to_string(),
            format!(
                "{}/{}",
                or_dash(c.os.as_deref()),
                or_dash(c.arch.as_deref())
            ),
            c.cpu_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            mb(c.mem_mb),
            pct(m.map(|m| m.cpu_usage)),
            pct(m.map(|m| m.mem_usage)),
            mb(disk),
            or_dash(n.agent_version.as_deref()),
            ago(n.last_seen),
            match n.pending_labels.len() {
                0 => labels(&n.labels),
                k => format!("{} (+{k} pending)", labels(&n.labels)),
            },
        ]);
    }
    println!("{t}");
}

fn print_node(n: &Node) {
    let c = &n.capabilities;
    let mut rows: Vec<(&str, String)> = vec![
        ("Name", n.name.clone()),
        ("ID", n.id.clone()),
        ("Status", n.status.to_string()),
        ("Transport", n.transport.as_str().to_string()),
        ("Connected", n.connected.to_string()),
        ("Labels", labels(&n.labels)),
        (
            "Pending",
            if n.pending_labels.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} (reported by the node; `drover nodes accept-labels {}` to use them)",
                    labels(&n.pending_labels),
                    n.name
                )
            },
        ),
        ("IP", or_dash(n.ip.as_deref())),
        ("Registered", n.registered_at.to_rfc3339()),
        ("Last seen", ago(n.last_seen)),
        ("Heartbeat", format!("{} ms", n.heartbeat_interval_ms)),
        ("Hostname", or_dash(c.hostname.as_deref())),
        (
            "OS",
            format!(
                "{} ({})",
                or_dash(c.os.as_deref()),
                or_dash(c.os_version.as_deref())
            ),
        ),
        ("Arch", or_dash(c.arch.as_deref())),
        ("Kernel", or_dash(c.kernel.as_deref())),
        (
            "CPUs",
            c.cpu_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("Memory", mb(c.mem_mb)),
        ("Disk", mb(c.disk_mb)),
        (
            "IPs",
            if c.ips.is_empty() {
                "-".into()
            } else {
                c.ips.join(", ")
            },
        ),
        ("Agent", or_dash(c.agent_version.as_deref())),
    ];
    let gpus = if c.gpus.is_empty() {
        "none".to_string()
    } else {
        c.gpus
            .iter()
            .map(|g| format!("{} ({})", g.name, mb(g.mem_mb)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push(("GPUs", gpus));
    if let Some(m) = &n.metrics {
        metric_rows(n, m, &mut rows);
    }
    // Nearly every value is the node's own report: escaped, so a line cannot rewrite the ones above it.
    for (k, v) in rows {
        println!("{:<14}{}", format!("{k}:"), safe(&v));
    }
}

/// The last heartbeat's reading: from a node that is not Ready, it says when it was taken.
fn metric_rows(n: &Node, m: &drover_types::Metrics, rows: &mut Vec<(&str, String)>) {
    let stale = match n.status {
        drover_types::NodeStatus::Ready => String::new(),
        status => format!(
            " (last reported {}; the node is {status})",
            ago(n.last_seen)
        ),
    };
    rows.push(("CPU usage", format!("{} %{stale}", pct(Some(m.cpu_usage)))));
    rows.push((
        "Memory usage",
        format!("{} %{stale}", pct(Some(m.mem_usage))),
    ));
    rows.push(("Disk free", mb(Some(m.disk_free_mb))));
    if let (Some(a), Some(b), Some(c)) = (m.load1, m.load5, m.load15) {
        rows.push(("Load", format!("{a:.2} {b:.2} {c:.2}")));
    }
    if let Some(u) = m.uptime_s {
        rows.push((
            "Uptime",
            humantime::format_duration(std::time::Duration::from_secs(u)).to_string(),
        ));
    }
    let containers = if m.running_containers.is_empty() {
        "none".to_string()
    } else {
        m.running_containers
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    rows.push(("Containers", containers));
}
