//! Operators in SQLite: the statements behind `OperatorStore`.

use drover_types::operator::OperatorInfo;

use super::*;
use crate::store::OperatorRecord;

fn operator_info(row: &Row) -> Result<OperatorInfo, StoreError> {
    let role: String = row.get("role")?;
    let created_at: String = row.get("created_at")?;
    Ok(OperatorInfo {
        name: row.get("name")?,
        role: from_json(&format!("\"{role}\""), "operator role")?,
        created_at: parse_ts(&created_at, "operator created_at")?,
        created_by: row.get("created_by")?,
        revoked: row.get("revoked")?,
    })
}

pub(super) fn put(c: &Connection, o: &OperatorRecord) -> Result<bool, StoreError> {
    let changed = exec(
        c,
        sql::operators::PUT.sqlite,
        params![
            o.info.name,
            o.info.role.as_str(),
            o.token_sha256,
            ts(o.info.created_at),
            o.info.created_by
        ],
    )?;
    Ok(changed > 0)
}

pub(super) fn list(c: &Connection) -> Result<Vec<OperatorInfo>, StoreError> {
    let mut stmt = c.prepare(sql::operators::LIST.sqlite)?;
    let mut rows = stmt.query([])?;
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        found.push(operator_info(row));
    }
    Ok(readable("operator", found.into_iter()))
}

pub(super) fn by_token(c: &Connection, sha: &str) -> Result<Option<OperatorInfo>, StoreError> {
    c.query_row(sql::operators::BY_TOKEN.sqlite, [sha], |row| {
        Ok(operator_info(row))
    })
    .optional()?
    .transpose()
}

pub(super) fn revoke(c: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(exec(c, sql::operators::REVOKE.sqlite, [name])? > 0)
}

#[async_trait]
impl OperatorStore for SqliteStore {
    async fn put_operator(&self, operator: &OperatorRecord) -> Result<bool, StoreError> {
        let o = operator.clone();
        self.write(move |c| operators::put(c, &o)).await
    }

    async fn list_operators(&self) -> Result<Vec<OperatorInfo>, StoreError> {
        self.read(operators::list).await
    }

    async fn operator_by_token(
        &self,
        token_sha256: &str,
    ) -> Result<Option<OperatorInfo>, StoreError> {
        let sha = token_sha256.to_string();
        self.read(move |c| operators::by_token(c, &sha)).await
    }

    async fn revoke_operator(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| operators::revoke(c, &name)).await
    }
}
