//! Terminal safety: text that a node or another user controls (a node's OS or arch, an error a node or the
//! server reports, a label) is shown with its control characters escaped, so it cannot clear the screen,
//! set the terminal's title, move the cursor or overwrite other rows. JSON output needs none of this
//! (serde escapes control characters), and a task's output is the command's own bytes, shown as they are.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: C0 controls, DEL, C1 controls (U+0080..U+009F; `\u{9b}`
/// is a CSI on its own in some terminals) and the bidirectional overrides and isolates, which reorder
/// what follows them on the line.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\0'..='\x1f' | '\x7f'..='\u{9f}'
        | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character written out (`\e`, `\r`, `\n`, `\t`, `\a`, `\x01`, `\u{9b}`, ...).
/// Plain text, the usual case, is returned as it is without copying.
pub fn safe(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// As [`safe`], but newlines are kept: for messages of several lines (an error with its causes).
pub fn safe_lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    // Fast path: printable ASCII, the usual case, needs no look at characters.
    if s.bytes().all(|b| (b' '..b'\x7f').contains(&b)) {
        return Cow::Borrowed(s);
    }
    let escaped = |c: char| needs_escape(c) && !(keep_newlines && c == '\n');
    let Some(first) = s.find(escaped) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if !escaped(c) {
            out.push(c);
            continue;
        }
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\0' => out.push_str("\\0"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{safe, safe_lines};

    #[test]
    fn plain_text_is_untouched_and_not_copied() {
        for s in [
            "",
            "linux/aarch64",
            "Ubuntu 24.04 (noble)",
            "Grüße, 東京 ✓",
            "a\\eb",
        ] {
            assert!(matches!(safe(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn control_characters_are_written_out() {
        assert_eq!(
            safe("\x1b[2J\x1b[31mFAKE\x1b]0;owned\x07"),
            "\\e[2J\\e[31mFAKE\\e]0;owned\\a"
        );
        assert_eq!(safe("x\rOVERWRITE"), "x\\rOVERWRITE");
        assert_eq!(safe("a\nb\tc\0d\x08\x01\x7f"), "a\\nb\\tc\\0d\\b\\x01\\x7f");
        // C1 (an 8-bit CSI) and a right-to-left override, around text that stays as it is.
        assert_eq!(safe("é\u{9b}2J\u{202e}Ready"), "é\\u{9b}2J\\u{202e}Ready");
        // Escaping what was escaped changes nothing: output is printable.
        let once = safe("\x1b\r\u{85}").into_owned();
        assert_eq!(safe(&once), once);
        assert!(once.chars().all(|c| !c.is_control()));
    }

    #[test]
    fn messages_of_several_lines_keep_their_newlines_only() {
        assert_eq!(safe_lines("one\ntwo\r\x1b[K"), "one\ntwo\\r\\e[K");
    }
}
