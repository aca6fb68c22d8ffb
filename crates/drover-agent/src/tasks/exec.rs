//! Running a command: its own process group, output read by size from both streams in arrival order,
//! and on cancel or timeout SIGTERM to the whole group, a grace period, then SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::policy::Policy;
use std::process::Stdio;
use std::time::Duration;

use drover_types::task::MAX_CHUNK_BYTES;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use super::Ended;

pub struct ExecRequest {
    pub argv: Vec<String>,
    pub shell: Option<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub timeout: Option<Duration>,
    pub grace: Duration,
}

/// Finds a program the way a shell would: a path as given, a bare name on PATH.
pub fn resolve_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).canonicalize().ok();
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// Checks the node's policy, then runs the command, passing each output chunk (stream 1 or 2) to `emit`.
pub async fn run(
    req: ExecRequest,
    policy: &Policy,
    emit: mpsc::Sender<(u8, Vec<u8>)>,
    cancel: watch::Receiver<bool>,
) -> Ended {
    let (program, args) = match admit(&req, policy) {
        Ok(admitted) => admitted,
        Err(ended) => return ended,
    };
    let mut cmd = match command(&program, &args, &req) {
        Ok(cmd) => cmd,
        Err(ended) => return ended,
    };
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ended::error(format!("cannot start {}: {e}", program.display())),
    };
    supervise(child, emit, cancel, req.timeout, req.grace).await
}

/// The program and its arguments, once the node's policy allows the command and its environment.
fn admit(req: &ExecRequest, policy: &Policy) -> Result<(PathBuf, Vec<String>), Ended> {
    let (program, args) = match (&req.shell, req.argv.first()) {
        (Some(shell), _) => {
            policy
                .check_shell_task()
                .map_err(|refusal| Ended::refused(&refusal))?;
            (PathBuf::from("/bin/sh"), vec!["-c".into(), shell.clone()])
        }
        (None, Some(name)) => {
            let path = resolve_program(name).ok_or_else(|| {
                Ended::error(format!(
                    "cannot start {name:?}: no such program on this node"
                ))
            })?;
            policy
                .check_program(name, &path)
                .map_err(|refusal| Ended::refused(&refusal))?;
            (path, req.argv[1..].to_vec())
        }
        (None, None) => return Err(Ended::error("nothing to run".into())),
    };
    // The environment reaches the dynamic loader before the program runs: an allowed program with
    // LD_PRELOAD set is any code, so without --allow-shell only the names the node allows pass.
    policy
        .check_env(&req.env)
        .map_err(|refusal| Ended::refused(&refusal))?;
    Ok((program, args))
}

/// The command in its own process group, as the requested user when one is named.
fn command(
    program: &Path,
    args: &[String],
    req: &ExecRequest,
) -> Result<tokio::process::Command, Ended> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&req.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    if let Some(user) = &req.user {
        let account = lookup_user(user).map_err(Ended::refused)?;
        cmd.uid(account.uid)
            .gid(account.gid)
            .env("HOME", account.home)
            .env("USER", user)
            .env("LOGNAME", user);
    }
    Ok(cmd)
}

/// Reads the child's output until it exits, is cancelled or times out; then clears its process group.
async fn supervise(
    mut child: tokio::process::Child,
    emit: mpsc::Sender<(u8, Vec<u8>)>,
    mut cancel: watch::Receiver<bool>,
    timeout: Option<Duration>,
    grace: Duration,
) -> Ended {
    let pgid = child.id().map(|p| p as i32);
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(pump(s, 1, emit.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(pump(s, 2, emit.clone()))),
    ];
    drop(emit);

    let timeout = super::time_limit(timeout);
    tokio::pin!(timeout);
    let (status, stopped) = tokio::select! {
        status = child.wait() => (status, None),
        _ = super::cancelled(&mut cancel) => (stop(&mut child, pgid, grace).await, Some("Cancelled")),
        _ = &mut timeout => (stop(&mut child, pgid, grace).await, Some("TimedOut")),
    };
    // Whatever the command left running in its group goes with it, so no orphan outlives the task
    // (and no leftover holds the output pipes open).
    if let Some(pgid) = pgid {
        // SAFETY: killpg on the group this task created; ESRCH when it is already empty is fine.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    for r in readers.into_iter().flatten() {
        let _ = r.await;
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return Ended::error(format!("lost the task's process: {e}")),
    };
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = (status.code(), status.signal());
    let state = match stopped {
        Some(s) => s,
        None if code == Some(0) => "Succeeded",
        None => "Failed",
    };
    Ended {
        state,
        exit_code: code,
        signal,
        error: String::new(),
    }
}

/// SIGTERM to the group, up to `grace` for it to exit, then SIGKILL.
async fn stop(
    child: &mut tokio::process::Child,
    pgid: Option<i32>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pgid) = pgid {
        // SAFETY: signalling the process group this task created.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: as above.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            child.wait().await
        }
    }
}

/// Reads a stream by size, not by line: whatever is there, up to MAX_CHUNK_BYTES at a time, so bulk output
/// travels in few large chunks and live output still shows at once. A chunk never ends inside a UTF-8
/// character when the output is text (the cut bytes start the next chunk).
async fn pump(mut stream: impl AsyncRead + Unpin, which: u8, emit: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut buf = vec![0u8; MAX_CHUNK_BYTES];
        let start = carry.len();
        buf[..start].copy_from_slice(&carry);
        carry.clear();
        let n = match stream.read(&mut buf[start..]).await {
            Ok(0) | Err(_) => {
                if start > 0 {
                    buf.truncate(start);
                    let _ = emit.send((which, buf)).await;
                }
                return;
            }
            Ok(n) => n,
        };
        buf.truncate(start + n);
        if let Err(e) = std::str::from_utf8(&buf)
            && e.error_len().is_none()
            && e.valid_up_to() > 0
        {
            carry = buf.split_off(e.valid_up_to());
        }
        if emit.send((which, buf)).await.is_err() {
            return;
        }
    }
}

/// The account a task runs as (`--user`).
struct Account {
    uid: u32,
    gid: u32,
    home: String,
}

/// Why a task cannot run as the user it names; the text is the task's `Refused` reason.
#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error("--user needs the agent to run as root; this agent does not")]
    NotRoot,
    #[error("{0:?} is not a user name")]
    BadName(String),
    #[error("no user {0:?} on this node")]
    NoSuchUser(String),
}

/// uid, gid and home of a user; only root may switch users.
fn lookup_user(name: &str) -> Result<Account, UserError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(UserError::NotRoot);
    }
    let c_name = std::ffi::CString::new(name).map_err(|_| UserError::BadName(name.to_string()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; getpwnam_r writes only into pwd and buf.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(UserError::NoSuchUser(name.to_string()));
    }
    // SAFETY: pw_dir points into buf, NUL-terminated, when getpwnam_r succeeded.
    let home = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) }
        .to_string_lossy()
        .into_owned();
    Ok(Account {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    })
}
