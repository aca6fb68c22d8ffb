//! Signatures an operator makes and a node checks, so that a server cannot make a pinned node apply or run
//! what no operator signed: ed25519 keys, the canonical JSON (RFC 8785, JCS) that is signed, and the signed
//! forms of manifests and commands.
//!
//! What is signed is `CONTEXT "\n" CANONICAL_JSON`, the context naming what the bytes are, so a manifest's
//! signature can never pass for a command's and the other way round.

use std::fmt;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base64;

/// What a manifest's signature covers (the canonical payload follows it).
pub const MANIFEST_CONTEXT: &str = "drover-manifest-v1";
/// What a command's signature covers.
pub const COMMAND_CONTEXT: &str = "drover-command-v1";
/// How a public key is written: `ed25519:` and the 32 bytes in standard base64.
pub const KEY_PREFIX: &str = "ed25519:";
/// How a signing key file starts: the 32-byte seed in standard base64 follows.
const SECRET_PREFIX: &str = "ed25519-secret:";
/// Default validity of a signed command, from the moment it is signed.
pub const COMMAND_VALIDITY_S: i64 = 300;
/// The longest window a node accepts for a signed command; it remembers nonces this long.
pub const MAX_COMMAND_WINDOW_S: i64 = 900;
/// Clock difference a node allows between the signer and itself.
pub const CLOCK_SKEW_S: i64 = 60;
/// Nonces are random, 16 to 64 characters of hex.
const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("{0:?} is not a public key: write it as ed25519:BASE64 (32 bytes)")]
    BadKey(String),
    #[error(
        "not a drover signing key: the file holds one line, ed25519-secret:BASE64 (see `drover keys create`)"
    )]
    BadSecret,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error("signed by {0}, a key this node does not pin")]
    NotPinned(String),
    #[error("the signature does not match what was sent (altered, or signed by another key)")]
    Invalid,
    #[error("cannot put this in canonical JSON: {0}")]
    Canonical(String),
}

/// A public key, as nodes pin it and `drover keys` lists it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, SignError> {
        let bad = || SignError::BadKey(text.to_string());
        let b64 = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let bytes: [u8; 32] = base64::decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        // One spelling per key, so a key id compares as text.
        if base64::encode(&bytes) != b64 {
            return Err(bad());
        }
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| bad())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", base64::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A signing key. Its file is one line, `ed25519-secret:BASE64` of the 32-byte seed.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn parse(text: &str) -> Result<Self, SignError> {
        let seed: [u8; 32] = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .and_then(|b| base64::decode(b).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or(SignError::BadSecret)?;
        Ok(Self::from_seed(seed))
    }

    /// The key file's text.
    pub fn to_file(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", base64::encode(self.0.as_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `payload` (canonical JSON) for `context`.
    pub fn sign(&self, context: &str, payload: &str) -> Signature {
        let sig = self.0.sign(&message(context, payload));
        Signature {
            key: self.public().to_string(),
            sig: base64::encode(&sig.to_bytes()),
        }
    }
}

fn message(context: &str, payload: &str) -> Vec<u8> {
    format!("{context}\n{payload}").into_bytes()
}

/// A signature and the key that made it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The public key, `ed25519:BASE64`: also the key's id.
    pub key: String,
    /// The 64-byte signature, base64.
    pub sig: String,
}

impl Signature {
    /// Checks the signature over `payload` for `context`, by the key it names, which must be one of `pinned`.
    pub fn verify(
        &self,
        pinned: &[PublicKey],
        context: &str,
        payload: &str,
    ) -> Result<(), SignError> {
        let key = PublicKey::parse(&self.key)
            .map_err(|_| SignError::Malformed(format!("{:?} is not a public key", self.key)))?;
        if !pinned.contains(&key) {
            return Err(SignError::NotPinned(self.key.clone()));
        }
        self.check(&key, context, payload)
    }

    /// Checks the signature against the key it names, pinned or not (what a server can check).
    pub fn verify_self(&self, context: &str, payload: &str) -> Result<(), SignError> {
        let key = PublicKey::parse(&self.key)?;
        self.check(&key, context, payload)
    }

    fn check(&self, key: &PublicKey, context: &str, payload: &str) -> Result<(), SignError> {
        let bytes: [u8; 64] = base64::decode(&self.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SignError::Malformed("not 64 bytes of base64".into()))?;
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        key.0
            .verify(&message(context, payload), &sig)
            .map_err(|_| SignError::Invalid)
    }
}

