//! The review queue as a data steward reads it: items filtered by status, source, reason and
//! probability band, and how many there are of each status under the same filter.

use std::collections::BTreeMap;

use sqlx::{AssertSqlSafe, Row};

use super::{REVIEW_COLUMNS, Result, ReviewRow, Store, review_of};

/// The statuses a review item goes through.
pub const REVIEW_STATUSES: [&str; 4] = ["open", "approved", "rejected", "superseded"];

/// Which review items to list or count; an absent bound or value does not filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReviewFilter {
    /// Items with at least one record from this source.
    pub source: Option<String>,
    /// `uncertain`, `forbidden` or `ambiguous`.
    pub reason: Option<String>,
    /// Probability at least this.
    pub min_probability: Option<f64>,
    /// Probability below this.
    pub max_probability: Option<f64>,
}

/// Conditions on `review_items` for a filter, its values bound as `$1` to `$4` (an empty text
/// or an out-of-range bound stands for "any", so that no parameter is ever NULL: PostgreSQL
/// cannot type an untyped NULL parameter).
const FILTER_CONDITIONS: &str = "($1 = '' OR EXISTS (
         SELECT 1 FROM source_records s
         WHERE (s.id = review_items.record_id OR s.id = review_items.other_record_id) AND s.source = $1))
     AND ($2 = '' OR reason = $2)
     AND probability >= $3 AND probability < $4";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl ReviewFilter {
    fn bind(&self, query: AnyQuery<'static>) -> AnyQuery<'static> {
        query
            .bind(self.source.clone().unwrap_or_default())
            .bind(self.reason.clone().unwrap_or_default())
            .bind(self.min_probability.unwrap_or(-1.0))
            .bind(self.max_probability.unwrap_or(2.0))
    }
}

impl Store {
    /// Items of `status` matching `filter`, by id, after `after_id`.
    pub async fn review_items(&self, status: &str, filter: &ReviewFilter, after_id: i64, limit: i64) -> Result<Vec<ReviewRow>> {
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM review_items WHERE {FILTER_CONDITIONS} AND status = $5 AND id > $6 ORDER BY id LIMIT $7"
        );
        let query = filter.bind(sqlx::query(AssertSqlSafe(sql))).bind(status.to_string()).bind(after_id).bind(limit);
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(review_of).collect()
    }

    /// How many items match `filter`, per status (every status listed, zero included).
    pub async fn review_counts(&self, filter: &ReviewFilter) -> Result<BTreeMap<String, i64>> {
        let sql = format!("SELECT status, COUNT(*) AS n FROM review_items WHERE {FILTER_CONDITIONS} GROUP BY status");
        let rows = filter.bind(sqlx::query(AssertSqlSafe(sql))).fetch_all(&self.pool).await?;
        let mut counts: BTreeMap<String, i64> = REVIEW_STATUSES.iter().map(|s| (s.to_string(), 0)).collect();
        for row in &rows {
            counts.insert(row.try_get("status")?, row.try_get("n")?);
        }
        Ok(counts)
    }
}
