//! Content (file resources) by SHA-256, in SQLite: `BlobStore`.

use super::*;

#[async_trait]
impl BlobStore for SqliteStore {
    async fn put_blob(&self, sha256: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let sha = sha256.to_string();
        self.write(move |c| {
            exec(c, sql::blobs::PUT.sqlite, params![sha, data])?;
            Ok(())
        })
        .await
    }

    async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sha = sha256.to_string();
        self.read(move |c| Ok(row(c, sql::blobs::GET.sqlite, [sha], |r| r.get(0)).optional()?))
            .await
    }
}
