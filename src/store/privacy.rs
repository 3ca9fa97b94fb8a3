//! Storage side of GDPR: the secret of keyed identifier hashes, the suppression list and its
//! lifts, the erasure audit, the deletes an erasure or a retention purge is made of, and the
//! scrub that leaves no copy of what an erasure deleted in the store's files.

use std::collections::BTreeSet;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use super::{
    Backend, QuarantineEntry, REVIEW_COLUMNS, Result, ReviewRow, Store, StoreError, WriteTx, json_col, json_ids, now_ms,
    QUARANTINE_SELECT, quarantine_of, review_of,
};
use crate::identity::CanonicalRecord;
use crate::privacy::{PRIVACY_KEY_ENV, PrivacyKeyError};

/// Why a scrub did not finish: what was deleted may stay in the files until the next one.
#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("a reader kept the write-ahead log in use: it was not emptied")]
    LogInUse,
}

impl From<PrivacyKeyError> for StoreError {
    fn from(e: PrivacyKeyError) -> Self {
        StoreError::Db(sqlx::Error::Configuration(Box::new(e)))
    }
}

/// The check value of a key given from outside: tells a different key apart without keeping it.
fn key_check(key: &str) -> String {
    hex::encode(crate::privacy::hmac_sha256(key.as_bytes(), b"cdp privacy key check"))
}

/// The secret when nothing needs writing: the given key matching the store's check value, or
/// the store's own secret when no key is given. A given key that cannot be right is an error;
/// `None`: the key must be settled in a write transaction.
async fn settled_privacy_secret(conn: &mut sqlx::AnyConnection, given: Option<&str>) -> Result<Option<String>> {
    let check = sqlx::query("SELECT check_value FROM privacy_key_check WHERE id = 1").fetch_optional(&mut *conn).await?;
    let check: Option<String> = check.map(|r| r.try_get("check_value")).transpose()?;
    match (given, check) {
        (Some(key), Some(check)) if check == key_check(key) => Ok(Some(key.to_string())),
        (Some(_), Some(_)) => Err(PrivacyKeyError::Mismatch.into()),
        (None, Some(_)) => Err(PrivacyKeyError::Missing.into()),
        (None, None) => {
            let own = sqlx::query("SELECT secret FROM privacy_key WHERE id = 1").fetch_optional(&mut *conn).await?;
            Ok(own.map(|r| r.try_get("secret")).transpose()?)
        }
        (Some(_), None) => Ok(None),
    }
}

/// PostgreSQL advisory lock key serialising the first use of the key (see [`Store::privacy_secret_with`]).
const PRIVACY_KEY_LOCK: i64 = 0x0cd9_0007_4e75;

/// The tables with a column of personal data (marked `PII` in the schema): what the scrub after
/// an erasure vacuums on PostgreSQL. The others hold ids, keyed hashes and counters.
const PERSONAL_DATA_TABLES: &[&str] = &["intake", "quarantine", "profiles", "source_records", "outbox", "feed_deliveries", "enrich_cache"];

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
    /// Enrichers' cached answers looked up for the person.
    #[serde(default)]
    pub enrichment_cache_entries: u64,
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
#[derive(Clone, Debug)]
pub struct ErasureRow {
    pub id: i64,
    pub erased_at_ms: i64,
    pub subject_hashes: Vec<String>,
    pub profile_ids: Vec<i64>,
    pub reason: String,
    pub requested_by: String,
    pub removed: Removed,
}

/// An identifier on the suppression list: refused at intake (unless its Source lets an erased
/// person start a new profile).
#[derive(Clone, Debug)]
pub struct SuppressionRow {
    pub id: i64,
    /// Keyed hash of the identifier (the value itself is never kept).
    pub hash: String,
    /// The erasure that put it on the list.
    pub erasure_id: i64,
    pub created_at_ms: i64,
}

