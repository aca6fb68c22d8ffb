//! Bad input gets a clear error and loses nothing; nothing from outside takes the server down.

use std::io::Write;

use drover_testkit::{Server, registration};
use serde_json::json;

#[test]
fn rest_api_refuses_bad_requests_with_precise_errors() {
    let server = Server::start().unwrap();
    let admin = server.admin_token();
    let join = server.join_token(json!({})).unwrap();

    // Health needs no token; everything operator-facing does.
    assert_eq!(
        server.request("GET", "/health", None, None).unwrap().status,
        200
    );
    assert_eq!(
        server
            .request("GET", "/api/v1/nodes", None, None)
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        server
            .request("GET", "/api/v1/nodes", Some("wrong"), None)
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        server
            .request("GET", "/api/v1/nodes", Some(&join), None)
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        server
            .request("GET", "/api/v1/nope", Some(&admin), None)
            .unwrap()
            .status,
        404
    );

    // Unknown nodes.
    for path in ["/api/v1/nodes/ghost", "/api/v1/nodes/ghost/metrics"] {
        let reply = server.get(path).unwrap();
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.body["error"].as_str().unwrap().contains("ghost"));
    }
    assert_eq!(
        server
            .request("DELETE", "/api/v1/nodes/ghost", Some(&admin), None)
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        server
            .request("DELETE", "/api/v1/tokens/ghost", Some(&admin), None)
            .unwrap()
            .status,
        404
    );

    // Malformed JSON.
    let reply = server
        .request(
            "POST",
            "/api/v1/nodes/register",
            Some(&join),
            Some(b"{\"name\": ".to_vec()),
        )
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        reply.body["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{reply:?}"
    );

    // A missing field is named.
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &json!({"ip": "1.2.3.4"}),
        )
        .unwrap();
    // 422, as MIaaS answers a missing required field.
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["field"], "name", "{reply:?}");

    // A mistyped field is named, even nested.
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration("x", json!({"capabilities": {"cpu_count": "many"}})),
        )
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["field"], "capabilities.cpu_count", "{reply:?}");

    // Values out of range and invalid names are refused by field.
    let reg = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration("ok-node", json!({})),
        )
        .unwrap();
    let (id, tok) = (
        reg.body["node_id"].as_str().unwrap(),
        reg.body["node_token"].as_str().unwrap(),
    );
    let reply = server
        .post(
            &format!("/api/v1/nodes/{id}/heartbeat"),
            Some(tok),
            &json!({"cpu_usage": 250, "mem_usage": 1, "disk_free_mb": 1}),
        )
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["field"], "cpu_usage");
    let reply = server
        .post(
            &format!("/api/v1/nodes/{id}/heartbeat"),
            Some(tok),
            &json!({"cpu_usage": 1, "mem_usage": 1}),
        )
        .unwrap();
    assert_eq!(reply.body["field"], "disk_free_mb");
    let reply = server
        .post(
            "/api/v1/nodes/register",
            Some(&join),
            &registration("no spaces/please", json!({})),
        )
        .unwrap();
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (400, Some("name"))
    );
    let reply = server
        .post("/api/v1/tokens", Some(&admin), &json!({"ttl": "forever"}))
        .unwrap();
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (400, Some("ttl"))
    );
    let reply = server
        .post(
            "/api/v1/tokens",
            Some(&admin),
            &json!({"labels": {"bad key": "v"}}),
        )
        .unwrap();
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (400, Some("labels"))
    );
    let reply = server
        .post("/api/v1/tokens", Some(&admin), &json!({"surprise": 1}))
        .unwrap();
    assert_eq!(
        reply.status, 400,
        "unknown fields in operator requests are refused: {reply:?}"
    );
    let reply = server
        .get(&format!("/api/v1/nodes/{id}/metrics?limit=lots"))
        .unwrap();
    assert_eq!(reply.status, 400);

    // Oversized bodies.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let reply = server
        .request("POST", "/api/v1/nodes/register", Some(&join), Some(huge))
        .unwrap();
    assert_eq!(reply.status, 413);

    // Nothing was lost or broken on the way: the good node is still there and the server still answers.
    let nodes = server.nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["name"], "ok-node");
}

#[test]
fn garbage_on_the_agent_port_does_not_hurt_the_server() {
    let server = Server::start().unwrap();
    for payload in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0][..],
        &[0u8; 4096][..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.agent_port)).unwrap();
        let _ = s.write_all(payload);
    }
    // Half-open connections that never speak.
    let idle: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", server.agent_port)).unwrap())
        .collect();
    // A real agent still gets through.
    let token = server.join_token(json!({})).unwrap();
    let _agent =
        drover_testkit::Agent::start(&server.agent_url(), "survivor", &["--token", &token])
            .unwrap();
    server
        .wait_node("survivor", "Ready", |n| n["status"] == "Ready")
        .unwrap();
    drop(idle);
    assert_eq!(
        server.request("GET", "/health", None, None).unwrap().status,
        200
    );
}
