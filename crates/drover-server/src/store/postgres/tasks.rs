//! Tasks and their runs on nodes, in PostgreSQL: `TaskStore`.

use super::*;

#[async_trait]
impl TaskStore for PgStore {
    async fn insert_task(&self, task: &Task) -> Result<(), StoreError> {
        let t = task;
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::tasks::INSERT.pg)
            .bind(&t.id)
            .bind(to_json(&t.target))
            .bind(to_json(&t.spec))
            .bind(&t.created_by)
            .bind(t.created_at)
            .bind(t.max_parallel.map(i64::from))
            .bind(t.signature.as_ref().map(to_json))
            .execute(&mut *tx)
            .await?;
        let nodes: Vec<&str> = t.runs.iter().map(|r| r.node_id.as_str()).collect();
        let runs: Vec<String> = t.runs.iter().map(to_json).collect();
        let finals: Vec<bool> = t.runs.iter().map(|r| r.state.is_final()).collect();
        let states: Vec<&str> = t.runs.iter().map(|r| r.state.as_str()).collect();
        // All runs in one statement, in the task's node order (their `seq` keeps it). Per backend: SQLite's
        // writer inserts a run at a time.
        sqlx::query(
            "INSERT INTO task_runs (task_id, node_id, run, final, state)
             SELECT $1, r.node_id, r.run, r.final, r.state
             FROM unnest($2::text[], $3::text[], $4::boolean[], $5::text[]) WITH ORDINALITY
                  AS r(node_id, run, final, state, ord)
             ORDER BY r.ord",
        )
        .bind(&t.id)
        .bind(&nodes)
        .bind(&runs)
        .bind(&finals)
        .bind(&states)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn transition_runs(
        &self,
        task_id: &str,
        node_ids: Vec<String>,
        from: &'static [RunState],
        patch: RunPatch,
    ) -> Result<Vec<TaskRun>, StoreError> {
        // One statement for every node: `state = ANY(from)` is the guard, so a run moved meanwhile by
        // another writer is left alone; `||` merges the patch's fields into the run's JSON. Per backend:
        // SQLite has neither arrays nor jsonb (`json_each`, `json_patch` there).
        let rows: Vec<(String, String)> = sqlx::query_as(
            "UPDATE task_runs SET run = (run::jsonb || $3::jsonb)::text, state = $4, final = $5
             WHERE task_id = $1 AND node_id = ANY($2) AND state = ANY($6)
             RETURNING node_id, run",
        )
        .bind(task_id)
        .bind(&node_ids)
        .bind(patch_json(&patch))
        .bind(patch.state.as_str())
        .bind(patch.state.is_final())
        .bind(state_names(from))
        .fetch_all(&self.pool)
        .await?;
        runs_in_order_asked(&node_ids, rows)
    }

    async fn record_late_exit(
        &self,
        task_id: &str,
        node_id: &str,
        late: LateExit,
    ) -> Result<Option<TaskRun>, StoreError> {
        let patch = to_json(&serde_json::json!({ "late_exit": late }));
        // Per backend: jsonb operators here, SQLite's JSON functions there.
        let run: Option<String> = sqlx::query_scalar(
            "UPDATE task_runs SET run = (run::jsonb || $3::jsonb)::text
             WHERE task_id = $1 AND node_id = $2 AND (run::jsonb ->> 'late_exit') IS NULL
               AND (state IN ('Lost', 'Unreachable')
                    OR (state = 'Cancelled' AND run::jsonb ->> 'error' = $4))
             RETURNING run",
        )
        .bind(task_id)
        .bind(node_id)
        .bind(patch)
        .bind(crate::store::SERVER_ONLY_CANCEL)
        .fetch_optional(&self.pool)
        .await?;
        run.map(|r| from_json(&r, "task run")).transpose()
    }

    async fn get_run(&self, task_id: &str, node_id: &str) -> Result<Option<TaskRun>, StoreError> {
        let run: Option<String> = sqlx::query_scalar(sql::tasks::RUN.pg)
            .bind(task_id)
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?;
        run.map(|r| from_json(&r, "task run")).transpose()
    }

    async fn runs_in_state(
        &self,
        task_id: &str,
        states: &'static [RunState],
        limit: usize,
    ) -> Result<Vec<TaskRun>, StoreError> {
        // Per backend: the states as an array, the order by `seq`; SQLite inlines them, orders by `rowid`.
        let runs: Vec<String> = sqlx::query_scalar(
            "SELECT run FROM task_runs WHERE task_id = $1 AND state = ANY($2) ORDER BY seq LIMIT $3",
        )
        .bind(task_id)
        .bind(state_names(states))
        .bind(big(limit))
        .fetch_all(&self.pool)
        .await?;
        runs.iter().map(|r| from_json(r, "task run")).collect()
    }

    async fn count_runs(
        &self,
        task_id: &str,
        states: &'static [RunState],
    ) -> Result<usize, StoreError> {
        // Per backend: the states bound as an array here, inlined in SQLite.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task_runs WHERE task_id = $1 AND state = ANY($2)",
        )
        .bind(task_id)
        .bind(state_names(states))
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn open_runs_for_node(&self, node_id: &str) -> Result<Vec<OpenRun>, StoreError> {
        // Per backend: ordered by `seq` here; SQLite reads the runs as its plan finds them.
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT t.id, t.spec, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
             WHERE r.node_id = $1 AND r.state IN ('Pending', 'Running') ORDER BY r.seq",
        )
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(task_id, spec, run)| {
                Ok(OpenRun {
                    task_id,
                    run: from_json(&run, "task run")?,
                    spec: from_json(&spec, "task spec")?,
                })
            })
            .collect()
    }

    async fn open_runs_silent_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<SilentRun>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(sql::tasks::OPEN_RUNS_SILENT_SINCE.pg)
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(task_id, node_id)| SilentRun { task_id, node_id })
            .collect())
    }

    async fn delete_finished_tasks_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let done = sqlx::query(sql::tasks::DELETE_FINISHED_BEFORE.pg)
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        load_task(&self.pool, id).await
    }

    async fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // Per backend: SQLite has no `starts_with`.
        Ok(
            sqlx::query_scalar("SELECT id FROM tasks WHERE starts_with(id, $1) LIMIT $2")
                .bind(prefix)
                .bind(big(limit))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn list_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        // Per backend: PostgreSQL's insertion order is `seq`, SQLite's its `rowid`.
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM tasks ORDER BY created_at DESC, seq DESC LIMIT $1")
                .bind(big(limit))
                .fetch_all(&self.pool)
                .await?;
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            tasks.extend(load_task(&self.pool, &id).await?);
        }
        Ok(tasks)
    }

    async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
        pages::task_summaries(&self.pool, limit).await
    }

    async fn task_page(&self, id: &str, query: &RunQuery) -> Result<Option<TaskPage>, StoreError> {
        pages::task_page(&self.pool, id, query).await
    }

    async fn node_task_runs(
        &self,
        node_id: &str,
        limit: usize,
    ) -> Result<Vec<NodeTaskRun>, StoreError> {
        pages::node_task_runs(&self.pool, node_id, limit).await
    }
}
