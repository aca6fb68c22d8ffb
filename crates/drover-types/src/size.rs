//! Sizes as users type them: `1048576`, `512KiB`, `64MB`, `1GiB`.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid size {input:?}: {reason} (use bytes like `1048576` or a size like `512MiB`, `1GiB`)"
)]
pub struct SizeError {
    pub input: String,
    pub reason: String,
}

/// Parses a byte count with an optional unit (K/M/G/T, with or without `iB`/`B`; all powers of 1024).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason: &str| SizeError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let t = input.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err("no number"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err("unknown unit")),
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("too large"))?;
    if bytes == 0 {
        return Err(err("must be greater than zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size(" 1 GiB ").unwrap(), 1 << 30);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse_size("").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999T").is_err());
        assert!(parse_size("-1").is_err());
    }
}