/// What a signed command carries besides its signature: where and when it may run, and its nonce.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSignature {
    /// The node (id or name) it is for; `None`: whichever nodes the server sends it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Random hex; a node runs a nonce once.
    pub nonce: String,
    #[serde(flatten)]
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("expired at {not_after} (unix seconds; now {now})")]
    Expired { not_after: i64, now: i64 },
    #[error("not valid before {not_before} (unix seconds; now {now})")]
    Early { not_before: i64, now: i64 },
    #[error("its window ({0} s) is longer than the {MAX_COMMAND_WINDOW_S} s a node accepts")]
    TooLong(i64),
    #[error("the nonce must be 16 to 64 hex characters")]
    Nonce,
}

impl CommandSignature {
    /// Signs `command` (the task spec, or the action and its arguments) for `node`, valid from `now` for
    /// `validity_s` seconds, with `nonce`.
    pub fn sign(
        key: &SecretKey,
        command: &Value,
        node: Option<String>,
        now: i64,
        validity_s: i64,
        nonce: String,
    ) -> Result<Self, SignError> {
        let mut signed = Self {
            node,
            not_before: now,
            not_after: now.saturating_add(validity_s),
            nonce,
            signature: Signature {
                key: String::new(),
                sig: String::new(),
            },
        };
        signed.signature = key.sign(COMMAND_CONTEXT, &signed.payload(command)?);
        Ok(signed)
    }

    /// The canonical bytes signed for `command`.
    pub fn payload(&self, command: &Value) -> Result<String, SignError> {
        canonical_json(&serde_json::json!({
            "command": command,
            "node": self.node,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "nonce": self.nonce,
        }))
    }

    /// Whether `now` (unix seconds, the node's clock) lies in the window, with [`CLOCK_SKEW_S`] either side.
    pub fn check_window(&self, now: i64) -> Result<(), WindowError> {
        if !NONCE_LEN.contains(&self.nonce.len())
            || !self.nonce.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(WindowError::Nonce);
        }
        let window = self.not_after.checked_sub(self.not_before);
        match window {
            Some(w) if (0..=MAX_COMMAND_WINDOW_S).contains(&w) => {}
            Some(w) => return Err(WindowError::TooLong(w)),
            None => return Err(WindowError::TooLong(i64::MAX)),
        }
        if self.not_before.saturating_sub(CLOCK_SKEW_S) > now {
            return Err(WindowError::Early {
                not_before: self.not_before,
                now,
            });
        }
        if self.not_after.saturating_add(CLOCK_SKEW_S) < now {
            return Err(WindowError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }
}

/// RFC 8785 (JSON Canonicalization Scheme): object members sorted by their names' UTF-16 code units, no
/// whitespace, strings with the minimal escapes of ECMAScript's `JSON.stringify`, numbers in ECMAScript's
/// shortest form. Integers beyond 2^53 cannot be IEEE doubles exactly and are refused.
pub fn canonical_json(value: &Value) -> Result<String, SignError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String) -> Result<(), SignError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n)?),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// 2^53: the largest integer every smaller one of which an IEEE double holds exactly.
const SAFE_INTEGER: u64 = 1 << 53;

fn number(n: &serde_json::Number) -> Result<String, SignError> {
    if let Some(u) = n.as_u64() {
        return if u <= SAFE_INTEGER {
            Ok(u.to_string())
        } else {
            Err(SignError::Canonical(format!("{u} is beyond 2^53")))
        };
    }
    if let Some(i) = n.as_i64() {
        return if i.unsigned_abs() <= SAFE_INTEGER {
            Ok(i.to_string())
        } else {
            Err(SignError::Canonical(format!("{i} is beyond -2^53")))
        };
    }
    let f = n
        .as_f64()
        .ok_or_else(|| SignError::Canonical(format!("{n} is not a number")))?;
    es_number(f)
}

