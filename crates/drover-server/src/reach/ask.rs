//! What lives only with a node's stream (the actions it offers, its daemon-plugin sessions, dry-run plans,
//! running action calls) is read and controlled through one question type, [`Ask`]: answered here when the
//! node's stream is here (`Links::ask_json`), else by the replica that holds it (`drover.node.<id>.ask`,
//! nats.rs). One path for both, so a replica answers the same for a node it holds as for one another
//! replica holds. Each question is also a type of its own ([`Question`]) that names its answer's type.

use std::time::Duration;

use drover_types::action::ActionInfo;
use drover_types::session::{SessionDetail, SessionInfo, SessionSample};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// How long a node may take to answer a dry-run plan.
pub const PLAN_PATIENCE: Duration = Duration::from_secs(20);
/// How long a question routed to another replica may wait for its answer.
pub const ROUTE_PATIENCE: Duration = Duration::from_secs(5);

/// A question about a node's stream, as it travels (JSON between replicas).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Ask {
    Actions,
    Sessions,
    Session { plugin: String },
    SessionHistory { plugin: String },
    TerminateSessions { plugin: Option<String> },
    SessionMessage { plugin: String, body_json: String },
    Plan { state_json: String },
    CancelCall { call_id: String },
}

impl Ask {
    /// How long the holder may take to answer.
    pub fn patience(&self) -> Duration {
        match self {
            // The node's own time, plus the trip there and back.
            Ask::Plan { .. } => PLAN_PATIENCE.saturating_add(Duration::from_secs(2)),
            _ => ROUTE_PATIENCE,
        }
    }
}

/// A question with the type of its answer.
pub trait Question: Into<Ask> {
    type Answer: DeserializeOwned;
}

/// Why a node gave no plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct NoPlan(pub String);

macro_rules! question {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* } => $answer:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name { $(pub $field: $ty),* }

        impl From<$name> for Ask {
            #[allow(unused_variables)]
            fn from(q: $name) -> Ask {
                Ask::$name { $($field: q.$field),* }
            }
        }

        impl Question for $name {
            type Answer = $answer;
        }
    };
}

question!(
    /// The actions the node offers.
    Actions {} => Vec<ActionInfo>
);
question!(
    /// The node's daemon-plugin sessions.
    Sessions {} => Vec<SessionInfo>
);
question!(
    /// One plugin's session, when it has one.
    Session { plugin: String } => Option<SessionDetail>
);
question!(
    /// One plugin's latest payloads, when it has a session.
    SessionHistory { plugin: String } => Option<Vec<SessionSample>>
);
question!(
    /// Ends one plugin's session or all (the agent recreates them): how many ended.
    TerminateSessions { plugin: Option<String> } => usize
);
question!(
    /// Sends a message to a plugin's handler: `None` when it has no session, else whether it was sent.
    SessionMessage { plugin: String, body_json: String } => Option<bool>
);
question!(
    /// What the node would change for a desired state: the plan's JSON.
    Plan { state_json: String } => Result<String, NoPlan>
);
question!(
    /// Stops an action call: whether such a call ran on the node and was asked to stop.
    CancelCall { call_id: String } => bool
);
