//! Live profiles in id order, for the profile list and `cdp export`: a page at a time, so a
//! list or an export of any size reads bounded memory and never holds a long transaction.

use std::collections::BTreeSet;

use sqlx::{AssertSqlSafe, Row};

use super::{PROFILE_COLUMNS, ProfileRow, RECORD_COLUMNS, Result, Store, StoredRecord, json_ids, profile_of, record_of};

/// An instant given as RFC 3339 or as Unix milliseconds, in Unix milliseconds (what
/// `changedSince` and `cdp export --changed-since` take).
pub fn parse_instant_ms(raw: &str) -> std::result::Result<i64, String> {
    match raw.parse::<i64>() {
        Ok(ms) => Ok(ms),
        Err(_) => raw
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond())
            .map_err(|_| format!("{raw:?} is not an instant (RFC 3339, or Unix milliseconds)")),
    }
}

/// What a live profile is: not merged away, holding records (an erasure deletes the rows).
const LIVE: &str = "merged_into IS NULL AND record_count > 0";

impl Store {
    /// At most `limit` live profiles with an id above `after`, by id; with `changed_since_ms`,
    /// only those updated at or after it (an incremental sync asks from its last start).
    pub async fn live_profiles(&self, changed_since_ms: Option<i64>, after: i64, limit: i64) -> Result<Vec<ProfileRow>> {
        let sql = format!(
            "SELECT {PROFILE_COLUMNS} FROM profiles WHERE {LIVE} AND id > $1 AND updated_at_ms >= $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(changed_since_ms.unwrap_or(i64::MIN))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(profile_of).collect()
    }

    /// How many profiles [`Store::live_profiles`] would list in all.
    pub async fn count_live_profiles(&self, changed_since_ms: Option<i64>) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) AS n FROM profiles WHERE {LIVE} AND updated_at_ms >= $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(changed_since_ms.unwrap_or(i64::MIN)).fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    /// The records of the given profiles, by profile then id.
    pub async fn records_of_profiles(&self, profiles: &[i64]) -> Result<Vec<StoredRecord>> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM source_records WHERE {} ORDER BY profile_id, id",
            self.backend.in_ids("profile_id", 1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(profiles)).fetch_all(&self.pool).await?;
        rows.iter().map(record_of).collect()
    }

    /// Which of `profiles` are still live: one erased or merged away since they were read
    /// is not among them.
    pub async fn still_live(&self, profiles: &[i64]) -> Result<BTreeSet<i64>> {
        let sql = format!("SELECT id FROM profiles WHERE {LIVE} AND {}", self.backend.in_ids("id", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(profiles)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// The aliases of each of `survivors` (profiles merged into them), by alias id.
    pub async fn aliases_of_profiles(&self, survivors: &[i64]) -> Result<Vec<(i64, i64)>> {
        let sql = format!(
            "SELECT merged_into, id FROM profiles WHERE {} ORDER BY id",
            self.backend.in_ids("merged_into", 1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(survivors)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("merged_into")?, r.try_get("id")?))).collect()
    }
}
