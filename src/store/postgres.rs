//! PostgreSQL implementation of [`TxLog`](super::TxLog).

use super::{StoreError, StoreOptions};

/// The PostgreSQL log.
pub struct PgLog {
    pub(crate) pool: sqlx::PgPool,
}

impl PgLog {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let _ = (url, options);
        todo!("store helper")
    }
}
