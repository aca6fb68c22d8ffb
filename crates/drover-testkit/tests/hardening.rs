//! The server side of issue 9's hardening, each attack reproduced and refused with the server still up:
//! durations from outside are checked, authentication comes before parsing, a join token is spent only
//! after the rest of the request checked out, unproven callers are bounded (size, time), dead agent
//! streams are dropped, HTTP nodes cannot be taken over by name, and every change lands in the audit log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::v1::EnrollRequest;
use drover_proto::{AgentLinkClient, SERVER_TLS_NAME};
use drover_testkit::{Agent, Server, ServerOptions, TIMEOUT, registration, tail, wait_for};
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn assert_up(server: &Server) {
    let reply = server.request("GET", "/health", None, None).unwrap();
    assert_eq!(
        reply.status,
        200,
        "the server is down:\n{}",
        tail(&server.log(), 30)
    );
}

fn bad_field(reply: &drover_testkit::Reply, field: &str) {
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.body["field"], field, "{reply:?}");
}

/// An `Enroll` call over TLS, as a new agent makes it (no client certificate).
fn enroll(server: &Server, token: &str, csr_pem: String) -> Result<(), tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = std::fs::read_to_string(server.data_dir().join("ca.crt")).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(SERVER_TLS_NAME);
        let channel = Endpoint::from_shared(server.agent_url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = AgentLinkClient::new(channel).max_encoding_message_size(usize::MAX);
        client
            .enroll(EnrollRequest {
                protocol_version: 2,
                token: token.to_string(),
                csr_pem,
                name: "intruder".into(),
                labels: Default::default(),
            })
            .await
            .map(|_| ())
    })
}

/// Rows 3, 4, 13: durations and times from outside meet checked arithmetic and a sane maximum.
#[test]
fn huge_durations_are_refused_naming_the_field() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();

    for since in ["1000000y", "18446744073709551615s", "99999999999999999999"] {
        let reply = server.get(&format!("/api/v1/audit?since={since}")).unwrap();
        bad_field(&reply, "since");
    }
    assert_eq!(server.get("/api/v1/audit?since=30d").unwrap().status, 200);

    for timeout in ["18446744073709551615s", "2h", "1000000y"] {
        let reply = server
            .request(
                "POST",
                &format!("/api/v1/nodes/ghost/actions/ping?timeout={timeout}"),
                Some(&admin),
                None,
            )
            .unwrap();
        bad_field(&reply, "timeout");
    }

    for ttl in ["100000y", "11y", "18446744073709551615s"] {
        let reply = server
            .post("/api/v1/tokens", Some(&admin), &json!({"ttl": ttl}))
            .unwrap();
        bad_field(&reply, "ttl");
    }
    let reply = server
        .post("/api/v1/tokens", Some(&admin), &json!({"ttl": "9y"}))
        .unwrap();
    assert_eq!(reply.status, 201, "{reply:?}");
    let tokens = server.get("/api/v1/tokens").unwrap();
    assert_eq!(tokens.status, 200, "{tokens:?}");
    assert_eq!(tokens.body.as_array().unwrap().len(), 1);

    let join = server.join_token(json!({})).unwrap();
    for interval in [json!(1e300), json!(-1), json!(86401)] {
        let reply = server
            .post(
                "/api/v1/nodes/register",
                Some(&join),
                &registration("slow", json!({"heartbeat_interval": interval})),
            )
            .unwrap();
        bad_field(&reply, "heartbeat_interval");
    }

    for (field, value) in [("timeout_ms", u64::MAX), ("grace_ms", u64::MAX)] {
        let mut spec = json!({"kind": "exec", "argv": ["true"]});
        spec[field] = json!(value);
        let reply = server
            .post(
                "/api/v1/tasks",
                Some(&admin),
                &json!({"target": "all", "spec": spec}),
            )
            .unwrap();
        bad_field(&reply, &format!("spec.{field}"));
    }

    // The CLI says the same, and the server is still there.
    let out = server.cli(&["audit", "--since", "1000000y"]).unwrap();
    assert!(!out.status.success());
    assert_up(&server);
}

