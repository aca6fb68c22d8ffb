//! Join tokens: issued, listed, revoked, and used once per enrolment, in SQLite: `JoinTokenStore`.

use super::*;

#[async_trait]
impl JoinTokenStore for SqliteStore {
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.write(move |c| {
            exec(
                c,
                sql::tokens::INSERT.sqlite,
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
            let mut stmt = c.prepare(sql::tokens::LIST.sqlite)?;
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
            Ok(row(c, sql::tokens::BY_ID.sqlite, [&id], token_info)
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
        self.write(move |c| Ok(exec(c, sql::tokens::REVOKE.sqlite, [id])? > 0))
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
            let found = row(tx, sql::tokens::BY_ID.sqlite, [&id], token_info).optional()?;
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
            // Per backend: the one writer checked the token in this same write; PostgreSQL's replicas
            // guard the count in its statement instead.
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
