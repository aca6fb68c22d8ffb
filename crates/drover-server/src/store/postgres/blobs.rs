//! Content (file resources) by SHA-256, in PostgreSQL: `BlobStore`.

use super::*;

#[async_trait]
impl BlobStore for PgStore {
    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError> {
        sqlx::query(sql::blobs::PUT.pg)
            .bind(sha256)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(sql::blobs::GET.pg)
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?)
    }
}
