//! Tokens go only where they belong (docs/security.md): the CLI sends the data dir's admin token only to a
//! server on loopback, and no token over plain HTTP to another host unless told. Checked against a
//! listener in a network namespace of the test's own, reached over a veth pair (not loopback), that records
//! every byte it receives. Also the CLI's and the agent's advice for a wrong address or port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use drover_testkit::{Agent, Server, TIMEOUT, drover_cli, stderr, stdout, wait_for};
use serde_json::Value;

/// Runs `ip` with `args`; a missing `ip` fails the test naming the package.
fn ip(args: &[&str]) -> std::io::Result<Output> {
    Command::new("ip").args(args).output().inspect_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!("`ip` is missing: install iproute2 (scripts/testbed.sh does)");
        }
    })
}

fn ip_ok(args: &[&str]) {
    let out = ip(args).unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

/// A network namespace with a veth pair to it and a listener inside that records what it receives and
/// answers every request like a drover server with an empty fleet. Removed on drop, also when a test
/// panics.
struct RemoteHost {
    ns: String,
    host_if: String,
    addr: String,
    port: u16,
    listener: Option<Child>,
    dir: tempfile::TempDir,
}

/// The listener: HTTP/1.1, one request per connection, every byte appended to the record file.
const LISTENER: &str = r#"
import socket, sys
addr, port, record, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(16)
open(ready, "w").close()
while True:
    c, _ = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except Exception:
        pass
    with open(record, "ab") as f:
        f.write(data)
    body = b'{"name":"lab","role":"operator"}' if b"/whoami" in data else b"[]"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    c.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    c.close()
"#;

impl RemoteHost {
    fn start() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", pid % 100_000);
        // A /30 of 10.231.0.0/16 chosen from the pid and a counter, so parallel runs do not collide.
        let block = (pid.wrapping_mul(7).wrapping_add(n * 131)) % (256 * 64);
        let (third, fourth) = (block / 64, (block % 64) * 4);
        let mut host = Self {
            ns: format!("drover-test-{tag}"),
            host_if: format!("dvh{tag}"),
            addr: format!("10.231.{third}.{}", fourth + 2),
            port: 18080,
            listener: None,
            dir: tempfile::tempdir().unwrap(),
        };
        let peer = format!("dvp{tag}");
        let host_addr = format!("10.231.{third}.{}/30", fourth + 1);
        let ns_addr = format!("{}/30", host.addr);
        ip_ok(&["netns", "add", &host.ns]);
        ip_ok(&[
            "link",
            "add",
            &host.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip_ok(&["link", "set", &peer, "netns", &host.ns]);
        ip_ok(&["addr", "add", &host_addr, "dev", &host.host_if]);
        ip_ok(&["link", "set", &host.host_if, "up"]);
        let ns = host.ns.clone();
        ip_ok(&[
            "netns", "exec", &ns, "ip", "addr", "add", &ns_addr, "dev", &peer,
        ]);
        ip_ok(&["netns", "exec", &ns, "ip", "link", "set", &peer, "up"]);
        ip_ok(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        let ready = host.dir.path().join("ready");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", LISTENER])
            .arg(&host.addr)
            .arg(host.port.to_string())
            .arg(host.record_path())
            .arg(&ready)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        host.listener = Some(child);
        wait_for("the listener in the namespace", TIMEOUT, || {
            ready.exists().then_some(())
        })
        .unwrap();
        // The veth comes up asynchronously: wait until the listener answers from the host side.
        wait_for("the namespace to be reachable", TIMEOUT, || {
            std::net::TcpStream::connect_timeout(
                &format!("{}:{}", host.addr, host.port).parse().unwrap(),
                Duration::from_millis(500),
            )
            .ok()
        })
        .unwrap();
        host
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}:{}", self.addr, self.port)
    }

    fn record_path(&self) -> PathBuf {
        self.dir.path().join("received")
    }

    /// Everything received so far.
    fn received(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.record_path()).unwrap_or_default()).into_owned()
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        if let Some(mut c) = self.listener.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting one end of the pair deletes both; the namespace goes with its last process.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// The CLI with its own config home (never the caller's contexts) and these arguments.
fn cli(home: &Path, args: &[&str]) -> Output {
    cli_env(home, &[], args)
}

fn cli_env(home: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = drover_cli().unwrap();
    cmd.env("XDG_CONFIG_HOME", home.join("config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().unwrap()
}

#[test]
fn no_token_reaches_another_host_over_plain_http_unless_told() {
    let remote = RemoteHost::start();
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let admin = "drvadm.admin-secret-7d1f";
    std::fs::write(data.join("admin.token"), admin).unwrap();
    let data_arg = data.to_str().unwrap();
    let http = remote.url("http");

    // The data dir's admin token is for the local server only: not sent by flag or by environment, over
    // plain HTTP or TLS, even with the opt-in (which is about tokens the user gives).
    for args in [
        vec!["--data-dir", data_arg, "--server", &http, "nodes"],
        vec!["--server", &http, "nodes"],
        vec![
            "--data-dir",
            data_arg,
            "--server",
            &remote.url("https"),
            "nodes",
        ],
        vec![
            "--data-dir",
            data_arg,
            "--server",
            &http,
            "--insecure-send-token-over-http",
            "nodes",
        ],
    ] {
        let out = cli_env(home.path(), &[("DROVER_DATA_DIR", &data)], &args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("not sending the admin token") && err.contains("loopback"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("--token") && err.contains("drover login"),
            "{err}"
        );
    }

    // A token given explicitly: refused over plain HTTP, saying why and what to do.
    let given = "drvop.given-secret-91ab";
    let out = cli(
        home.path(),
        &[
            "--data-dir",
            data_arg,
            "--server",
            &http,
            "--token",
            given,
            "nodes",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("plain HTTP")
            && err.contains("https://")
            && err.contains("--insecure-send-token-over-http"),
        "{err}"
    );

    // A context made by `drover login` for a real local server does not follow --server elsewhere.
    let server = Server::start().unwrap();
    let out = cli(
        home.path(),
        &[
            "login",
            &server.api_url(),
            "--token",
            &server.admin_token(),
            "--name",
            "local",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        home.path(),
        &["--data-dir", data_arg, "--server", &http, "nodes"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // `drover login` over plain HTTP to another host: refused, and a fingerprint is refused as meaningless.
    let login_token = "drvop.login-secret-3c55";
    let out = cli(home.path(), &["login", &http, "--token", login_token]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in the clear")
            && stderr(&out).contains("--insecure-send-token-over-http"),
        "{}",
        stderr(&out)
    );
    let fingerprint = "ab".repeat(32);
    for url in [http.as_str(), server.api_url().as_str()] {
        let out = cli(
            home.path(),
            &[
                "login",
                url,
                "--token",
                login_token,
                "--ca-fingerprint",
                &fingerprint,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--ca-fingerprint means nothing over plain HTTP"),
            "{}",
            stderr(&out)
        );
    }
    // A context pointing there without the opt-in (written by hand) does not send its token either.
    let config = home.path().join("config/drover/config.toml");
    let before = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{before}\n[contexts.handmade]\nserver = \"{http}\"\ntoken = \"drvop.handmade-secret-0e0e\"\n"
        ),
    )
    .unwrap();
    let out = cli(home.path(), &["--context", "handmade", "nodes"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("context \"handmade\""),
        "{}",
        stderr(&out)
    );

    // Nothing secret arrived; nothing at all, as every refusal comes before connecting.
    let received = remote.received();
    for secret in [
        admin,
        given,
        login_token,
        "handmade-secret",
        &server.admin_token(),
    ] {
        assert!(!received.contains(secret), "{secret} arrived:\n{received}");
    }
    assert!(received.is_empty(), "{received}");

    // Told explicitly, the token goes: for one command, or for a context made with the opt-in.
    let out = cli(
        home.path(),
        &[
            "--server",
            &http,
            "--token",
            given,
            "--insecure-send-token-over-http",
            "nodes",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(remote.received().contains(&format!("Bearer {given}")));
    let out = cli(
        home.path(),
        &[
            "login",
            &http,
            "--token",
            login_token,
            "--name",
            "lab",
            "--insecure-send-token-over-http",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("in the clear"), "{}", stderr(&out));
    let out = cli(home.path(), &["context", "list", "-o", "json"]);
    let contexts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lab = contexts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lab")
        .unwrap();
    assert_eq!(lab["insecure_plain_http"], true, "{contexts}");
    let out = cli(home.path(), &["nodes", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        remote
            .received()
            .matches(&format!("Bearer {login_token}"))
            .count()
            >= 2,
        "the login's whoami and the command"
    );
    // The admin token never went, whatever else did.
    assert!(!remote.received().contains(admin));
}

#[test]
fn wrong_addresses_ports_and_roles_get_advice() {
    let server = Server::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let port = server.api_url().rsplit(':').next().unwrap().to_string();

    // No admin token in the data dir (a server started with another one): say where else to look.
    let empty = home.path().join("empty");
    let out = cli(
        home.path(),
        &[
            "--data-dir",
            empty.to_str().unwrap(),
            "--server",
            &server.api_url(),
            "nodes",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    for hint in [
        "admin.token does not exist",
        "--data-dir",
        "DROVER_DATA_DIR",
        "drover login",
    ] {
        assert!(err.contains(hint), "missing {hint:?}: {err}");
    }

    // host:port without a scheme: http on loopback, refused elsewhere naming the schemes.
    let data = server.data_dir();
    let data = data.to_str().unwrap();
    let local = format!("127.0.0.1:{port}");
    let out = cli(
        home.path(),
        &["--data-dir", data, "--server", &local, "nodes"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        home.path(),
        &[
            "--data-dir",
            data,
            "--server",
            "cp.example.com:8080",
            "nodes",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("https://cp.example.com:8080")
            && stderr(&out).contains("http://cp.example.com:8080"),
        "{}",
        stderr(&out)
    );

    // The agent port is not the REST API.
    let agent_port = server.agent_url().replacen("https://", "http://", 1);
    let out = cli(
        home.path(),
        &["--data-dir", data, "--server", &agent_port, "nodes"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("agent port") && stderr(&out).contains("--listen"),
        "{}",
        stderr(&out)
    );

    // `operator create` prints a login line that works against this (plain HTTP) server, as printed.
    let out = server
        .cli(&["operator", "create", "otto", "--role", "operator"])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let err = stderr(&out);
    let line = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("drover login "))
        .unwrap_or_else(|| panic!("no login line: {err}"));
    assert!(line.starts_with(&server.api_url()), "{line}");
    assert!(!line.contains("--ca-fingerprint"), "{line}");
    let mut args = vec!["login"];
    args.extend(line.split_whitespace());
    let out = cli(home.path(), &args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));

    // Logged in as an operator, an admin command says how to get the admin back.
    let out = cli(home.path(), &["operator", "list"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("needs the `admin` role")
            && err.contains("--context")
            && err.contains("--token"),
        "{err}"
    );
    assert!(!err.contains(&token), "the token is not echoed: {err}");
    let out = cli(
        home.path(),
        &["--token", &server.admin_token(), "operator", "list"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // An agent pointed at the REST port says it is probably the wrong port, as an error.
    let join = stdout(&server.cli(&["token", "create", "--ttl", "10m"]).unwrap())
        .trim()
        .to_string();
    let agent = Agent::start(
        &server.api_url().replacen("http://", "https://", 1),
        "lost",
        &["--token", &join],
    )
    .unwrap();
    agent.wait_log("REST API port").unwrap();
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("REST API port")).unwrap();
    assert!(line.contains("ERROR") && line.contains("9090"), "{line}");
}
