//! Terminal safety (issue 23, finding 6): what a node reports about itself, and what a server says in an
//! error, reaches the operator's terminal with its control characters escaped. The node's own report is
//! still accepted and kept as it is (`-o json` carries it unchanged).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};

use drover_testkit::{Server, drover_cli, registration};
use serde_json::{Value, json};

/// The values of the finding: clear the screen, turn red, set the window title; return to the start of
/// the line and write over it.
const OS: &str = "\x1b[2J\x1b[31mFAKE\x1b]0;owned\x07";
const ARCH: &str = "x\rOVERWRITE";
/// An 8-bit CSI and a right-to-left override, in a GPU's and a container's name.
const GPU: &str = "A100\u{9b}2J";
const CONTAINER: &str = "web\u{202e}ydaeR";

/// Fails when `out` holds any byte a terminal acts on (C0 but the newline, DEL) or a C1 control or a
/// bidirectional override; returns stdout as text.
fn printable(what: &str, out: &[u8]) -> String {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(bad.is_empty(), "{what} printed {bad:?} raw:\n{text}");
    text
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    printable(&format!("{what} (stderr)"), &out.stderr);
    printable(what, &out.stdout)
}

#[test]
fn what_a_node_reports_is_shown_escaped_and_kept_raw_in_json() {
    let server = Server::start().unwrap();
    let join = server.join_token(json!({})).unwrap();
    // The attack: an HTTP node registers with escape sequences in its capabilities, and heartbeats a
    // container name with a bidi override.
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration(
                "evil",
                json!({"capabilities": {"os": OS, "arch": ARCH, "cpu_count": 2, "mem_mb": 2048,
                       "gpus": [{"name": GPU, "mem_mb": 40960}]}}),
            ),
        )
        .unwrap();
    assert_eq!(
        reply.status, 201,
        "registration still accepts it: {reply:?}"
    );
    let (id, token) = (
        reply.body["node_id"].as_str().unwrap().to_string(),
        reply.body["node_token"].as_str().unwrap().to_string(),
    );
    let beat = server
        .post(
            &format!("/api/v1/nodes/{id}/heartbeat"),
            Some(&token),
            &json!({"cpu_usage": 5, "mem_usage": 6, "disk_free_mb": 7, "running_containers": [CONTAINER]}),
        )
        .unwrap();
    assert_eq!(beat.status, 200, "{beat:?}");
    // A well-behaved node beside it, whose row the other must not be able to write over.
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration(
                "good",
                json!({"capabilities": {"os": "linux", "arch": "aarch64", "cpu_count": 4, "mem_mb": 4096}}),
            ),
        )
        .unwrap();
    assert_eq!(reply.status, 201, "{reply:?}");

    // The table: the escaped form is visible, nothing raw reaches the terminal, the other row is intact.
    let list = ok("drover nodes", server.cli(&["nodes"]).unwrap());
    assert!(
        list.contains(r"\e[2J\e[31mFAKE\e]0;owned\a/x\rOVERWRITE"),
        "{list}"
    );
    let good = list
        .lines()
        .find(|l| l.trim_start().starts_with("good"))
        .unwrap();
    assert!(
        good.contains("linux/aarch64"),
        "plain text untouched: {list}"
    );
    assert_eq!(list.lines().count(), 3, "a header and two rows: {list}");

    // One node in full, every line of it.
    let show = ok(
        "drover nodes show",
        server.cli(&["nodes", "show", "evil"]).unwrap(),
    );
    for want in [
        r"OS:           \e[2J\e[31mFAKE\e]0;owned\a (-)",
        r"Arch:         x\rOVERWRITE",
        r"GPUs:         A100\u{9b}2J (40.0G)",
        r"Containers:   web\u{202e}ydaeR",
    ] {
        assert!(show.contains(want), "no {want:?} in:\n{show}");
    }
    let show = ok(
        "drover nodes show good",
        server.cli(&["nodes", "show", "good"]).unwrap(),
    );
    assert!(show.contains("Arch:         aarch64\n"), "{show}");

    // Scripts get the node's report as it was sent (JSON escapes it by its own rules).
    let out = server.cli(&["nodes", "-o", "json"]).unwrap();
    let nodes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let evil = nodes.iter().find(|n| n["name"] == "evil").unwrap();
    assert_eq!(evil["capabilities"]["os"], OS);
    assert_eq!(evil["capabilities"]["arch"], ARCH);
    let out = server
        .cli(&["nodes", "show", "evil", "-o", "json"])
        .unwrap();
    let node: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(node["capabilities"]["gpus"][0]["name"], GPU);
    assert_eq!(node["metrics"]["running_containers"][0]["name"], CONTAINER);
}

/// Whatever answers in the server's place (a proxy, a captive portal, a hostile host on the path) chooses
/// the error message the CLI prints: it is escaped too, newlines of the CLI's own message kept.
#[test]
fn an_error_from_the_server_is_shown_escaped() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = json!({"error": format!("{OS} and {ARCH}")}).to_string();
    let answer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut request, mut buf, start) = (Vec::new(), [0u8; 4096], Instant::now());
        while !request.windows(4).any(|w| w == b"\r\n\r\n")
            && start.elapsed() < Duration::from_secs(10)
        {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let reply = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).unwrap();
    });
    let out = drover_cli()
        .unwrap()
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "t",
            "nodes",
        ])
        .output()
        .unwrap();
    answer.join().unwrap();
    assert!(!out.status.success());
    let err = printable("the error", &out.stderr);
    assert!(
        err.contains(r"error: \e[2J\e[31mFAKE\e]0;owned\a and x\rOVERWRITE"),
        "{err}"
    );

    // The legitimate path: a real server's errors read as they always did.
    let server = Server::start().unwrap();
    let out = server.cli(&["nodes", "show", "nobody"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "not found");
    let err = printable("the error", &out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("nobody"),
        "{err}"
    );
}
