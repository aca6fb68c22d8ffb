//! Manifests' standing in SQLite, read as aggregates and pages: the statements behind `manifest_counts`
//! and `convergence_page`. Reports are kept whole (JSON) per node, and their resources' states beside them
//! (`node_resources`, written with the report), which the counts and filters read through its indexes.

use drover_types::manifest::RESOURCE_STATES;
use rusqlite::params_from_iter;
use rusqlite::types::Value;

use super::*;
use crate::store::codec::{
    ConvergenceText, count, decode_convergence, group_manifest_counts, rank_sql,
};
use crate::store::{ConvergenceQuery, ConvergenceRow};

/// Replaces a node's resource states with those of its newly kept report: (manifest, resource id, state).
pub(super) fn put_resources(
    c: &Connection,
    node_id: &str,
    resources: &[(String, String, &str)],
) -> Result<(), StoreError> {
    c.prepare_cached(sql::convergence::CLEAR_RESOURCES.sqlite)?
        .execute([node_id])?;
    // Per backend: a row at a time in the writer; PostgreSQL inserts them all from arrays.
    let mut insert = c.prepare_cached(
        "INSERT INTO node_resources (node_id, pos, manifest, resource, state) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (pos, (manifest, resource, state)) in resources.iter().enumerate() {
        let pos = i64::try_from(pos).unwrap_or(i64::MAX);
        insert.execute(params![node_id, pos, manifest, resource, state])?;
    }
    Ok(())
}

pub(super) fn manifest_counts(c: &Connection) -> Result<Vec<ManifestCounts>, StoreError> {
    let mut stmt = c.prepare_cached(&sql::manifests::COUNTS)?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let rows = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(group_manifest_counts(rows))
}

fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn convergence_page(
    c: &Connection,
    q: &ConvergenceQuery,
) -> Result<(Vec<ConvergenceRow>, usize), StoreError> {
    // Per backend: SQLite's `json_extract`, PostgreSQL's `->>` and its typed NULL tests (`$1::text`).
    const COLUMNS: &str = "n.id, n.name, json_extract(d.state, '$.generation'), v.report";
    const JOINS: &str = "LEFT JOIN node_desired d ON d.node_id = n.id
                         LEFT JOIN node_convergence v ON v.node_id = n.id";
    let (limit, offset) = (sql_int(q.limit), sql_int(q.offset));
    if q.manifest.is_none() && q.state.is_none() {
        // Every node, reported or not: a page read by name.
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM nodes n {JOINS} ORDER BY n.name LIMIT ?1 OFFSET ?2"
        ))?;
        let rows = stmt
            .query_map([limit, offset], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<Vec<ConvergenceText>, _>>()?;
        let total: i64 = c.query_row("SELECT COUNT(*) FROM nodes", [], |r| r.get(0))?;
        return Ok((decode_convergence(rows)?, count(total)));
    }
    // Nodes reporting resources (of the manifest, when one is named: a range of the manifest's index),
    // each with its worst state; they are selected once (materialized) for both the count and the page,
    // and only the page's rows carry their report and desired generation (the outer join keeps one row
    // for the count past the last page).
    let of_manifest = if q.manifest.is_some() {
        "WHERE manifest = ?1"
    } else {
        "WHERE ?1 IS NULL"
    };
    let sql = format!(
        "WITH sel AS MATERIALIZED (
            SELECT node_id AS id, MAX({rank}) AS worst FROM node_resources {of_manifest}
            GROUP BY node_id),
         matched AS MATERIALIZED (
            SELECT sel.id AS id, n.name AS name FROM sel JOIN nodes n ON n.id = sel.id
            WHERE ?2 IS NULL OR sel.worst = ?2)
         SELECT (SELECT COUNT(*) FROM matched), p.id, p.name, json_extract(d.state, '$.generation'), v.report
         FROM (SELECT 1) LEFT JOIN (SELECT id, name FROM matched ORDER BY name LIMIT ?3 OFFSET ?4) p
         LEFT JOIN node_desired d ON d.node_id = p.id
         LEFT JOIN node_convergence v ON v.node_id = p.id
         ORDER BY p.name",
        rank = rank_sql()
    );
    let rank = q
        .state
        .and_then(|s| RESOURCE_STATES.iter().position(|r| *r == s))
        .map(|i| i64::try_from(i).unwrap_or(0));
    let values = [
        q.manifest.clone().map(Value::Text).unwrap_or(Value::Null),
        rank.map(Value::Integer).unwrap_or(Value::Null),
        Value::Integer(limit),
        Value::Integer(offset),
    ];
    let mut stmt = c.prepare_cached(&sql)?;
    let mut total = 0i64;
    let mut rows: Vec<ConvergenceText> = Vec::new();
    let found = stmt.query_map(params_from_iter(values.iter()), |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in found {
        let (n, id, name, generation, report) = row?;
        total = n;
        if let (Some(id), Some(name)) = (id, name) {
            rows.push((id, name, generation, report));
        }
    }
    Ok((decode_convergence(rows)?, count(total)))
}

#[async_trait]
impl ConvergenceStore for SqliteStore {
    async fn put_convergence(
        &self,
        node_id: &str,
        report: &NodeConvergence,
    ) -> Result<(), StoreError> {
        let (id, json) = (node_id.to_string(), to_json(report));
        let resources: Vec<_> = report
            .resources
            .iter()
            .map(|r| (r.manifest.clone(), r.id.clone(), r.state.as_str()))
            .collect();
        self.write(move |c| {
            // Per backend: the stored report's generation read with `json_extract` here, `->>` there.
            let kept = exec(c,
                "INSERT INTO node_convergence (node_id, report) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET report = ?2
                 WHERE json_extract(report, '$.observed_generation') <= json_extract(?2, '$.observed_generation')",
                params![id, json],
            )?;
            if kept > 0 {
                convergence::put_resources(c, &id, &resources)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_convergence(&self, node_id: &str) -> Result<Option<NodeConvergence>, StoreError> {
        let id = node_id.to_string();
        self.read(move |c| {
            let row: Option<String> =
                row(c, sql::convergence::GET.sqlite, [id], |r| r.get(0)).optional()?;
            row.map(|r| from_json(&r, "convergence report")).transpose()
        })
        .await
    }

    async fn convergence_of(
        &self,
        ids: Option<&[String]>,
    ) -> Result<Vec<ConvergenceRow>, StoreError> {
        let ids = ids.map(|ids| serde_json::to_string(ids).unwrap_or_default());
        self.read(move |c| {
            // Two statements, so the one for a few nodes looks each up by its key. Per backend: SQLite
            // reads the ids from JSON (`json_each`), PostgreSQL from an array.
            let mut stmt = c.prepare_cached(&format!(
                "SELECT n.id, n.name, json_extract(d.state, '$.generation'), v.report FROM nodes n
                 LEFT JOIN node_desired d ON d.node_id = n.id
                 LEFT JOIN node_convergence v ON v.node_id = n.id {} ORDER BY n.name",
                if ids.is_some() {
                    "WHERE n.id IN (SELECT value FROM json_each(?1))"
                } else {
                    "WHERE ?1 IS NULL"
                }
            ))?;
            let rows = stmt
                .query_map([ids], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            crate::store::codec::decode_convergence(rows)
        })
        .await
    }

    async fn convergence_page(
        &self,
        query: &ConvergenceQuery,
    ) -> Result<ConvergencePage, StoreError> {
        let query = query.clone();
        let (rows, total) = self
            .read(move |c| convergence::convergence_page(c, &query))
            .await?;
        Ok(ConvergencePage { rows, total })
    }
}
