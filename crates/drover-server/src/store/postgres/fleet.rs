//! The store as a whole in PostgreSQL (`FleetStore`): whether it answers, the leader lock, fleet-wide counts.

use super::*;

#[async_trait]
impl FleetStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut held = self.leader.lock().await;
        if let Some(conn) = held.as_mut() {
            // Still the leader while the session that holds the lock answers.
            match sqlx::query("SELECT 1").execute(&mut *conn).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    *held = None;
                    return Err(e.into());
                }
            }
        }
        let mut conn =
            tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!("no answer within {ACQUIRE_TIMEOUT:?}"))
                })??;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 0)")
            .bind(LOCK_LEADER)
            .fetch_one(&mut conn)
            .await?;
        if got {
            *held = Some(conn);
        }
        Ok(got)
    }

    async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        counts::counts(&self.pool).await
    }
}
