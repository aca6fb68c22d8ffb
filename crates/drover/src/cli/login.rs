//! `drover login` and `drover context`: remote servers as named contexts in the operator's config, each
//! with its pinned CA, so a token only ever travels to the server it belongs to, over TLS.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use drover_types::operator::WhoAmI;
use serde::Serialize;

use super::client::{Client, ClientError, Target, is_loopback_host, normalize_server};
use super::config::{self, Context};
use super::output::{or_dash, print_json, table};
use super::{Global, OutputFormat, tls};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover login https://cp.example.com:8080 --token drvop.… --ca-fingerprint 3f2a…\n  \
    drover login https://10.0.0.5:8080 --token drvop.… --name lab --yes\n  \
    drover login http://127.0.0.1:8080 --token drvop.…   # plain HTTP only on loopback\n  \
    drover login http://10.0.0.5:8080 --token drvop.… --insecure-send-token-over-http   # a lab you trust\n\n\
    With https, the server's CA is read from its TLS chain before anything is sent, and pinned once its\n\
    SHA-256 fingerprint matches --ca-fingerprint (an admin sees it in `drover operator create`), or\n\
    once you confirm it (--yes: trust what is shown without asking). Plain http has no CA to pin (so no\n\
    --ca-fingerprint) and carries the token in the clear: refused for a server off this machine unless\n\
    --insecure-send-token-over-http is given, which the context then remembers. Server, CA and token go\n\
    into $XDG_CONFIG_HOME/drover/config.toml (else ~/.config/drover/config.toml), mode 0600.")]
pub struct LoginArgs {
    /// The server's REST API, like https://cp.example.com:8080.
    url: String,
    /// The context's name [default: the URL's host].
    #[arg(long)]
    name: Option<String>,
    /// The SHA-256 fingerprint the server's CA must have (64 hex digits; colons and a `sha256:` prefix
    /// are fine).
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// Trust the CA the server presents without asking (when no --ca-fingerprint is given).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct LoggedIn {
    context: String,
    server: String,
    operator: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_fingerprint: Option<String>,
}

/// Decides whether to trust a CA with fingerprint `found`; `Err` explains why not.
fn accept_fingerprint(args: &LoginArgs, url: &str, found: &str) -> anyhow::Result<()> {
    if let Some(given) = &args.ca_fingerprint {
        let expected = super::usage::UsageContext::usage(
            tls::normalize_fingerprint(given),
            &format!("--ca-fingerprint {given:?} is not a SHA-256 fingerprint (64 hex digits)"),
        )?;
        if expected != found {
            bail!(
                "the server at {url} presents a CA with fingerprint {found}, but --ca-fingerprint is {expected}: \
                 this is not the server you were given (or someone is in between); nothing was sent to it"
            );
        }
        return Ok(());
    }
    if args.yes {
        eprintln!("trusting the server's CA, fingerprint {found} (--yes)");
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "the server's CA has fingerprint {found}: compare it with the one your admin gave you, then log in \
             again with --ca-fingerprint {found} (or --yes to trust it as it is)"
        );
    }
    eprint!(
        "The server's CA has fingerprint\n  {found}\nDoes it match the one your admin gave you? [y/N] "
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not logged in: the CA was not trusted");
    }
    Ok(())
}

/// The URL to log in to, normalized as for --server, and its host.
fn login_url(args: &LoginArgs) -> anyhow::Result<(String, reqwest::Url, String)> {
    // `host:port` alone is http:// on loopback and refused elsewhere, as for --server.
    let base = normalize_server(&args.url).map_err(|e| match e {
        ClientError::Usage { message } => ClientError::Usage {
            message: message.replacen("--server", "the URL", 1),
        },
        other => other,
    })?;
    let url = reqwest::Url::parse(&base).with_context(|| {
        format!(
            "{:?} is not a URL like https://cp.example.com:8080",
            args.url
        )
    })?;
    let host = url
        .host_str()
        .with_context(|| format!("{} names no host", args.url))?
        .to_string();
    Ok((base, url, host))
}

/// Refuses a CA fingerprint over plain HTTP, and a token in the clear off this machine without consent.
/// Returns whether the token goes in the clear to another host.
fn check_transport(
    args: &LoginArgs,
    global: &Global,
    url: &reqwest::Url,
    base: &str,
    host: &str,
) -> anyhow::Result<bool> {
    let plain_off_host = url.scheme() == "http" && !is_loopback_host(host);
    if url.scheme() == "http" && args.ca_fingerprint.is_some() {
        return Err(ClientError::Usage {
            message: format!(
                "--ca-fingerprint means nothing over plain HTTP: {base} presents no TLS certificate, so there is \
                 no CA to check or pin. Log in with https:// to a server started with --api-tls, or leave \
                 --ca-fingerprint out"
            ),
        }
        .into());
    }
    if plain_off_host && !global.insecure_send_token_over_http {
        return Err(ClientError::TokenWithheld {
            message: format!(
                "refusing to send a token in the clear to {host}: plain HTTP lets anyone on the way read it. Start \
                 the server with --api-tls and log in with https://, or, on a network you trust, pass \
                 --insecure-send-token-over-http (the context remembers it)"
            ),
        }
        .into());
    }
    Ok(plain_off_host)
}

