//! Property tests ("fuzzing" on stable Rust): every parser of outside input in drover-types gets arbitrary
//! bytes and structured garbage, and must answer with a value or a typed error, never a panic.
//!
//! Cases per property: PROPTEST_CASES when set (scripts/fuzz.sh sets it high), else a CI-sized default.

use std::collections::BTreeMap;

use drover_types::duration::parse_duration;
use drover_types::labels::{parse_label, parse_labels, validate_label};
use drover_types::manifest::{Manifest, desired_for, file_mode, parse_port};
use drover_types::size::parse_size;
use drover_types::task::{CreateTask, RunState, TaskSpec};
use drover_types::token::JoinToken;
use drover_types::{Capabilities, Labels, Metrics};
use proptest::prelude::*;
use serde_json::Value;

/// CI budget: this many cases per property unless PROPTEST_CASES says otherwise.
fn config(ci_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ci_cases;
    }
    config
}

/// Words the parsers look for, so garbage often gets past the first check.
const FIELDS: &[&str] = &[
    "name",
    "selector",
    "resources",
    "id",
    "file",
    "path",
    "content",
    "sha256",
    "mode",
    "owner",
    "group",
    "absent",
    "container",
    "image",
    "ports",
    "env",
    "volumes",
    "restart",
    "command",
    "systemd_unit",
    "unit",
    "enabled",
    "state",
    "shell_job",
    "script",
    "creates",
    "unless",
    "kind",
    "argv",
    "shell",
    "cwd",
    "user",
    "timeout_ms",
    "grace_ms",
    "op",
    "all",
    "follow",
    "tail",
    "target",
    "nodes",
    "labels",
    "spec",
    "cpu_usage",
    "mem_usage",
    "disk_free_mb",
    "load1",
    "uptime_s",
    "running_containers",
    "gpus",
    "memory_mb",
    "hostname",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9_./:=-]{0,24}",
        "[0-9]{1,30}(\\.[0-9]{1,20})?(ns|us|ms|s|m|h|d|w|y|M|KiB|MiB|GiB|TiB|kb|B)?",
        "0[0-7]{0,8}",
        "/[a-z/.]{0,30}",
        Just("..".to_string()),
        Just("exec".to_string()),
        Just("container".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            proptest::sample::select(FIELDS).prop_map(str::to_string),
            text()
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Runs every check a server or agent applies after decoding a manifest.
fn exercise_manifest(m: &Manifest) {
    if m.validate().is_ok() {
        for r in &m.resources {
            let _ = r.kind_name();
            if let Some(f) = &r.file {
                let _ = file_mode(f);
            }
            if let Some(c) = &r.container {
                for p in &c.ports {
                    let _ = parse_port(p);
                }
            }
        }
        let _ = desired_for(&m.selector, std::slice::from_ref(m));
        let _ = m.selects(&Labels::new());
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn durations_never_panic(input in text()) {
        if let Ok(d) = parse_duration(&input) {
            prop_assert!(!d.is_zero());
        }
    }

    #[test]
    fn sizes_never_panic(input in text()) {
        let _ = parse_size(&input);
    }

    #[test]
    fn join_tokens_never_panic(input in prop_oneof![
        text(),
        "drv1\\.[0-9a-fA-F.]{0,130}",
        "drv1\\.[0-9a-f]{8}\\.[0-9a-f]{32}(\\.[0-9a-f]{64})?",
    ], require in any::<bool>()) {
        if let Ok(token) = JoinToken::parse(&input, require) {
            let again = JoinToken::parse(&token.credential(), false).unwrap();
            prop_assert_eq!(again.id, token.id);
        }
    }

    #[test]
    fn labels_never_panic(key in text(), value in text(), args in prop::collection::vec(text(), 0..8)) {
        let _ = validate_label(&key, &value);
        let _ = parse_label(&format!("{key}={value}"));
        let _ = parse_labels(&args);
        let _ = RunState::parse(&key);
    }
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn manifests_from_json_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
            exercise_manifest(&m);
        }
    }

    #[test]
    fn manifests_from_structured_json_never_panic(
        resources in prop::collection::vec(json_value(), 0..4),
        selector in json_value(),
        name in text(),
    ) {
        let value = serde_json::json!({"name": name, "selector": selector, "resources": resources});
        if let Ok(m) = serde_json::from_value::<Manifest>(value) {
            exercise_manifest(&m);
        }
    }

    #[test]
    fn manifests_from_yaml_never_panic(input in prop_oneof![
        any::<String>(),
        json_value().prop_map(|v| v.to_string()),
        "(name: [a-z]{1,8}\n|resources:\n|  - id: [a-z]{1,4}\n|    file: \\{path: /[a-z]{1,8}, mode: \"0[0-9]{1,5}\"\\}\n|&a \\[\\*a\\]\n|- \\*a\n){0,12}",
    ]) {
        if let Ok(m) = serde_saphyr::from_str::<Manifest>(&input) {
            exercise_manifest(&m);
        }
    }

    #[test]
    fn tasks_and_node_reports_never_panic(value in json_value()) {
        if let Ok(spec) = serde_json::from_value::<TaskSpec>(value.clone()) {
            let _ = spec.validate();
            let _ = spec.summary();
        }
        let _ = serde_json::from_value::<CreateTask>(value.clone());
        if let Ok(m) = serde_json::from_value::<Metrics>(value.clone()) {
            let _ = m.validate();
        }
        let _ = serde_json::from_value::<Capabilities>(value.clone());
        let _ = serde_json::from_value::<BTreeMap<String, String>>(value);
    }

    #[test]
    fn base64_never_panics(input in prop_oneof![any::<String>(), "[A-Za-z0-9+/=]{0,64}"]) {
        if let Ok(bytes) = drover_types::base64::decode(&input) {
            prop_assert_eq!(drover_types::base64::decode(&drover_types::base64::encode(&bytes)).unwrap(), bytes);
        }
    }
}
