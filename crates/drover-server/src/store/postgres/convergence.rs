//! Each node's latest convergence report, in PostgreSQL: `ConvergenceStore`.

use super::*;

#[async_trait]
impl ConvergenceStore for PgStore {
    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Per backend: the stored report's generation read with `->>` here, `json_extract` in SQLite.
        let kept = sqlx::query(
            "INSERT INTO node_convergence (node_id, report) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET report = EXCLUDED.report
             WHERE (node_convergence.report::jsonb ->> 'observed_generation')::numeric
                   <= (EXCLUDED.report::jsonb ->> 'observed_generation')::numeric",
        )
        .bind(node_id)
        .bind(to_json(report))
        .execute(&mut *tx)
        .await?;
        if kept.rows_affected() > 0 {
            // The report's resource states replace the node's (the row lock taken above orders
            // concurrent reports of one node).
            sqlx::query(sql::convergence::CLEAR_RESOURCES.pg)
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
            let r = &report.resources;
            let manifests: Vec<&str> = r.iter().map(|r| r.manifest.as_str()).collect();
            let ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
            let states: Vec<&str> = r.iter().map(|r| r.state.as_str()).collect();
            // Per backend: one statement over arrays; SQLite's writer inserts a row at a time.
            sqlx::query(
                "INSERT INTO node_resources (node_id, pos, manifest, resource, state)
                 SELECT $1, r.pos - 1, r.manifest, r.resource, r.state
                 FROM UNNEST($2::text[], $3::text[], $4::text[])
                      WITH ORDINALITY r(manifest, resource, state, pos)",
            )
            .bind(node_id)
            .bind(&manifests)
            .bind(&ids)
            .bind(&states)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError> {
        let report: Option<String> = sqlx::query_scalar(sql::convergence::GET.pg)
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?;
        report
            .map(|r| from_json(&r, "convergence report"))
            .transpose()
    }

    async fn convergence_of(
        &self,
        ids: Option<&[String]>,
    ) -> Result<Vec<ConvergenceRow>, StoreError> {
        // Per backend: the ids as an array and the generation by `->>`; SQLite reads them with `json_each`
        // and `json_extract`.
        let rows: Vec<(String, String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT n.id, n.name, (d.state::jsonb ->> 'generation')::bigint, v.report FROM nodes n
             LEFT JOIN node_desired d ON d.node_id = n.id
             LEFT JOIN node_convergence v ON v.node_id = n.id
             WHERE $1::text[] IS NULL OR n.id = ANY($1) ORDER BY n.name",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        crate::store::codec::decode_convergence(rows)
    }

    async fn convergence_page(
        &self,
        query: &ConvergenceQuery,
    ) -> Result<ConvergencePage, StoreError> {
        let (rows, total) = pages::convergence_page(&self.pool, query).await?;
        Ok(ConvergencePage { rows, total })
    }
}
