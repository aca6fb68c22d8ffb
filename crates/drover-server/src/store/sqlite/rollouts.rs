//! Rollouts and manifest revisions, in SQLite: `RolloutStore`.

use super::*;

#[async_trait]
impl RolloutStore for SqliteStore {
    async fn put_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        let (name, body) = (rollout.manifest.clone(), to_json(rollout));
        self.write(move |c| {
            exec(c, sql::rollouts::PUT.sqlite, params![name, body])?;
            Ok(())
        })
        .await
    }

    async fn get_rollout(&self, manifest: &str) -> Result<Option<Rollout>, StoreError> {
        let name = manifest.to_string();
        self.read(move |c| {
            let body: Option<String> =
                row(c, sql::rollouts::GET.sqlite, [name], |r| r.get(0)).optional()?;
            body.map(|b| from_json(&b, "rollout")).transpose()
        })
        .await
    }

    async fn list_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(sql::rollouts::LIST.sqlite)?;
            let bodies = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies.iter().map(|b| from_json(b, "rollout")).collect()
        })
        .await
    }

    async fn delete_rollout(&self, manifest: &str) -> Result<bool, StoreError> {
        let name = manifest.to_string();
        self.write(move |c| Ok(exec(c, sql::rollouts::DELETE.sqlite, [name])? > 0))
            .await
    }

    async fn put_manifest_revision(
        &self,
        manifest: &StoredManifest,
        keep: usize,
    ) -> Result<(), StoreError> {
        let name = manifest.manifest.name.clone();
        let generation = manifest.generation as i64;
        let body = to_json(manifest);
        let oldest_kept = generation.saturating_sub(keep as i64 - 1);
        self.write(move |c| {
            exec(
                c,
                sql::rollouts::REVISION_PUT.sqlite,
                params![name, generation, body],
            )?;
            exec(
                c,
                sql::rollouts::REVISIONS_TRIM.sqlite,
                params![name, oldest_kept],
            )?;
            Ok(())
        })
        .await
    }

    async fn manifest_revision(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<Option<StoredManifest>, StoreError> {
        let (name, generation) = (name.to_string(), generation as i64);
        self.read(move |c| {
            let body: Option<String> = row(
                c,
                sql::rollouts::REVISION_GET.sqlite,
                params![name, generation],
                |r| r.get(0),
            )
            .optional()?;
            body.map(|b| from_json(&b, "manifest revision")).transpose()
        })
        .await
    }

    async fn manifest_revisions(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<StoredManifest>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(sql::rollouts::REVISIONS.sqlite)?;
            let bodies = stmt
                .query_map(params![name, limit as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies
                .iter()
                .map(|b| from_json(b, "manifest revision"))
                .collect()
        })
        .await
    }
}
