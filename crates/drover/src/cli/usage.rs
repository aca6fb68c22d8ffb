//! Usage mistakes found after clap parsed the line (missing or conflicting arguments, a value of the wrong
//! form): they exit 2, as clap's own do, so scripts tell "called wrongly" from "failed".

use std::fmt::Display;

/// A mistake in how a command was called; its message says how to call it instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Returns early with a [`UsageError`], like `anyhow::bail!`.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// Marks a failure to read an argument's value as a usage mistake, naming the argument.
pub trait UsageContext<T> {
    fn usage(self, what: &str) -> Result<T, UsageError>;
}

impl<T, E: Display> UsageContext<T> for Result<T, E> {
    fn usage(self, what: &str) -> Result<T, UsageError> {
        self.map_err(|e| UsageError(format!("{what}: {e}")))
    }
}

impl<T> UsageContext<T> for Option<T> {
    fn usage(self, what: &str) -> Result<T, UsageError> {
        self.ok_or_else(|| UsageError(what.to_string()))
    }
}
