//! Percent-encoding for URL path segments and query values: one rule for every caller.

/// Escapes every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`), so the result is safe
/// as a path segment or a query value whatever the text holds.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_pass() {
        assert_eq!(percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(
            percent_encode("role=db,x/y &#é"),
            "role%3Ddb%2Cx%2Fy%20%26%23%C3%A9"
        );
    }
}
