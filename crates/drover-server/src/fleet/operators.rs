//! Operators: named API tokens with a role, made and revoked by admins. The bootstrap admin token
//! (`admin.token`) is not one of them: it is checked by the API and acts as `admin`.

use chrono::Utc;
use drover_types::audit::AuditAction;
use drover_types::operator::{CreateOperatorRequest, CreatedOperator, OperatorInfo};

use super::{Access, FleetError, random_hex, sha256_hex};
use crate::store::OperatorRecord;

/// The actor name of the bootstrap admin token; no operator may take it.
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// The prefix of operator tokens, so a leaked one is recognisable (and told apart from join tokens).
const TOKEN_PREFIX: &str = "drvop.";

/// Operator names appear in the audit log as actors: plain, short, and never one a node's actor could have.
fn validate_operator_name(name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !ok {
        return Err(FleetError::invalid(
            "name",
            format!(
                "{name:?} is not a valid operator name (1-64 letters, digits, '-', '_', '.' or '@')"
            ),
        ));
    }
    if name == BOOTSTRAP_ADMIN {
        return Err(FleetError::invalid(
            "name",
            "\"admin\" is the bootstrap admin token's name; choose another",
        ));
    }
    Ok(())
}

impl Access {
    pub async fn create_operator(
        &self,
        actor: &str,
        req: CreateOperatorRequest,
    ) -> Result<CreatedOperator, FleetError> {
        validate_operator_name(&req.name)?;
        let token = format!("{TOKEN_PREFIX}{}", random_hex::<24>());
        let info = OperatorInfo {
            name: req.name,
            role: req.role,
            created_at: Utc::now(),
            created_by: actor.to_string(),
            revoked: false,
        };
        let stored = self
            .store
            .put_operator(&OperatorRecord {
                info: info.clone(),
                token_sha256: sha256_hex(&token),
            })
            .await?;
        if !stored {
            return Err(FleetError::OperatorExists(info.name));
        }
        self.audit(
            actor,
            AuditAction::OperatorCreate,
            &info.name,
            serde_json::json!({"role": info.role}),
        )
        .await;
        Ok(CreatedOperator {
            token,
            ca_fingerprint: self.pki.fingerprint().to_string(),
            info,
        })
    }

    pub async fn list_operators(&self) -> Result<Vec<OperatorInfo>, FleetError> {
        Ok(self.store.list_operators().await?)
    }

    pub async fn revoke_operator(&self, actor: &str, name: &str) -> Result<(), FleetError> {
        if !self.store.revoke_operator(name).await? {
            return Err(FleetError::OperatorNotFound(name.to_string()));
        }
        self.audit(
            actor,
            AuditAction::OperatorRevoke,
            name,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }

    /// The active operator a token belongs to, if any.
    pub async fn operator_for_token(
        &self,
        token: &str,
    ) -> Result<Option<OperatorInfo>, FleetError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        Ok(self.store.operator_by_token(&sha256_hex(token)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::validate_operator_name;

    #[test]
    fn operator_names_are_plain_and_admin_is_taken() {
        assert!(validate_operator_name("alice").is_ok());
        assert!(validate_operator_name("ci-bot@example.org").is_ok());
        for bad in ["", "admin", "node:x", "a b", &"x".repeat(65)] {
            assert!(validate_operator_name(bad).is_err(), "{bad:?}");
        }
    }
}
