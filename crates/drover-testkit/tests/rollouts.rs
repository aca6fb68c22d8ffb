//! Rollouts with real agents: a manifest's new revision reaches its nodes in waves; a failing canary pauses
//! the rollout (or reverts its wave) and the other nodes never see the revision; an infrastructure failure
//! pauses without reverting; an offline node is unreachable, not failed; a server restarted mid-bake goes on;
//! a canary that loses the server while its checks fail puts itself back and is counted as failed; drift
//! that does not stay corrected is a change failure.
//!
//! Each node's effect is a shell job writing the revision into the node's own directory (`$NODE_DIR`, set
//! in the agent's environment), so agents on one machine do not share a file; `$NODE_FAIL=1` makes a
//! "bad" revision fail on that node.

use std::path::Path;

use drover_testkit::{Agent, Server, TIMEOUT, tail, wait_for};
use serde_json::{Value, json};

/// An agent named `name`, labelled `role=web` and `tier=TIER`, whose shell jobs write under `dir`.
fn node(server: &Server, name: &str, tier: &str, dir: &Path, fail: bool) -> Agent {
    let dir = dir.display().to_string();
    let env = [
        ("NODE_DIR", dir.as_str()),
        ("NODE_FAIL", if fail { "1" } else { "0" }),
    ];
    server.attached_agent_with_env(
        name,
        json!({"labels": {"role": "web", "tier": tier}}),
        &SHELL_AGENT,
        &env,
    )
}

/// The flags of the agents that run the tests' shell jobs.
const SHELL_AGENT: [&str; 7] = [
    "--heartbeat-interval",
    "300ms",
    "--resync-interval",
    "500ms",
    "--allow-kind",
    "shell_job",
    "--allow-shell",
];

/// Revision `version` of the manifest `web`: one shell job writing `version` into `$NODE_DIR/version`.
/// A `bad` revision fails on nodes with `NODE_FAIL=1` (after writing), printing `fails_with`.
fn revision(version: &str, bad: Option<&str>, rollout: Value) -> Value {
    let (command, unless) = match bad {
        None => (
            format!("echo {version} > \"$NODE_DIR/version\""),
            format!("grep -qx {version} \"$NODE_DIR/version\""),
        ),
        Some(why) => (
            format!(
                "echo {version} > \"$NODE_DIR/version\"; if [ \"$NODE_FAIL\" = 1 ]; then echo '{why}' >&2; exit 1; fi"
            ),
            format!("[ \"$NODE_FAIL\" != 1 ] && grep -qx {version} \"$NODE_DIR/version\""),
        ),
    };
    json!({
        "name": "web",
        "selector": {"role": "web"},
        "rollout": rollout,
        "resources": [{"id": "version", "shell_job": {"command": command, "unless": unless}}],
    })
}

fn apply(server: &Server, manifest: &Value) -> Value {
    let reply = server
        .post("/api/v1/manifests", Some(&server.admin_token()), manifest)
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

fn rollout(server: &Server) -> Value {
    server.get("/api/v1/rollouts/web").unwrap().body
}

/// Waits until the rollout's `state` is `state`, and returns it.
fn wait_state(server: &Server, state: &str) -> Value {
    wait_for(&format!("the rollout {state}"), TIMEOUT, || {
        Some(rollout(server)).filter(|r| r["state"] == state)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nrollout: {}\nserver log:\n{}",
            rollout(server),
            tail(&server.log(), 40)
        )
    })
}

