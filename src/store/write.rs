//! Write transactions: the primitives the matcher and the API compose. Every change and the
//! outbox event describing it are written in the same transaction.

use std::collections::BTreeMap;

use std::sync::Arc;

use sqlx::any::Any;
use sqlx::{AnyConnection, AssertSqlSafe, Row, Transaction};

use super::{
    Backend, Enqueued, FieldError, PROFILE_COLUMNS, ProfileRow, RECORD_COLUMNS, Result, StoredRecord, json_ids,
    profile_of, record_of,
};
use crate::identity::CanonicalRecord;

/// A write transaction. Outbox events and finished intake ids are buffered and written in a
/// few multi-row statements at commit (same transaction, same order), which saves round trips.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    backend: Backend,
    events: Vec<PendingEvent>,
    finished: Vec<i64>,
    outbox: Arc<tokio::sync::Notify>,
}

/// An outbox row, in the JSON shape the insert at commit reads.
#[derive(serde::Serialize)]
struct PendingEvent {
    p: Option<i64>,
    r: Option<i64>,
    t: &'static str,
    d: String,
    a: i64,
}

/// A resolved record to store.
pub struct NewRecord<'a> {
    pub id: i64,
    pub source: &'a str,
    pub source_record_id: &'a str,
    pub observed_at_ms: i64,
    pub received_at_ms: i64,
    pub profile_id: i64,
    pub attributes: &'a BTreeMap<String, String>,
    pub normalised: &'a BTreeMap<String, String>,
    pub evidence: &'a serde_json::Value,
    /// Hashes of its blocking keys and lookup identifiers.
    pub keys: &'a [i64],
}

pub struct NewReview<'a> {
    pub record_id: i64,
    pub other_record_id: i64,
    pub reason: &'a str,
    pub probability: f64,
    pub evidence: &'a serde_json::Value,
}

impl WriteTx {
    pub(super) fn new(tx: Transaction<'static, Any>, backend: Backend, outbox: Arc<tokio::sync::Notify>) -> Self {
        WriteTx { tx, backend, events: Vec::new(), finished: Vec::new(), outbox }
    }

    /// Whether this transaction excludes every other writer (SQLite's single writer lock):
    /// nothing can change between a read and a write inside it.
    pub fn serialised(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub async fn commit(mut self) -> Result<()> {
        if !self.finished.is_empty() {
            let sql = format!(
                "UPDATE intake SET state = 'done', record = NULL, claimed_by = NULL WHERE {}",
                self.backend.in_ids("id", 1)
            );
            sqlx::query(AssertSqlSafe(sql)).bind(json_ids(&self.finished)).execute(&mut *self.tx).await?;
        }
        if !self.events.is_empty() {
            // one statement for every event, inserted in the order they were pushed
            let sql = match self.backend {
                Backend::Sqlite => {
                    "INSERT INTO outbox (profile_id, record_id, type, payload, created_at_ms)
                     SELECT json_extract(value, '$.p'), json_extract(value, '$.r'), json_extract(value, '$.t'),
                            json_extract(value, '$.d'), json_extract(value, '$.a')
                     FROM json_each($1) ORDER BY key"
                }
                Backend::Postgres => {
                    "INSERT INTO outbox (profile_id, record_id, type, payload, created_at_ms)
                     SELECT p, r, t, d, a FROM json_to_recordset($1::json) AS x(p bigint, r bigint, t text, d text, a bigint)"
                }
            };
            if self.backend == Backend::Postgres {
                // Outbox ids are handed out under this lock, held until commit, so they become
                // visible in id order and a feed reading after its cursor never skips an event
                // that commits late (SQLite's single writer gives the same guarantee). Taken
                // last, so a transaction never waits for anything while holding it.
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(super::postgres::OUTBOX_LOCK).execute(&mut *self.tx).await?;
                sqlx::query("SELECT pg_notify($1, '')").bind(super::postgres::OUTBOX_CHANNEL).execute(&mut *self.tx).await?;
            }
            let events = serde_json::to_string(&self.events)?;
            sqlx::query(sql).bind(events).execute(&mut *self.tx).await?;
        }
        self.tx.commit().await?;
        if !self.events.is_empty() {
            self.outbox.notify_waiters();
        }
        Ok(())
    }

    pub(super) async fn enqueue(&mut self, r: &CanonicalRecord, now: i64) -> Result<Enqueued> {
        let inserted = sqlx::query(
            "INSERT INTO intake (source, source_record_id, received_at_ms, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (source, source_record_id) DO NOTHING RETURNING id",
        )
        .bind(&r.source)
        .bind(&r.source_record_id)
        .bind(now)
        .bind(serde_json::to_string(r)?)
        .fetch_optional(&mut *self.tx)
        .await?;
        if let Some(row) = inserted {
            return Ok(Enqueued { intake_id: row.try_get("id")?, duplicate: false });
        }
        let row = sqlx::query("SELECT id FROM intake WHERE source = $1 AND source_record_id = $2")
            .bind(&r.source)
            .bind(&r.source_record_id)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(Enqueued { intake_id: row.try_get("id")?, duplicate: true })
    }

    /// PostgreSQL: wake listening workers when this transaction commits.
    pub(super) async fn notify_work(&mut self) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')").bind(super::postgres::CHANNEL).execute(&mut *self.tx).await?;
        Ok(())
    }

