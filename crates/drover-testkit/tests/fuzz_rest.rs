//! Property test ("fuzzing" on stable Rust) of a real server's REST inputs that are parsed before any body:
//! query strings on every route that takes one, and the durations inside bodies (token TTLs, task
//! timeouts). Each request must get an answer below 500, and the server must stay up.
//!
//! Cases: PROPTEST_CASES when set (scripts/fuzz.sh sets it high), else a CI-sized default.

use drover_testkit::Server;
use drover_types::url::percent_encode;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::json;

fn config(ci_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ci_cases;
    }
    config
}

/// Values as a user (or an attacker) types them: durations, times, numbers at and past every limit.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9]{1,12}(\\.[0-9]{1,6})?(ns|us|ms|s|m|h|d|w|y|M)?",
        1 => "[0-9]{13,25}(ns|s|h|y)?",
        1 => "-?[0-9]{1,20}",
        1 => "[0-9]{4,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
        1 => proptest::sample::select(&["18446744073709551615", "18446744073709551615s", "1000000y", "true", ""][..])
            .prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// A route and a query string for it: `key=value&...`, percent-encoded, mostly with the keys that route
/// reads, sometimes with others.
fn request() -> impl Strategy<Value = (&'static str, &'static str, String)> {
    proptest::sample::select(ROUTES).prop_flat_map(|(method, path, keys)| {
        let key = prop_oneof![
            4 => proptest::sample::select(keys).prop_map(str::to_string),
            1 => any::<String>(),
        ];
        prop::collection::vec((key, value()), 0..4).prop_map(move |pairs| {
            let q = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            (method, path, q)
        })
    })
}

/// Routes that read a query string, and the keys each reads.
const ROUTES: &[(&str, &str, &[&str])] = &[
    (
        "GET",
        "/api/v1/audit",
        &["since", "limit", "actor", "action", "target"],
    ),
    ("GET", "/api/v1/tasks", &["limit", "runs"]),
    (
        "GET",
        "/api/v1/tasks/t-missing/runs",
        &["limit", "offset", "state"],
    ),
    (
        "GET",
        "/api/v1/status",
        &["limit", "offset", "manifest", "state"],
    ),
    ("GET", "/api/v1/tasks/t-missing/output", &["follow"]),
    ("GET", "/api/v1/nodes/ghost/metrics", &["limit"]),
    (
        "POST",
        "/api/v1/nodes/ghost/actions/ping",
        &["timeout", "call_id", "signature"],
    ),
    (
        "GET",
        "/api/v1/nodes",
        &["limit", "offset", "status", "label"],
    ),
    ("POST", "/api/v1/manifests", &["dry_run"]),
];

/// Runs `property` over `strategy` against one server (a server per case would cost a second each). A
/// panic takes the server down and a bad stored value can break later cases, so shrinking may end on an
/// innocent input: the first failing input is reported too. The server is stopped when the test ends.
fn check<S: Strategy>(
    ci_cases: u32,
    strategy: S,
    property: impl Fn(&Server, S::Value) -> Result<(), TestCaseError>,
) {
    let server = Server::start().unwrap();
    let first_failure = std::sync::Mutex::new(None::<String>);
    let mut runner = TestRunner::new(config(ci_cases));
    let result = runner.run(&strategy, |value| {
        let shown = format!("{value:?}");
        let outcome = property(&server, value);
        if let Err(e) = &outcome {
            let mut first = first_failure.lock().unwrap();
            first.get_or_insert_with(|| format!("{shown}: {e}"));
        }
        outcome
    });
    if let Err(e) = result {
        panic!(
            "{e}\nfirst failing input: {}\nserver log:\n{}",
            first_failure.lock().unwrap().take().unwrap_or_default(),
            drover_testkit::tail(&server.log(), 20)
        );
    }
}

#[test]
fn query_strings_get_an_answer_below_500() {
    check(300, request(), |s, (method, path, q)| {
        let body = (method == "POST").then(|| b"{}".to_vec());
        let r = s.request(method, &format!("{path}?{q}"), Some(&s.admin_token()), body);
        let r =
            r.map_err(|e| TestCaseError::fail(format!("{method} {path}?{q}: no answer: {e}")))?;
        prop_assert!(r.status < 500, "{} {}?{} -> {:?}", method, path, q, r);
        Ok(())
    });
}

#[test]
fn durations_in_bodies_get_an_answer_below_500() {
    check(150, (value(), any::<u64>()), |s, (ttl, timeout)| {
        let admin = s.admin_token();
        let r = s
            .post("/api/v1/tokens", Some(&admin), &json!({"ttl": ttl}))
            .map_err(|e| TestCaseError::fail(format!("ttl {ttl:?}: no answer: {e}")))?;
        prop_assert!(r.status < 500, "ttl {:?} -> {:?}", ttl, r);
        let task = json!({"target": {"nodes": ["ghost"]}, "spec": {"kind": "exec", "argv": ["true"], "timeout_ms": timeout}});
        let r = s
            .post("/api/v1/tasks", Some(&admin), &task)
            .map_err(|e| TestCaseError::fail(format!("timeout {timeout}: no answer: {e}")))?;
        prop_assert!(r.status < 500, "timeout_ms {} -> {:?}", timeout, r);
        // Tokens made here must not break listing them (issue 9 row 13).
        let r = s
            .get("/api/v1/tokens")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(r.status < 500, "token list -> {:?}", r);
        Ok(())
    });
}
