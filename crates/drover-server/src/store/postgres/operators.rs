//! Operators and their tokens (stored as hashes), in PostgreSQL: `OperatorStore`.

use super::*;

#[async_trait]
impl OperatorStore for PgStore {
    async fn put_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError> {
        let o = &operator.info;
        let done = sqlx::query(sql::operators::PUT.pg)
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
        let rows = sqlx::query(sql::operators::LIST.pg)
            .fetch_all(&self.pool)
            .await?;
        Ok(readable("operator", rows.iter().map(decode_operator)))
    }

    async fn operator_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        sqlx::query(sql::operators::BY_TOKEN.pg)
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_operator)
            .transpose()
    }

    async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::operators::REVOKE.pg)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