fn version(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("version"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn wait_version(dir: &Path, want: &str) {
    wait_for(
        &format!("{} holding {want}", dir.display()),
        TIMEOUT,
        || (version(dir) == want).then_some(()),
    )
    .unwrap();
}

/// Three nodes (a canary, two more), rolled out canary first; revision v1 completes everywhere.
struct Web {
    server: Server,
    dirs: Vec<tempfile::TempDir>,
    agents: Vec<Agent>,
}

impl Web {
    fn start(canary_fails: bool, policy: Value) -> Self {
        let server = Server::start().unwrap();
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let agents = vec![
            node(&server, "canary", "canary", dirs[0].path(), canary_fails),
            node(&server, "web-1", "main", dirs[1].path(), false),
            node(&server, "web-2", "main", dirs[2].path(), false),
        ];
        let web = Self {
            server,
            dirs,
            agents,
        };
        let applied = apply(&web.server, &revision("v1", None, policy));
        assert_eq!(applied["rollout"]["waves"], json!([1, 2]), "{applied}");
        let done = wait_state(&web.server, "Complete");
        assert_eq!(done["revision"], applied["generation"]);
        assert!(
            done["previous_revision"].is_null(),
            "a new manifest: {done}"
        );
        for d in &web.dirs {
            assert_eq!(version(d.path()), "v1");
        }
        web
    }

    fn dir(&self, i: usize) -> &Path {
        self.dirs[i].path()
    }
}

fn policy(on_failure: &str) -> Value {
    json!({
        "waves": [{"selector": {"tier": "canary"}}, {"percent": 100}],
        "bake": "1s",
        "wave_deadline": "60s",
        "on_failure": on_failure,
    })
}

#[test]
fn a_failing_canary_pauses_the_rollout_and_the_other_nodes_never_see_the_revision() {
    let web = Web::start(true, policy("pause"));
    let applied = apply(
        &web.server,
        &revision("v2", Some("exit code 1: broken"), policy("pause")),
    );
    let paused = wait_state(&web.server, "Paused");
    assert_eq!(paused["wave"], 1, "{paused}");
    assert_eq!(paused["revision"], applied["generation"]);
    assert_eq!(paused["waves"][0]["change_failed"], 1, "{paused}");
    assert_eq!(paused["failing"][0]["node"], "canary", "{paused}");
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("wave 1: 1 of 1 failed")),
        "{paused}"
    );
    // The canary took v2 (and failed); the others kept v1 throughout.
    assert_eq!(version(web.dir(0)), "v2");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(version(web.dir(1)), "v1");
    assert_eq!(version(web.dir(2)), "v1");
    assert_eq!(rollout(&web.server)["state"], "Paused", "it stays paused");

    // The CLI shows it and says so in its exit code; an operator's abort ends it.
    let out = web
        .server
        .cli(&["rollout", "status", "web", "--watch"])
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Paused") && text.contains("canary"), "{text}");
    let out = web.server.cli(&["rollout", "abort", "web"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(rollout(&web.server)["state"], "Aborted");
    // Every transition is in the audit log, with its cause.
    let audit = web
        .server
        .get("/api/v1/audit?action=rollout.pause")
        .unwrap()
        .body;
    assert!(
        audit[0]["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed")),
        "{audit}"
    );
}

#[test]
fn revert_wave_puts_the_previous_revision_back_on_the_failed_wave() {
    let web = Web::start(true, policy("revert_wave"));
    apply(
        &web.server,
        &revision("v2", Some("broken"), policy("revert_wave")),
    );
    let reverted = wait_state(&web.server, "Reverted");
    assert_eq!(reverted["waves"][0]["reverted"], true, "{reverted}");
    // The canary wrote v2 before failing; reverted, it runs v1's job again.
    wait_version(web.dir(0), "v1");
    assert_eq!(version(web.dir(1)), "v1");
    assert_eq!(version(web.dir(2)), "v1");
    // `apply --wait` of a rollout says how it ended: 9 for reverted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(
        &file,
        revision("v3", Some("broken"), policy("revert_wave")).to_string(),
    )
    .unwrap();
    let out = web
        .server
        .cli(&[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("rollout: 2 wave(s) of 1, 2 node(s)"),
        "{said}"
    );
    // v3's rollout started from v1, the last revision that went through, never from the reverted v2:
    // the nodes it did not reach kept v1.
    let again = rollout(&web.server);
    assert_eq!(
        again["previous_revision"], reverted["previous_revision"],
        "{again}"
    );
    assert_eq!(version(web.dir(1)), "v1");
    assert_eq!(version(web.dir(2)), "v1");
}

#[test]
fn an_infrastructure_failure_pauses_without_reverting_and_an_offline_node_is_not_a_failure() {
    let mut web = Web::start(true, policy("revert_all"));
    apply(
        &web.server,
        &revision(
            "v2",
            Some("pull registry.example: dial tcp 10.0.0.1:5000: connection refused"),
            policy("revert_all"),
        ),
    );
    let paused = wait_state(&web.server, "Paused");
    assert_eq!(paused["waves"][0]["infra_failed"], 1, "{paused}");
    assert_eq!(paused["waves"][0]["change_failed"], 0, "{paused}");
    assert!(paused["waves"][0]["reverted"].is_null(), "{paused}");
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("infrastructure")),
        "{paused}"
    );
    // Not reverted: the canary keeps what it has.
    assert_eq!(version(web.dir(0)), "v2");

    // A good revision, with one node of the second wave offline: it is unreachable, never failed, and
    // the wave goes on without it at its deadline.
    web.agents[2].kill();
    web.server
        .wait_node("web-2", "offline", |n| n["connected"] == false)
        .unwrap();
    let quick = json!({
        "waves": [{"selector": {"tier": "canary"}}, {"percent": 100}],
        "bake": "1s",
        "wave_deadline": "3s",
    });
    apply(&web.server, &revision("v3", None, quick));
    let done = wait_state(&web.server, "Complete");
    assert_eq!(done["waves"][1]["unreachable"], 1, "{done}");
    assert_eq!(done["waves"][1]["change_failed"], 0, "{done}");
    assert_eq!(version(web.dir(1)), "v3");
    // With `on_unreachable: proceed` (the default) it gets the revision when it comes back.
    web.agents[2].restart(None).unwrap();
    wait_version(web.dir(2), "v3");
}