/// A suppression lifted, as audited: no value of the person, only the keyed hash.
#[derive(Clone, Debug)]
pub struct LiftRow {
    pub id: i64,
    pub lifted_at_ms: i64,
    pub hash: String,
    /// The erasure that had put it on the list.
    pub erasure_id: i64,
    pub reason: String,
    pub requested_by: String,
}

const LIFT_COLUMNS: &str = "id, lifted_at_ms, hash, erasure_id, reason, requested_by";

fn lift_of(row: &sqlx::any::AnyRow) -> Result<LiftRow> {
    Ok(LiftRow {
        id: row.try_get("id")?,
        lifted_at_ms: row.try_get("lifted_at_ms")?,
        hash: row.try_get("hash")?,
        erasure_id: row.try_get("erasure_id")?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
    })
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
    /// The secret of the keyed identifier hashes (and of what else derives from it, such as
    /// the feeds' idempotency keys): [`PRIVACY_KEY_ENV`] when set, the store's own otherwise.
    pub async fn privacy_secret(&self) -> Result<String> {
        let given = std::env::var(PRIVACY_KEY_ENV).ok().filter(|k| !k.is_empty());
        self.privacy_secret_with(given.as_deref()).await
    }

    /// The secret of the keyed identifier hashes, given from outside the store or kept in it.
    /// Every service of a store must compute the same hashes, forever: the suppression list
    /// holds nothing else. So:
    /// - a store whose hashes were made with a given key (it keeps that key's check value)
    ///   works with that key only;
    /// - a store with a secret of its own (made before, or with no key given) keeps using it,
    ///   even when another key is given, until the given key is that same secret: then the
    ///   store's copy is deleted and its check value kept instead (how a cluster moves an
    ///   existing store's key into its Secret);
    /// - a new store takes the given key (keeping its check value), or makes a secret of its own.
    pub async fn privacy_secret_with(&self, given: Option<&str>) -> Result<String> {
        // most calls settle here, reading only
        if let Some(secret) = settled_privacy_secret(&mut *self.pool.acquire().await?, given).await? {
            return Ok(secret);
        }
        let mut tx = self.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PRIVACY_KEY_LOCK).execute(tx.conn()).await?;
        }
        if let Some(secret) = settled_privacy_secret(tx.conn(), given).await? {
            return Ok(secret);
        }
        let Some(key) = given else {
            // a new store with no key given (one kept would have been found above): make its own
            let fresh = hex::encode(rand::random::<[u8; 32]>());
            sqlx::query("INSERT INTO privacy_key (id, secret) VALUES (1, $1)").bind(&fresh).execute(tx.conn()).await?;
            tx.commit().await?;
            return Ok(fresh);
        };
        let own = sqlx::query("SELECT secret FROM privacy_key WHERE id = 1").fetch_optional(tx.conn()).await?;
        let own: Option<String> = own.map(|r| r.try_get("secret")).transpose()?;
        if let Some(own) = own.filter(|own| own != key) {
            tracing::warn!(
                "{PRIVACY_KEY_ENV} is ignored: this store keeps a key of its own, made before, and its identifier \
                 hashes were made with it; put that key in the platform's privacy-key Secret to move it out of the store"
            );
            return Ok(own);
        }
        sqlx::query("INSERT INTO privacy_key_check (id, check_value) VALUES (1, $1)").bind(key_check(key)).execute(tx.conn()).await?;
        let moved_out = sqlx::query("DELETE FROM privacy_key WHERE id = 1").execute(tx.conn()).await?.rows_affected() > 0;
        tx.commit().await?;
        if moved_out {
            tracing::info!("the key of the identifier hashes moved out of the store into {PRIVACY_KEY_ENV}");
            // the deleted secret must not stay readable in the files either
            if let Err(error) = self.scrub(&["privacy_key"]).await {
                tracing::warn!(%error, "the store's files may keep the key it held until an erasure scrubs them");
            }
        }
        Ok(key.to_string())
    }

    /// After an erasure: leave no copy of the deleted personal data in the store's files.
    pub async fn scrub_personal_data(&self) -> std::result::Result<(), ScrubError> {
        self.scrub(PERSONAL_DATA_TABLES).await
    }

    /// After deleted rows committed, remove what the store keeps of them. SQLite deletes
    /// securely already (`secure_delete`): the write-ahead log, which keeps the pages as they
    /// were before each change, is copied into the database and emptied, so no copy is left in
    /// its files. PostgreSQL: `tables` are vacuumed (its documented way to remove dead rows),
    /// which leaves the freed bytes in the files until they are written over; see
    /// [`super::postgres::vacuum_tables`] for why they are not rewritten.
    async fn scrub(&self, tables: &[&str]) -> std::result::Result<(), ScrubError> {
        match self.backend {
            Backend::Sqlite => super::sqlite::truncate_wal(&self.writes, &self.writer).await,
            Backend::Postgres => super::postgres::vacuum_tables(&self.pool, tables).await,
        }
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

    /// The suppression list after `after`, oldest first, at most `limit`.
    pub async fn suppressions(&self, after: i64, limit: i64) -> Result<Vec<SuppressionRow>> {
        let rows = sqlx::query(
            "SELECT id, hash, erasure_id, created_at_ms FROM suppressed_identifiers WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SuppressionRow {
                    id: r.try_get("id")?,
                    hash: r.try_get("hash")?,
                    erasure_id: r.try_get("erasure_id")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    /// Take `hash` off the suppression list, and audit it; `None` when it is not on the list.
    pub async fn lift_suppression(&self, hash: &str, reason: &str, requested_by: &str) -> Result<Option<LiftRow>> {
        let mut tx = self.begin().await?;
        let lifted = sqlx::query("DELETE FROM suppressed_identifiers WHERE hash = $1 RETURNING erasure_id")
            .bind(hash)
            .fetch_optional(tx.conn())
            .await?;
        let Some(lifted) = lifted else { return Ok(None) };
        let erasure_id: i64 = lifted.try_get("erasure_id")?;
        let sql = format!(
            "INSERT INTO suppression_lifts (lifted_at_ms, hash, erasure_id, reason, requested_by) VALUES ($1, $2, $3, $4, $5)
             RETURNING {LIFT_COLUMNS}"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now_ms())
            .bind(hash)
            .bind(erasure_id)
            .bind(reason)
            .bind(requested_by)
            .fetch_one(tx.conn())
            .await?;
        let lift = lift_of(&row)?;
        tx.commit().await?;
        Ok(Some(lift))
    }

    /// The lifted suppressions after `after`, oldest first, at most `limit`.
    pub async fn suppression_lifts(&self, after: i64, limit: i64) -> Result<Vec<LiftRow>> {
        let sql = format!("SELECT {LIFT_COLUMNS} FROM suppression_lifts WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(lift_of).collect()
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
    /// pairs, and the payload digests of their intake rows.
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
        // a record's id is its intake row's: the digest of what it held goes with it
        let digests = format!("UPDATE intake SET fingerprint = NULL WHERE {}", b.in_ids("id", 1));
        self.execute_with_ids(digests, &ids).await?;
        removed.enrichment_cache_entries += self.forget_enrichment("record", records).await?;
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
        removed.enrichment_cache_entries += self.forget_enrichment("profile", profiles).await?;
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
        let rows = sqlx::query(AssertSqlSafe(format!("{QUARANTINE_SELECT} WHERE id > $1 ORDER BY id LIMIT $2")))
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
            "UPDATE intake SET state = 'erased', record = NULL, fingerprint = NULL
             WHERE state = 'queued' AND claimed_by IS NULL AND {}",
            self.backend.in_ids("id", 1)
        );
        let dropped = self.execute_with_ids(sql, &json_ids(ids)).await?;
        removed.queued_records += dropped;
        removed.enrichment_cache_entries += self.forget_enrichment("record", ids).await?;
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
