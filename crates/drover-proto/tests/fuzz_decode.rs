//! Property tests ("fuzzing" on stable Rust): arbitrary bytes and protobuf-shaped garbage decoded as every
//! message either side receives, then mapped to drover-types and its JSON payloads parsed, as the server's
//! gateway and the agent's dispatch do. Never a panic; a decode failure is a typed `prost::DecodeError`.
//!
//! Cases per property: PROPTEST_CASES when set (scripts/fuzz.sh sets it high), else a CI-sized default.

use drover_proto::v1;
use drover_types as t;
use proptest::prelude::*;
use prost::Message;

fn config(ci_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ci_cases;
    }
    config
}

/// One protobuf field: a key (field number and wire type) and a payload that matches the wire type, or not.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    /// A key with a wire type the payload does not follow, or a truncated tail.
    Raw(Vec<u8>),
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            Field::Varint(n, v) => {
                varint(u64::from(*n) << 3, &mut out);
                varint(*v, &mut out);
            }
            Field::Fixed64(n, v) => {
                varint((u64::from(*n) << 3) | 1, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed32(n, v) => {
                varint((u64::from(*n) << 3) | 5, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Bytes(n, b) => {
                varint((u64::from(*n) << 3) | 2, &mut out);
                varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
            Field::Raw(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// Payloads for length-delimited fields: strings the receivers parse further (JSON, ids, hex).
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        "[a-z0-9_.-]{0,16}".prop_map(String::into_bytes),
        Just(b"{}".to_vec()),
        Just(br#"{"kind":"exec","argv":["x"],"timeout_ms":18446744073709551615}"#.to_vec()),
        Just(br#"{"generation":18446744073709551615,"resources":[{"manifest":"m","id":"a","file":{"path":"/x","content":"y","mode":"7777777"}}]}"#.to_vec()),
        Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
    ]
}

/// Messages nested a few levels, with field numbers where drover's messages have fields.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let field_no = prop_oneof![1u32..16, any::<u32>().prop_map(|n| n % (1 << 29))];
    let leaf = prop::collection::vec(
        prop_oneof![
            (field_no.clone(), any::<u64>()).prop_map(|(n, v)| Field::Varint(n, v)),
            (field_no.clone(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
            (field_no.clone(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
            (field_no.clone(), payload()).prop_map(|(n, b)| Field::Bytes(n, b)),
            prop::collection::vec(any::<u8>(), 0..6).prop_map(Field::Raw),
        ],
        0..6,
    )
    .prop_map(|f| encode(&f));
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop::collection::vec(
            prop_oneof![
                (1u32..16, inner).prop_map(|(n, b)| Field::Bytes(n, b)),
                (1u32..16, any::<u64>()).prop_map(|(n, v)| Field::Varint(n, v)),
                (1u32..16, payload()).prop_map(|(n, b)| Field::Bytes(n, b)),
            ],
            1..5,
        )
        .prop_map(|f| encode(&f))
    })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..256), message()]
}

fn json<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_str(text).ok()
}

/// What the server does with a message from an agent, short of its store.
fn server_receives(m: v1::AgentMessage) {
    use v1::agent_message::Msg;
    match m.msg {
        Some(Msg::Hello(h)) => {
            let _: t::Capabilities = h.capabilities.unwrap_or_default().into();
            if let Some(m) = h.metrics {
                let _ = t::Metrics::from(m).validate();
            }
            let _ = std::time::Duration::from_millis(h.heartbeat_interval_ms.max(1));
        }
        Some(Msg::Heartbeat(hb)) => {
            let _ = t::Metrics::from(hb.metrics.unwrap_or_default()).validate();
        }
        Some(Msg::ConvergenceReport(r)) => {
            let _ = json::<serde_json::Value>(&r.report_json);
        }
        Some(Msg::PlanResult(p)) => {
            let _ = json::<serde_json::Value>(&p.plan_json);
        }
        Some(Msg::ActionResult(r)) => {
            let _ = format!("{r:?}");
        }
        Some(other) => {
            let _ = format!("{other:?}");
        }
        None => {}
    }
}

/// What the agent parses out of a message from the server before acting on it.
fn agent_receives(m: v1::ServerMessage) {
    use v1::server_message::Msg;
    match m.msg {
        Some(Msg::TaskStart(s)) => {
            if let Some(spec) = json::<t::task::TaskSpec>(&s.spec_json) {
                let _ = spec.validate();
            }
        }
        Some(Msg::DesiredState(d)) => {
            if let Some(state) = json::<t::manifest::DesiredState>(&d.state_json) {
                for r in &state.resources {
                    let _ = r.resource.kind_name();
                    if let Some(f) = &r.resource.file {
                        let _ = t::manifest::file_mode(f);
                    }
                }
            }
        }
        Some(Msg::PlanRequest(p)) => {
            let _ = json::<t::manifest::DesiredState>(&p.state_json);
        }
        Some(Msg::ActionCall(c)) => {
            let _ = json::<serde_json::Value>(&c.args_json);
            let _ = std::time::Duration::from_millis(c.deadline_ms.max(1));
        }
        Some(Msg::SessionMessage(s)) => {
            let _ = json::<serde_json::Value>(&s.body_json);
        }
        Some(other) => {
            let _ = format!("{other:?}");
        }
        None => {}
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn agent_messages_never_panic_the_server(input in bytes()) {
        if let Ok(m) = v1::AgentMessage::decode(input.as_slice()) {
            // What decodes re-encodes: the decoder kept nothing half-read.
            let again = v1::AgentMessage::decode(m.encode_to_vec().as_slice());
            prop_assert!(again.is_ok());
            server_receives(m);
        }
    }

    #[test]
    fn server_messages_never_panic_the_agent(input in bytes()) {
        if let Ok(m) = v1::ServerMessage::decode(input.as_slice()) {
            prop_assert!(v1::ServerMessage::decode(m.encode_to_vec().as_slice()).is_ok());
            agent_receives(m);
        }
    }

    #[test]
    fn unary_requests_and_replies_never_panic(input in bytes()) {
        if let Ok(e) = v1::EnrollRequest::decode(input.as_slice()) {
            let _ = t::token::JoinToken::parse(&e.token, false);
        }
        let _ = v1::EnrollResponse::decode(input.as_slice());
        let _ = v1::FetchBlobRequest::decode(input.as_slice());
        let _ = v1::Blob::decode(input.as_slice());
        // Length-delimited, as a stream frames them.
        let _ = v1::AgentMessage::decode_length_delimited(input.as_slice());
        let _ = v1::ServerMessage::decode_length_delimited(input.as_slice());
    }
}
