//! `drover operator`: people and scripts with their own API token and a role (admins only).

use clap::{Args, Subcommand};
use drover_types::operator::{CreateOperatorRequest, CreatedOperator, OperatorInfo, Role};
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, segment};
use super::output::{print_json, table};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover operator create alice --role operator\n  \
    drover operator create grafana --role viewer -o json\n  \
    drover operator list\n  \
    drover operator revoke alice\n\n\
    Roles: viewer reads; operator also runs tasks, calls actions, applies manifests and labels nodes;\n\
    admin also manages join tokens, operators and nodes. The token is printed once: hand it to the\n\
    operator, who runs the `drover login` line printed with it.")]
pub struct OperatorArgs {
    #[command(subcommand)]
    command: OperatorCommand,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create an operator and print their API token (the only time it is shown).
    Create {
        /// The operator's name, as the audit log will show it.
        name: String,
        /// What they may do.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
    /// List operators (never their tokens).
    List,
    /// Revoke an operator's token; their name stays in the list and the audit log.
    Revoke { name: String },
}

/// The `drover login` line for a new operator, for the API as this server serves it: the pinned CA only
/// means something over https, and plain HTTP reaches others only with an explicit opt-in.
fn login_line(server: &str, token: &str, ca_fingerprint: &str) -> String {
    let host = reqwest::Url::parse(server)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let elsewhere = if super::client::is_loopback_host(&host) {
        format!("\n(from another machine, use this server's address instead of {host})")
    } else {
        String::new()
    };
    if server.starts_with("https://") {
        format!(
            "drover login {server} --token {token} --ca-fingerprint {ca_fingerprint}{elsewhere}"
        )
    } else {
        format!(
            "drover login {server} --token {token}\n\
             (this API is plain HTTP: a token reaches it in the clear only from this machine; start the server \
             with --api-tls so others log in with https://HOST:PORT --ca-fingerprint {ca_fingerprint})"
        )
    }
}

fn parse_role(s: &str) -> Result<Role, drover_types::operator::UnknownRole> {
    s.parse()
}

pub async fn run(args: OperatorArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        OperatorCommand::Create { name, role } => {
            let created: Option<CreatedOperator> = client
                .request(
                    Method::POST,
                    "/api/v1/operators",
                    Some(&CreateOperatorRequest { name, role }),
                )
                .await?;
            let created =
                created.ok_or_else(|| anyhow::anyhow!("the server returned no operator"))?;
            match args.output {
                OutputFormat::Json => print_json(&created)?,
                OutputFormat::Table => {
                    println!("{}", created.token);
                    eprintln!(
                        "Operator {} ({}). They log in with:\n  {}",
                        created.info.name,
                        created.info.role,
                        login_line(client.server(), &created.token, &created.ca_fingerprint)
                    );
                }
            }
            Ok(())
        }
        OperatorCommand::List => {
            let operators: Vec<OperatorInfo> = client.get("/api/v1/operators").await?;
            match args.output {
                OutputFormat::Json => print_json(&operators),
                OutputFormat::Table => {
                    let mut t = table(&["NAME", "ROLE", "STATE", "CREATED", "CREATED BY"]);
                    for op in &operators {
                        t.add_row(vec![
                            op.name.clone(),
                            op.role.to_string(),
                            if op.revoked { "revoked" } else { "active" }.to_string(),
                            op.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            op.created_by.clone(),
                        ]);
                    }
                    println!("{t}");
                    Ok(())
                }
            }
        }
        OperatorCommand::Revoke { name } => {
            client
                .request::<serde_json::Value>(
                    Method::DELETE,
                    &format!("/api/v1/operators/{}", segment(&name)),
                    None::<&()>,
                )
                .await?;
            eprintln!("revoked operator {name}");
            Ok(())
        }
    }
}
