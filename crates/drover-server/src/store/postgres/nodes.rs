//! Nodes: their records, heartbeats and metrics history, in PostgreSQL: `NodeStore`.

use super::*;

#[async_trait]
impl NodeStore for PgStore {
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node;
        let result = sqlx::query(sql::nodes::INSERT.pg)
            .bind(&n.id)
            .bind(&n.name)
            .bind(n.transport.as_str())
            .bind(to_json(&n.labels))
            .bind(&n.ip)
            .bind(n.registered_at)
            .bind(n.last_seen)
            .bind(big(n.heartbeat_interval_ms))
            .bind(to_json(&n.capabilities))
            .bind(n.metrics.as_ref().map(to_json))
            .bind(&n.node_token_sha256)
            .bind(to_json(&n.reported_labels))
            .bind(to_json(&n.enrolled_labels))
            .execute(&self.pool)
            .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name.clone())),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn modify_node(
        &self,
        id: &str,
        change: NodeChange,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row stays locked from this read to the write: nothing changes it in between. Per backend:
        // SQLite has no `FOR UPDATE` (its one writer needs none).
        let row = sqlx::query(concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut n) = row.as_ref().map(decode_node).transpose()? else {
            return Ok(None);
        };
        change(&mut n);
        let result = sqlx::query(sql::nodes::UPDATE.pg)
            .bind(&n.id)
            .bind(&n.name)
            .bind(to_json(&n.labels))
            .bind(&n.ip)
            .bind(big(n.heartbeat_interval_ms))
            .bind(to_json(&n.capabilities))
            .bind(&n.node_token_sha256)
            .bind(to_json(&n.reported_labels))
            .bind(to_json(&n.enrolled_labels))
            .execute(&mut *tx)
            .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit().await?;
                Ok(Some(n))
            }
        }
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(sql::nodes::BY_ID.pg)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_node)
            .transpose()
    }

    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(sql::nodes::BY_NAME.pg)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_node)
            .transpose()
    }

    async fn get_node_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<NodeRecord>, StoreError> {
        sqlx::query(sql::nodes::BY_TOKEN.pg)
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode_node)
            .transpose()
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        sqlx::query(sql::nodes::LIST.pg)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_node)
            .collect()
    }

    async fn list_nodes_page(&self, query: &NodeQuery) -> Result<NodeRecordPage, StoreError> {
        let (nodes, counts) = pages::nodes_page(&self.pool, query).await?;
        Ok(NodeRecordPage { nodes, counts })
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::nodes::DELETE.pg)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        history: MetricsHistory,
    ) -> Result<bool, StoreError> {
        let beat = [(id.to_string(), at, to_json(metrics))];
        Ok(beats(&self.pool, &beat, history).await? > 0)
    }

    async fn record_heartbeats(
        &self,
        list: Vec<Heartbeat>,
        history: MetricsHistory,
    ) -> Result<(), StoreError> {
        if list.is_empty() {
            return Ok(());
        }
        let encoded: Vec<_> = list
            .into_iter()
            .map(|b| (b.node_id, b.at, to_json(&b.metrics)))
            .collect();
        beats(&self.pool, &encoded, history).await?;
        Ok(())
    }

    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError> {
        let rows: Vec<(DateTime<Utc>, String)> = sqlx::query_as(sql::nodes::METRICS_HISTORY.pg)
            .bind(id)
            .bind(big(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut samples = rows
            .into_iter()
            .map(|(at, m)| {
                Ok(MetricsSample {
                    at,
                    metrics: from_json(&m, "metrics sample")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        samples.reverse();
        Ok(samples)
    }
}
