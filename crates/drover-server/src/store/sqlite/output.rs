//! Tasks' output, as chunks per node, and its retention, in SQLite: `OutputStore`.

use super::*;

#[async_trait]
impl OutputStore for SqliteStore {
    async fn insert_output(
        &self,
        task_id: &str,
        chunks: Vec<OutputRecord>,
    ) -> Result<(), StoreError> {
        let id = task_id.to_string();
        self.write(move |c| {
            let tx = c;
            {
                // Per backend: a chunk at a time in the writer; PostgreSQL inserts the batch from arrays.
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO task_output (task_id, node_id, seq, stream, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for ch in &chunks {
                    stmt.execute(params![id, ch.node_id, ch.seq as i64, ch.stream, ch.data])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn output(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        let id = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::output::AFTER.sqlite)?;
            let rows = stmt
                .query_map(params![id, after, limit as i64], output_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn output_within(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        let id = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::output::AFTER.sqlite)?;
            // Stepped row by row: rows past the byte budget are never read (PostgreSQL, whose rows come
            // whole, weighs them in its statement instead).
            let mut rows = stmt.query(params![id, after, limit as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while bytes < max_bytes.max(1)
                && let Some(r) = rows.next()?
            {
                let row = output_row(r)?;
                bytes += row.record.data.len();
                out.push(row);
            }
            Ok(out)
        })
        .await
    }

    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        self.write(move |c| {
            let max: Option<i64> =
                row(c, sql::output::MAX_SEQ.sqlite, params![t, n], |r| r.get(0))?;
            Ok(max.map(|m| m as u64 + 1).unwrap_or(0))
        })
        .await
    }

    async fn trim_output(&self, max_bytes: u64) -> Result<usize, StoreError> {
        self.write(move |c| {
            // Per backend: sizes by `length` (a blob's bytes); PostgreSQL spells it `octet_length`, breaks
            // ties by `seq` and deletes the trimmed tasks' output in one statement over an array.
            let total: i64 =
                row(c, "SELECT coalesce(sum(length(data)), 0) FROM task_output", [], |r| {
                    r.get(0)
                })?;
            let mut excess = (total.max(0) as u64).saturating_sub(max_bytes);
            if excess == 0 {
                return Ok(0);
            }
            let mut stmt = c.prepare(
                "SELECT t.id, (SELECT coalesce(sum(length(o.data)), 0) FROM task_output o WHERE o.task_id = t.id)
                 FROM tasks t WHERE NOT EXISTS
                   (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.state IN ('Pending', 'Running'))
                 ORDER BY t.created_at",
            )?;
            let sizes = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut trimmed = 0;
            for (id, size) in sizes {
                if excess == 0 {
                    break;
                }
                if size <= 0 {
                    continue;
                }
                exec(c, "DELETE FROM task_output WHERE task_id = ?1", [&id])?;
                excess = excess.saturating_sub(size as u64);
                trimmed += 1;
            }
            Ok(trimmed)
        })
        .await
    }
}

/// One row of `SELECT row, node_id, seq, stream, data FROM task_output`.
fn output_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredOutput> {
    Ok(StoredOutput {
        row: r.get(0)?,
        record: OutputRecord {
            node_id: r.get(1)?,
            seq: r.get::<_, i64>(2)? as u64,
            stream: r.get(3)?,
            data: r.get(4)?,
        },
    })
}
