//! Limits on what a node can make the server hold (issue 9, row 11), tried by a raw agent: a real enrolled
//! identity speaking the protocol directly, sending what no real agent sends. Each over-limit message is
//! refused with an error naming the field, and the server keeps serving a real agent beside it.

use std::time::Duration;

use drover_agent::identity;
use drover_agent::link::{self, Attached, HelloInfo};
use drover_proto::v1::{
    AgentMessage, ConvergenceReport, CreateSession, SessionData, agent_message::Msg, server_message,
};
use drover_testkit::{Agent, Server, TIMEOUT, wait_for};
use drover_types::Labels;
use drover_types::limits::{MAX_LABELS, MAX_SESSION_PAYLOAD, MAX_SESSIONS_PER_NODE};
use serde_json::json;
use tonic::transport::Channel;

fn hello() -> HelloInfo {
    HelloInfo {
        capabilities: Default::default(),
        metrics: Default::default(),
        labels: Labels::new(),
        heartbeat_interval: Duration::from_secs(1),
        actions: vec![],
        daemon_plugins: vec![],
        open_tasks: vec![],
    }
}

fn send(msg: Msg) -> AgentMessage {
    AgentMessage { msg: Some(msg) }
}

/// Says `hello` on a new stream; the error text when the server refuses it.
async fn attach(channel: &Channel, hello: HelloInfo) -> Result<Attached, String> {
    link::attach(channel.clone(), hello.into_hello())
        .await
        .map_err(|e| e.to_string())
}

/// Asks for sessions for `n` plugins; returns how many were created and how many refused, and the
/// session id of `p0`.
async fn ask_sessions(attached: &mut Attached, n: usize) -> (usize, usize, String) {
    let tx = attached.tx.clone();
    let asks = tokio::spawn(async move {
        for i in 0..n {
            let ask = CreateSession {
                plugin: format!("p{i}"),
                interval_ms: 1000,
                deadline_ms: 100,
            };
            tx.send(send(Msg::CreateSession(ask))).await.unwrap();
        }
    });
    let (mut created, mut refused, mut p0) = (0, 0, String::new());
    while created + refused < n {
        let msg = tokio::time::timeout(TIMEOUT, attached.inbound.message())
            .await
            .expect("an answer to every session request")
            .unwrap()
            .expect("the stream stays open");
        match msg.msg {
            Some(server_message::Msg::SessionCreated(c)) => {
                created += 1;
                if c.plugin == "p0" {
                    p0 = c.session_id;
                }
            }
            Some(server_message::Msg::TerminateSession(t)) => {
                assert!(t.reason.contains("sessions"), "{}", t.reason);
                refused += 1;
            }
            _ => {}
        }
    }
    asks.await.unwrap();
    (created, refused, p0)
}

#[test]
fn a_node_cannot_make_the_server_hold_more_than_the_limits() {
    let server = Server::start().unwrap();
    let good_token = server
        .join_token(json!({"labels": {"role": "good"}}))
        .unwrap();
    let _good = Agent::start(
        &server.agent_url(),
        "good",
        &[
            "--token",
            &good_token,
            "--allow-shell",
            "--heartbeat-interval",
            "300ms",
        ],
    )
    .unwrap();
    server
        .wait_node("good", "connected", |n| n["connected"] == true)
        .unwrap();
    let token = server.join_token(json!({})).unwrap();
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = server.agent_url();

    let (mut attached, channel) = rt.block_on(async {
        let identity = identity::enroll(state.path(), &url, &token, "raw", &Labels::new())
            .await
            .unwrap();
        let channel = identity.endpoint(&url).unwrap().connect().await.unwrap();

        // 100,000 labels in one hello.
        let mut many = hello();
        many.labels = (0..100_000)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let refused = attach(&channel, many).await.err().expect("refused");
        assert!(
            refused.contains("100000 labels") && refused.contains(&format!("at most {MAX_LABELS}")),
            "{refused}"
        );
        // Open tasks and capability lists no real node has.
        let mut tasks = hello();
        tasks.open_tasks = (0..100_000).map(|i| format!("task-{i}")).collect();
        let refused = attach(&channel, tasks).await.err().expect("refused");
        assert!(refused.contains("open_tasks"), "{refused}");
        let mut gpus = hello();
        gpus.capabilities.gpus = vec![Default::default(); 10_000];
        let refused = attach(&channel, gpus).await.err().expect("refused");
        assert!(refused.contains("capabilities.gpus"), "{refused}");

        // A hello within the limits is welcome.
        let attached = attach(&channel, hello()).await.unwrap();
        (attached, channel)
    });
    // The stream is registered just after the Welcome (the attach finishes in the stream's task).
    let raw = server
        .wait_node("raw", "connected", |n| n["connected"] == true)
        .unwrap();
    assert_eq!(raw["labels"], json!({}), "no refused label was kept");

    // 2,000 session starts: only as many as one node may hold are created, each other one refused.
    let (created, refused, p0) = rt.block_on(ask_sessions(&mut attached, 2_000));
    assert_eq!(created, MAX_SESSIONS_PER_NODE);
    assert_eq!(refused, 2_000 - MAX_SESSIONS_PER_NODE);
    let sessions = server.get("/api/v1/nodes/raw/sessions").unwrap().body;
    assert_eq!(sessions.as_array().unwrap().len(), MAX_SESSIONS_PER_NODE);

    // A payload over the limit is not kept; the next one within it is.
    rt.block_on(async {
        for (seq, payload) in [
            (1, format!("\"{}\"", "x".repeat(MAX_SESSION_PAYLOAD))),
            (2, "{\"ok\":true}".to_string()),
        ] {
            let data = SessionData {
                plugin: "p0".into(),
                session_id: p0.clone(),
                seq,
                payload_json: payload,
                deadline_misses: 0,
            };
            attached.tx.send(send(Msg::SessionData(data))).await.unwrap();
        }
        // A convergence report with more resources than one node may report.
        let resources: Vec<_> = (0..10_000)
            .map(|i| json!({"id": format!("r{i}"), "manifest": "m", "kind": "file", "state": "Ready"}))
            .collect();
        let report = json!({"observed_generation": 1, "conditions": [], "resources": resources});
        let report = ConvergenceReport {
            report_json: report.to_string(),
        };
        attached
            .tx
            .send(send(Msg::ConvergenceReport(report)))
            .await
            .unwrap();
    });
    let history = wait_for("the small payload", TIMEOUT, || {
        let h = server
            .get("/api/v1/nodes/raw/sessions/p0/history")
            .ok()?
            .body;
        (h.as_array()?.iter().any(|s| s["seq"] == 2)).then_some(h)
    })
    .unwrap();
    assert!(
        history.as_array().unwrap().iter().all(|s| s["seq"] != 1),
        "the oversized payload was kept: {}",
        history.to_string().len()
    );
    wait_for("the refused report in the server log", TIMEOUT, || {
        server
            .log()
            .contains("refused a convergence report")
            .then_some(())
    })
    .unwrap();
    let status = server.get("/api/v1/nodes/raw/status").unwrap().body;
    assert_eq!(status["resources"], json!([]), "{status}");

    // The server is unharmed and still serves the real agent.
    let out = server
        .cli(&["exec", "--selector", "role=good", "--", "echo", "still"])
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("good: still"));
    drop((attached, channel));
    drop(rt);
}