/// Row 16: a wrong credential is refused before the body or query is looked at.
#[test]
fn authentication_comes_before_parsing() {
    let server = Server::start().unwrap();
    let join = server.join_token(json!({})).unwrap();
    let reg = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration("box", json!({})),
        )
        .unwrap();
    let id = reg.body["node_id"].as_str().unwrap().to_string();
    let garbage = b"{\"cpu_usage\": ".to_vec();

    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "POST",
            format!("/api/v1/nodes/{id}/heartbeat"),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef"),
        ),
        ("POST", format!("/api/v1/nodes/{id}/heartbeat"), None),
        ("POST", "/api/v1/nodes/register".into(), Some("drv1.zz")),
        (
            "POST",
            "/api/v1/nodes/register".into(),
            Some("not-a-node-token"),
        ),
        ("POST", "/api/v1/tasks".into(), Some("wrong")),
        ("POST", "/api/v1/tokens".into(), None),
        ("POST", "/api/v1/manifests".into(), Some(&join)),
        (
            "POST",
            "/api/v1/nodes/box/actions/ping?timeout=forever".into(),
            Some("wrong"),
        ),
        (
            "GET",
            "/api/v1/audit?since=1000000y&bogus=1".into(),
            Some("wrong"),
        ),
        (
            "PUT",
            format!("/api/v1/blobs/{}", "0".repeat(64)),
            Some("wrong"),
        ),
    ];
    for (method, path, token) in cases {
        let reply = server
            .request(method, &path, token, Some(garbage.clone()))
            .unwrap();
        assert_eq!(reply.status, 401, "{method} {path}: {reply:?}");
    }
    // The heartbeat of a wrong token with an incomplete body: 401, not 400 naming the missing field.
    let reply = server
        .post(
            &format!("/api/v1/nodes/{id}/heartbeat"),
            Some("wrong"),
            &json!({"cpu_usage": 1}),
        )
        .unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body["field"].is_null(), "{reply:?}");
    assert_up(&server);
}

/// Row 14: a request refused for anything but its token does not spend the token.
#[test]
fn a_refused_request_does_not_use_up_a_single_use_token() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({"max_uses": 1})).unwrap();

    // A malformed CSR: refused as such, the token still unused.
    let e = enroll(
        &server,
        &token,
        "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n".into(),
    )
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let tokens = server.get("/api/v1/tokens").unwrap();
    assert_eq!(tokens.body[0]["uses"], 0, "{tokens:?}");

    // An HTTP registration refused for its name (a drover-agent node's): the token still unused.
    let mut agent = Agent::start(&server.agent_url(), "real", &["--token", &token]).unwrap();
    server
        .wait_node("real", "connected", |n| n["connected"] == true)
        .unwrap();
    agent.kill();
    let second = server.join_token(json!({"max_uses": 1})).unwrap();
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&second),
            &registration("real", json!({})),
        )
        .unwrap();
    assert_eq!(reply.status, 409, "{reply:?}");
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&second),
            &registration("other", json!({"heartbeat_interval": 0})),
        )
        .unwrap();
    bad_field(&reply, "heartbeat_interval");
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&second),
            &registration("other", json!({})),
        )
        .unwrap();
    assert_eq!(
        reply.status, 201,
        "the token was not spent by the refusals: {reply:?}"
    );
    assert_up(&server);
}

