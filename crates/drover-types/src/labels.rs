//! Node labels: `key=value` pairs used by selectors.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label {0:?} is not of the form key=value")]
    NotKeyValue(String),
    #[error(
        "label key {0:?} is invalid: use 1-63 characters of letters, digits, '-', '_', '.' or '/', starting with a letter or digit"
    )]
    BadKey(String),
    #[error(
        "label value {value:?} for key {key:?} is invalid: use at most 253 printable characters without spaces"
    )]
    BadValue { key: String, value: String },
}

/// Checks one key and value.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !key_ok {
        return Err(LabelError::BadKey(key.to_string()));
    }
    let value_ok = value.len() <= 253 && value.chars().all(|c| c.is_ascii_graphic());
    if !value_ok {
        return Err(LabelError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
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

/// Checks every label of a map.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    labels.iter().try_for_each(|(k, v)| validate_label(k, v))
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
    }
}
