//! Durations as users type them: `10` (seconds), `500ms`, `1h30m`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: {reason} (use seconds like `10` or a duration like `500ms`, `1h`)"
)]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Parses a plain number as seconds, anything else as a humantime duration. Zero is refused:
/// every duration drover takes from a user is an interval or a lifetime.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let trimmed = input.trim();
    let err = |reason: &str| DurationError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let duration = if let Ok(secs) = trimmed.parse::<f64>() {
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(err("out of range"));
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(trimmed).map_err(|e| err(&e.to_string()))?
    };
    if duration.is_zero() {
        return Err(err("must be greater than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_seconds() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn units_are_understood() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn garbage_and_zero_are_refused() {
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
    }
}