/// ECMAScript's Number::toString for a finite double (ECMA-262, 7.1.12.1).
fn es_number(f: f64) -> Result<String, SignError> {
    if !f.is_finite() {
        return Err(SignError::Canonical(
            "NaN and infinities are not JSON".into(),
        ));
    }
    if f == 0.0 {
        return Ok("0".into());
    }
    let sign = if f < 0.0 { "-" } else { "" };
    // Rust's `{:e}` gives the shortest digits that read back to the same double: d[.ddd]e<exp>.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .ok_or_else(|| SignError::Canonical(sci.clone()))?;
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i64 = exp.parse().map_err(|_| SignError::Canonical(sci.clone()))?;
    let k = digits.len() as i64;
    // The value is 0.DIGITS x 10^n.
    let n = exp + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e >= 0 {
            format!("+{e}")
        } else {
            e.to_string()
        };
        match digits.split_at(1) {
            (d, "") => format!("{d}e{e}"),
            (d, rest) => format!("{d}.{rest}e{e}"),
        }
    };
    Ok(format!("{sign}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::excessive_precision)] // RFC 8785's own literal
    fn canonical_json_follows_rfc_8785s_examples() {
        // RFC 8785, section 3.2.2: the sample input and its canonical form.
        let input: Value = serde_json::from_str(
            r#"{
              "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
              "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
              "literals": [null, true, false]
            }"#,
        )
        .unwrap();
        // serde_json's default parser may miss the nearest double by one unit; the literals do not.
        let mut input = input;
        input["numbers"] = serde_json::json!([
            333333333.33333329f64,
            1E30,
            4.50,
            2e-3,
            0.000000000000000000000000001
        ]);
        assert_eq!(
            canonical_json(&input).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Section 3.2.3: members sorted by UTF-16 code units, not by code points or UTF-8 bytes.
        let sorting: Value = serde_json::from_str(
            r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical_json(&sorting).unwrap(), want);
    }

    #[test]
    fn numbers_take_ecmascripts_shortest_form() {
        // From RFC 8785's Appendix B (IEEE 754 value -> ECMAScript form).
        for (f, want) in [
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (9007199254740991.0, "9007199254740991"),
            (-0.0, "0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.000001, "0.000001"),
            (0.0000001, "1e-7"),
            (-1.5, "-1.5"),
            (123456789012345680000.0, "123456789012345680000"),
        ] {
            assert_eq!(es_number(f).unwrap(), want, "{f:e}");
        }
        assert!(canonical_json(&serde_json::json!(u64::MAX)).is_err());
        assert_eq!(
            canonical_json(&serde_json::json!(SAFE_INTEGER)).unwrap(),
            "9007199254740992"
        );
    }

    #[test]
    fn keys_round_trip_and_signatures_bind_key_context_and_payload() {
        let key = SecretKey::from_seed([7; 32]);
        let again = SecretKey::parse(&key.to_file()).unwrap();
        assert_eq!(again.public(), key.public());
        let public = PublicKey::parse(&key.public().to_string()).unwrap();
        let sig = key.sign(MANIFEST_CONTEXT, "{}");
        assert_eq!(
            sig.verify(std::slice::from_ref(&public), MANIFEST_CONTEXT, "{}"),
            Ok(())
        );
        assert_eq!(
            sig.verify(std::slice::from_ref(&public), MANIFEST_CONTEXT, "{\"a\":1}"),
            Err(SignError::Invalid)
        );
        assert_eq!(
            sig.verify(std::slice::from_ref(&public), COMMAND_CONTEXT, "{}"),
            Err(SignError::Invalid),
            "a manifest's signature is no command's"
        );
        let other = SecretKey::from_seed([8; 32]).public();
        assert!(matches!(
            sig.verify(&[other], MANIFEST_CONTEXT, "{}"),
            Err(SignError::NotPinned(_))
        ));
        // A forged signature naming the pinned key.
        let forged = Signature {
            key: sig.key.clone(),
            sig: SecretKey::from_seed([8; 32])
                .sign(MANIFEST_CONTEXT, "{}")
                .sig,
        };
        assert_eq!(
            forged.verify(&[public], MANIFEST_CONTEXT, "{}"),
            Err(SignError::Invalid)
        );
        for bad in ["ed25519:", "rsa:AAAA", "ed25519:AAAA", "ed25519:!!"] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
        assert!(SecretKey::parse("ed25519-secret:AAAA").is_err());
    }

    #[test]
    fn command_windows_are_short_and_checked_with_some_skew() {
        let key = SecretKey::from_seed([1; 32]);
        let cmd = serde_json::json!({"kind": "exec", "argv": ["true"]});
        let nonce = "0123456789abcdef".to_string();
        let signed = CommandSignature::sign(&key, &cmd, None, 1000, 300, nonce).unwrap();
        assert_eq!(signed.check_window(1000), Ok(()));
        assert_eq!(signed.check_window(1000 - CLOCK_SKEW_S), Ok(()));
        assert!(matches!(
            signed.check_window(1000 - CLOCK_SKEW_S - 1),
            Err(WindowError::Early { .. })
        ));
        assert!(matches!(
            signed.check_window(1300 + CLOCK_SKEW_S + 1),
            Err(WindowError::Expired { .. })
        ));
        let payload = signed.payload(&cmd).unwrap();
        assert!(
            signed
                .signature
                .verify(&[key.public()], COMMAND_CONTEXT, &payload)
                .is_ok()
        );
        let long = CommandSignature {
            not_after: i64::MAX,
            not_before: i64::MIN,
            ..signed.clone()
        };
        assert!(matches!(long.check_window(0), Err(WindowError::TooLong(_))));
        let bad_nonce = CommandSignature {
            nonce: "x".into(),
            ..signed
        };
        assert_eq!(bad_nonce.check_window(1000), Err(WindowError::Nonce));
    }
}
