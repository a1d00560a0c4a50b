//! SQLite implementation of [`TxLog`](super::TxLog).

use super::StoreError;

/// The embedded SQLite log.
pub struct SqliteLog {
    pub(crate) pool: sqlx::SqlitePool,
}

impl SqliteLog {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let _ = url;
        todo!("store helper")
    }
}
