//! Nodes: their records, heartbeats and metrics history, in SQLite: `NodeStore`.

use super::*;

#[async_trait]
impl NodeStore for SqliteStore {
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let n = node.clone();
        self.write(move |c| {
            let result = exec(c,
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
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
            let Some(mut n) = row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
                [&id],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()?
            else {
                return Ok(None);
            };
            change(&mut n);
            let result = exec(
                c,
                "UPDATE nodes SET name = ?2, labels = ?3, ip = ?4, heartbeat_interval_ms = ?5,
                 capabilities = ?6, node_token_sha256 = ?7, reported_labels = ?8, enrolled_labels = ?9
                 WHERE id = ?1",
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
            row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
                [id],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()
        })
        .await
    }

    async fn get_node_by_name(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?1"),
                [name],
                raw_node,
            )
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
            row(
                c,
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE node_token_sha256 = ?1"),
                [sha],
                raw_node,
            )
            .optional()?
            .map(RawNode::decode)
            .transpose()
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"))?;
            let raws = stmt
                .query_map([], raw_node)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(RawNode::decode).collect()
        })
        .await
    }

    async fn list_nodes_page(
        &self,
        query: &NodeQuery,
    ) -> Result<(Vec<NodeRecord>, NodeCounts), StoreError> {
        let q = query.clone();
        self.read(move |c| pages::nodes_page(c, &q)).await
    }

    async fn delete_node(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| Ok(exec(c, "DELETE FROM nodes WHERE id = ?1", [id])? > 0))
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
        beats: Vec<(String, DateTime<Utc>, Metrics)>,
        history: MetricsHistory,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            for (id, at, metrics) in &beats {
                beat(c, id, *at, &to_json(metrics), history)?;
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
            let mut stmt = c.prepare(
                "SELECT at, metrics FROM metrics_history WHERE node_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
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
