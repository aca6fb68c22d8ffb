//! Join tokens: `drv1.<id>.<secret>.<ca-sha256>`. The id finds the token on the server, the secret proves
//! it, and the CA fingerprint lets a new agent pin the server it has never met.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Labels;

const PREFIX: &str = "drv1";

/// A join token as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    /// Lowercase hex SHA-256 of the server CA certificate (DER).
    pub ca_fingerprint: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "malformed join token: {0} (expected drv1.<id>.<secret>.<ca-fingerprint> as printed by `drover token create`)"
)]
pub struct TokenFormatError(pub &'static str);

impl JoinToken {
    /// The part sent to the server: everything but the fingerprint, which stays with the agent.
    pub fn credential(&self) -> String {
        format!("{PREFIX}.{}.{}", self.id, self.secret)
    }

    /// Parses a full token, or just its credential part when `require_fingerprint` is false
    /// (HTTP agents send the credential or the whole token as a bearer).
    pub fn parse(input: &str, require_fingerprint: bool) -> Result<Self, TokenFormatError> {
        let mut parts = input.trim().split('.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenFormatError("it does not start with `drv1.`"));
        }
        let hex_part = |p: Option<&str>, len: usize, what: &'static str| {
            p.filter(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase)
                .ok_or(TokenFormatError(what))
        };
        let id = hex_part(parts.next(), 8, "the id is not 8 hex digits")?;
        let secret = hex_part(parts.next(), 32, "the secret is not 32 hex digits")?;
        let ca_fingerprint = match parts.next() {
            Some(fp) => hex_part(Some(fp), 64, "the CA fingerprint is not 64 hex digits")?,
            None if require_fingerprint => {
                return Err(TokenFormatError("the CA fingerprint is missing"));
            }
            None => String::new(),
        };
        if parts.next().is_some() {
            return Err(TokenFormatError("it has too many parts"));
        }
        Ok(Self {
            id,
            secret,
            ca_fingerprint,
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.credential(), self.ca_fingerprint)
    }
}

/// A join token as the server lists it (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenInfo {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `None`: any number of nodes may join with it until it expires.
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub labels: Labels,
    pub revoked: bool,
}

/// Why the server refused a join token. The messages are shown to the agent's user.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefusal {
    #[error(
        "the join token is unknown to this server (was it created on another server, or mistyped?)"
    )]
    Unknown,
    #[error("the join token has expired: create a new one with `drover token create`")]
    Expired,
    #[error("the join token was revoked: create a new one with `drover token create`")]
    Revoked,
    #[error(
        "the join token has been used {0} times, its limit: create a new one with `drover token create`"
    )]
    Exhausted(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            id: "0123abcd".into(),
            secret: "00112233445566778899aabbccddeeff".into(),
            ca_fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn round_trips() {
        let t = token();
        assert_eq!(JoinToken::parse(&t.to_string(), true).unwrap(), t);
        let cred = JoinToken::parse(&t.credential(), false).unwrap();
        assert_eq!(cred.secret, t.secret);
    }

    #[test]
    fn refuses_malformed_tokens() {
        let t = token();
        assert!(JoinToken::parse(&t.credential(), true).is_err());
        assert!(JoinToken::parse("hello", false).is_err());
        assert!(JoinToken::parse("drv1.zz.00.11", false).is_err());
        assert!(JoinToken::parse(&format!("{t}.extra"), true).is_err());
    }
}
