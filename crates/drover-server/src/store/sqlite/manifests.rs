//! Manifests and how far nodes have converged on each, in SQLite: `ManifestStore`.

use super::*;

#[async_trait]
impl ManifestStore for SqliteStore {
    async fn put_manifest(
        &self,
        manifest: &Manifest,
        signature: Option<&Signature>,
        now: DateTime<Utc>,
    ) -> Result<PutManifest, StoreError> {
        let (m, json) = (manifest.clone(), to_json(manifest));
        let sig = signature.map(to_json);
        self.write(move |c| {
            let tx = c;
            let current: Option<(i64, String, Option<String>, Option<i64>)> =
                row(tx, sql::manifests::CURRENT.sqlite, [&m.name], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let current = current
                .as_ref()
                .map(|(g, old, old_sig, signed)| CurrentManifest {
                    generation: u64::try_from(*g).unwrap_or(0),
                    json: old.as_str(),
                    sig: old_sig.as_deref(),
                    signed_version: signed.and_then(|v| u64::try_from(v).ok()),
                });
            let put = manifest_put(current, &m, &json, sig.as_deref())?;
            if put.changed || put.resigned {
                let signed_version = put.signed_version.and_then(|v| i64::try_from(v).ok());
                exec(
                    tx,
                    sql::manifests::PUT.sqlite,
                    params![
                        m.name,
                        put.generation as i64,
                        json,
                        now,
                        sig,
                        signed_version
                    ],
                )?;
            }
            Ok(put)
        })
        .await
    }

    async fn list_manifests(&self) -> Result<Vec<StoredManifest>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(sql::manifests::LIST.sqlite)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, DateTime<Utc>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(g, m, at, sig)| {
                    Ok(StoredManifest {
                        generation: g as u64,
                        updated_at: at,
                        manifest: from_json(&m, "manifest")?,
                        signature: sig
                            .map(|s| from_json(&s, "manifest signature"))
                            .transpose()?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_manifest(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| Ok(exec(c, sql::manifests::DELETE.sqlite, [name])? > 0))
            .await
    }

    async fn manifest_counts(&self) -> Result<Vec<ManifestCounts>, StoreError> {
        self.read(convergence::manifest_counts).await
    }
}
