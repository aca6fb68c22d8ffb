//! Operators with roles and the REST API over TLS, with the real server, agent and CLI: each role is
//! refused what it may not do with a 403 naming the role it needs, the audit log names the operator, a
//! revoked token is refused, and `drover login` pins the server's CA so commands run through a context.
//! The API over TLS keeps the deadlines on connections that do not prove themselves.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_testkit::{Agent, Server, ServerOptions, drover_cli, stderr, stdout};
use serde_json::{Value, json};

/// Creates an operator with the admin's CLI and returns its JSON (token, ca_fingerprint, ...).
fn create_operator(server: &Server, name: &str, role: &str) -> Value {
    let out = server
        .cli(&["operator", "create", name, "--role", role, "-o", "json"])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The CLI in an operator's own config dir (`XDG_CONFIG_HOME`), with no server or token of the caller's.
fn operator_cli(config_home: &Path, args: &[&str]) -> Output {
    let mut cmd: Command = drover_cli().unwrap();
    cmd.env("XDG_CONFIG_HOME", config_home)
        // A data dir with no admin token, so nothing can fall back to it.
        .arg("--data-dir")
        .arg(config_home.join("no-data"))
        .args(args);
    cmd.output().unwrap()
}

fn refused(reply: &drover_testkit::Reply, status: u16, role: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let error = reply.body["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("`{role}`")), "{error}");
}

#[test]
fn each_role_is_refused_what_it_may_not_do_and_the_audit_log_names_the_operator() {
    let server = Server::start().unwrap();
    let join = server.join_token(json!({})).unwrap();
    let _agent = Agent::start(
        &server.agent_url(),
        "box",
        &[
            "--token",
            &join,
            "--allow-shell",
            "--heartbeat-interval",
            "300ms",
        ],
    )
    .unwrap();
    server
        .wait_node("box", "connected", |n| n["connected"] == true)
        .unwrap();
    let vera = create_operator(&server, "vera", "viewer")["token"]
        .as_str()
        .unwrap()
        .to_string();
    let otto = create_operator(&server, "otto", "operator")["token"]
        .as_str()
        .unwrap()
        .to_string();

    // A viewer reads, and is refused every change with a 403 naming `operator`.
    let nodes = server
        .request("GET", "/api/v1/nodes", Some(&vera), None)
        .unwrap();
    assert_eq!(nodes.status, 200, "{nodes:?}");
    assert_eq!(nodes.body[0]["name"], "box");
    let task = json!({"target": {"node": "box"}, "spec": {"kind": "exec", "shell": "true"}});
    refused(
        &server.post("/api/v1/tasks", Some(&vera), &task).unwrap(),
        403,
        "operator",
    );
    let manifest = json!({"name": "m", "selector": {}, "resources": []});
    refused(
        &server
            .post("/api/v1/manifests", Some(&vera), &manifest)
            .unwrap(),
        403,
        "operator",
    );
    let out = server
        .cli(&["--token", &vera, "exec", "box", "--", "true"])
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "exit 4: not authorized");
    assert!(stderr(&out).contains("`operator` role"), "{}", stderr(&out));

    // An operator runs tasks, and is refused what admins do with a 403 naming `admin`.
    let out = server
        .cli(&["--token", &otto, "exec", "box", "--", "echo", "hello"])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hello"));
    refused(
        &server
            .post("/api/v1/tokens", Some(&otto), &json!({}))
            .unwrap(),
        403,
        "admin",
    );
    refused(
        &server
            .post(
                "/api/v1/operators",
                Some(&otto),
                &json!({"name": "mallory", "role": "admin"}),
            )
            .unwrap(),
        403,
        "admin",
    );
    refused(
        &server
            .request("DELETE", "/api/v1/nodes/box", Some(&otto), None)
            .unwrap(),
        403,
        "admin",
    );
    assert_eq!(server.nodes().unwrap().len(), 1, "the node is still there");

    // The audit log names who did what: the operator for the task, the bootstrap admin for the operators.
    let audit = server.get("/api/v1/audit?actor=otto").unwrap();
    let actions: Vec<&str> = audit
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"task.create"), "{audit:?}");
    let created = server.get("/api/v1/audit?action=operator.create").unwrap();
    assert!(
        created
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "admin"),
        "{created:?}"
    );

    // A revoked token is refused outright; the operator stays listed, as revoked.
    let out = server.cli(&["operator", "revoke", "otto"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reply = server
        .request("GET", "/api/v1/nodes", Some(&otto), None)
        .unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    let out = server.cli(&["operator", "list", "-o", "json"]).unwrap();
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let otto_listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "otto")
        .unwrap();
    assert_eq!(otto_listed["revoked"], true);
    assert!(!stdout(&out).contains("drvop."), "no token is ever listed");
    assert!(
        server.get("/health").unwrap().status == 200,
        "the server is still up"
    );
}

