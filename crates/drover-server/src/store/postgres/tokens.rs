//! Join tokens: issued, listed, revoked, and used once per enrolment, in PostgreSQL: `JoinTokenStore`.

use super::*;

#[async_trait]
impl JoinTokenStore for PgStore {
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = &token.info;
        sqlx::query(sql::tokens::INSERT.pg)
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
        let rows = sqlx::query(sql::tokens::LIST.pg)
            .fetch_all(&self.pool)
            .await?;
        Ok(readable(
            "join token",
            rows.iter().map(|r| decode_token(r).map(|t| t.info)),
        ))
    }

    async fn get_join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        sqlx::query(sql::tokens::BY_ID.pg)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_token)
            .transpose()
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::tokens::REVOKE.pg)
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
            let found = sqlx::query(sql::tokens::BY_ID.pg)
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
        // replica cannot overuse a limited token: the guard is checked under the row lock. Per backend:
        // SQLite's one writer checks and counts in one write, unguarded.
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
