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

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: drover_types::operator::UnknownRole| e.to_string())
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
                        "Operator {} ({}). They log in with:\n  drover login https://SERVER:8080 --token {} --ca-fingerprint {}",
                        created.info.name, created.info.role, created.token, created.ca_fingerprint
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
