//! Nodes: their records, heartbeats and metrics history, in SQLite: `NodeStore`.

use super::*;

#[async_trait]
impl NodeStore for SqliteStore {
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node.clone();
        self.write(move |c| {
            let result = exec(
                c,
                sql::nodes::INSERT.sqlite,
                params![
                    n.id,
                    n.name,
                    n.transport.as_str(),
                    to_json(&n.labels),
                    n.ip,
                    ts(n.registered_at),
                    n.last_seen.map(ts),
                    n.heartbeat_interval_ms as i64,
                    to_json(&n.capabilities),
                    n.metrics.as_ref().map(to_json),
                    n.node_token_sha256,
                    to_json(&n.reported_labels),
                    to_json(&n.enrolled_labels)
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
                other => other.map(|_| ()).map_err(Into::into),
            }
        })
        .await
    }

    async fn modify_node(
        &self,
        id: &str,
        change: NodeChange,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            // The one writer reads and writes with nothing in between: no row lock to take, where
            // PostgreSQL's reads `FOR UPDATE`.
            let Some(mut n) = row(c, sql::nodes::BY_ID.sqlite, [&id], raw_node)
                .optional()?
                .map(RawNode::decode)
                .transpose()?
            else {
                return Ok(None);
            };
            change(&mut n);
            let result = exec(
                c,
                sql::nodes::UPDATE.sqlite,
                params![
                    n.id,
                    n.name,
                    to_json(&n.labels),
                    n.ip,
                    n.heartbeat_interval_ms as i64,
                    to_json(&n.capabilities),
                    n.node_token_sha256,
                    to_json(&n.reported_labels),
                    to_json(&n.enrolled_labels)
                ],
            );
            match result {
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(n.name)),
                other => other.map(|_| Some(n)).map_err(Into::into),
            }
        })
        .await
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            row(c, sql::nodes::BY_ID.sqlite, [id], raw_node)
                .optional()?
                .map(RawNode::decode)
                .transpose()
        })
        .await
    }

    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            row(c, sql::nodes::BY_NAME.sqlite, [name], raw_node)
                .optional()?
                .map(RawNode::decode)
                .transpose()
        })
        .await
    }

    async fn get_node_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<NodeRecord>, StoreError> {
        let sha = token_sha256.to_string();
        self.read(move |c| {
            row(c, sql::nodes::BY_TOKEN.sqlite, [sha], raw_node)
                .optional()?
                .map(RawNode::decode)
                .transpose()
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(sql::nodes::LIST.sqlite)?;
            let raws = stmt
                .query_map([], raw_node)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(RawNode::decode).collect()
        })
        .await
    }

    async fn list_nodes_page(&self, query: &NodeQuery) -> Result<NodeRecordPage, StoreError> {
        let q = query.clone();
        let (nodes, counts) = self.read(move |c| pages::nodes_page(c, &q)).await?;
        Ok(NodeRecordPage { nodes, counts })
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| Ok(exec(c, sql::nodes::DELETE.sqlite, [id])? > 0))
            .await
    }

    async fn record_heartbeat(
        &self,
        id: &str,
        at: DateTime<Utc>,
        metrics: &Metrics,
        history: MetricsHistory,
    ) -> Result<bool, StoreError> {
        let (id, json) = (id.to_string(), to_json(metrics));
        self.write(move |c| beat(c, &id, at, &json, history)).await
    }

    async fn record_heartbeats(
        &self,
        beats: Vec<Heartbeat>,
        history: MetricsHistory,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            for b in &beats {
                beat(c, &b.node_id, b.at, &to_json(&b.metrics), history)?;
            }
            Ok(())
        })
        .await
    }

    async fn metrics_history(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MetricsSample>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(sql::nodes::METRICS_HISTORY.sqlite)?;
            let rows = stmt
                .query_map(params![id, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut samples = rows
                .into_iter()
                .map(|(at, m)| {
                    Ok(MetricsSample {
                        at: parse_ts(&at, "metrics time")?,
                        metrics: from_json(&m, "metrics sample")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            samples.reverse();
            Ok(samples)
        })
        .await
    }
}
