//! Node labels: `key=value` pairs used by selectors.

use std::collections::BTreeMap;

use crate::limits::{MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label {0:?} is not of the form key=value")]
    NotKeyValue(String),
    #[error(
        "label key {0:?} is invalid: use 1-{MAX_LABEL_KEY} characters of letters, digits, '-', '_', '.' or '/', starting with a letter or digit"
    )]
    BadKey(String),
    #[error(
        "label value {value:?} for key {key:?} is invalid: use at most {MAX_LABEL_VALUE} printable characters without spaces"
    )]
    BadValue { key: String, value: String },
    #[error("{0} labels; at most {MAX_LABELS} are accepted")]
    TooMany(usize),
}

/// Bytes of a refused key or value quoted back in an error.
const QUOTED: usize = 80;

/// A refused text as quoted in an error: at most `QUOTED` bytes (on a character boundary).
fn quoted(text: &str) -> String {
    let mut end = text.len().min(QUOTED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}... ({} bytes)", &text[..end], text.len())
    } else {
        text.to_string()
    }
}

/// Checks one key and value.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !key_ok {
        return Err(LabelError::BadKey(quoted(key)));
    }
    let value_ok = value.len() <= MAX_LABEL_VALUE && value.chars().all(|c| c.is_ascii_graphic());
    if !value_ok {
        return Err(LabelError::BadValue {
            key: key.to_string(),
            value: quoted(value),
        });
    }
    Ok(())
}

/// Parses one `key=value` argument.
pub fn parse_label(arg: &str) -> Result<(String, String), LabelError> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| LabelError::NotKeyValue(arg.to_string()))?;
    validate_label(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Parses a list of `key=value` arguments; a comma also separates pairs (for environment variables).
pub fn parse_labels<I, S>(args: I) -> Result<Labels, LabelError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut labels = Labels::new();
    for arg in args {
        for part in arg.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = parse_label(part.trim())?;
            labels.insert(k, v);
        }
    }
    Ok(labels)
}

/// Checks every label of a map, and that there are not too many.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    labels.iter().try_for_each(|(k, v)| validate_label(k, v))
}

/// The labels a node reports that selection does not use yet: those whose value differs from the one
/// the operator controls (bound at enrollment, set with `drover nodes label`, or accepted).
pub fn pending_labels(controlled: &Labels, reported: &Labels) -> Labels {
    reported
        .iter()
        .filter(|(k, v)| controlled.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_commas() {
        let labels = parse_labels(["role=edge", "zone=a,rack=r1"]).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["rack"], "r1");
    }

    #[test]
    fn refuses_bad_labels() {
        assert!(matches!(
            parse_label("role"),
            Err(LabelError::NotKeyValue(_))
        ));
        assert!(matches!(parse_label("-x=1"), Err(LabelError::BadKey(_))));
        assert!(matches!(
            parse_label("x=a b"),
            Err(LabelError::BadValue { .. })
        ));
        let many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert_eq!(
            validate_labels(&many),
            Err(LabelError::TooMany(MAX_LABELS + 1))
        );
    }

    #[test]
    fn pending_labels_are_the_reported_ones_that_differ() {
        let controlled = parse_labels(["role=edge", "zone=a"]).unwrap();
        let reported = parse_labels(["role=db", "zone=a", "gpu=yes"]).unwrap();
        let pending = pending_labels(&controlled, &reported);
        assert_eq!(pending, parse_labels(["role=db", "gpu=yes"]).unwrap());
    }
}
