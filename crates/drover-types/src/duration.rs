//! Durations as users type them: `10` (seconds), `500ms`, `1h30m`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The longest duration drover takes from anyone (a century): every time it yields, now plus or minus it,
/// fits chrono, SQLite's text times and `Instant` arithmetic. Fields with a tighter sane range check that too.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: {reason} (use seconds like `10` or a duration like `500ms`, `1h`)"
)]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Parses a plain number as seconds, anything else as a humantime duration. Zero is refused:
/// every duration drover takes from a user is an interval or a lifetime. So is anything above
/// [`MAX_DURATION`].
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    parse_duration_at_most(input, MAX_DURATION)
}

/// [`parse_duration`] with a tighter upper bound (`max` above [`MAX_DURATION`] counts as [`MAX_DURATION`]).
pub fn parse_duration_at_most(input: &str, max: Duration) -> Result<Duration, DurationError> {
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
    let max = max.min(MAX_DURATION);
    if duration > max {
        return Err(err(&format!(
            "longer than the maximum of {}",
            humantime::format_duration(max)
        )));
    }
    Ok(duration)
}

/// `duration` as a chrono span, `None` when it does not fit.
pub fn to_time_delta(duration: Duration) -> Option<TimeDelta> {
    TimeDelta::from_std(duration).ok()
}

/// `now - duration`, `None` when that is before the earliest time chrono can hold.
pub fn before(now: DateTime<Utc>, duration: Duration) -> Option<DateTime<Utc>> {
    now.checked_sub_signed(to_time_delta(duration)?)
}

/// `now + duration`, `None` when that is after the latest time chrono can hold.
pub fn after(now: DateTime<Utc>, duration: Duration) -> Option<DateTime<Utc>> {
    now.checked_add_signed(to_time_delta(duration)?)
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
    fn huge_durations_are_refused_not_overflowed() {
        for input in [
            "18446744073709551615s",
            "1000000y",
            "101y",
            "999999999999999999999",
        ] {
            let e = parse_duration(input).unwrap_err();
            assert!(
                e.reason.contains("maximum") || e.reason.contains("range"),
                "{input}: {e}"
            );
        }
        assert!(parse_duration("100y").is_err(), "a century of leap days");
        assert!(parse_duration("99y").is_ok());
        let e = parse_duration_at_most("2h", Duration::from_secs(3600)).unwrap_err();
        assert!(e.to_string().contains("maximum of 1h"), "{e}");
        // Every duration that parses fits chrono both ways.
        let now = Utc::now();
        let longest = parse_duration("99y").unwrap();
        assert!(before(now, longest).is_some() && after(now, longest).is_some());
        assert!(before(now, Duration::MAX).is_none());
    }

    #[test]
    fn garbage_and_zero_are_refused() {
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
    }
}