    pub(super) async fn delete_quarantined(&mut self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM quarantine WHERE id = $1").bind(id).execute(&mut *self.tx).await?;
        Ok(())
    }

    pub(super) async fn set_quarantine_errors(&mut self, id: i64, errors: &[FieldError]) -> Result<()> {
        sqlx::query("UPDATE quarantine SET errors = $1 WHERE id = $2")
            .bind(serde_json::to_string(errors)?)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Serialise with every other transaction touching one of these identities (blocking-key
    /// hashes). PostgreSQL: advisory locks taken in sorted order, so two transactions cannot
    /// deadlock on them; SQLite: the writer lock already serialises everything.
    pub async fn lock_keys(&mut self, hashes: &[i64]) -> Result<()> {
        if self.backend != Backend::Postgres || hashes.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT COUNT(pg_advisory_xact_lock(id)) AS n FROM (SELECT DISTINCT id FROM {} AS k ORDER BY id) s",
            self.backend.id_table(1)
        );
        // the ordered sub-select fixes the order the locks are taken in
        sqlx::query(AssertSqlSafe(sql)).bind(json_ids(hashes)).fetch_one(&mut *self.tx).await?;
        Ok(())
    }

    /// Live profiles holding a record with one of these key hashes, oldest first.
    pub async fn candidate_profiles(&mut self, hashes: &[i64]) -> Result<Vec<i64>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT DISTINCT r.profile_id FROM record_keys k JOIN source_records r ON r.id = k.record_id
             WHERE {} ORDER BY r.profile_id",
            self.backend.in_ids("k.hash", 1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(hashes)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(|r| Ok(r.try_get("profile_id")?)).collect()
    }

    /// Lock profile rows and return them. PostgreSQL: `NOWAIT`, because a transaction that
    /// resolves several records locks profiles in record order, not in one global order, so
    /// waiting could deadlock; a lock held elsewhere fails fast instead and the caller retries.
    pub async fn lock_profiles(&mut self, ids: &[i64]) -> Result<Vec<ProfileRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE NOWAIT" } else { "" };
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM profiles WHERE {} ORDER BY id{lock}", self.backend.in_ids("id", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(profile_of).collect()
    }

