//! Enrichment's tables: the work of each enricher (jobs, retried, dead-lettered), its cursor
//! in the outbox, the cache of answers by a digest of the values sent, which person each
//! digest was looked up for (so erasure takes the person's entries), the provenance of values
//! written into records before matching, and the hold that keeps such records from the
//! matcher until they are enriched or their wait is over.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AssertSqlSafe, Row};

use super::write::WriteTx;
use super::{Backend, Result, Store, json_ids, now_ms};
use crate::identity::CanonicalRecord;

/// What an enrichment job is about: a profile (ProfileChange) or an intake record (PreMatch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "id")]
pub enum EnrichTarget {
    Profile(i64),
    Record(i64),
}

impl EnrichTarget {
    fn kind(self) -> &'static str {
        match self {
            Self::Profile(_) => "profile",
            Self::Record(_) => "record",
        }
    }

    fn id(self) -> i64 {
        match self {
            Self::Profile(id) | Self::Record(id) => id,
        }
    }

    fn of(kind: &str, id: i64) -> Self {
        if kind == "record" { Self::Record(id) } else { Self::Profile(id) }
    }
}

/// A claimed job: its target and the attempts made before this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnrichJob {
    pub target: EnrichTarget,
    pub attempts: i64,
}

/// An enrichment given up after its last attempt.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichDeadLetter {
    /// `profile` or `record`.
    pub kind: String,
    pub target: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub dead_at_ms: i64,
}

/// A record's values as a PreMatch enricher finds them: still queued (its record JSON), or
/// matched already (its stored attributes and its profile).
#[derive(Clone, Debug)]
pub enum HeldRecord {
    Queued(CanonicalRecord),
    Matched { attributes: BTreeMap<String, String>, profile_id: i64 },
    /// Erased, or never there.
    Gone,
}

/// The store's figures of one enricher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnricherCounts {
    pub dead_letters: i64,
    pub matched_unenriched: i64,
    pub pending: i64,
}

