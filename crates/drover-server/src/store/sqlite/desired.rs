//! Each node's desired state, computed from the manifests that select it, in SQLite: `DesiredStore`.

use super::*;

#[async_trait]
impl DesiredStore for SqliteStore {
    async fn get_desired(&self, node_id: &str) -> Result<Option<StoredDesired>, StoreError> {
        let id = node_id.to_string();
        self.read(move |c| {
            let row: Option<(String, String)> = row(c, sql::desired::GET.sqlite, [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
            row.map(|(s, hash)| {
                Ok(StoredDesired {
                    state: from_json(&s, "desired state")?,
                    hash,
                })
            })
            .transpose()
        })
        .await
    }

    async fn desired_names_blob(&self, node_id: &str, sha256: &str) -> Result<bool, StoreError> {
        let (id, sha) = (node_id.to_string(), sha256.to_string());
        self.read(move |c| {
            // Per backend: SQLite's JSON functions, PostgreSQL's jsonb containment.
            Ok(row(
                c,
                "SELECT EXISTS (SELECT 1 FROM node_desired d, json_each(d.state, '$.resources') r
                  WHERE d.node_id = ?1 AND json_extract(r.value, '$.file.sha256') = ?2)",
                [id, sha],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn desired_versions(&self) -> Result<Vec<DesiredVersion>, StoreError> {
        self.read(|c| {
            // Per backend: `json_extract` here, `->>` there.
            let mut stmt = c.prepare_cached(
                "SELECT node_id, json_extract(state, '$.generation'), hash FROM node_desired",
            )?;
            let rows = stmt.query_map([], |r| {
                // A generation that is not an integer reads as none (see `codec::generation`).
                let generation = r.get::<_, Option<i64>>(1).ok().flatten();
                Ok(DesiredVersion {
                    node_id: r.get(0)?,
                    generation: crate::store::codec::generation(generation),
                    hash: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let (id, json, hash) = (node_id.to_string(), to_json(state), hash.to_string());
        let previous = state.generation.saturating_sub(1) as i64;
        self.write(move |c| {
            let n = if previous == 0 {
                exec(c, sql::desired::CREATE.sqlite, params![id, json, hash])?
            } else {
                // Per backend: the stored generation read with `json_extract` here, `->>` there.
                exec(
                    c,
                    "UPDATE node_desired SET state = ?2, hash = ?3
                     WHERE node_id = ?1 AND json_extract(state, '$.generation') = ?4",
                    params![id, json, hash, previous],
                )?
            };
            Ok(n > 0)
        })
        .await
    }
}
