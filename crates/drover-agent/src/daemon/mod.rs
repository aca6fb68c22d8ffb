//! Daemon plugins: stateful monitoring streams. Each enabled plugin gets one session per connection,
//! Empty -> Pending (asked the server) -> Active (the server answered with an id). A plugin call that misses
//! its deadline is cancelled, counted and tried again at the next tick; a payload is sent only when it
//! differs from the last one sent. Each plugin runs in its own task, so a slow one delays nobody.

mod builtin;
mod gpus;
#[cfg(feature = "test-plugins")]
mod testing;

use std::time::Duration;

use async_trait::async_trait;
use drover_proto::v1::{
    AgentMessage, CreateSession, SessionData, SessionStatus, agent_message::Msg,
};
use serde_json::Value;
use tokio::sync::mpsc;

/// A plugin's own failure; logged, never fatal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

impl PluginError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        PluginError(e.to_string())
    }
}

/// Turns a typed payload into the JSON that travels.
pub fn payload<T: serde::Serialize>(value: &T) -> Result<Value, PluginError> {
    serde_json::to_value(value).map_err(PluginError::new)
}

#[async_trait]
pub trait DaemonPlugin: Send {
    /// Starts a session: the initial payload.
    async fn start(&mut self) -> Result<Value, PluginError>;
    /// A new payload, or `None` when there is nothing new.
    async fn update(&mut self) -> Result<Option<Value>, PluginError>;
    /// A message from the server.
    async fn on_message(&mut self, _body: Value) -> Result<(), PluginError> {
        Ok(())
    }
    /// The session ended.
    async fn teardown(&mut self) {}
}

/// A registered plugin: its name, how to make one, and its default timing.
pub struct DaemonEntry {
    pub name: &'static str,
    pub make: fn() -> Box<dyn DaemonPlugin>,
    pub interval: Duration,
    pub deadline: Duration,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// Every daemon plugin this agent has.
pub fn registry() -> Vec<DaemonEntry> {
    let mut entries = builtin::entries();
    entries.push(gpus::entry());
    #[cfg(feature = "test-plugins")]
    entries.extend(testing::entries());
    entries
}

/// A plugin as configured on this node.
#[derive(Clone)]
pub struct Enabled {
    pub name: &'static str,
    pub make: fn() -> Box<dyn DaemonPlugin>,
    pub interval: Duration,
    pub deadline: Duration,
}

/// What the link tells a plugin's task.
#[derive(Debug)]
pub enum Control {
    Created { session_id: String },
    Terminate { session_id: String },
    Message { body: Value },
}

/// Pause before asking for a new session after one ended.
const RECREATE_DELAY: Duration = Duration::from_millis(500);

fn msg(m: Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

/// Runs one plugin's sessions for the life of a connection. Returns when `control` closes.
pub async fn run(
    plugin: Enabled,
    mut control: mpsc::Receiver<Control>,
    out: mpsc::Sender<AgentMessage>,
) {
    let mut misses: u64 = 0;
    loop {
        // Empty -> Pending.
        let ask = CreateSession {
            plugin: plugin.name.to_string(),
            interval_ms: plugin.interval.as_millis() as u64,
            deadline_ms: plugin.deadline.as_millis() as u64,
        };
        if out.send(msg(Msg::CreateSession(ask))).await.is_err() {
            return;
        }
        // Pending -> Active.
        let session_id = loop {
            match control.recv().await {
                Some(Control::Created { session_id }) => break session_id,
                Some(_) => continue,
                None => return,
            }
        };
        tracing::debug!(plugin = plugin.name, %session_id, "session active");
        let mut instance = (plugin.make)();
        let ended = active(
            &plugin,
            &session_id,
            instance.as_mut(),
            &mut control,
            &out,
            &mut misses,
        )
        .await;
        instance.teardown().await;
        match ended {
            Ended::Terminated => {
                tracing::info!(plugin = plugin.name, %session_id, "session terminated by the server; recreating")
            }
            Ended::Closed => return,
        }
        tokio::time::sleep(RECREATE_DELAY).await;
    }
}

enum Ended {
    Terminated,
    Closed,
}

async fn active(
    plugin: &Enabled,
    session_id: &str,
    instance: &mut dyn DaemonPlugin,
    control: &mut mpsc::Receiver<Control>,
    out: &mpsc::Sender<AgentMessage>,
    misses: &mut u64,
) -> Ended {
    let mut started = false;
    let mut seq: u64 = 0;
    let mut last_sent: Option<String> = None;
    let mut ticker = tokio::time::interval(plugin.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let call = async {
                    if started { instance.update().await } else { instance.start().await.map(Some) }
                };
                let began = std::time::Instant::now();
                let outcome = tokio::time::timeout(plugin.deadline, call).await;
                crate::metrics_listen::plugin_call(plugin.name, began.elapsed(), outcome.is_err());
                match outcome {
                    Err(_) => {
                        *misses += 1;
                        tracing::warn!(plugin = plugin.name, misses = *misses, "plugin missed its deadline of {:?}; cancelled, retrying next tick", plugin.deadline);
                        let status = SessionStatus { plugin: plugin.name.into(), session_id: session_id.into(), deadline_misses: *misses };
                        if out.send(msg(Msg::SessionStatus(status))).await.is_err() {
                            return Ended::Closed;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(plugin = plugin.name, "plugin failed: {e}"),
                    Ok(Ok(None)) => started = true,
                    Ok(Ok(Some(value))) => {
                        started = true;
                        let text = value.to_string();
                        if last_sent.as_deref() == Some(text.as_str()) {
                            continue;
                        }
                        let data = SessionData {
                            plugin: plugin.name.into(),
                            session_id: session_id.into(),
                            seq,
                            payload_json: text.clone(),
                            deadline_misses: *misses,
                        };
                        if out.send(msg(Msg::SessionData(data))).await.is_err() {
                            return Ended::Closed;
                        }
                        seq += 1;
                        last_sent = Some(text);
                    }
                }
            }
            c = control.recv() => match c {
                Some(Control::Terminate { session_id: id }) if id.is_empty() || id == session_id => return Ended::Terminated,
                Some(Control::Message { body }) => {
                    match tokio::time::timeout(plugin.deadline, instance.on_message(body)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(plugin = plugin.name, "plugin refused a message: {e}"),
                        Err(_) => tracing::warn!(plugin = plugin.name, "plugin's message handler missed its deadline"),
                    }
                }
                Some(_) => {}
                None => return Ended::Closed,
            },
        }
    }
}