impl Store {
    /// From now on, records of these Sources wait up to the given milliseconds for their
    /// PreMatch enricher before the matcher takes them (intake never waits: only the queued
    /// row carries the time).
    pub fn hold_for_enrichment(&self, holds: BTreeMap<String, i64>) {
        *self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner) = holds;
    }

    /// An enricher's outbox cursor.
    pub async fn enrich_cursor(&self, enricher: &str) -> Result<i64> {
        let row = sqlx::query("SELECT cursor_id FROM enrich_state WHERE enricher = $1").bind(enricher).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get("cursor_id")).transpose()?.unwrap_or(0))
    }

    /// Queue a job per profile (a dead one starts over: the profile changed since) and move
    /// the enricher's cursor to `cursor`, in one transaction.
    pub async fn schedule_profiles(&self, enricher: &str, profiles: &[i64], cursor: i64) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        for &profile in profiles {
            tx.schedule(enricher, EnrichTarget::Profile(profile), now).await?;
        }
        sqlx::query(
            "INSERT INTO enrich_state (enricher, cursor_id) VALUES ($1, $2)
             ON CONFLICT (enricher) DO UPDATE SET cursor_id = excluded.cursor_id WHERE enrich_state.cursor_id < excluded.cursor_id",
        )
        .bind(enricher)
        .bind(cursor)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Queue a job for each held record of `sources` that has none yet; returns how many.
    pub async fn schedule_held(&self, enricher: &str, sources: &[String], limit: i64) -> Result<usize> {
        let sources = serde_json::to_string(sources)?;
        let in_sources = match self.backend {
            Backend::Sqlite => "i.source IN (SELECT value FROM json_each($2))",
            Backend::Postgres => "i.source IN (SELECT json_array_elements_text($2::json))",
        };
        let sql = format!(
            "SELECT i.id FROM intake i WHERE i.held_until_ms IS NOT NULL AND {in_sources}
               AND NOT EXISTS (SELECT 1 FROM enrich_jobs j WHERE j.enricher = $1 AND j.kind = 'record' AND j.target = i.id)
             ORDER BY i.id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(enricher).bind(sources).bind(limit).fetch_all(&self.pool).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        for row in &rows {
            tx.schedule(enricher, EnrichTarget::Record(row.try_get("id")?), now).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Claim up to `limit` due jobs of `enricher` for `lease_ms` (a replica that dies leaves
    /// them due again after it).
    pub async fn claim_enrich_jobs(&self, enricher: &str, limit: i64, lease_ms: i64) -> Result<Vec<EnrichJob>> {
        let now = now_ms();
        let skip_locked = if self.backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE enrich_jobs SET due_at_ms = $3
             WHERE enricher = $1 AND dead_at_ms IS NULL AND due_at_ms <= $2 AND (kind, target) IN (
                 SELECT kind, target FROM enrich_jobs WHERE enricher = $1 AND dead_at_ms IS NULL AND due_at_ms <= $2
                 ORDER BY due_at_ms LIMIT $4 {skip_locked})
             RETURNING kind, target, attempts"
        );
        let mut tx = self.begin().await?;
        let rows =
            sqlx::query(AssertSqlSafe(sql)).bind(enricher).bind(now).bind(now + lease_ms).bind(limit).fetch_all(tx.conn()).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(EnrichJob { target: EnrichTarget::of(&kind, r.try_get("target")?), attempts: r.try_get("attempts")? })
            })
            .collect()
    }

    /// A failed attempt: due again at `retry_at_ms`, or dead-lettered when `None`. A record
    /// whose enrichment is dead waits no longer.
    pub async fn enrich_failed(&self, enricher: &str, target: EnrichTarget, error: &str, retry_at_ms: Option<i64>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE enrich_jobs SET attempts = attempts + 1, last_error = $4, due_at_ms = COALESCE($5, due_at_ms),
                 dead_at_ms = CASE WHEN $5 IS NULL THEN $6 ELSE NULL END
             WHERE enricher = $1 AND kind = $2 AND target = $3",
        )
        .bind(enricher)
        .bind(target.kind())
        .bind(target.id())
        .bind(error)
        .bind(retry_at_ms)
        .bind(now)
        .execute(tx.conn())
        .await?;
        if let (EnrichTarget::Record(id), None) = (target, retry_at_ms) {
            tx.release_hold(id).await?;
        }
        tx.commit().await
    }

    /// A dead letter due again with fresh attempts; false when there is no such dead letter.
    pub async fn replay_enrichment(&self, enricher: &str, target: EnrichTarget) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE enrich_jobs SET attempts = 0, dead_at_ms = NULL, due_at_ms = $4
             WHERE enricher = $1 AND kind = $2 AND target = $3 AND dead_at_ms IS NOT NULL",
        )
        .bind(enricher)
        .bind(target.kind())
        .bind(target.id())
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The dead letters of an enricher, newest first.
    pub async fn enrich_dead_letters(&self, enricher: &str, limit: i64) -> Result<Vec<EnrichDeadLetter>> {
        let rows = sqlx::query(
            "SELECT kind, target, attempts, last_error, dead_at_ms FROM enrich_jobs
             WHERE enricher = $1 AND dead_at_ms IS NOT NULL ORDER BY dead_at_ms DESC, target LIMIT $2",
        )
        .bind(enricher)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EnrichDeadLetter {
                    kind: r.try_get("kind")?,
                    target: r.try_get("target")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    dead_at_ms: r.try_get("dead_at_ms")?,
                })
            })
            .collect()
    }

    /// Dead letters, records matched before their enrichment, and jobs waiting.
    pub async fn enricher_counts(&self, enricher: &str) -> Result<EnricherCounts> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM enrich_jobs WHERE enricher = $1 AND dead_at_ms IS NOT NULL) AS dead,
               (SELECT COUNT(*) FROM enrich_jobs WHERE enricher = $1 AND dead_at_ms IS NULL) AS pending,
               (SELECT COALESCE(MAX(matched_unenriched), 0) FROM enrich_state WHERE enricher = $1) AS late",
        )
        .bind(enricher)
        .fetch_one(&self.pool)
        .await?;
        Ok(EnricherCounts { dead_letters: row.try_get("dead")?, pending: row.try_get("pending")?, matched_unenriched: row.try_get("late")? })
    }

    /// A cached answer still fresh at `now`.
    pub async fn cached_answer(&self, enricher: &str, digest: &str, now: i64) -> Result<Option<BTreeMap<String, String>>> {
        let row = sqlx::query("SELECT answer FROM enrich_cache WHERE enricher = $1 AND digest = $2 AND expires_at_ms > $3")
            .bind(enricher)
            .bind(digest)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>("answer")?)?)).transpose()
    }

    /// Note that `digest` was looked up for `target`, before the call: an erasure of the
    /// person meanwhile must find the answer it makes (and [`Store::cache_answer`] then keeps
    /// nothing).
    pub async fn note_lookup(&self, enricher: &str, target: EnrichTarget, digest: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrich_lookups (enricher, kind, target, digest) VALUES ($1, $2, $3, $4)
             ON CONFLICT (enricher, kind, target, digest) DO NOTHING",
        )
        .bind(enricher)
        .bind(target.kind())
        .bind(target.id())
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keep an answer for `digest` until `expires_at_ms`, unless the person it was looked up
    /// for was erased meanwhile (their lookup is gone).
    pub async fn cache_answer(
        &self,
        enricher: &str,
        target: EnrichTarget,
        digest: &str,
        answer: &BTreeMap<String, String>,
        expires_at_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO enrich_cache (enricher, digest, answer, expires_at_ms)
             SELECT $1, $2, $3, $4 WHERE EXISTS (
                 SELECT 1 FROM enrich_lookups WHERE enricher = $1 AND kind = $5 AND target = $6 AND digest = $2)
             ON CONFLICT (enricher, digest) DO UPDATE SET answer = excluded.answer, expires_at_ms = excluded.expires_at_ms",
        )
        .bind(enricher)
        .bind(digest)
        .bind(serde_json::to_string(answer)?)
        .bind(expires_at_ms)
        .bind(target.kind())
        .bind(target.id())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Cache entries of every enricher (for tests and the erasure's proof).
    pub async fn cache_entries(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM enrich_cache").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    /// A held record's values, wherever it is now.
    pub async fn held_record(&self, id: i64) -> Result<HeldRecord> {
        let row = sqlx::query("SELECT state, record FROM intake WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        if let Some(row) = &row {
            let (state, record): (String, Option<String>) = (row.try_get("state")?, row.try_get("record")?);
            if let ("queued", Some(record)) = (state.as_str(), record) {
                return Ok(HeldRecord::Queued(serde_json::from_str(&record)?));
            }
        }
        Ok(match self.record(id).await? {
            Some(stored) => HeldRecord::Matched { attributes: stored.attributes, profile_id: stored.profile_id },
            None => HeldRecord::Gone,
        })
    }

    /// Which attributes of a record each enricher wrote before matching, by which call, when.
    pub async fn enrichment_of_records(&self, records: &[i64]) -> Result<Vec<AppliedEnrichment>> {
        let sql = format!(
            "SELECT record_id, enricher, call_id, attributes, at_ms FROM enrich_applied WHERE {} ORDER BY record_id, enricher",
            self.backend.in_ids("record_id", 1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(records)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AppliedEnrichment {
                    record_id: r.try_get("record_id")?,
                    enricher: r.try_get("enricher")?,
                    call_id: r.try_get("call_id")?,
                    attributes: super::json_col(r, "attributes")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect()
    }
}

/// Provenance of values an enricher wrote into a record before it was matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedEnrichment {
    pub record_id: i64,
    pub enricher: String,
    pub call_id: String,
    pub attributes: Vec<String>,
    pub at_ms: i64,
}

impl WriteTx {
    async fn schedule(&mut self, enricher: &str, target: EnrichTarget, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrich_jobs (enricher, kind, target, due_at_ms, created_at_ms) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (enricher, kind, target) DO UPDATE SET
                 attempts = CASE WHEN enrich_jobs.dead_at_ms IS NULL THEN enrich_jobs.attempts ELSE 0 END,
                 due_at_ms = CASE WHEN enrich_jobs.dead_at_ms IS NULL THEN enrich_jobs.due_at_ms ELSE excluded.due_at_ms END,
                 dead_at_ms = NULL",
        )
        .bind(enricher)
        .bind(target.kind())
        .bind(target.id())
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The job is done: removed, and a record it held released to the matcher.
    pub async fn enrich_done(&mut self, enricher: &str, target: EnrichTarget) -> Result<()> {
        sqlx::query("DELETE FROM enrich_jobs WHERE enricher = $1 AND kind = $2 AND target = $3")
            .bind(enricher)
            .bind(target.kind())
            .bind(target.id())
            .execute(self.conn())
            .await?;
        if let EnrichTarget::Record(id) = target {
            self.release_hold(id).await?;
        }
        Ok(())
    }

    /// A held record no longer waits; matchers are woken to take it.
    async fn release_hold(&mut self, intake_id: i64) -> Result<()> {
        sqlx::query("UPDATE intake SET held_until_ms = NULL WHERE id = $1").bind(intake_id).execute(self.conn()).await?;
        self.wake_matchers();
        Ok(())
    }

    /// Write enriched values into a record still queued, with their provenance; false when
    /// the matcher took it meanwhile (its wait was over).
    pub async fn enrich_queued_record(
        &mut self,
        intake_id: i64,
        enricher: &str,
        call_id: &str,
        values: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<bool> {
        let row = sqlx::query("SELECT record FROM intake WHERE id = $1 AND state = 'queued' AND claimed_by IS NULL")
            .bind(intake_id)
            .fetch_optional(self.conn())
            .await?;
        let Some(record) = row.map(|r| r.try_get::<Option<String>, _>("record")).transpose()?.flatten() else { return Ok(false) };
        let mut record: CanonicalRecord = serde_json::from_str(&record)?;
        record.attributes.extend(values.iter().map(|(a, v)| (a.clone(), v.clone())));
        let done = sqlx::query("UPDATE intake SET record = $2 WHERE id = $1 AND state = 'queued' AND claimed_by IS NULL")
            .bind(intake_id)
            .bind(serde_json::to_string(&record)?)
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let attributes: Vec<&String> = values.keys().collect();
        sqlx::query(
            "INSERT INTO enrich_applied (record_id, enricher, call_id, attributes, at_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (record_id, enricher) DO UPDATE SET call_id = excluded.call_id, attributes = excluded.attributes, at_ms = excluded.at_ms",
        )
        .bind(intake_id)
        .bind(enricher)
        .bind(call_id)
        .bind(serde_json::to_string(&attributes)?)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(true)
    }

    /// One more record of `enricher` was matched before its enrichment answered.
    pub async fn count_matched_unenriched(&mut self, enricher: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrich_state (enricher, matched_unenriched) VALUES ($1, 1)
             ON CONFLICT (enricher) DO UPDATE SET matched_unenriched = enrich_state.matched_unenriched + 1",
        )
        .bind(enricher)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// An id for values an enricher writes into a profile, as a finished intake row of the
    /// enricher's source (`enricher/<name>`, the call as its id): stored like a source record,
    /// they take part in survivorship and carry their provenance.
    pub async fn enrichment_record_id(&mut self, source: &str, call_id: &str, now: i64) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO intake (source, source_record_id, received_at_ms, state) VALUES ($1, $2, $3, 'done') RETURNING id",
        )
        .bind(source)
        .bind(call_id)
        .bind(now)
        .fetch_one(self.conn())
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Erasure: the enrichment state of these targets goes, with the cache entries looked up
    /// for them (answers about the person) and the provenance of values written into records.
    pub(super) async fn forget_enrichment(&mut self, kind: &str, targets: &[i64]) -> Result<u64> {
        if targets.is_empty() {
            return Ok(0);
        }
        let ids = json_ids(targets);
        let b = self.backend;
        let cache = format!(
            "DELETE FROM enrich_cache WHERE EXISTS (SELECT 1 FROM enrich_lookups l WHERE l.kind = $2 AND {}
                 AND l.enricher = enrich_cache.enricher AND l.digest = enrich_cache.digest)",
            b.in_ids("l.target", 1)
        );
        let removed = sqlx::query(AssertSqlSafe(cache)).bind(&ids).bind(kind).execute(self.conn()).await?.rows_affected();
        for table in ["enrich_lookups", "enrich_jobs"] {
            let sql = format!("DELETE FROM {table} WHERE kind = $2 AND {}", b.in_ids("target", 1));
            sqlx::query(AssertSqlSafe(sql)).bind(&ids).bind(kind).execute(self.conn()).await?;
        }
        if kind == "record" {
            let sql = format!("DELETE FROM enrich_applied WHERE {}", b.in_ids("record_id", 1));
            sqlx::query(AssertSqlSafe(sql)).bind(&ids).execute(self.conn()).await?;
        }
        Ok(removed)
    }
}
