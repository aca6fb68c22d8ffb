//! Issue 23's attacks by callers without credentials, replayed against a real server, each followed by the
//! legitimate path working: idle sockets against the agent port, stalled `Enroll` streams, invented HTTP
//! methods; and what an operator without the signing key can do to a signed manifest's version.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_proto::SERVER_TLS_NAME;
use drover_testkit::{Agent, Server, TIMEOUT, get_text, parse_exposition, sample, tail, wait_for};
use serde_json::json;

const IDLE_SOCKETS: usize = 2_000;

fn agent_addr(server: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.agent_port))
}

/// Whether the server has closed a socket we never write to.
fn closed(sock: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(sock.peek(&mut byte), Ok(0))
        || matches!(sock.peek(&mut byte), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
}

/// Row 1: 2,000 TCP connections to the agent port that send nothing, each reopened when the server closes
/// it; an enrolled agent still attaches within 5 s.
#[test]
fn an_agent_attaches_while_idle_sockets_are_held_against_the_agent_port() {
    let server = Server::start().unwrap();
    let addr = agent_addr(&server);
    let (stop, held) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let holder = {
        let (stop, held) = (stop.clone(), held.clone());
        std::thread::spawn(move || {
            let open = || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            };
            let mut socks: Vec<TcpStream> = (0..IDLE_SOCKETS).map(|_| open()).collect();
            held.store(socks.len(), Ordering::SeqCst);
            let mut reopened = 0;
            while !stop.load(Ordering::SeqCst) {
                for s in socks.iter_mut() {
                    if closed(s) {
                        *s = open();
                        reopened += 1;
                    }
                }
                // Deliberate: paces the check for closed sockets.
                std::thread::sleep(Duration::from_millis(100));
            }
            reopened
        })
    };
    wait_for("the idle sockets held", TIMEOUT, || {
        (held.load(Ordering::SeqCst) == IDLE_SOCKETS).then_some(())
    })
    .unwrap();

    let token = server.join_token(json!({})).unwrap();
    let started = Instant::now();
    let agent = Agent::start(&server.agent_url(), "steady", &["--token", &token]).unwrap();
    let attached = wait_for("the agent attached", Duration::from_secs(5), || {
        server
            .nodes()
            .ok()?
            .into_iter()
            .find(|n| n["name"] == "steady" && n["connected"] == true)
    });
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let reopened = holder.join().unwrap();
    attached.unwrap_or_else(|e| {
        panic!(
            "{e}\nagent log:\n{}\nserver log:\n{}",
            tail(&agent.log(), 20),
            tail(&server.log(), 20)
        )
    });
    eprintln!("attached in {took:?} beside {IDLE_SOCKETS} idle sockets ({reopened} reopened)");
}

/// A TLS client of the agent port without a certificate, speaking HTTP/2 through h2 (which answers the
/// server's PINGs, as a client that means to stay does).
async fn h2_client(server: &Server) -> h2::client::SendRequest<bytes::Bytes> {
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(agent_addr(server))
        .await
        .unwrap();
    let tls = connector
        .connect(ServerName::try_from(SERVER_TLS_NAME).unwrap(), tcp)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    send
}

/// An `Enroll` that sends a gRPC message header promising 256 bytes, and nothing more.
async fn stalled_enroll(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post(format!(
        "https://{SERVER_TLS_NAME}/drover.v1.AgentLink/Enroll"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let ready = send.clone().ready().await.unwrap();
    *send = ready;
    let (response, mut body) = send.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 1, 0]), false)
        .unwrap();
    (response, body)
}

/// Row 2: stalled `Enroll` streams over connections that answer PINGs: 64 of them (the attack), and
/// then as many as the waiting room has places and more. A real agent enrolls within 10 s all the while,
/// and the stalled streams that were sent away get an answer at once.
#[test]
fn an_agent_enrolls_while_stalled_enroll_streams_answer_pings() {
    let server = Server::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 3 connections x 100 streams: 64 first, then past the room's 256 places.
    let (stalled, mut clients) = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(h2_client(&server).await);
        }
        let mut stalled = Vec::new();
        for i in 0..300 {
            stalled.push(stalled_enroll(&mut clients[i / 100]).await);
        }
        (stalled, clients)
    });

    let token = server.join_token(json!({})).unwrap();
    let started = Instant::now();
    let agent = Agent::start(&server.agent_url(), "newcomer", &["--token", &token]).unwrap();
    wait_for(
        "the agent enrolled and attached",
        Duration::from_secs(10),
        || {
            server
                .nodes()
                .ok()?
                .into_iter()
                .find(|n| n["name"] == "newcomer" && n["connected"] == true)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nagent log:\n{}\nserver log:\n{}",
            tail(&agent.log(), 20),
            tail(&server.log(), 20)
        )
    });
    eprintln!("enrolled and attached in {:?}", started.elapsed());

    // The 44 that waited longest were sent away with RESOURCE_EXHAUSTED (and the agent's enrollment took
    // one more place) as soon as newer ones came, long before the 10 s body deadline.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "too slow to tell"
    );
    let answered = rt.block_on(async {
        let mut answered = 0;
        for (response, _body) in stalled {
            // Polled once: only answers already there count.
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::ZERO, response).await {
                let status = r
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.as_bytes().to_vec());
                assert_eq!(status.as_deref(), Some(&b"8"[..]), "{r:?}");
                answered += 1;
            }
        }
        answered
    });
    assert!(
        answered >= 44,
        "only {answered} stalled streams were sent away"
    );
    drop(clients.drain(..));
}

