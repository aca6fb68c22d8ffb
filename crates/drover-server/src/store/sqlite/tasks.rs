//! Tasks and their runs on nodes, in SQLite: `TaskStore`.

use super::*;

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert_task(&self, task: &Task) -> Result<(), StoreError> {
        let t = task.clone();
        self.write(move |c| {
            let tx = c;
            exec(tx,
                sql::tasks::INSERT.sqlite,
                params![t.id, to_json(&t.target), to_json(&t.spec), t.created_by, t.created_at, t.max_parallel, t.signature.as_ref().map(to_json)],
            )?;
            // Per backend: a run at a time in the writer; PostgreSQL inserts them all from arrays.
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
            // alone. Per backend: SQLite's `json_patch` and `json_each`, PostgreSQL's jsonb and arrays.
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
            // Per backend: SQLite's JSON functions, PostgreSQL's jsonb operators.
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
            let run: Option<String> =
                row(c, sql::tasks::RUN.sqlite, params![t, n], |r| r.get(0)).optional()?;
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
            // Per backend: the states inlined (an array in PostgreSQL), the order by `rowid` (`seq` there).
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
            // Per backend: the states inlined here, bound as an array there.
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
            // Per backend: PostgreSQL orders the runs by `seq`; SQLite reads them as its plan finds them.
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
    ) -> Result<Vec<SilentRun>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare(sql::tasks::OPEN_RUNS_SILENT_SINCE.sqlite)?;
            let rows = stmt
                .query_map([ts(cutoff)], |r| {
                    Ok(SilentRun {
                        task_id: r.get(0)?,
                        node_id: r.get(1)?,
                    })
                })?
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
            Ok(exec(
                c,
                sql::tasks::DELETE_FINISHED_BEFORE.sqlite,
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
            // Per backend: SQLite has no `starts_with`.
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
            // Per backend: SQLite's insertion order is its `rowid`, PostgreSQL's `seq`.
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
