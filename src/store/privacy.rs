//! Storage side of GDPR: the secret of keyed identifier hashes, the suppression list, the
//! erasure audit, and the deletes an erasure or a retention purge is made of.

use std::collections::BTreeSet;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use super::{
    Backend, QuarantineEntry, REVIEW_COLUMNS, Result, ReviewRow, Store, WriteTx, json_col, json_ids, now_ms,
    quarantine_of, review_of,
};
use crate::identity::CanonicalRecord;

/// Rows removed by an erasure, per kind (kept in the audit entry; counts only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub profiles: u64,
    pub records: u64,
    pub match_keys: u64,
    pub review_items: u64,
    pub never_merge_pairs: u64,
    pub quarantine_entries: u64,
    pub queued_records: u64,
    /// Outbox events whose payload was replaced by ids only.
    pub redacted_events: u64,
    /// Messages the feeds still held for delivery or in their dead-letter lists.
    pub feed_messages: u64,
}

/// A record in the intake queue.
pub struct QueuedRecord {
    pub id: i64,
    pub record: CanonicalRecord,
    /// A matcher worker holds it (it may be resolving it right now).
    pub claimed: bool,
}

/// An erasure as audited: no value of the person, only keyed hashes and ids.
pub struct ErasureAudit<'a> {
    pub subject_hashes: &'a BTreeSet<String>,
    pub profile_ids: &'a [i64],
    pub reason: &'a str,
    pub requested_by: &'a str,
    pub removed: &'a Removed,
}

/// A stored audit entry.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErasureRow {
    pub id: i64,
    pub erased_at_ms: i64,
    pub subject_hashes: Vec<String>,
    pub profile_ids: Vec<i64>,
    pub reason: String,
    pub requested_by: String,
    pub removed: Removed,
}

fn erasure_of(row: &sqlx::any::AnyRow) -> Result<ErasureRow> {
    Ok(ErasureRow {
        id: row.try_get("id")?,
        erased_at_ms: row.try_get("erased_at_ms")?,
        subject_hashes: json_col(row, "subject_hashes")?,
        profile_ids: json_col(row, "profile_ids")?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        removed: json_col(row, "removed")?,
    })
}

/// What an outbox payload of an erased person becomes: ids stay (the feeds' ordering and
/// idempotency need them), values go.
const REDACTED_PAYLOAD: &str = r#"{"redacted":"erased"}"#;

