//! A daemon plugin compiled only into test builds (`--features test-plugins`), steered by session messages:
//! `{"value": N}` changes its payload, `{"delay_ms": M}` makes each update take that long.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{DaemonEntry, DaemonPlugin, PluginError};

#[derive(Default)]
struct Probe {
    value: i64,
    delay: Duration,
}

#[async_trait]
impl DaemonPlugin for Probe {
    async fn start(&mut self) -> Result<Value, PluginError> {
        Ok(json!({"value": self.value}))
    }

    async fn update(&mut self) -> Result<Option<Value>, PluginError> {
        tokio::time::sleep(self.delay).await;
        Ok(Some(json!({"value": self.value})))
    }

    async fn on_message(&mut self, body: Value) -> Result<(), PluginError> {
        if let Some(v) = body.get("value").and_then(Value::as_i64) {
            self.value = v;
        }
        if let Some(d) = body.get("delay_ms").and_then(Value::as_u64) {
            self.delay = Duration::from_millis(d);
        }
        Ok(())
    }
}

pub fn entries() -> Vec<DaemonEntry> {
    vec![DaemonEntry {
        name: "test_probe",
        make: || Box::new(Probe::default()),
        interval: Duration::from_millis(100),
        deadline: Duration::from_millis(300),
    }]
}
