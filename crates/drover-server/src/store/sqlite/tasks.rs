//! Tasks and their runs on nodes, in SQLite: `TaskStore`.

use super::*;

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert_task(&self, task: &Task) -> Result<(), StoreError> {
        let t = task.clone();
        self.write(move |c| {
            let tx = c;
            exec(tx,
                "INSERT INTO tasks (id, target, spec, created_by, created_at, max_parallel, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.id, to_json(&t.target), to_json(&t.spec), t.created_by, t.created_at, t.max_parallel, t.signature.as_ref().map(to_json)],
            )?;
            for run in &t.runs {
                exec(tx,
                    "INSERT INTO task_runs (task_id, node_id, run, final, state) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t.id, run.node_id, to_json(run), run.state.is_final(), run.state.as_str()],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn transition_runs(
        &self,
        task_id: &str,
        node_ids: Vec<String>,
        from: &'static [RunState],
        patch: RunPatch,
    ) -> Result<Vec<TaskRun>, StoreError> {
        let id = task_id.to_string();
        let changes = patch_json(&patch);
        self.write(move |c| {
            // One statement for the batch: the guard is `state IN (from)`, so a run moved meanwhile is left
            // alone.
            let mut stmt = c.prepare_cached(&format!(
                "UPDATE task_runs SET run = json_patch(run, ?3), state = ?4, final = ?5
                 WHERE task_id = ?1 AND node_id IN (SELECT value FROM json_each(?2))
                   AND state IN ({}) RETURNING node_id, run",
                state_list(from)
            ))?;
            let rows = stmt
                .query_map(
                    params![
                        id,
                        to_json(&node_ids),
                        changes,
                        patch.state.as_str(),
                        patch.state.is_final()
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            runs_in_order_asked(&node_ids, rows)
        })
        .await
    }

    async fn record_late_exit(
        &self,
        task_id: &str,
        node_id: &str,
        late: LateExit,
    ) -> Result<Option<TaskRun>, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        let patch = to_json(&serde_json::json!({ "late_exit": late }));
        self.write(move |c| {
            let run: Option<String> = row(c,
                    &format!(
                        "UPDATE task_runs SET run = json_patch(run, ?3)
                         WHERE task_id = ?1 AND node_id = ?2 AND json_extract(run, '$.late_exit') IS NULL
                           AND (state IN ('Lost', 'Unreachable')
                                OR (state = 'Cancelled' AND json_extract(run, '$.error') = '{}'))
                         RETURNING run",
                        crate::store::SERVER_ONLY_CANCEL
                    ),
                    params![t, n, patch],
                    |r| r.get(0),
                )
                .optional()?;
            run.map(|r| from_json(&r, "task run")).transpose()
        })
        .await
    }

    async fn get_run(&self, task_id: &str, node_id: &str) -> Result<Option<TaskRun>, StoreError> {
        let (t, n) = (task_id.to_string(), node_id.to_string());
        self.read(move |c| {
            let run: Option<String> = row(
                c,
                "SELECT run FROM task_runs WHERE task_id = ?1 AND node_id = ?2",
                params![t, n],
                |r| r.get(0),
            )
            .optional()?;
            run.map(|r| from_json(&r, "task run")).transpose()
        })
        .await
    }

    async fn runs_in_state(
        &self,
        task_id: &str,
        states: &'static [RunState],
        limit: usize,
    ) -> Result<Vec<TaskRun>, StoreError> {
        let t = task_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT run FROM task_runs WHERE task_id = ?1 AND state IN ({}) ORDER BY rowid LIMIT ?2",
                state_list(states)
            ))?;
            let runs = stmt
                .query_map(params![t, limit.min(i64::MAX as usize) as i64], |r| {
                    r.get::<_, String>(0)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            runs.iter().map(|r| from_json(r, "task run")).collect()
        })
        .await
    }

    async fn count_runs(
        &self,
        task_id: &str,
        states: &'static [RunState],
    ) -> Result<usize, StoreError> {
        let t = task_id.to_string();
        self.read(move |c| {
            let n: i64 = row(
                c,
                &format!(
                    "SELECT count(*) FROM task_runs WHERE task_id = ?1 AND state IN ({})",
                    state_list(states)
                ),
                [t],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as usize)
        })
        .await
    }

    async fn open_runs_for_node(&self, node_id: &str) -> Result<Vec<OpenRun>, StoreError> {
        let node_id = node_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT t.id, t.spec, r.run FROM task_runs r JOIN tasks t ON t.id = r.task_id
                 WHERE r.node_id = ?1 AND r.state IN ('Pending', 'Running')",
            )?;
            let rows = stmt
                .query_map([node_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(task_id, spec, run)| {
                    Ok(OpenRun {
                        task_id,
                        run: from_json(&run, "task run")?,
                        spec: from_json(&spec, "task spec")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn open_runs_silent_since(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT r.task_id, r.node_id FROM task_runs r JOIN nodes n ON n.id = r.node_id
                 WHERE r.state IN ('Pending', 'Running') AND (n.last_seen IS NULL OR n.last_seen < ?1)",
            )?;
            let rows = stmt
                .query_map([ts(cutoff)], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_finished_tasks_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.write(move |c| {
            Ok(exec(c,
                "DELETE FROM tasks WHERE created_at < ?1 AND NOT EXISTS
                   (SELECT 1 FROM task_runs r WHERE r.task_id = tasks.id AND r.state IN ('Pending', 'Running'))",
                [cutoff],
            )?)
        })
        .await
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let id = id.to_string();
        self.read(move |c| load_task(c, &id)).await
    }

    async fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |c| {
            let mut stmt =
                c.prepare("SELECT id FROM tasks WHERE substr(id, 1, length(?1)) = ?1 LIMIT ?2")?;
            let ids = stmt
                .query_map(params![prefix, limit as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
        .await
    }

    async fn list_tasks(&self, limit: usize) -> Result<Vec<Task>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare("SELECT id FROM tasks ORDER BY created_at DESC, rowid DESC LIMIT ?1")?;
            let ids = stmt
                .query_map([limit as i64], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut tasks = Vec::new();
            for id in ids {
                tasks.extend(load_task(c, &id)?);
            }
            Ok(tasks)
        })
        .await
    }

    async fn task_summaries(&self, limit: usize) -> Result<Vec<TaskSummary>, StoreError> {
        self.read(move |c| pages::task_summaries(c, limit)).await
    }

    async fn task_page(&self, id: &str, query: &RunQuery) -> Result<Option<TaskPage>, StoreError> {
        let (id, query) = (id.to_string(), query.clone());
        self.read(move |c| pages::task_page(c, &id, &query)).await
    }

    async fn node_task_runs(
        &self,
        node_id: &str,
        limit: usize,
    ) -> Result<Vec<NodeTaskRun>, StoreError> {
        let id = node_id.to_string();
        self.read(move |c| pages::node_task_runs(c, &id, limit))
            .await
    }
}
