//! The one place that translates between the domain's messages (`reach::message`) and the protocol's
//! (`drover_proto::v1`): the gateway reads agents' messages through it, and both adapters of the `Reach`
//! port write through it (the local stream as protobuf values, NATS as their encoding).

use drover_proto::v1::{self, ServerMessage, agent_message, server_message::Msg};
use drover_types::action::ActionError;
use drover_types::task::{RunState, Stream};

use super::message::{
    ActionCall, BlobData, Chunk, CreateSession, DesiredUpdate, FromAgent, InlineBlob, SessionData,
    SessionStatus, TaskExit, TaskOutput, TaskStart, ToAgent,
};

/// An agent's message as the domain reads it; `None` for the hello and heartbeats, which the gateway
/// handles itself.
pub fn from_agent(msg: agent_message::Msg) -> Option<FromAgent> {
    use agent_message::Msg as A;
    Some(match msg {
        A::ActionResult(r) => FromAgent::ActionResult {
            outcome: action_outcome(r.outcome),
            call_id: r.call_id,
        },
        A::CreateSession(c) => FromAgent::CreateSession(CreateSession {
            plugin: c.plugin,
            interval: std::time::Duration::from_millis(c.interval_ms),
            deadline: std::time::Duration::from_millis(c.deadline_ms),
        }),
        A::SessionData(d) => FromAgent::SessionData(SessionData {
            plugin: d.plugin,
            session_id: d.session_id,
            seq: d.seq,
            payload_json: d.payload_json,
            deadline_misses: d.deadline_misses,
        }),
        A::SessionStatus(s) => FromAgent::SessionStatus(SessionStatus {
            plugin: s.plugin,
            session_id: s.session_id,
            deadline_misses: s.deadline_misses,
        }),
        A::TaskOutput(o) => FromAgent::TaskOutput(TaskOutput {
            task_id: o.task_id.into(),
            chunks: o.chunks.into_iter().map(chunk).collect(),
        }),
        A::TaskExit(e) => FromAgent::TaskExit(TaskExit {
            state: RunState::parse(&e.state),
            task_id: e.task_id.into(),
            seq: e.seq,
            exit_code: e.exit_code,
            signal: e.signal,
            error: e.error,
        }),
        A::ConvergenceReport(r) => FromAgent::ConvergenceReport {
            report_json: r.report_json,
        },
        A::PlanResult(p) => FromAgent::PlanResult {
            request_id: p.request_id,
            plan_json: p.plan_json,
        },
        A::BlobRequest(r) => FromAgent::BlobRequest {
            request_id: r.request_id,
            sha256: r.sha256,
        },
        A::Hello(_) | A::Heartbeat(_) => return None,
    })
}

/// The stream number on the wire: 2 is stderr, anything else stdout (as agents have always sent).
fn chunk(c: v1::OutputChunk) -> Chunk {
    Chunk {
        seq: c.seq,
        stream: if c.stream == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        },
        data: c.data,
    }
}

fn action_outcome(
    outcome: Option<v1::action_result::Outcome>,
) -> Result<serde_json::Value, ActionError> {
    use v1::action_result::Outcome;
    match outcome {
        Some(Outcome::OkJson(json)) => serde_json::from_str(&json).map_err(|e| {
            ActionError::failed(format!("the agent sent a result that is not JSON: {e}"))
        }),
        Some(Outcome::ErrorJson(json)) => Err(serde_json::from_str::<ActionError>(&json)
            .unwrap_or_else(|e| {
                ActionError::failed(format!("the agent sent an unreadable error: {e}"))
            })),
        None => Err(ActionError::failed("the agent sent an empty result")),
    }
}