/// Row 8: what an unauthenticated caller sends is read up to 64 KiB, not 64 MiB.
#[test]
fn unauthenticated_enrollments_are_read_only_up_to_a_small_limit() {
    let server = Server::start().unwrap();
    let bogus = "drv1.00000000.00000000000000000000000000000000";

    // Under the limit: read, and refused for its token.
    let e = enroll(&server, bogus, "x".repeat(32 * 1024)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // Over it, several at once: refused before the end is read, so never as far as the token.
    let server_ref = &server;
    std::thread::scope(|scope| {
        let calls: Vec<_> = [100 * 1024, 8 << 20, 8 << 20, 8 << 20, 8 << 20, 8 << 20]
            .into_iter()
            .map(|size| {
                (
                    size,
                    scope.spawn(move || enroll(server_ref, bogus, "x".repeat(size))),
                )
            })
            .collect();
        for (size, call) in calls {
            let e = call.join().unwrap().unwrap_err();
            assert_ne!(
                e.code(),
                tonic::Code::Unauthenticated,
                "{size} bytes were read whole: {e:?}"
            );
        }
    });
    assert_up(&server);
    let e = enroll(&server, bogus, String::new()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
}

/// Reads until the peer closes the connection; how long that took, or `None` if it stayed open `within`.
fn closed_within(stream: &mut dyn Read, opened: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    while opened.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some(opened.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(opened.elapsed()),
        }
    }
    None
}

fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// A TLS connection to the agent port that completes its handshake and then says nothing.
fn tls_without_preface(
    server: &Server,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(server.data_dir().join("ca.crt")).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(SERVER_TLS_NAME).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", server.agent_port)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Row 9: connections that never prove themselves are closed after 10 s; established agent streams and
/// SSE followers are not.
#[test]
fn connections_that_say_nothing_are_closed_and_live_ones_are_not() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let _agent = Agent::start(
        &server.agent_url(),
        "steady",
        &[
            "--token",
            &token,
            "--heartbeat-interval",
            "500ms",
            "--allow-shell",
        ],
    )
    .unwrap();
    server
        .wait_node("steady", "connected", |n| n["connected"] == true)
        .unwrap();
    // A follower of a task that outlives the deadline.
    let task = server
        .create_task(json!({"target": {"node": "steady"}, "spec": {"kind": "exec", "shell": "sleep 13; echo late-line"}}))
        .unwrap();
    let mut follower = TcpStream::connect(("127.0.0.1", server.api_port)).unwrap();
    write!(
        follower,
        "GET /api/v1/tasks/{}/output?follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        task["id"].as_str().unwrap(),
        server.admin_token()
    )
    .unwrap();

    let opened = Instant::now();
    let mut silent_tcp = tcp(server.agent_port);
    let mut silent_tls = tls_without_preface(&server);
    let mut silent_rest = tcp(server.api_port);
    let mut partial_rest = tcp(server.api_port);
    partial_rest
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();

    let limit = Duration::from_secs(25);
    for (what, stream) in [
        (
            "a TCP connection without a TLS handshake",
            &mut silent_tcp as &mut dyn Read,
        ),
        (
            "a TLS connection without the HTTP/2 preface",
            &mut silent_tls,
        ),
        ("a REST connection without a request", &mut silent_rest),
        ("a REST connection with partial headers", &mut partial_rest),
    ] {
        let took = closed_within(stream, opened, limit);
        assert!(took.is_some(), "{what} was still open after {limit:?}");
        assert!(
            took.unwrap() >= Duration::from_secs(5),
            "{what} closed too early: {took:?}"
        );
    }

    // The follower got everything, though its connection was quiet for longer than the deadline.
    follower.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("event: done") {
        let n = follower
            .read(&mut buf)
            .expect("the follower's stream was cut");
        assert!(n > 0, "the follower's stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("late-line"), "{text}");
    // The agent's stream was never cut: attached once, still connected.
    let node = server
        .wait_node("steady", "connected", |n| n["connected"] == true)
        .unwrap();
    assert_eq!(node["connected"], true);
    assert_eq!(
        server.log().matches("agent attached").count(),
        1,
        "{}",
        tail(&server.log(), 30)
    );
    assert_up(&server);
}

/// Row 9: an agent that stops answering (frozen, or cut off) is shown disconnected within about 30 s.
#[test]
fn a_frozen_agents_stream_is_dropped() {
    let server = Server::start().unwrap();
    let token = server.join_token(json!({})).unwrap();
    let agent = Agent::start(&server.agent_url(), "frozen", &["--token", &token]).unwrap();
    server
        .wait_node("frozen", "connected", |n| n["connected"] == true)
        .unwrap();
    let pid = agent.pid().unwrap() as i32;
    // SAFETY: signals to a child this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = Instant::now();
    let dropped = wait_for(
        "the frozen agent shown disconnected",
        Duration::from_secs(40),
        || {
            server
                .nodes()
                .ok()?
                .into_iter()
                .find(|n| n["name"] == "frozen" && n["connected"] == false)
        },
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    dropped.unwrap();
    assert!(
        frozen.elapsed() < Duration::from_secs(35),
        "took {:?}",
        frozen.elapsed()
    );
    // Thawed, it comes back.
    server
        .wait_node("frozen", "connected again", |n| n["connected"] == true)
        .unwrap();
    assert_up(&server);
}

fn audit(server: &Server) -> Vec<Value> {
    server
        .get("/api/v1/audit?limit=1000")
        .unwrap()
        .body
        .as_array()
        .unwrap()
        .clone()
}

fn audited<'a>(entries: &'a [Value], action: &str, target: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["action"] == action && e["target"].as_str().unwrap_or("").contains(target))
        .unwrap_or_else(|| panic!("no {action} on {target} in the audit log: {entries:#?}"))
}

/// Row 10: every change an operator or a node makes is in the audit log, with who made it.
#[test]
fn every_change_is_audited() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("secret.txt"), "x").unwrap();
    let created = server
        .post(
            "/api/v1/tokens",
            Some(&admin),
            &json!({"max_uses": 3, "labels": {"role": "edge"}}),
        )
        .unwrap();
    let token = created.body["token"].as_str().unwrap().to_string();
    let token_id = created.body["id"].as_str().unwrap().to_string();
    let spare = server
        .post("/api/v1/tokens", Some(&admin), &json!({}))
        .unwrap();
    let spare_id = spare.body["id"].as_str().unwrap();
    assert_eq!(
        server
            .request(
                "DELETE",
                &format!("/api/v1/tokens/{spare_id}"),
                Some(&admin),
                None
            )
            .unwrap()
            .status,
        204
    );
    let _agent = Agent::start(
        &server.agent_url(),
        "worker",
        &[
            "--token",
            &token,
            "--allow-path",
            files.path().to_str().unwrap(),
        ],
    )
    .unwrap();
    server
        .wait_node("worker", "connected", |n| n["connected"] == true)
        .unwrap();
    let reg = server
        .post(
            "/api/v1/nodes/register",
            Some(&token),
            &registration("http-box", json!({})),
        )
        .unwrap();
    assert_eq!(reg.status, 201);
    let read = json!({"path": files.path().join("secret.txt")});
    for (action, args) in [
        ("ping", Value::Null),
        ("read_file", read),
        ("list_processes", Value::Null),
    ] {
        let reply = server
            .post(
                &format!("/api/v1/nodes/worker/actions/{action}"),
                Some(&admin),
                &args,
            )
            .unwrap();
        assert_eq!(reply.status, 200, "{action}: {reply:?}");
    }
    let hello_sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let put = server
        .request(
            "PUT",
            &format!("/api/v1/blobs/{hello_sha}"),
            Some(&admin),
            Some(b"hello".to_vec()),
        )
        .unwrap();
    assert_eq!(put.status, 201, "{put:?}");
    let ended = server
        .request(
            "DELETE",
            "/api/v1/nodes/worker/sessions",
            Some(&admin),
            None,
        )
        .unwrap();
    assert_eq!(ended.status, 200, "{ended:?}");
    let deleted = server
        .request("DELETE", "/api/v1/nodes/http-box", Some(&admin), None)
        .unwrap();
    assert_eq!(deleted.status, 200, "{deleted:?}");

    let log = audit(&server);
    let by = |action: &str, target: &str| audited(&log, action, target)["actor"].clone();
    assert_eq!(by("token.create", &token_id), "admin");
    assert_eq!(
        audited(&log, "token.create", &token_id)["detail"]["labels"]["role"],
        "edge"
    );
    assert_eq!(by("token.revoke", spare_id), "admin");
    assert_eq!(by("node.enroll", "worker"), "node:worker");
    assert_eq!(
        audited(&log, "node.enroll", "worker")["detail"]["token"],
        token_id.as_str()
    );
    assert_eq!(by("node.register", "http-box"), "node:http-box");
    let calls: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "action.call")
        .collect();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert!(
        calls
            .iter()
            .all(|c| c["actor"] == "admin" && c["target"] == "worker")
    );
    let read_call = calls
        .iter()
        .find(|c| c["detail"]["action"] == "read_file")
        .unwrap();
    assert!(
        read_call["detail"]["args"]["path"]
            .as_str()
            .unwrap()
            .ends_with("secret.txt")
    );
    assert_eq!(by("blob.put", hello_sha), "admin");
    assert_eq!(by("session.terminate", "worker"), "admin");
    assert_eq!(by("node.delete", "http-box"), "admin");

    // The CLI shows them too.
    let out = server
        .cli(&["audit", "--action", "node.delete", "-o", "json"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("http-box"));
}

