//! Limits on everything a node can make the server hold: one place, so docs/protocol.md can list them and
//! every check names the same number. Each is generous for a real node; past one, the message is refused
//! with an error naming the field and the limit, and the server is unharmed.

/// Labels on one node, one join token, or one hello or registration.
pub const MAX_LABELS: usize = 128;
/// Bytes of a label key.
pub const MAX_LABEL_KEY: usize = 63;
/// Bytes of a label value.
pub const MAX_LABEL_VALUE: usize = 253;

/// Task ids in one hello's `open_tasks`.
pub const MAX_OPEN_TASKS: usize = 4096;
/// Actions one hello lists.
pub const MAX_ACTIONS: usize = 256;
/// Bytes of an action's or plugin's name or version.
pub const MAX_NAME: usize = 64;

/// GPUs in one capability report.
pub const MAX_GPUS: usize = 64;
/// Addresses in one capability report.
pub const MAX_IPS: usize = 256;
/// Bytes of one capability or metrics string (hostname, kernel, a GPU's name, a container's image...).
pub const MAX_TEXT: usize = 1024;
/// Bytes of the capabilities an HTTP agent sends that this build does not know (kept as JSON).
pub const MAX_EXTRA_CAPABILITIES: usize = 16 * 1024;
/// Running containers in one heartbeat's metrics.
pub const MAX_RUNNING_CONTAINERS: usize = 1024;

/// Daemon-plugin sessions one node holds at once (one per plugin).
pub const MAX_SESSIONS_PER_NODE: usize = 32;
/// Bytes of one session payload.
pub const MAX_SESSION_PAYLOAD: usize = 256 * 1024;
/// Bytes of payload history kept per session; the oldest samples go first, the latest always stays.
pub const MAX_SESSION_HISTORY_BYTES: usize = 512 * 1024;

/// Bytes of one convergence report.
pub const MAX_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// Resources in one convergence report.
pub const MAX_REPORT_RESOURCES: usize = 4096;
/// Conditions in one convergence report.
pub const MAX_REPORT_CONDITIONS: usize = 64;
/// Drift events per resource in one convergence report.
pub const MAX_DRIFT_EVENTS: usize = 64;

/// Bytes of a run's error text a node reports with its exit (longer text is cut, the exit still counts).
pub const MAX_EXIT_ERROR: usize = 4096;
/// The longest task timeout an operator may ask for.
pub const MAX_TASK_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
/// The longest grace between SIGTERM and SIGKILL.
pub const MAX_TASK_GRACE_MS: u64 = 3600 * 1000;

/// Something a node sent is over a limit.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("field `{field}`: {reason}")]
pub struct LimitError {
    pub field: String,
    pub reason: String,
}

/// Refuses more than `max` entries.
pub fn check_count(field: &str, n: usize, max: usize) -> Result<(), LimitError> {
    if n <= max {
        return Ok(());
    }
    Err(LimitError {
        field: field.to_string(),
        reason: format!("{n} entries; at most {max} are accepted"),
    })
}

/// Refuses a text longer than `max` bytes.
pub fn check_len(field: &str, text: &str, max: usize) -> Result<(), LimitError> {
    if text.len() <= max {
        return Ok(());
    }
    Err(LimitError {
        field: field.to_string(),
        reason: format!("{} bytes; at most {max} are accepted", text.len()),
    })
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut: for text that must be kept
/// (an exit's error) but not at any size.
pub fn clip(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
}

/// Bytes of one gRPC message either way, and of one blob uploaded over REST: blobs travel whole.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_the_limit() {
        assert!(check_count("labels", MAX_LABELS, MAX_LABELS).is_ok());
        let e = check_count("labels", 100_000, MAX_LABELS).unwrap_err();
        assert_eq!(e.field, "labels");
        assert!(e.to_string().contains("100000 entries; at most 128"), "{e}");
        let e = check_len("hostname", &"x".repeat(MAX_TEXT + 1), MAX_TEXT).unwrap_err();
        assert!(e.to_string().contains("at most 1024"), "{e}");
    }

    #[test]
    fn clip_cuts_on_a_character_boundary_and_marks_it() {
        let mut short = "ok".to_string();
        clip(&mut short, 10);
        assert_eq!(short, "ok");
        let mut long = "é".repeat(100);
        clip(&mut long, 11);
        assert!(long.len() <= 11, "{}", long.len());
        assert!(long.ends_with('…'));
        assert!(long.starts_with("éééé"));
    }
}
