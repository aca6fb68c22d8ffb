//! Each node's desired state, computed from the manifests that select it, in PostgreSQL: `DesiredStore`.

use super::*;

#[async_trait]
impl DesiredStore for PgStore {
    async fn get_desired(&self, node_id: &str) -> Result<Option<StoredDesired>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(sql::desired::GET.pg)
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|(s, hash)| {
            Ok(StoredDesired {
                state: from_json(&s, "desired state")?,
                hash,
            })
        })
        .transpose()
    }

    async fn desired_names_blob(&self, node_id: &str, sha256: &str) -> Result<bool, StoreError> {
        // jsonb containment: some element of `resources` has `file.sha256` equal to the content's. Per
        // backend: SQLite reads it with its JSON functions.
        let wanted = serde_json::json!({ "resources": [{ "file": { "sha256": sha256 } }] });
        let (named,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM node_desired WHERE node_id = $1 AND state::jsonb @> $2::jsonb)",
        )
        .bind(node_id)
        .bind(wanted.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(named)
    }

    async fn desired_versions(&self) -> Result<Vec<DesiredVersion>, StoreError> {
        // Per backend: `->>` here, `json_extract` in SQLite.
        let rows: Vec<(String, Option<i64>, String)> = sqlx::query_as(
            "SELECT node_id, (state::jsonb ->> 'generation')::bigint, hash FROM node_desired",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(node_id, g, hash)| DesiredVersion {
                node_id,
                generation: crate::store::codec::generation(g),
                hash,
            })
            .collect())
    }

    async fn put_desired(
        &self,
        node_id: &str,
        state: &DesiredState,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let json = to_json(state);
        let previous = big(state.generation.saturating_sub(1));
        let done = if previous == 0 {
            sqlx::query(sql::desired::CREATE.pg)
                .bind(node_id)
                .bind(&json)
                .bind(hash)
                .execute(&self.pool)
                .await?
        } else {
            // Per backend: the stored generation read with `->>` here, `json_extract` in SQLite.
            sqlx::query(
                "UPDATE node_desired SET state = $2, hash = $3
                 WHERE node_id = $1 AND (state::jsonb ->> 'generation')::numeric = $4",
            )
            .bind(node_id)
            .bind(&json)
            .bind(hash)
            .bind(previous)
            .execute(&self.pool)
            .await?
        };
        Ok(done.rows_affected() > 0)
    }
}