#[test]
fn login_pins_the_api_ca_and_commands_go_through_the_context() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--api-tls".into()],
    })
    .unwrap();
    assert!(server.api_url().starts_with("https://"));
    // The local admin's CLI verifies the server with the CA in its data dir.
    let otto = create_operator(&server, "otto", "operator");
    let token = otto["token"].as_str().unwrap();
    let fingerprint = otto["ca_fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 64);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("drover/config.toml");
    let url = server.api_url();

    // A wrong fingerprint is refused before the token is sent, and nothing is saved.
    let wrong = format!(
        "{}{}",
        if fingerprint.starts_with('0') {
            "1"
        } else {
            "0"
        },
        &fingerprint[1..]
    );
    let out = operator_cli(
        home.path(),
        &["login", &url, "--token", token, "--ca-fingerprint", &wrong],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(fingerprint) && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(!config.exists());
    // Without a fingerprint, and nobody to ask, the CLI shows it and asks for it.
    let out = operator_cli(home.path(), &["login", &url, "--token", token]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("--ca-fingerprint {fingerprint}")),
        "{}",
        stderr(&out)
    );
    assert!(!config.exists());

    // The right fingerprint (as people paste it) logs in and keeps the context, 0600.
    let pasted = format!("SHA256:{}", fingerprint.to_uppercase());
    let out = operator_cli(
        home.path(),
        &[
            "login",
            &url,
            "--token",
            token,
            "--ca-fingerprint",
            &pasted,
            "--name",
            "lab",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let done: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(done["operator"], "otto");
    assert_eq!(done["role"], "operator");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the config holds a token");

    // Commands without --server or --token go through the current context, over verified TLS.
    let out = operator_cli(home.path(), &["nodes", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!([])
    );
    let out = operator_cli(home.path(), &["operator", "list"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("needs the `admin` role; otto has the `operator` role"),
        "{}",
        stderr(&out)
    );
    let out = operator_cli(home.path(), &["context", "list", "-o", "json"]);
    let contexts: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(contexts[0]["name"], "lab");
    assert_eq!(contexts[0]["current"], true);
    assert_eq!(contexts[0]["ca_fingerprint"], fingerprint);
    assert!(
        !stdout(&out).contains(token),
        "contexts are listed without tokens"
    );

    // Plain HTTP to the TLS port gets nowhere, and a token is never sent in the clear to a remote host.
    let plain = url.replacen("https://", "http://", 1);
    let out = operator_cli(
        home.path(),
        &["--server", &plain, "--token", token, "nodes"],
    );
    assert!(!out.status.success());
    let out = operator_cli(
        home.path(),
        &["login", "http://cp.example.com:8080", "--token", token],
    );
    assert!(stderr(&out).contains("in the clear"), "{}", stderr(&out));
    assert_eq!(server.get("/health").unwrap().status, 200);
}

#[test]
fn plain_http_still_works_without_api_tls_and_contexts_can_be_switched() {
    let server = Server::start().unwrap();
    assert!(server.api_url().starts_with("http://"));
    let home = tempfile::tempdir().unwrap();
    let vera = create_operator(&server, "vera", "viewer");
    let admin = server.admin_token();
    for (name, token) in [
        ("as-vera", vera["token"].as_str().unwrap()),
        ("as-admin", &admin),
    ] {
        let out = operator_cli(
            home.path(),
            &["login", &server.api_url(), "--token", token, "--name", name],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The last login is current: the bootstrap admin may list operators.
    let out = operator_cli(home.path(), &["operator", "list", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = operator_cli(home.path(), &["context", "use", "as-vera"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = operator_cli(home.path(), &["operator", "list"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // --context picks another for one command; flags beat the context.
    let out = operator_cli(home.path(), &["--context", "as-admin", "operator", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = operator_cli(home.path(), &["--token", &admin, "operator", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = operator_cli(home.path(), &["context", "use", "nope"]);
    assert!(
        stderr(&out).contains("no context is named \"nope\""),
        "{}",
        stderr(&out)
    );
}

/// Waits until the peer closes `stream` (a read of 0 or an error); the time since `opened`, or `None`
/// when it is still open after `limit`.
fn closed_after(stream: &mut dyn Read, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 256];
    while opened.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(opened.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(opened.elapsed()),
        }
    }
    None
}

/// With `--api-tls`, a connection that never finishes its handshake, and one that does and then sends no
/// request, are both closed after about 10 s; the API keeps answering.
#[test]
fn api_tls_connections_that_say_nothing_are_closed() {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let server = Server::start_with(ServerOptions {
        args: vec!["--api-tls".into()],
    })
    .unwrap();
    let opened = Instant::now();
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", server.api_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    };
    let mut no_handshake = connect();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(server.data_dir().join("ca.crt")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = connect();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let mut no_request = rustls::StreamOwned::new(conn, sock);

    let limit = Duration::from_secs(25);
    for (what, stream) in [
        (
            "a connection without a TLS handshake",
            &mut no_handshake as &mut dyn Read,
        ),
        ("a TLS connection without a request", &mut no_request),
    ] {
        let took = closed_after(stream, opened, limit);
        assert!(took.is_some(), "{what} was still open after {limit:?}");
        assert!(
            took.unwrap() >= Duration::from_secs(5),
            "{what} closed too early: {took:?}"
        );
    }
    assert_eq!(server.get("/health").unwrap().status, 200);
}
