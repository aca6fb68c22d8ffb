//! Join tokens: made by operators, spent by enrolling agents and registering HTTP nodes.

use std::time::Duration;

use chrono::Utc;
use drover_types::api::{CreateTokenRequest, CreatedToken};
use drover_types::audit::AuditAction;
use drover_types::duration::{after, parse_duration_at_most};
use drover_types::labels::validate_labels;
use drover_types::token::{JoinToken, JoinTokenInfo, TokenRefusal};

use super::{Access, DEFAULT_TOKEN_TTL, FleetError, random_hex, sha256_hex};
use crate::store::JoinTokenRecord;

/// The longest lifetime a join token may have. Tokens are credentials: ten years is already generous.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A join token that proved itself but has not been spent yet: everything else in a request is checked
/// between the two, so a request refused for another reason costs its sender no use of the token.
pub struct CheckedToken {
    presented: JoinToken,
}

impl Access {
    // ---- join tokens ----

    pub async fn create_token(
        &self,
        actor: &str,
        req: CreateTokenRequest,
    ) -> Result<CreatedToken, FleetError> {
        let ttl = match req.ttl.as_deref() {
            Some(t) => parse_duration_at_most(t, MAX_TOKEN_TTL)
                .map_err(|e| FleetError::invalid("ttl", e))?,
            None => DEFAULT_TOKEN_TTL,
        };
        if req.max_uses == Some(0) {
            return Err(FleetError::invalid("max_uses", "must be at least 1"));
        }
        validate_labels(&req.labels)?;
        let now = Utc::now();
        let token = JoinToken {
            id: random_hex::<4>(),
            secret: random_hex::<16>(),
            ca_fingerprint: self.pki.fingerprint().to_string(),
        };
        let info = JoinTokenInfo {
            id: token.id.clone(),
            created_at: now,
            expires_at: after(now, ttl).ok_or_else(|| FleetError::invalid("ttl", "too long"))?,
            max_uses: req.max_uses,
            uses: 0,
            labels: req.labels,
            revoked: false,
        };
        self.store
            .insert_join_token(&JoinTokenRecord {
                info: info.clone(),
                secret_sha256: sha256_hex(&token.secret),
            })
            .await?;
        self.audit(
            actor,
            AuditAction::TokenCreate,
            &info.id,
            serde_json::json!({"expires_at": info.expires_at, "max_uses": info.max_uses, "labels": info.labels}),
        )
        .await;
        Ok(CreatedToken {
            token: token.to_string(),
            info,
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<JoinTokenInfo>, FleetError> {
        Ok(self.store.list_join_tokens().await?)
    }

    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<(), FleetError> {
        if !self.store.revoke_join_token(id).await? {
            return Err(FleetError::TokenNotFound(id.to_string()));
        }
        self.audit(actor, AuditAction::TokenRevoke, id, serde_json::json!({}))
            .await;
        Ok(())
    }

    /// Checks a join token (full, or without its fingerprint) without spending it.
    pub(super) async fn check_token(&self, presented: &str) -> Result<CheckedToken, FleetError> {
        let token = JoinToken::parse(presented, false)?;
        if !token.ca_fingerprint.is_empty() && token.ca_fingerprint != self.pki.fingerprint() {
            return Err(TokenRefusal::Unknown.into());
        }
        self.store
            .get_join_token(&token.id)
            .await?
            .ok_or(TokenRefusal::Unknown)?
            .check(&sha256_hex(&token.secret), Utc::now())?;
        Ok(CheckedToken { presented: token })
    }

    /// Counts one use of a checked token, atomically: it may have been used up or revoked meanwhile.
    pub(super) async fn spend_token(
        &self,
        token: CheckedToken,
    ) -> Result<JoinTokenInfo, FleetError> {
        let t = token.presented;
        Ok(self
            .store
            .use_join_token(&t.id, &sha256_hex(&t.secret), Utc::now())
            .await?
            .into_result()?)
    }
}
