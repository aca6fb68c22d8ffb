//! `drover up`, the README's first command: a server and an enrolled local agent, stopped together.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use drover_testkit::{TIMEOUT, bin, free_port, wait_for};

/// The whole `drover up` process group dies with the test, pass or fail.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created for this child.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn up_starts_a_server_and_an_enrolled_local_agent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (api, agent_port) = (free_port(), free_port());
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "").unwrap();
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let mut up = Group(
        Command::new(bin("drover").unwrap())
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "up",
                "--config",
                config.to_str().unwrap(),
            ])
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--agent-listen", &format!("127.0.0.1:{agent_port}")])
            .args(["--heartbeat-interval", "200ms"])
            .env_remove("DROVER_SERVER")
            .env_remove("DROVER_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let up_log = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();

    // The CLI finds the admin token in the data dir: no --token needed.
    let cli = |args: &[&str]| {
        Command::new(bin("drover").unwrap())
            .args([
                "--server",
                &format!("http://127.0.0.1:{api}"),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .args(args)
            .env_remove("DROVER_TOKEN")
            .output()
            .unwrap()
    };
    let nodes = wait_for("the local agent Ready", TIMEOUT, || {
        let out = cli(&["nodes", "-o", "json"]);
        let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (nodes.get(0)?["status"] == "Ready").then_some(nodes)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", up_log()));
    assert_eq!(nodes[0]["labels"]["drover.io/local"], "true");
    let hint = format!(
        "drover --server http://127.0.0.1:{api} --data-dir {} nodes",
        data.display()
    );
    wait_for("up to say what to run next", TIMEOUT, || {
        up_log().contains(&hint).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", up_log()));

    // Ctrl-C stops the server and the agent.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.0.id() as i32, libc::SIGINT) };
    let status = wait_for("drover up to exit", TIMEOUT, || {
        up.0.try_wait().ok().flatten()
    })
    .unwrap();
    assert!(status.success(), "{status:?}\n{}", up_log());
    // Its log (server and agent, to a file here) carries no colour codes.
    assert!(!up_log().contains('\x1b'), "ANSI escapes in:\n{}", up_log());
    // Its children may take a moment to be reaped after it exits.
    wait_for("no process left behind", TIMEOUT, || {
        let leftovers = Command::new("pgrep")
            .args(["-f", data.to_str().unwrap()])
            .output()
            .ok()?;
        leftovers.stdout.is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: processes left behind"));
}