impl From<ToAgent> for ServerMessage {
    fn from(msg: ToAgent) -> Self {
        let msg = match msg {
            ToAgent::ActionCall(c) => Msg::ActionCall(v1::ActionCall {
                call_id: c.call_id,
                name: c.name,
                args_json: c.args_json,
                deadline_ms: c.deadline_ms,
                signature_json: c.signature_json,
            }),
            ToAgent::CancelAction { call_id } => Msg::CancelAction(v1::CancelAction { call_id }),
            ToAgent::SessionCreated { plugin, session_id } => {
                Msg::SessionCreated(v1::SessionCreated { plugin, session_id })
            }
            ToAgent::TerminateSession {
                plugin,
                session_id,
                reason,
            } => Msg::TerminateSession(v1::TerminateSession {
                plugin,
                session_id,
                reason,
            }),
            ToAgent::SessionMessage {
                plugin,
                session_id,
                body_json,
            } => Msg::SessionMessage(v1::SessionMessage {
                plugin,
                session_id,
                body_json,
            }),
            ToAgent::TaskStart(s) => Msg::TaskStart(v1::TaskStart {
                task_id: s.task_id.into(),
                spec_json: s.spec_json.to_string(),
                signature_json: s.signature_json.to_string(),
            }),
            ToAgent::TaskCancel { task_id } => Msg::TaskCancel(v1::TaskCancel {
                task_id: task_id.into(),
            }),
            ToAgent::TaskAck {
                task_id,
                upto_seq,
                exit,
            } => Msg::TaskAck(v1::TaskAck {
                task_id: task_id.into(),
                upto_seq,
                exit,
            }),
            ToAgent::DesiredState(d) => Msg::DesiredState(desired_update(d)),
            ToAgent::PlanRequest {
                request_id,
                state_json,
            } => Msg::PlanRequest(v1::PlanRequest {
                request_id,
                state_json,
            }),
            ToAgent::BlobData(b) => Msg::BlobData(v1::BlobData {
                request_id: b.request_id,
                offset: b.offset,
                data: b.data,
                last: b.last,
                error: b.error,
            }),
        };
        ServerMessage { msg: Some(msg) }
    }
}

/// A desired-state update as the protocol (and the NATS state bucket) carries it.
pub fn desired_update(d: DesiredUpdate) -> v1::DesiredStateUpdate {
    v1::DesiredStateUpdate {
        generation: d.generation,
        state_json: d.state_json,
        blobs: d
            .blobs
            .into_iter()
            .map(|b| v1::InlineBlob {
                sha256: b.sha256,
                data: b.data.to_vec(),
            })
            .collect(),
    }
}

/// The domain's view of a desired-state update read back from the protocol's encoding.
pub fn desired_from_wire(d: v1::DesiredStateUpdate) -> DesiredUpdate {
    DesiredUpdate {
        generation: d.generation,
        state_json: d.state_json,
        blobs: d
            .blobs
            .into_iter()
            .map(|b| InlineBlob {
                sha256: b.sha256,
                data: b.data.into(),
            })
            .collect(),
    }
}

