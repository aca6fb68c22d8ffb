//! `drover action NODE NAME [ARGS]`: call an action plugin and print its result. Ctrl-C cancels the call
//! on the node.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use drover_types::action::{ActionReply, DEFAULT_DEADLINE_MS};
use drover_types::duration::parse_duration;
use reqwest::Method;

use super::client::{Client, segment};
use super::output::print_json;
use super::usage::UsageContext;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover action pi-kitchen ping\n  \
    drover action pi-kitchen read_file '{\"path\": \"/var/log/syslog\", \"max_bytes\": 4096}'\n  \
    drover action pi-kitchen service_status '{\"unit\": \"ssh\"}' --timeout 5s\n  \
    drover action pi-kitchen list_processes '{\"name\": \"drover\"}'\n  \
    drover action pi-kitchen my_restart '{}' --sign-key ~/.drover-keys/manifest.key   # on a node that pins a key")]
pub struct ActionArgs {
    /// The node's id or name.
    node: String,
    /// The action's name (see GET /api/v1/nodes/NODE/actions).
    name: String,
    /// Arguments as a JSON object.
    args: Option<String>,
    /// Deadline for the call [default: 30s].
    #[arg(long)]
    timeout: Option<String>,
    /// Actions that change a node which pins signing keys must be signed.
    #[command(flatten)]
    sign: super::keys::SignArgs,
}

pub async fn run(args: ActionArgs, client: &Client) -> anyhow::Result<()> {
    let body: serde_json::Value = match &args.args {
        Some(text) => {
            serde_json::from_str(text).usage(&format!("the arguments are not JSON: {text}"))?
        }
        None => serde_json::Value::Null,
    };
    let deadline = match &args.timeout {
        Some(t) => parse_duration(t).usage("--timeout")?,
        None => Duration::from_millis(DEFAULT_DEADLINE_MS),
    };
    // Catch Ctrl-C from the start, so an early one cancels the call instead of killing us.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let call_id = hex_id();
    let mut path = format!(
        "/api/v1/nodes/{}/actions/{}?timeout={}ms&call_id={call_id}",
        segment(&args.node),
        segment(&args.name),
        deadline.as_millis()
    );
    if let Some(signature) = args.sign.action(&args.node, &args.name, &body)? {
        path.push_str(&format!("&signature={}", segment(&signature)));
    }
    // The HTTP request outlives the deadline a little: the server answers DeadlineExceeded itself.
    let wait = deadline + Duration::from_secs(10);
    let call =
        client.request_with_timeout::<ActionReply>(Method::POST, &path, Some(&body), Some(wait));
    tokio::pin!(call);
    let reply = tokio::select! {
        r = &mut call => r,
        _ = interrupt.recv() => {
            eprintln!("cancelling call {call_id}...");
            let cancel = format!("/api/v1/nodes/{}/actions/calls/{call_id}/cancel", segment(&args.node));
            if let Err(e) = client.request::<serde_json::Value>(Method::POST, &cancel, None::<&()>).await {
                eprintln!("could not cancel: {e}");
            }
            // The call itself now ends with Cancelled.
            tokio::time::timeout(Duration::from_secs(10), call).await.context("no answer after cancelling")?
        }
    };
    let reply = reply?.context("the server returned no result")?;
    print_json(&reply.result)
}

fn hex_id() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
