//! Manifests and how far nodes have converged on each, in PostgreSQL: `ManifestStore`.

use super::*;

#[async_trait]
impl ManifestStore for PgStore {
    async fn put_manifest(
        &self,
        manifest: &Manifest,
        signature: Option<&Signature>,
        now: DateTime<Utc>,
    ) -> Result<PutManifest, StoreError> {
        let (m, json) = (manifest, to_json(manifest));
        let sig = signature.map(to_json);
        let mut tx = self.pool.begin().await?;
        // One writer per name (a new name has no row to lock yet).
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_MANIFEST)
            .bind(&m.name)
            .execute(&mut *tx)
            .await?;
        let current: Option<(i64, String, Option<String>, Option<i64>)> =
            sqlx::query_as(sql::manifests::CURRENT.pg)
                .bind(&m.name)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current
            .as_ref()
            .map(|(g, old, old_sig, signed)| CurrentManifest {
                generation: unsigned(*g),
                json: old.as_str(),
                sig: old_sig.as_deref(),
                signed_version: signed.map(unsigned),
            });
        let put = manifest_put(current, m, &json, sig.as_deref())?;
        if put.changed || put.resigned {
            sqlx::query(sql::manifests::PUT.pg)
                .bind(&m.name)
                .bind(big(put.generation))
                .bind(&json)
                .bind(now)
                .bind(&sig)
                .bind(put.signed_version.map(big))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(put)
    }

    async fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        let rows: Vec<(i64, String, DateTime<Utc>, Option<String>)> =
            sqlx::query_as(sql::manifests::LIST.pg)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(g, m, at, sig)| {
                Ok(StoredManifest {
                    generation: unsigned(g),
                    updated_at: at,
                    manifest: from_json(&m, "manifest")?,
                    signature: sig
                        .map(|s| from_json(&s, "manifest signature"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn delete_manifest(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::manifests::DELETE.pg)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, StoreError> {
        pages::manifest_counts(&self.pool).await
    }
}