    /// `(record id, profile id)` of every record of these profiles.
    pub async fn record_ids_of(&mut self, profiles: &[i64]) -> Result<Vec<(i64, i64)>> {
        if profiles.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, profile_id FROM source_records WHERE {} ORDER BY id",
            self.backend.in_ids("profile_id", 1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(profiles)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("profile_id")?))).collect()
    }

    pub async fn records(&mut self, ids: &[i64]) -> Result<Vec<StoredRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {RECORD_COLUMNS} FROM source_records WHERE {} ORDER BY id", self.backend.in_ids("id", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(record_of).collect()
    }

    pub async fn create_profile(&mut self, now: i64) -> Result<i64> {
        let row = sqlx::query("INSERT INTO profiles (created_at_ms, updated_at_ms) VALUES ($1, $1) RETURNING id")
            .bind(now)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(row.try_get("id")?)
    }

    pub async fn insert_record(&mut self, r: &NewRecord<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO source_records (id, source, source_record_id, observed_at_ms, received_at_ms, profile_id,
                                         attributes, normalised, evidence)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(r.id)
        .bind(r.source)
        .bind(r.source_record_id)
        .bind(r.observed_at_ms)
        .bind(r.received_at_ms)
        .bind(r.profile_id)
        .bind(serde_json::to_string(r.attributes)?)
        .bind(serde_json::to_string(r.normalised)?)
        .bind(r.evidence.to_string())
        .execute(&mut *self.tx)
        .await?;
        if !r.keys.is_empty() {
            let sql = format!("INSERT INTO record_keys (hash, record_id) SELECT DISTINCT id, $2 FROM {} AS k", self.backend.id_table(1));
            sqlx::query(AssertSqlSafe(sql)).bind(json_ids(r.keys)).bind(r.id).execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Move records to another profile, with the evidence of their new link.
    pub async fn relink(&mut self, record: i64, profile: i64, evidence: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE source_records SET profile_id = $1, evidence = $2 WHERE id = $3")
            .bind(profile)
            .bind(evidence.to_string())
            .bind(record)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Merge `absorbed` into `survivor`: their records move, they become aliases (and so do
    /// their own aliases, so an alias always points at a live profile).
    pub async fn merge_profiles(&mut self, survivor: i64, absorbed: &[i64], now: i64) -> Result<()> {
        if absorbed.is_empty() {
            return Ok(());
        }
        let b = self.backend;
        let absorbed = json_ids(absorbed);
        let moves = [
            format!("UPDATE source_records SET profile_id = $1 WHERE {}", b.in_ids("profile_id", 2)),
            format!("UPDATE profiles SET merged_into = $1 WHERE {}", b.in_ids("merged_into", 2)),
        ];
        for sql in moves {
            sqlx::query(AssertSqlSafe(sql)).bind(survivor).bind(&absorbed).execute(&mut *self.tx).await?;
        }
        let sql = format!(
            "UPDATE profiles SET merged_into = $1, golden = NULL, record_count = 0, updated_at_ms = $3,
             version = version + 1 WHERE {}",
            b.in_ids("id", 2)
        );
        sqlx::query(AssertSqlSafe(sql)).bind(survivor).bind(&absorbed).bind(now).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Store a profile's recomputed golden record and record count.
    pub async fn set_golden(&mut self, profile: i64, golden: &serde_json::Value, records: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE profiles SET golden = $1, record_count = $2, updated_at_ms = $3, version = version + 1 WHERE id = $4",
        )
        .bind(golden.to_string())
        .bind(records)
        .bind(now)
        .bind(profile)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Append an event to the outbox (written at commit, in call order).
    pub fn push_event(&mut self, kind: &'static str, profile: Option<i64>, record: Option<i64>, payload: &serde_json::Value, at: i64) {
        self.events.push(PendingEvent { p: profile, r: record, t: kind, d: payload.to_string(), a: at });
    }

    pub async fn add_review(&mut self, r: &NewReview<'_>, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO review_items (record_id, other_record_id, reason, probability, evidence, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(r.record_id)
        .bind(r.other_record_id)
        .bind(r.reason)
        .bind(r.probability)
        .bind(r.evidence.to_string())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Close an open review item; false when it was not open any more.
    pub async fn decide_review(&mut self, id: i64, status: &str, by: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE review_items SET status = $1, decided_by = $2, decided_at_ms = $3 WHERE id = $4 AND status = 'open'",
        )
        .bind(status)
        .bind(by)
        .bind(now)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn add_never_merge(&mut self, a: i64, b: i64, now: i64) -> Result<()> {
        let (a, b) = (a.min(b), a.max(b));
        sqlx::query("INSERT INTO never_merge (record_a, record_b, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(a)
            .bind(b)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Never-merge pairs `(record, record)` with one side among `records`.
    pub async fn never_merge_pairs(&mut self, records: &[i64]) -> Result<Vec<(i64, i64)>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (a, b) = (self.backend.in_ids("record_a", 1), self.backend.in_ids("record_b", 1));
        let sql = format!("SELECT record_a, record_b FROM never_merge WHERE {a} OR {b}");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(records)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(|r| Ok((r.try_get("record_a")?, r.try_get("record_b")?))).collect()
    }

    /// The intake item is resolved: at commit its payload is dropped (the source record holds
    /// it now) and the row stays so redeliveries are still absorbed.
    pub fn finish_intake(&mut self, id: i64) {
        self.finished.push(id);
    }
}
