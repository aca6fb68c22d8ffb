//! `drover token`: join tokens for enrolling agents.

use clap::{Args, Subcommand};
use drover_types::api::{CreateTokenRequest, CreatedToken};
use drover_types::labels::parse_labels;
use drover_types::token::JoinTokenInfo;
use reqwest::Method;

use super::OutputFormat;
use super::client::{Client, segment};
use super::output::{labels, print_json, table};
use super::usage::UsageContext;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  drover token create --ttl 1h --label role=edge\n  drover token create --max-uses 1 -o json\n  drover token list\n  drover token revoke 1a2b3c4d"
)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token and print it (the only time it is shown).
    Create {
        /// Lifetime, like 1h, 30m or 3600 (seconds).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many nodes may join with it (default: any number until it expires).
        #[arg(long)]
        max_uses: Option<u32>,
        /// Label given to every node that joins with it, key=value; repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List join tokens (never their secrets).
    List,
    /// Revoke a join token by its id.
    Revoke { id: String },
}

pub async fn run(args: TokenArgs, client: &Client) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            ttl,
            max_uses,
            labels,
        } => {
            let req = CreateTokenRequest {
                ttl: Some(ttl),
                max_uses,
                labels: parse_labels(&labels).usage("--label")?,
            };
            let created: Option<CreatedToken> = client
                .request(Method::POST, "/api/v1/tokens", Some(&req))
                .await?;
            let created = created.ok_or_else(|| anyhow::anyhow!("the server returned no token"))?;
            match args.output {
                OutputFormat::Json => print_json(&created)?,
                OutputFormat::Table => {
                    println!("{}", created.token);
                    eprintln!(
                        "Join token {} (expires {}). Enroll a node with:\n  drover-agent --server https://SERVER:9090 --token {}",
                        created.info.id,
                        created.info.expires_at.to_rfc3339(),
                        created.token
                    );
                }
            }
            Ok(())
        }
        TokenCommand::List => {
            let tokens: Vec<JoinTokenInfo> = client.get("/api/v1/tokens").await?;
            match args.output {
                OutputFormat::Json => print_json(&tokens),
                OutputFormat::Table => {
                    let mut t = table(&["ID", "EXPIRES", "USES", "STATE", "LABELS"]);
                    let now = chrono::Utc::now();
                    for tok in &tokens {
                        let state = if tok.revoked {
                            "revoked"
                        } else if tok.expires_at <= now {
                            "expired"
                        } else if tok.max_uses.is_some_and(|m| tok.uses >= m) {
                            "used up"
                        } else {
                            "valid"
                        };
                        let uses = match tok.max_uses {
                            Some(m) => format!("{}/{m}", tok.uses),
                            None => tok.uses.to_string(),
                        };
                        t.add_row(vec![
                            tok.id.clone(),
                            tok.expires_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            uses,
                            state.to_string(),
                            labels(&tok.labels),
                        ]);
                    }
                    println!("{t}");
                    Ok(())
                }
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .request::<serde_json::Value>(
                    Method::DELETE,
                    &format!("/api/v1/tokens/{}", segment(&id)),
                    None::<&()>,
                )
                .await?;
            eprintln!("revoked join token {id}");
            Ok(())
        }
    }
}
