//! Intake-queue figures for the load report: the same on every replica, because they are read
//! from the store every replica shares.

use sqlx::Row;

use super::{Result, Store};

/// The intake queue as the scaler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntakeLoad {
    /// Records received since the instant asked about (redeliveries absorbed, not counted).
    pub received: i64,
    /// Records waiting to be resolved.
    pub queued: i64,
    /// Receive time of the oldest waiting record, Unix milliseconds.
    pub oldest_queued_at_ms: Option<i64>,
}

impl Store {
    /// Records received since `since_ms`, and what waits in the intake queue now.
    pub async fn intake_load(&self, since_ms: i64) -> Result<IntakeLoad> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM intake WHERE received_at_ms >= $1) AS received,
               (SELECT COUNT(*) FROM intake WHERE state = 'queued') AS queued,
               (SELECT MIN(received_at_ms) FROM intake WHERE state = 'queued') AS oldest",
        )
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(IntakeLoad {
            received: row.try_get("received")?,
            queued: row.try_get("queued")?,
            oldest_queued_at_ms: row.try_get("oldest")?,
        })
    }
}
