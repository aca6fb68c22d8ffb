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
            let code = cli::exit_code(&e);
            // Errors carry what servers and nodes said: escaped, newlines kept (cli/safe.rs).
            eprintln!("error: {}", cli::safe_lines(&format!("{e:#}")));
            ExitCode::from(code)
        }
    }
}
