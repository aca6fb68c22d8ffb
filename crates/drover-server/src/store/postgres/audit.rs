//! The audit log, in PostgreSQL: `AuditStore`.

use super::*;

#[async_trait]
impl AuditStore for PgStore {
    async fn insert_audits(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let at: Vec<DateTime<Utc>> = entries.iter().map(|e| e.at).collect();
        let actor: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
        let action: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        let target: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        let detail: Vec<String> = entries.iter().map(|e| to_json(&e.detail)).collect();
        // In the order given: ids follow it. Per backend: one statement over arrays; SQLite's writer inserts
        // a row at a time.
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, detail)
             SELECT e.at, e.actor, e.action, e.target, e.detail
             FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[])
                  WITH ORDINALITY AS e(at, actor, action, target, detail, ord)
             ORDER BY e.ord",
        )
        .bind(&at)
        .bind(&actor)
        .bind(&action)
        .bind(&target)
        .bind(&detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = filter;
        // Per backend: NULL-tested parameters need a type here (`$1::text`); SQLite spells `strpos` `instr`.
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit
             WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
               AND ($3::text IS NULL OR strpos(target, $3) > 0)
               AND ($4::timestamptz IS NULL OR at >= $4)
             ORDER BY id DESC LIMIT $5",
        )
        .bind(&f.actor)
        .bind(&f.action)
        .bind(&f.target)
        .bind(f.since)
        .bind(big(f.limit))
        .fetch_all(&self.pool)
        .await?;
        let entries = rows.iter().map(|r| {
            let detail: String = r.try_get("detail")?;
            Ok(AuditEntry {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                detail: from_json(&detail, "audit detail")?,
            })
        });
        Ok(readable("audit entry", entries))
    }
}
