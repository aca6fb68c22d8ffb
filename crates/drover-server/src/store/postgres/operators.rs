//! Operators and their tokens (stored as hashes), in PostgreSQL: `OperatorStore`.

use super::*;

#[async_trait]
impl OperatorStore for PgStore {
    async fn put_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError> {
        let o = &operator.info;
        let done = sqlx::query(
            "INSERT INTO operators (name, role, token_sha256, created_at, created_by, revoked)
             VALUES ($1, $2, $3, $4, $5, FALSE)
             ON CONFLICT (name) DO UPDATE SET role = $2, token_sha256 = $3, created_at = $4,
                 created_by = $5, revoked = FALSE
             WHERE operators.revoked",
        )
        .bind(&o.name)
        .bind(o.role.as_str())
        .bind(&operator.token_sha256)
        .bind(o.created_at)
        .bind(&o.created_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_operators(&self) -> Result<Vec<OperatorInfo>, StoreError> {
        let rows = sqlx::query("SELECT * FROM operators ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(readable("operator", rows.iter().map(decode_operator)))
    }

    async fn operator_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        sqlx::query("SELECT * FROM operators WHERE token_sha256 = $1 AND NOT revoked")
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_operator)
            .transpose()
    }

    async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE operators SET revoked = TRUE WHERE name = $1 AND NOT revoked")
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}
