//! Rollouts and manifest revisions, in PostgreSQL: `RolloutStore`.

use super::*;

#[async_trait]
impl RolloutStore for PgStore {
    async fn put_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        sqlx::query(sql::rollouts::PUT.pg)
            .bind(&rollout.manifest)
            .bind(to_json(rollout))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_rollout(&self, manifest: &str) -> Result<Option<Rollout>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(sql::rollouts::GET.pg)
            .bind(manifest)
            .fetch_optional(&self.pool)
            .await?;
        body.map(|b| from_json(&b, "rollout")).transpose()
    }

    async fn list_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let bodies: Vec<String> = sqlx::query_scalar(sql::rollouts::LIST.pg)
            .fetch_all(&self.pool)
            .await?;
        bodies.iter().map(|b| from_json(b, "rollout")).collect()
    }

    async fn delete_rollout(&self, manifest: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::rollouts::DELETE.pg)
            .bind(manifest)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest_revision(
        &self,
        manifest: &StoredManifest,
        keep: usize,
    ) -> Result<(), StoreError> {
        let generation = big(manifest.generation);
        let oldest_kept = generation.saturating_sub(big(keep) - 1);
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::rollouts::REVISION_PUT.pg)
            .bind(&manifest.manifest.name)
            .bind(generation)
            .bind(to_json(manifest))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::rollouts::REVISIONS_TRIM.pg)
            .bind(&manifest.manifest.name)
            .bind(oldest_kept)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn manifest_revision(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<StoredManifest>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(sql::rollouts::REVISION_GET.pg)
            .bind(name)
            .bind(big(generation))
            .fetch_optional(&self.pool)
            .await?;
        body.map(|b| from_json(&b, "manifest revision")).transpose()
    }

    async fn manifest_revisions(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<StoredManifest>, StoreError> {
        let bodies: Vec<String> = sqlx::query_scalar(sql::rollouts::REVISIONS.pg)
            .bind(name)
            .bind(big(limit))
            .fetch_all(&self.pool)
            .await?;
        bodies
            .iter()
            .map(|b| from_json(b, "manifest revision"))
            .collect()
    }
}
