//! The audit log, in SQLite: `AuditStore`.

use super::*;

#[async_trait]
impl AuditStore for SqliteStore {
    async fn insert_audits(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        self.write(move |c| {
            // Per backend: a row at a time in the writer; PostgreSQL inserts the batch from arrays.
            for e in &entries {
                exec(
                    c,
                    "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![e.at, e.actor, e.action, e.target, to_json(&e.detail)],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = filter.clone();
        self.read(move |c| {
            // Per backend: PostgreSQL types its NULL-tested parameters (`$1::text`), spells `instr` `strpos`.
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, target, detail FROM audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
                   AND (?3 IS NULL OR instr(target, ?3) > 0) AND (?4 IS NULL OR at >= ?4)
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![f.actor, f.action, f.target, f.since, f.limit as i64],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, DateTime<Utc>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )?;
            let entries = rows.map(|row| {
                let (id, at, actor, action, target, detail) = row?;
                Ok(AuditEntry {
                    id,
                    at,
                    actor,
                    action,
                    target,
                    detail: from_json(&detail, "audit detail")?,
                })
            });
            Ok(readable("audit entry", entries))
        })
        .await
    }
}