#[test]
fn a_server_restarted_mid_bake_resumes_the_rollout() {
    let mut web = Web::start(false, policy("pause"));
    let slow = json!({
        "waves": [{"selector": {"tier": "canary"}}, {"percent": 100}],
        "bake": "4s",
    });
    apply(&web.server, &revision("v2", None, slow));
    wait_state(&web.server, "Baking");
    wait_version(web.dir(0), "v2");
    assert_eq!(
        version(web.dir(1)),
        "v1",
        "the second wave waits for the bake"
    );
    web.server.restart().unwrap();
    let done = wait_state(&web.server, "Complete");
    assert_eq!(done["waves"][1]["converged"], 2, "{done}");
    wait_version(web.dir(1), "v2");
    wait_version(web.dir(2), "v2");
    // Its history keeps both revisions; `undo` rolls the previous one out again.
    let history = web.server.get("/api/v1/rollouts/web/history").unwrap().body;
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    let before = rollout(&web.server)["revision"].as_u64().unwrap();
    let out = web.server.cli(&["rollout", "undo", "web"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for("the undo rolled out", TIMEOUT, || {
        let r = rollout(&web.server);
        (r["state"] == "Complete" && r["revision"].as_u64() > Some(before)).then_some(())
    })
    .unwrap();
    wait_version(web.dir(2), "v1");
    assert_eq!(version(web.dir(0)), "v1");
}

#[test]
fn max_in_flight_lets_a_wave_in_a_few_nodes_at_a_time_and_still_completes() {
    let web = Web::start(false, policy("pause"));
    let one_at_a_time = json!({
        "waves": [{"selector": {"tier": "canary"}}, {"percent": 100}],
        "bake": "1s",
        "max_in_flight": 1,
    });
    apply(&web.server, &revision("v2", None, one_at_a_time));
    let done = wait_state(&web.server, "Complete");
    assert_eq!(done["waves"][1]["converged"], 2, "{done}");
    for i in 0..3 {
        assert_eq!(version(web.dir(i)), "v2");
    }
}

/// A listener answering every request with HTTP `status`, for the nodes' health checks (all agents run on
/// this machine); its address. It lives as long as the test.
fn answering(status: u16) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 2048];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} Status\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    address
}

