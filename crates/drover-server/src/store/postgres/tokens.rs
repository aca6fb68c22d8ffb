//! Join tokens: issued, listed, revoked, and used once per enrolment, in PostgreSQL: `JoinTokenStore`.

use super::*;

#[async_trait]
impl JoinTokenStore for PgStore {
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = &token.info;
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_sha256, created_at, expires_at, max_uses, uses, labels, revoked)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&token.secret_sha256)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.max_uses.map(i64::from))
        .bind(i64::from(t.uses))
        .bind(to_json(&t.labels))
        .bind(t.revoked)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError> {
        let rows = sqlx::query("SELECT * FROM join_tokens ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?;
        Ok(readable(
            "join token",
            rows.iter().map(|r| decode_token(r).map(|t| t.info)),
        ))
    }

    async fn get_join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM join_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_token)
            .transpose()
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE join_tokens SET revoked = TRUE WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn use_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError> {
        let read = || async {
            let found = sqlx::query("SELECT * FROM join_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            found.as_ref().map(decode_token).transpose()
        };
        let Some(record) = read().await? else {
            return Ok(TokenUse::Refused(TokenRefusal::Unknown));
        };
        if let Err(refusal) = record.check(secret_sha256, now) {
            return Ok(TokenUse::Refused(refusal));
        }
        // The use is counted in one guarded statement, so the row is locked only while it runs (an
        // enrolling fleet does not queue on one lock held across round trips), and racing agents on any
        // replica cannot overuse a limited token: the guard is checked under the row lock.
        let counted: Option<i64> = sqlx::query_scalar(
            "UPDATE join_tokens SET uses = uses + 1
             WHERE id = $1 AND NOT revoked AND (max_uses IS NULL OR uses < max_uses)
             RETURNING uses",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let mut info = record.info;
        match counted {
            Some(uses) => {
                info.uses = u32::try_from(uses).unwrap_or(u32::MAX);
                Ok(TokenUse::Used(info))
            }
            // Revoked, deleted or used up between the read and the count: say which, as read now.
            None => Ok(TokenUse::Refused(match read().await? {
                None => TokenRefusal::Unknown,
                Some(now_record) => match now_record.check(secret_sha256, now) {
                    Err(refusal) => refusal,
                    Ok(()) => TokenRefusal::Revoked,
                },
            })),
        }
    }
}