/// Row 12: an HTTP node's name cannot be taken over without a join token or the node's own token.
#[test]
fn an_http_node_cannot_be_taken_over_by_name() {
    let server = Server::start().unwrap();
    let join = server.join_token(json!({})).unwrap();
    let first = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration("box", json!({})),
        )
        .unwrap();
    let (id, own) = (
        first.body["node_id"].as_str().unwrap().to_string(),
        first.body["node_token"].as_str().unwrap().to_string(),
    );
    let other = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration("other", json!({})),
        )
        .unwrap();
    let others = other.body["node_token"].as_str().unwrap().to_string();

    let takeover = |bearer: Option<&str>| {
        server
            .post(
                "/api/v1/nodes/register",
                bearer,
                &registration("box", json!({})),
            )
            .unwrap()
            .status
    };
    assert_eq!(takeover(None), 401);
    assert_eq!(
        takeover(Some(&"ab".repeat(24))),
        401,
        "a made-up node token"
    );
    assert_eq!(takeover(Some(&others)), 401, "another node's token");
    // The real node was not locked out.
    let beat = json!({"cpu_usage": 1, "mem_usage": 1, "disk_free_mb": 1});
    let path = format!("/api/v1/nodes/{id}/heartbeat");
    assert_eq!(server.post(&path, Some(&own), &beat).unwrap().status, 200);

    // Its own token re-registers it (its way back), and so does a join token; both are audited.
    let again = server
        .post(
            "/api/v1/nodes/register",
            Some(&own),
            &registration("box", json!({})),
        )
        .unwrap();
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body["node_id"], id.as_str());
    assert_eq!(takeover(Some(&join)), 201);
    let log = audit(&server);
    let registrations: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "node.register" && e["target"] == "box")
        .collect();
    assert_eq!(registrations.len(), 3, "{registrations:#?}");
    assert!(
        registrations
            .iter()
            .any(|e| e["detail"]["credential"] == "node token" && e["detail"]["again"] == true)
    );
    assert_up(&server);
}

/// Row 12: with open registration (labs only) takeover is possible by design, and the server says so.
#[test]
fn open_registration_warns_that_names_can_be_taken_over() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--open-registration".into()],
    })
    .unwrap();
    assert!(
        server.log().contains("open registration is on"),
        "{}",
        server.log()
    );
    let first = server
        .post(
            "/api/v1/nodes/register",
            None,
            &registration("lab", json!({})),
        )
        .unwrap();
    let again = server
        .post(
            "/api/v1/nodes/register",
            None,
            &registration("lab", json!({})),
        )
        .unwrap();
    assert_eq!(again.status, 201);
    assert_eq!(again.body["node_id"], first.body["node_id"]);
    let log = audit(&server);
    assert!(
        log.iter().any(|e| e["action"] == "node.register"
            && e["detail"]["credential"] == "open registration"
            && e["detail"]["again"] == true),
        "{log:#?}"
    );
}