fn metrics_text(server: &Server) -> String {
    let (status, body) = get_text(
        &format!("{}/metrics", server.api_url()),
        Some(&server.admin_token()),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Row 3: 20,000 requests with invented methods add one series between them, not 17 each.
#[test]
fn metrics_stay_the_same_size_after_twenty_thousand_odd_methods() {
    let server = Server::start().unwrap();
    let odd = |from: usize, to: usize| {
        use std::io::{Read, Write};
        // Kept-alive connections, many requests each: the server answers every one with 404.
        let mut sock = TcpStream::connect(("127.0.0.1", server.api_port)).unwrap();
        for i in from..to {
            write!(
                sock,
                "M{i} /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            .unwrap();
            if i % 100 == 99 {
                sock.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut all = Vec::new();
                sock.read_to_end(&mut all).unwrap();
                sock = TcpStream::connect(("127.0.0.1", server.api_port)).unwrap();
            }
        }
    };
    odd(0, 1_000);
    // The first scrape adds `/metrics`'s own series; measure from the second.
    metrics_text(&server);
    let before = metrics_text(&server).len();
    odd(1_000, 20_000);
    let after = metrics_text(&server);
    let samples = parse_exposition(&after).unwrap();
    let count = sample(
        &samples,
        "drover_http_request_duration_seconds_count",
        &[
            ("route", "unmatched"),
            ("method", "OTHER"),
            ("status", "4xx"),
        ],
    );
    assert_eq!(count, Some(20_000.0), "the odd requests share one series");
    assert!(
        after.len() <= before + 256,
        "/metrics grew from {before} to {} bytes",
        after.len()
    );
    assert!(
        !after.contains("M19999"),
        "an invented method became a label"
    );
}

/// Row 9: an operator without the signing key cannot push a signed manifest's version out of reach.
#[test]
fn an_unsigned_version_neither_overflows_nor_locks_out_signers() {
    let server = Server::start().unwrap();
    let manifest = |version: u64| {
        json!({"name": "web", "version": version,
            "resources": [{"id": "motd", "file": {"path": "/tmp/motd", "content": "hi"}}]})
    };
    let token = server.admin_token();
    let reply = server
        .post("/api/v1/manifests", Some(&token), &manifest(u64::MAX))
        .unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.body["field"], "version", "{reply:?}");
    let highest = (1u64 << 53) - 1;
    let reply = server
        .post("/api/v1/manifests", Some(&token), &manifest(highest))
        .unwrap();
    assert!(reply.status < 300, "{reply:?}");
    // The signed path: `drover apply --sign-key` still works at a low version.
    let dir = tempfile::tempdir().unwrap();
    let out = server
        .cli(&["keys", "create", "--out", dir.path().to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = dir.path().join("manifest.key");
    let file = dir.path().join("web.yaml");
    std::fs::write(
        &file,
        "name: web\nversion: 2\nresources:\n  - id: motd\n    file:\n      path: /tmp/motd\n      content: signed\n",
    )
    .unwrap();
    let out = server
        .cli(&[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--sign-key",
            key.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "a signed apply was refused after an unsigned version {highest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The smaller items: a method a route does not serve is the caller's mistake (405, no ERROR line); a huge
/// value is not echoed whole in an error; an HTTP node's `ip` must be an address.
#[test]
fn small_mistakes_are_answered_briefly_and_checked() {
    let server = Server::start().unwrap();
    let token = server.admin_token();
    for _ in 0..20 {
        let reply = server
            .request("PUT", "/api/v1/nodes", Some(&token), None)
            .unwrap();
        assert_eq!(reply.status, 405, "{reply:?}");
    }
    let log = server.log();
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "a refused method was logged as an error:\n{}",
        tail(&log, 10)
    );

    let huge = "x".repeat(900_000);
    let reply = server
        .post(
            "/api/v1/tasks",
            Some(&token),
            &json!({"target": "all", "spec": {"kind": huge}}),
        )
        .unwrap();
    assert_eq!(reply.status, 400, "{:?}", reply.status);
    let echoed = reply.body["error"].as_str().unwrap_or_default();
    assert!(
        echoed.len() < 2_000 && echoed.contains("more bytes"),
        "{} bytes echoed",
        echoed.len()
    );

    let mut node = drover_testkit::registration("odd", json!({}));
    node["ip"] = json!("\u{1b}[2J not an address");
    let join = server.join_token(json!({})).unwrap();
    let reply = server
        .post("/api/v1/nodes/register", Some(&join), &node)
        .unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.body["field"], "ip", "{reply:?}");
}