#[test]
fn a_canary_failing_its_health_check_pauses_the_rollout_and_passing_checks_let_it_complete() {
    let web = Web::start(false, policy("pause"));
    // v2's resources converge everywhere, but its service answers 500: the canary's check fails.
    let broken = answering(500);
    let mut checked = policy("pause");
    checked["health"] = json!([{"http": {"url": format!("http://{broken}/health")}}]);
    let applied = apply(&web.server, &revision("v2", None, checked));
    let paused = wait_state(&web.server, "Paused");
    assert_eq!(paused["revision"], applied["generation"]);
    assert_eq!(paused["waves"][0]["change_failed"], 1, "{paused}");
    assert_eq!(paused["failing"][0]["node"], "canary", "{paused}");
    let reason = paused["failing"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("health check")
            && reason.contains(&broken)
            && reason.contains("answered 500, expected 200"),
        "{paused}"
    );
    // The node reports it in its convergence, beside its ready resources.
    let status = web.server.get("/api/v1/status").unwrap().body;
    let canary = status
        .as_array()
        .and_then(|s| s.iter().find(|n| n["node_name"] == "canary"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(canary["health"][0]["manifest"], "web", "{canary}");
    assert_eq!(canary["health"][0]["healthy"], false, "{canary}");
    assert_eq!(
        version(web.dir(0)),
        "v2",
        "the canary's change itself went through"
    );
    // A deliberate window: the other nodes never see v2 while it stays paused.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(version(web.dir(1)), "v1");
    assert_eq!(version(web.dir(2)), "v1");
    assert_eq!(rollout(&web.server)["state"], "Paused", "it stays paused");

    // v3 with checks that pass on every node (HTTP 200, a TCP connect, a command the nodes' policy
    // allows, run after the node's own change): every wave goes through.
    let healthy = answering(200);
    let mut checked = policy("pause");
    checked["health"] = json!([
        {"http": {"url": format!("http://{healthy}/health"), "expect_status": 200}},
        {"tcp": {"address": healthy}},
        {"command": ["sh", "-c", "grep -qx v3 \"$NODE_DIR/version\""]},
    ]);
    apply(&web.server, &revision("v3", None, checked));
    let done = wait_state(&web.server, "Complete");
    assert_eq!(done["waves"][0]["converged"], 1, "{done}");
    assert_eq!(done["waves"][1]["converged"], 2, "{done}");
    for i in 0..3 {
        assert_eq!(version(web.dir(i)), "v3");
    }
}

#[test]
fn a_canary_that_loses_the_server_while_its_checks_fail_goes_back_and_the_rollout_counts_it() {
    let mut web = Web::start(false, policy("pause"));
    // v2 is healthy on a node while `$NODE_DIR/sick` does not exist; its bake outlasts the test.
    let checked = json!({
        "waves": [{"selector": {"tier": "canary"}}, {"percent": 100}],
        "bake": "10m",
        "health": [{"command": ["sh", "-c", "test ! -e \"$NODE_DIR/sick\""]}],
    });
    let applied = apply(&web.server, &revision("v2", None, checked));
    wait_state(&web.server, "Baking");
    wait_version(web.dir(0), "v2");
    // The server goes away, then v2 turns sick on the canary: with no server to judge it, the canary
    // puts itself back on v1 (after FALLBACK_AFTER, 10 s, without the server).
    web.server.stop();
    std::fs::write(web.dir(0).join("sick"), "").unwrap();
    wait_version(web.dir(0), "v1");
    let said = web.agents[0].log();
    assert!(
        said.contains("fails its health checks") && said.contains("going back to revision"),
        "{}",
        tail(&said, 20)
    );
    // Back, the server hears it and counts a change failure of the canary's wave: the rollout pauses,
    // and the other nodes never saw v2.
    web.server.restart().unwrap();
    let paused = wait_state(&web.server, "Paused");
    assert_eq!(paused["revision"], applied["generation"]);
    assert_eq!(paused["waves"][0]["change_failed"], 1, "{paused}");
    assert_eq!(paused["failing"][0]["node"], "canary", "{paused}");
    let reason = paused["failing"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("put itself back on revision") && reason.contains("sick"),
        "{paused}"
    );
    assert_eq!(version(web.dir(1)), "v1");
    assert_eq!(version(web.dir(2)), "v1");
    // The node stays on v1 while the rollout is paused; a new revision ends its own revert.
    std::fs::remove_file(web.dir(0).join("sick")).unwrap();
    apply(&web.server, &revision("v3", None, policy("pause")));
    wait_state(&web.server, "Complete");
    for i in 0..3 {
        wait_version(web.dir(i), "v3");
    }
}

#[test]
fn drift_that_does_not_stay_corrected_during_the_bake_is_a_change_failure() {
    // Its agent resyncs every 500 ms: each change to the file is corrected then.
    let fleet = drover_testkit::Fleet::edge(&[]);
    let conf = fleet.path("conf");
    let manifest = |content: &str, rollout: Value| {
        json!({
            "name": "conf",
            "selector": {"role": "edge"},
            "rollout": rollout,
            "resources": [{"id": "conf", "file": {"path": conf, "content": content}}],
        })
    };
    let read = || std::fs::read_to_string(&conf).unwrap_or_default();
    let holds = |want: &'static str| {
        wait_for(&format!("conf holding {want}"), TIMEOUT, || {
            (read() == want).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", tail(&fleet.agent.log(), 20)))
    };
    fleet.apply(manifest("one", Value::Null));
    holds("one");
    fleet.apply(manifest(
        "two",
        json!({"waves": [{"percent": 100}], "bake": "10m"}),
    ));
    let state = || fleet.server.get("/api/v1/rollouts/conf").unwrap().body;
    wait_for("the rollout baking", TIMEOUT, || {
        (state()["state"] == "Baking").then_some(())
    })
    .unwrap();
    // Something on the node fights the change: it puts the old content back, and again once corrected.
    for _ in 0..2 {
        std::fs::write(&conf, "one").unwrap();
        holds("two");
    }
    let paused = wait_for("the rollout paused", TIMEOUT, || {
        Some(state()).filter(|r| r["state"] == "Paused")
    })
    .unwrap_or_else(|e| panic!("{e}\nrollout: {}", state()));
    assert_eq!(paused["waves"][0]["change_failed"], 1, "{paused}");
    let reason = paused["failing"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("conf: drift does not stay corrected: corrected 2 times"),
        "{paused}"
    );
}
