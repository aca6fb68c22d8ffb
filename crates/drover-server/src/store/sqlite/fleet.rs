//! The store as a whole in SQLite (`FleetStore`): fleet-wide counts; it always answers and always leads.

use super::*;

#[async_trait]
impl FleetStore for SqliteStore {
    async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        self.read(counts::counts).await
    }
}
