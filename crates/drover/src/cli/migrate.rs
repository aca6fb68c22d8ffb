//! `drover migrate`: moves a stopped SQLite server's records into an empty PostgreSQL database.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use drover_server::ServerError;
use drover_server::server::{DB_FILE, lock_data_dir};
use drover_server::store::transfer::{self, TransferError};
use drover_server::store::{StoreError, redact_url};
use serde_json::json;

use super::output::{print_json, table};
use super::server::check_database_url;
use super::{Global, OutputFormat, default_data_dir};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    systemctl stop drover-server\n  \
    drover migrate --from /var/lib/drover --to postgres://drover:secret@db.example.com:5432/drover\n  \
    drover server --data-dir /var/lib/drover --database postgres://drover:secret@db.example.com:5432/drover\n\n\
    Stop the server first: migrate refuses a data dir a running server holds. The target database must\n\
    be empty (create it with `createdb --owner drover drover`); the copy is one transaction, so a failed\n\
    one leaves it empty. The CA and admin.token stay in the data dir: start the server on PostgreSQL with\n\
    the same data dir and agents reconnect without enrolling again. drover.db stays (brought to this\n\
    version's schema, as a start would).\n\n\
    Exit codes: 0 copied, 1 error (nothing copied), 2 usage, 3 no drover.db in the data dir, 5 PostgreSQL\n\
    unreachable, 8 the target database is not empty, 9 a server is running on the data dir.")]
pub struct MigrateArgs {
    /// The stopped server's data dir, holding drover.db [default: --data-dir, else the default data dir].
    #[arg(long, value_name = "DATA_DIR")]
    from: Option<PathBuf>,
    /// The empty PostgreSQL database to copy into (postgres://user:password@host:port/database).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

pub async fn run(args: MigrateArgs, global: &Global) -> anyhow::Result<()> {
    let url = check_database_url(&args.to)?;
    let dir = args
        .from
        .or_else(|| global.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        return Err(TransferError::NoSource(db.display().to_string()).into());
    }
    // Held until the copy ends, so a server started meanwhile on the data dir refuses to.
    let _lock = lock_data_dir(&dir)?;
    let counts = transfer::sqlite_to_postgres(&db, &url)
        .await
        .with_context(|| format!("cannot migrate {} to {}", dir.display(), redact_url(&url)))?;
    let shown = redact_url(&url);
    match args.output {
        OutputFormat::Json => print_json(&json!({
            "from": dir,
            "to": shown,
            "counts": counts.iter().map(|(t, n)| (t.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        }))?,
        OutputFormat::Table => {
            let mut t = table(&["RECORDS", "COPIED"]);
            for (name, n) in &counts {
                t.add_row(vec![name.to_string(), n.to_string()]);
            }
            println!("{t}");
            println!(
                "\nCopied into {shown}. Start the server on it with the same data dir (its CA and admin token stay there):\n  drover server --data-dir {} --database {shown}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The exit code of a failed migration, when it is one the help names.
pub fn exit_code(e: &anyhow::Error) -> Option<u8> {
    if let Some(t) = e.downcast_ref::<TransferError>() {
        return match t {
            TransferError::NoSource(_) => Some(3),
            TransferError::TargetNotEmpty(_) => Some(8),
            TransferError::Store(StoreError::Unavailable(_)) => Some(5),
            _ => None,
        };
    }
    match e.downcast_ref::<ServerError>() {
        Some(ServerError::InUse(_)) => Some(9),
        _ => None,
    }
}