impl Store {
    /// The secret of the keyed identifier hashes, made on first use. It lives in the store so
    /// that every service computes the same hashes.
    pub async fn privacy_secret(&self) -> Result<String> {
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        sqlx::query("INSERT INTO privacy_key (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT secret FROM privacy_key WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(row.try_get("secret")?)
    }

    /// The audit entries after `after`, oldest first, at most `limit`.
    pub async fn erasures(&self, after: i64, limit: i64) -> Result<Vec<ErasureRow>> {
        let rows = sqlx::query(
            "SELECT id, erased_at_ms, subject_hashes, profile_ids, reason, requested_by, removed FROM erasures
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(erasure_of).collect()
    }

    pub async fn erasure(&self, id: i64) -> Result<Option<ErasureRow>> {
        let row = sqlx::query(
            "SELECT id, erased_at_ms, subject_hashes, profile_ids, reason, requested_by, removed FROM erasures WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(erasure_of).transpose()
    }

    /// Review items with one side among `records`.
    pub async fn reviews_of_records(&self, records: &[i64]) -> Result<Vec<ReviewRow>> {
        let b = self.backend;
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM review_items WHERE {} OR {} ORDER BY id",
            b.in_ids("record_id", 1),
            b.in_ids("other_record_id", 1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(records)).fetch_all(&self.pool).await?;
        rows.iter().map(review_of).collect()
    }

    /// Never-merge pairs with one side among `records`.
    pub async fn never_merge_of_records(&self, records: &[i64]) -> Result<Vec<(i64, i64)>> {
        let b = self.backend;
        let sql =
            format!("SELECT record_a, record_b FROM never_merge WHERE {} OR {}", b.in_ids("record_a", 1), b.in_ids("record_b", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(records)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("record_a")?, r.try_get("record_b")?))).collect()
    }

    /// `(record id, profile id)` of a source's records observed before `cutoff_ms`, at most `limit`.
    pub async fn records_observed_before(&self, source: &str, cutoff_ms: i64, limit: i64) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT id, profile_id FROM source_records WHERE source = $1 AND observed_at_ms < $2 ORDER BY profile_id, id LIMIT $3",
        )
        .bind(source)
        .bind(cutoff_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("profile_id")?))).collect()
    }

    /// Drop a source's quarantined payloads received before `cutoff_ms`; returns how many.
    pub async fn purge_quarantine(&self, source: &str, cutoff_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM quarantine WHERE source = $1 AND received_at_ms < $2")
            .bind(source)
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

impl Backend {
    /// A derived table with one text column `value`: the strings of the JSON array bound at `$n`.
    fn text_table(self, n: u8) -> String {
        match self {
            Backend::Sqlite => format!("json_each(${n})"),
            Backend::Postgres => format!("json_array_elements_text(${n}::json) AS t(value)"),
        }
    }
}

impl WriteTx {
    /// The hashes among `hashes` that are on the suppression list, read so that no erasure
    /// commits before this transaction ends: what it queues then is either refused here or
    /// found by the erasure's scan of the queue. PostgreSQL: a shared lock against the
    /// erasure's exclusive one ([`WriteTx::exclude_intake`]); SQLite: the writer lock.
    pub(super) async fn suppressed(&mut self, hashes: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        if hashes.is_empty() {
            return Ok(BTreeSet::new());
        }
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(super::postgres::SUPPRESSION_LOCK).execute(self.conn()).await?;
        }
        let sql = format!("SELECT hash FROM suppressed_identifiers WHERE hash IN (SELECT value FROM {})", self.backend.text_table(1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(serde_json::to_string(hashes)?).fetch_all(self.conn()).await?;
        rows.iter().map(|r| Ok(r.try_get("hash")?)).collect()
    }

    /// Wait for intake transactions that checked the suppression list to end, and keep new
    /// ones from checking it until this one ends (PostgreSQL; SQLite's writer lock does it
    /// already). Taken before an erasure scans the queue for the identifiers it suppresses.
    pub async fn exclude_intake(&mut self) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(super::postgres::SUPPRESSION_LOCK).execute(self.conn()).await?;
        }
        Ok(())
    }

    /// Profiles merged into one of `live` (their aliases).
    pub async fn aliases_of(&mut self, live: &[i64]) -> Result<Vec<i64>> {
        let sql = format!("SELECT id FROM profiles WHERE {} ORDER BY id", self.backend.in_ids("merged_into", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(live)).fetch_all(self.conn()).await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Remove source records with their match keys, term counts, review items and never-merge
    /// pairs.
    pub async fn delete_records(&mut self, records: &[i64], removed: &mut Removed) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.uncount_terms(records).await?;
        let b = self.backend;
        let ids = json_ids(records);
        let reviews = format!("DELETE FROM review_items WHERE {} OR {}", b.in_ids("record_id", 1), b.in_ids("other_record_id", 1));
        removed.review_items += self.execute_with_ids(reviews, &ids).await?;
        let pairs = format!("DELETE FROM never_merge WHERE {} OR {}", b.in_ids("record_a", 1), b.in_ids("record_b", 1));
        removed.never_merge_pairs += self.execute_with_ids(pairs, &ids).await?;
        let keys = format!("DELETE FROM record_keys WHERE {}", b.in_ids("record_id", 1));
        removed.match_keys += self.execute_with_ids(keys, &ids).await?;
        let rows = format!("DELETE FROM source_records WHERE {}", b.in_ids("id", 1));
        removed.records += self.execute_with_ids(rows, &ids).await?;
        Ok(())
    }

    /// Run `sql` with the JSON id list `ids` bound at `$1`; returns the rows it changed.
    async fn execute_with_ids(&mut self, sql: String, ids: &str) -> Result<u64> {
        Ok(sqlx::query(AssertSqlSafe(sql)).bind(ids).execute(self.conn()).await?.rows_affected())
    }

    /// Erase profiles (live ones and their aliases) and everything linked to them: records,
    /// match keys, review items, never-merge pairs, the profile rows, and the values in their
    /// outbox events (the events stay, redacted, so the feeds' sequence has no holes).
    pub async fn erase_profiles(&mut self, profiles: &[i64], removed: &mut Removed) -> Result<()> {
        if profiles.is_empty() {
            return Ok(());
        }
        let records: Vec<i64> = self.record_ids_of(profiles).await?.into_iter().map(|(r, _)| r).collect();
        self.delete_records(&records, removed).await?;
        let b = self.backend;
        let sql = format!(
            "UPDATE outbox SET payload = $3 WHERE ({} OR {}) AND payload <> $3",
            b.in_ids("profile_id", 1),
            b.in_ids("record_id", 2)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(json_ids(profiles))
            .bind(json_ids(&records))
            .bind(REDACTED_PAYLOAD)
            .execute(self.conn())
            .await?;
        removed.redacted_events += done.rows_affected();
        removed.feed_messages += self.erase_feed_deliveries(profiles).await?;
        let profiles = json_ids(profiles);
        // aliases first: they reference their survivor
        let aliases = format!("DELETE FROM profiles WHERE {} AND merged_into IS NOT NULL", b.in_ids("id", 1));
        removed.profiles += self.execute_with_ids(aliases, &profiles).await?;
        let live = format!("DELETE FROM profiles WHERE {}", b.in_ids("id", 1));
        removed.profiles += self.execute_with_ids(live, &profiles).await?;
        Ok(())
    }

    /// Every quarantined entry, oldest first, `limit` after `after_id` (for an erasure's scan).
    pub async fn quarantine_page(&mut self, after_id: i64, limit: i64) -> Result<Vec<QuarantineEntry>> {
        let rows = sqlx::query("SELECT id, source, received_at_ms, payload, errors FROM quarantine WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after_id)
            .bind(limit)
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(quarantine_of).collect()
    }

    /// Records still in the intake queue, `limit` after `after_id`.
    pub async fn queued_page(&mut self, after_id: i64, limit: i64) -> Result<Vec<QueuedRecord>> {
        let rows = sqlx::query(
            "SELECT id, record, claimed_by FROM intake WHERE id > $1 AND state = 'queued' AND record IS NOT NULL
             ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.conn())
        .await?;
        rows.iter()
            .map(|r| {
                let claimed_by: Option<String> = r.try_get("claimed_by")?;
                Ok(QueuedRecord { id: r.try_get("id")?, record: json_col(r, "record")?, claimed: claimed_by.is_some() })
            })
            .collect()
    }

    pub async fn delete_quarantine_entries(&mut self, ids: &[i64], removed: &mut Removed) -> Result<()> {
        if !ids.is_empty() {
            let sql = format!("DELETE FROM quarantine WHERE {}", self.backend.in_ids("id", 1));
            removed.quarantine_entries += self.execute_with_ids(sql, &json_ids(ids)).await?;
        }
        Ok(())
    }

    /// Queued records of an erased person: finished without being resolved, their payload
    /// dropped (the row stays, so a redelivery is still absorbed). Only unclaimed rows are
    /// dropped; returns false when a matcher claimed one meanwhile (it is being resolved).
    pub async fn drop_queued(&mut self, ids: &[i64], removed: &mut Removed) -> Result<bool> {
        if ids.is_empty() {
            return Ok(true);
        }
        let sql = format!(
            "UPDATE intake SET state = 'erased', record = NULL WHERE state = 'queued' AND claimed_by IS NULL AND {}",
            self.backend.in_ids("id", 1)
        );
        let dropped = self.execute_with_ids(sql, &json_ids(ids)).await?;
        removed.queued_records += dropped;
        Ok(dropped == ids.len() as u64)
    }

    /// Keep the audit entry of an erasure; returns its id.
    pub async fn add_erasure(&mut self, audit: &ErasureAudit<'_>) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO erasures (erased_at_ms, subject_hashes, profile_ids, reason, requested_by, removed)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(now_ms())
        .bind(serde_json::to_string(audit.subject_hashes)?)
        .bind(json_ids(audit.profile_ids))
        .bind(audit.reason)
        .bind(audit.requested_by)
        .bind(serde_json::to_string(audit.removed)?)
        .fetch_one(self.conn())
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Put identifier hashes on the suppression list.
    pub async fn suppress(&mut self, hashes: &BTreeSet<String>, erasure: i64) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO suppressed_identifiers (hash, erasure_id, created_at_ms) SELECT value, $2, $3 FROM {} WHERE true
             ON CONFLICT (hash) DO NOTHING",
            self.backend.text_table(1)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(serde_json::to_string(hashes)?)
            .bind(erasure)
            .bind(now_ms())
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
