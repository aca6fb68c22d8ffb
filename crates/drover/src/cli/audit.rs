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
                let what = what(e);
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

/// The longest WHAT cell; the whole entry is in `-o json`.
const MAX_WHAT: usize = 80;

/// What an entry did, in a line: the command of a task, the action and its arguments of a call, the
/// task a cancel was for; other entries show their detail as `key=value`.
fn what(e: &AuditEntry) -> String {
    let d = &e.detail;
    let text = match e.action.as_str() {
        "task.create" | "task.finish" => d["command"].as_str().unwrap_or_default().to_string(),
        "task.cancel" => format!("task {}", d["task"].as_str().unwrap_or("?")),
        "action.call" => {
            let action = d["action"].as_str().unwrap_or("?");
            match (&d["args"], d["args_bytes"].as_u64()) {
                (serde_json::Value::Null, Some(n)) => format!("{action} ({n} bytes of arguments)"),
                (serde_json::Value::Null, None) => action.to_string(),
                (args, _) => format!("{action} {args}"),
            }
        }
        "action.cancel" => format!("call {}", d["call"].as_str().unwrap_or("?")),
        _ => match d.as_object() {
            Some(fields) => fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match v.as_str() {
                    Some(s) => format!("{k}={s}"),
                    None => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            None => String::new(),
        },
    };
    if text.chars().count() > MAX_WHAT {
        let mut cut: String = text.chars().take(MAX_WHAT - 1).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::what;
    use drover_types::task::AuditEntry;

    fn entry(action: &str, detail: serde_json::Value) -> AuditEntry {
        AuditEntry {
            id: 1,
            at: chrono::Utc::now(),
            actor: "admin".into(),
            action: action.into(),
            target: "vm".into(),
            detail,
        }
    }

    #[test]
    fn what_names_the_call_the_cancel_and_the_rest() {
        let call = entry(
            "action.call",
            serde_json::json!({"action": "read_file", "call": "c1", "args": {"path": "/etc/hostname"}}),
        );
        assert_eq!(what(&call), r#"read_file {"path":"/etc/hostname"}"#);
        let big = entry(
            "action.call",
            serde_json::json!({"action": "write_file", "args_bytes": 9000}),
        );
        assert_eq!(what(&big), "write_file (9000 bytes of arguments)");
        let cancel = entry("task.cancel", serde_json::json!({"task": "3f2a"}));
        assert_eq!(what(&cancel), "task 3f2a");
        let token = entry(
            "token.create",
            serde_json::json!({"max_uses": 1, "expires_at": null}),
        );
        assert_eq!(what(&token), "max_uses=1");
        let long = entry(
            "task.create",
            serde_json::json!({"command": "x".repeat(200)}),
        );
        assert_eq!(what(&long).chars().count(), 80);
    }
}
