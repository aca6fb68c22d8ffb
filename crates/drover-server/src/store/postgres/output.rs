//! Tasks' output, as chunks per node, and its retention, in PostgreSQL: `OutputStore`.

use super::*;

#[async_trait]
impl OutputStore for PgStore {
    async fn insert_output(
        &self,
        task_id: &str,
        chunks: Vec<OutputRecord>,
    ) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let nodes: Vec<&str> = chunks.iter().map(|c| c.node_id.as_str()).collect();
        let seqs: Vec<i64> = chunks.iter().map(|c| big(c.seq)).collect();
        let streams: Vec<i64> = chunks.iter().map(|c| i64::from(c.stream)).collect();
        let data: Vec<&[u8]> = chunks.iter().map(|c| c.data.as_slice()).collect();
        let mut tx = self.pool.begin().await?;
        // Readers page through a task's output by `row`: holding this lock from taking rows to commit
        // makes a task's rows visible in row order, so a reader's cursor never passes one still uncommitted.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_OUTPUT)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        // Per backend: one statement over arrays; SQLite's writer inserts a chunk at a time.
        sqlx::query(
            "INSERT INTO task_output (task_id, node_id, seq, stream, data)
             SELECT $1, c.node_id, c.seq, c.stream, c.data
             FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bytea[]) WITH ORDINALITY
                  AS c(node_id, seq, stream, data, ord)
             ORDER BY c.ord
             ON CONFLICT (task_id, node_id, seq) DO NOTHING",
        )
        .bind(task_id)
        .bind(&nodes)
        .bind(&seqs)
        .bind(&streams)
        .bind(&data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn output(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        let rows: Vec<OutputRow> = sqlx::query_as(sql::output::AFTER.pg)
            .bind(task_id)
            .bind(after)
            .bind(big(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(output_records(rows))
    }

    async fn output_within(
        &self,
        task_id: &str,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredOutput>, StoreError> {
        // Sizes first (octet_length reads a stored value's header, not the value), then only the rows that
        // start within the budget. Per backend: SQLite steps `AFTER`'s rows and stops at the budget.
        let rows: Vec<OutputRow> = sqlx::query_as(
            "SELECT o.row, o.node_id, o.seq, o.stream, o.data FROM task_output o
             JOIN (SELECT row, sum(octet_length(data)) OVER (ORDER BY row) - octet_length(data) AS before
                   FROM task_output WHERE task_id = $1 AND row > $2 ORDER BY row LIMIT $3) w
               ON w.row = o.row
             WHERE w.before < $4
             ORDER BY o.row",
        )
        .bind(task_id)
        .bind(after)
        .bind(big(limit))
        .bind(big(max_bytes.max(1)))
        .fetch_all(&self.pool)
        .await?;
        Ok(output_records(rows))
    }

    async fn stored_seq(&self, task_id: &str, node_id: &str) -> Result<u64, StoreError> {
        let max: Option<i64> = sqlx::query_scalar(sql::output::MAX_SEQ.pg)
            .bind(task_id)
            .bind(node_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(max.map(|m| unsigned(m).saturating_add(1)).unwrap_or(0))
    }

    async fn trim_output(&self, max_bytes: u64) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Per backend: sizes by `octet_length` (`length` in SQLite), ties broken by `seq`, and the trimmed
        // tasks' output deleted in one statement over an array.
        let total: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(octet_length(data)), 0)::bigint FROM task_output",
        )
        .fetch_one(&mut *tx)
        .await?;
        let mut excess = unsigned(total).saturating_sub(max_bytes);
        if excess == 0 {
            return Ok(0);
        }
        let sizes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.id, (SELECT coalesce(sum(octet_length(o.data)), 0)::bigint FROM task_output o WHERE o.task_id = t.id)
             FROM tasks t WHERE NOT EXISTS
               (SELECT 1 FROM task_runs r WHERE r.task_id = t.id AND r.state IN ('Pending', 'Running'))
             ORDER BY t.created_at, t.seq",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut trimmed = Vec::new();
        for (id, size) in sizes {
            if excess == 0 {
                break;
            }
            if size <= 0 {
                continue;
            }
            excess = excess.saturating_sub(unsigned(size));
            trimmed.push(id);
        }
        sqlx::query("DELETE FROM task_output WHERE task_id = ANY($1)")
            .bind(&trimmed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(trimmed.len())
    }
}

/// `SELECT row, node_id, seq, stream, data FROM task_output`, as read.
type OutputRow = (i64, String, i64, i64, Vec<u8>);

fn output_records(rows: Vec<OutputRow>) -> Vec<StoredOutput> {
    rows.into_iter()
        .map(|(row, node_id, seq, stream, data)| StoredOutput {
            row,
            record: OutputRecord {
                node_id,
                seq: unsigned(seq),
                stream: u8::try_from(stream).unwrap_or(u8::MAX),
                data,
            },
        })
        .collect()
}
