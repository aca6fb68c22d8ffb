//! Join tokens: made by operators, spent by enrolling agents and registering HTTP nodes.

use chrono::Utc;
use drover_types::api::{CreateTokenRequest, CreatedToken};
use drover_types::duration::parse_duration;
use drover_types::labels::validate_labels;
use drover_types::token::{JoinToken, JoinTokenInfo, TokenRefusal};

use super::{DEFAULT_TOKEN_TTL, Fleet, FleetError, random_hex, sha256_hex};
use crate::store::JoinTokenRecord;

impl Fleet {
    // ---- join tokens ----

    pub async fn create_token(&self, req: CreateTokenRequest) -> Result<CreatedToken, FleetError> {
        let ttl = match req.ttl.as_deref() {
            Some(t) => parse_duration(t)?,
            None => DEFAULT_TOKEN_TTL,
        };
        let ttl =
            chrono::Duration::from_std(ttl).map_err(|_| FleetError::invalid("ttl", "too long"))?;
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
            expires_at: now
                .checked_add_signed(ttl)
                .ok_or_else(|| FleetError::invalid("ttl", "too long"))?,
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
        Ok(CreatedToken {
            token: token.to_string(),
            info,
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<JoinTokenInfo>, FleetError> {
        Ok(self.store.list_join_tokens().await?)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), FleetError> {
        if self.store.revoke_join_token(id).await? {
            Ok(())
        } else {
            Err(FleetError::TokenNotFound(id.to_string()))
        }
    }

    /// Checks a join token (full, or without its fingerprint) and counts one use.
    pub(super) async fn use_token(&self, presented: &str) -> Result<JoinTokenInfo, FleetError> {
        let token = JoinToken::parse(presented, false)?;
        if !token.ca_fingerprint.is_empty() && token.ca_fingerprint != self.pki.fingerprint() {
            return Err(TokenRefusal::Unknown.into());
        }
        Ok(self
            .store
            .use_join_token(&token.id, &sha256_hex(&token.secret), Utc::now())
            .await??)
    }
}