/// A message another replica routed here (an encoded `ServerMessage`), as the domain's; `None` for one
/// that only the gateway sends (Welcome) or an empty one.
pub fn to_agent(msg: ServerMessage) -> Option<ToAgent> {
    Some(match msg.msg? {
        Msg::ActionCall(c) => ToAgent::ActionCall(ActionCall {
            call_id: c.call_id,
            name: c.name,
            args_json: c.args_json,
            deadline_ms: c.deadline_ms,
            signature_json: c.signature_json,
        }),
        Msg::CancelAction(c) => ToAgent::CancelAction { call_id: c.call_id },
        Msg::SessionCreated(c) => ToAgent::SessionCreated {
            plugin: c.plugin,
            session_id: c.session_id,
        },
        Msg::TerminateSession(t) => ToAgent::TerminateSession {
            plugin: t.plugin,
            session_id: t.session_id,
            reason: t.reason,
        },
        Msg::SessionMessage(m) => ToAgent::SessionMessage {
            plugin: m.plugin,
            session_id: m.session_id,
            body_json: m.body_json,
        },
        Msg::TaskStart(s) => ToAgent::TaskStart(TaskStart {
            task_id: s.task_id.into(),
            spec_json: s.spec_json.into(),
            signature_json: s.signature_json.into(),
        }),
        Msg::TaskCancel(c) => ToAgent::TaskCancel {
            task_id: c.task_id.into(),
        },
        Msg::TaskAck(a) => ToAgent::TaskAck {
            task_id: a.task_id.into(),
            upto_seq: a.upto_seq,
            exit: a.exit,
        },
        Msg::DesiredState(d) => ToAgent::DesiredState(desired_from_wire(d)),
        Msg::PlanRequest(p) => ToAgent::PlanRequest {
            request_id: p.request_id,
            state_json: p.state_json,
        },
        Msg::BlobData(b) => ToAgent::BlobData(BlobData {
            request_id: b.request_id,
            offset: b.offset,
            data: b.data,
            last: b.last,
            error: b.error,
        }),
        Msg::Welcome(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_to_an_agent_survives_the_trip_through_the_protocol() {
        let samples = vec![
            ToAgent::ActionCall(ActionCall {
                call_id: "c".into(),
                name: "n".into(),
                args_json: "{}".into(),
                deadline_ms: 5,
                signature_json: String::new(),
            }),
            ToAgent::CancelAction {
                call_id: "c".into(),
            },
            ToAgent::SessionCreated {
                plugin: "p".into(),
                session_id: "s".into(),
            },
            ToAgent::TerminateSession {
                plugin: "p".into(),
                session_id: "s".into(),
                reason: "r".into(),
            },
            ToAgent::SessionMessage {
                plugin: "p".into(),
                session_id: "s".into(),
                body_json: "{}".into(),
            },
            ToAgent::TaskStart(TaskStart {
                task_id: "t".into(),
                spec_json: "{}".into(),
                signature_json: "".into(),
            }),
            ToAgent::TaskCancel {
                task_id: "t".into(),
            },
            ToAgent::TaskAck {
                task_id: "t".into(),
                upto_seq: 3,
                exit: true,
            },
            ToAgent::DesiredState(DesiredUpdate {
                generation: 2,
                state_json: "{}".into(),
                blobs: vec![InlineBlob {
                    sha256: "ab".into(),
                    data: Vec::from(*b"x").into(),
                }],
            }),
            ToAgent::PlanRequest {
                request_id: "r".into(),
                state_json: "{}".into(),
            },
            ToAgent::BlobData(BlobData {
                request_id: "r".into(),
                offset: 1,
                data: vec![1],
                last: true,
                error: String::new(),
            }),
        ];
        for m in samples {
            assert_eq!(to_agent(ServerMessage::from(m.clone())), Some(m));
        }
    }

    #[test]
    fn an_exit_naming_no_known_state_reads_as_none_and_stream_two_is_stderr() {
        let exit = agent_message::Msg::TaskExit(v1::TaskExit {
            task_id: "t".into(),
            state: "Exploded".into(),
            ..Default::default()
        });
        let Some(FromAgent::TaskExit(e)) = from_agent(exit) else {
            panic!("not an exit")
        };
        assert_eq!(e.state, None);
        let out = agent_message::Msg::TaskOutput(v1::TaskOutput {
            task_id: "t".into(),
            chunks: vec![
                v1::OutputChunk {
                    seq: 0,
                    stream: 2,
                    data: vec![],
                },
                v1::OutputChunk {
                    seq: 1,
                    stream: 7,
                    data: vec![],
                },
            ],
        });
        let Some(FromAgent::TaskOutput(o)) = from_agent(out) else {
            panic!("not output")
        };
        let streams: Vec<Stream> = o.chunks.iter().map(|c| c.stream).collect();
        assert_eq!(streams, [Stream::Stderr, Stream::Stdout]);
    }
}