/// With https, the server's CA (PEM) and its fingerprint once trusted; with http, none.
async fn pin_ca(
    args: &LoginArgs,
    url: &reqwest::Url,
    base: &str,
    host: &str,
    plain_off_host: bool,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    Ok(match url.scheme() {
        "https" => {
            let port = url.port_or_known_default().unwrap_or(443);
            let der = tls::fetch_ca(host, port).await?;
            let found = tls::fingerprint(&der);
            accept_fingerprint(args, base, &found)?;
            (Some(tls::der_to_pem(&der)), Some(found))
        }
        "http" => {
            if plain_off_host {
                eprintln!(
                    "warning: the token goes to {host} in the clear (--insecure-send-token-over-http); this \
                     context will keep sending it so"
                );
            }
            (None, None)
        }
        other => super::usage::usage!(
            "unsupported scheme {other:?}: use https:// (or http:// on loopback)"
        ),
    })
}

pub async fn login(args: LoginArgs, global: &Global) -> anyhow::Result<()> {
    let Some(token) = global.token.clone() else {
        super::usage::usage!(
            "--token is required (an operator token from `drover operator create`)"
        );
    };
    let (base, url, host) = login_url(&args)?;
    let plain_off_host = check_transport(&args, global, &url, &base, &host)?;
    let (ca, ca_fingerprint) = pin_ca(&args, &url, &base, &host, plain_off_host).await?;
    // Proves the token (and, with TLS, the pinned CA) before anything is saved.
    let target = Target {
        base: base.clone(),
        others: Vec::new(),
        token: token.clone(),
        ca: ca.clone(),
        forbidden_hint: None,
    };
    let me: WhoAmI = Client::for_target(target)?.get("/api/v1/whoami").await?;
    let name = args.name.clone().unwrap_or_else(|| host.clone());
    let path = config::path();
    let mut config = config::load(&path)?;
    config.contexts.insert(
        name.clone(),
        Context {
            server: base.clone(),
            token,
            ca,
            ca_fingerprint: ca_fingerprint.clone(),
            insecure_plain_http: plain_off_host,
        },
    );
    config.current = Some(name.clone());
    config::save(&path, &config)?;
    let done = LoggedIn {
        context: name,
        server: base,
        operator: me.name,
        role: me.role.to_string(),
        ca_fingerprint,
    };
    match args.output {
        OutputFormat::Json => print_json(&done)?,
        OutputFormat::Table => eprintln!(
            "logged in to {} as {} ({}); context {:?} is now current ({})",
            done.server,
            done.operator,
            done.role,
            done.context,
            path.display()
        ),
    }
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover context list\n  \
    drover context use prod\n  \
    drover context remove lab\n  \
    drover --context lab nodes     # one command in another context")]
pub struct ContextArgs {
    #[command(subcommand)]
    command: ContextCommand,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t, global = true)]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum ContextCommand {
    /// List contexts (never their tokens); the current one is marked.
    List,
    /// Make a context current: commands without --server use it.
    Use { name: String },
    /// Forget a context and its token.
    Remove { name: String },
}

#[derive(Debug, Serialize)]
struct ContextView {
    name: String,
    current: bool,
    server: String,
    ca_fingerprint: Option<String>,
    /// Plain HTTP to a server off this machine, by the user's choice at login.
    insecure_plain_http: bool,
}

pub fn context(args: ContextArgs) -> anyhow::Result<()> {
    let path = config::path();
    let mut config = config::load(&path)?;
    let missing = |name: &str| {
        anyhow::anyhow!(
            "no context is named {name:?} in {} (see `drover context list`)",
            path.display()
        )
    };
    match args.command {
        ContextCommand::List => {
            let views: Vec<ContextView> = config
                .contexts
                .iter()
                .map(|(name, c)| ContextView {
                    current: config.current.as_deref() == Some(name),
                    name: name.clone(),
                    server: c.server.clone(),
                    ca_fingerprint: c.ca_fingerprint.clone(),
                    insecure_plain_http: c.insecure_plain_http,
                })
                .collect();
            match args.output {
                OutputFormat::Json => print_json(&views)?,
                OutputFormat::Table => {
                    let mut t = table(&["CURRENT", "NAME", "SERVER", "CA FINGERPRINT"]);
                    for v in &views {
                        t.add_row(vec![
                            if v.current { "*" } else { "" }.to_string(),
                            v.name.clone(),
                            v.server.clone(),
                            if v.insecure_plain_http {
                                "none: plain HTTP (insecure)".to_string()
                            } else {
                                or_dash(v.ca_fingerprint.as_deref())
                            },
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        ContextCommand::Use { name } => {
            if !config.contexts.contains_key(&name) {
                return Err(missing(&name));
            }
            config.current = Some(name.clone());
            config::save(&path, &config)?;
            eprintln!("context {name:?} is now current");
        }
        ContextCommand::Remove { name } => {
            if config.contexts.remove(&name).is_none() {
                return Err(missing(&name));
            }
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            config::save(&path, &config)?;
            eprintln!("removed context {name:?}");
        }
    }
    Ok(())
}
