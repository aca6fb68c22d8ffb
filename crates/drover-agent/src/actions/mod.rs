//! Action plugins: typed async functions the server calls by name. Adding one is one function plus one
//! line in `registry()`. Calls run with a deadline and can be cancelled; a cancelled or late call's future
//! is dropped, which also kills any child process it started (`kill_on_drop`).

mod builtin;
#[cfg(feature = "test-plugins")]
mod testing;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use drover_types::action::{ActionError, ActionInfo};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::policy::Policy;

/// What every action gets besides its arguments.
#[derive(Clone)]
pub struct ActionCtx {
    pub policy: Arc<Policy>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, ActionError>> + Send>>;

/// One registered action: a name, a version, and the type-erased call.
pub struct ActionEntry {
    pub name: &'static str,
    pub version: u32,
    /// Whether it changes the node (writes, starts, stops). On a node that pins keys such an action needs an
    /// operator's signature, like a task; read-only ones stay open to the server.
    pub changes_node: bool,
    call: Box<dyn Fn(ActionCtx, Value) -> BoxFuture + Send + Sync>,
}

/// Decodes arguments, naming the offending field.
fn decode<A: DeserializeOwned>(args: Value) -> Result<A, ActionError> {
    // `null` means "no arguments": let plugins with all-default args take it as `{}`.
    let args = if args.is_null() {
        Value::Object(Default::default())
    } else {
        args
    };
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        ActionError::invalid(field.as_deref(), e.into_inner())
    })
}

/// Wraps a typed `async fn(ctx, Args) -> Result<Out, ActionError>` as a registry entry.
pub fn action<A, O, F, Fut>(name: &'static str, version: u32, f: F) -> ActionEntry
where
    A: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(ActionCtx, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, ActionError>> + Send + 'static,
{
    let f = Arc::new(f);
    ActionEntry {
        name,
        version,
        changes_node: false,
        call: Box::new(move |ctx, args| {
            let f = f.clone();
            Box::pin(async move {
                let args = decode::<A>(args)?;
                let out = f(ctx, args).await?;
                serde_json::to_value(out).map_err(ActionError::failed)
            })
        }),
    }
}

/// Marks an action as one that changes the node.
pub fn changing(entry: ActionEntry) -> ActionEntry {
    ActionEntry {
        changes_node: true,
        ..entry
    }
}

/// Whether the action named so changes the node (an unknown one is treated as if it did).
pub fn changes_node(name: &str) -> bool {
    registry()
        .iter()
        .find(|e| e.name == name)
        .is_none_or(|e| e.changes_node)
}

/// Every action this agent offers.
pub fn registry() -> &'static [ActionEntry] {
    static REGISTRY: OnceLock<Vec<ActionEntry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        #[allow(unused_mut)]
        let mut entries = vec![
            action("ping", 1, builtin::ping),
            action("inventory", 1, builtin::inventory),
            action("read_file", 1, builtin::read_file),
            action("list_processes", 1, builtin::list_processes),
            action("list_containers", 1, builtin::list_containers),
            action("service_status", 1, builtin::service_status),
        ];
        #[cfg(feature = "test-plugins")]
        entries.extend(testing::entries());
        entries
    })
}

pub fn advertised() -> Vec<ActionInfo> {
    registry()
        .iter()
        .map(|e| ActionInfo {
            name: e.name.to_string(),
            version: e.version,
        })
        .collect()
}

/// Runs one call to completion, cancellation or deadline.
pub async fn run(
    ctx: ActionCtx,
    name: &str,
    args: Value,
    deadline: Duration,
    cancel: oneshot::Receiver<()>,
) -> Result<Value, ActionError> {
    let Some(entry) = registry().iter().find(|e| e.name == name) else {
        return Err(ActionError::UnknownAction {
            name: name.to_string(),
            known: registry().iter().map(|e| e.name.to_string()).collect(),
        });
    };
    let call = (entry.call)(ctx, args);
    tokio::select! {
        result = tokio::time::timeout(deadline, call) => result.unwrap_or(Err(ActionError::DeadlineExceeded {
            deadline_ms: deadline.as_millis() as u64,
        })),
        _ = cancel => Err(ActionError::Cancelled),
    }
}

/// How many finished call ids are remembered to refuse redelivered calls.
const REMEMBERED_CALLS: usize = 1024;

/// Tracks running calls (for cancellation) and recent ones (so a redelivered call never runs twice).
#[derive(Default)]
pub struct Calls {
    inner: Mutex<CallsInner>,
}

#[derive(Default)]
struct CallsInner {
    running: HashMap<String, oneshot::Sender<()>>,
    seen: VecDeque<String>,
}

impl Calls {
    /// Registers a new call; `None` when this id was seen before.
    pub fn begin(&self, call_id: &str) -> Option<oneshot::Receiver<()>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.running.contains_key(call_id) || inner.seen.iter().any(|c| c == call_id) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        inner.running.insert(call_id.to_string(), tx);
        Some(rx)
    }

    pub fn finish(&self, call_id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.running.remove(call_id);
        inner.seen.push_back(call_id.to_string());
        if inner.seen.len() > REMEMBERED_CALLS {
            inner.seen.pop_front();
        }
    }

    /// Cancels a running call; false when it is not running.
    pub fn cancel(&self, call_id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.running.remove(call_id) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ActionCtx {
        ActionCtx {
            policy: Arc::new(Policy::new(&[])),
        }
    }

    #[tokio::test]
    async fn unknown_names_and_bad_args_are_typed_errors() {
        let (_tx, rx) = oneshot::channel();
        let err = run(ctx(), "nope", Value::Null, Duration::from_secs(1), rx)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ActionError::UnknownAction { ref known, .. } if known.contains(&"ping".to_string()))
        );
        let (_tx, rx) = oneshot::channel();
        let err = run(
            ctx(),
            "read_file",
            serde_json::json!({"path": 7}),
            Duration::from_secs(1),
            rx,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ActionError::InvalidArgs { field: Some(ref f), .. } if f == "path"),
            "{err:?}"
        );
    }

    #[test]
    fn redelivered_calls_are_refused() {
        let calls = Calls::default();
        assert!(calls.begin("a").is_some());
        assert!(calls.begin("a").is_none());
        calls.finish("a");
        assert!(calls.begin("a").is_none());
        assert!(!calls.cancel("a"));
    }
}
