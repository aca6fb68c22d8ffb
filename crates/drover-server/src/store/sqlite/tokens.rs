//! Join tokens: issued, listed, revoked, and used once per enrolment, in SQLite: `JoinTokenStore`.

use super::*;

#[async_trait]
impl JoinTokenStore for SqliteStore {
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.write(move |c| {
            exec(c,
                "INSERT INTO join_tokens (id, secret_sha256, created_at, expires_at, max_uses, uses, labels, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    t.info.id,
                    t.secret_sha256,
                    ts(t.info.created_at),
                    ts(t.info.expires_at),
                    t.info.max_uses,
                    t.info.uses,
                    to_json(&t.info.labels),
                    t.info.revoked
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_join_tokens(&self) -> Result<Vec<JoinTokenInfo>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT * FROM join_tokens ORDER BY created_at")?;
            let rows = stmt.query_map([], token_info)?;
            Ok(readable(
                "join token",
                rows.map(|r| r.map(|(info, _)| info).map_err(StoreError::from)),
            ))
        })
        .await
    }

    async fn get_join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            Ok(row(
                c,
                "SELECT * FROM join_tokens WHERE id = ?1",
                [&id],
                token_info,
            )
            .optional()?
            .map(|(info, secret_sha256)| JoinTokenRecord {
                info,
                secret_sha256,
            }))
        })
        .await
    }

    async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            Ok(exec(c, "UPDATE join_tokens SET revoked = 1 WHERE id = ?1", [id])? > 0)
        })
        .await
    }

    async fn use_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError> {
        let (id, secret) = (id.to_string(), secret_sha256.to_string());
        self.write(move |c| {
            let tx = c;
            let found = row(
                tx,
                "SELECT * FROM join_tokens WHERE id = ?1",
                [&id],
                token_info,
            )
            .optional()?;
            let Some((mut info, stored_secret)) = found else {
                return Ok(TokenUse::Refused(TokenRefusal::Unknown));
            };
            let record = JoinTokenRecord {
                info: info.clone(),
                secret_sha256: stored_secret,
            };
            if let Err(refusal) = record.check(&secret, now) {
                return Ok(TokenUse::Refused(refusal));
            }
            exec(
                tx,
                "UPDATE join_tokens SET uses = uses + 1 WHERE id = ?1",
                [&id],
            )?;
            info.uses += 1;
            Ok(TokenUse::Used(info))
        })
        .await
    }
}
