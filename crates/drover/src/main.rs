//! `drover`: the control plane server (`drover server`, `drover up`) and the operator CLI.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Server(_) | cli::Command::Up(_)) {
        // A CLI command piped into `head` should stop quietly when the reader goes away, as Unix tools do,
        // instead of panicking in `println!`. Sockets are unaffected (Rust sends with MSG_NOSIGNAL); the
        // server keeps Rust's default of ignoring SIGPIPE.
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The server wants every core; a CLI command makes a few requests, and starting worker threads for
    // them would cost more than they save.
    let mut builder = match args.command {
        cli::Command::Server(_) | cli::Command::Up(_) => {
            tokio::runtime::Builder::new_multi_thread()
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A usage mistake found after clap parsed the line exits 2, like clap's own (cli/usage.rs).
            let code = if e.downcast_ref::<cli::UsageError>().is_some() {
                2
            } else {
                cli::exit_code(&e)
            };
            // Errors carry what servers and nodes said: escaped, newlines kept (cli/safe.rs).
            eprintln!("error: {}", cli::safe_lines(&error_text(&e)));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes as `{:#}` joins them, less a cause whose text is already shown: many errors put
/// their source in their own message too ("cannot listen on ADDR: Address already in use ..."), and the
/// user should read the OS's words once.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let line = cause.to_string();
        if text.contains(&line) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&line);
    }
    text
}
