//! Write transactions: the primitives the matcher and the API compose. Every change and the
//! outbox event describing it are written in the same transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sqlx::any::Any;
use sqlx::{AnyConnection, AssertSqlSafe, Row, Transaction};

use super::{
    Backend, Enqueued, FieldError, IntakeItem, PROFILE_COLUMNS, ProfileRow, RECORD_COLUMNS, RECORD_VALUE_COLUMNS, RecordValues, Result,
    StoreError, StoredRecord, json_col, json_ids, postgres_json_rows, profile_of, record_of,
};
use crate::identity::CanonicalRecord;

/// A write transaction. Outbox events and finished intake ids are buffered and written in a
/// few multi-row statements at commit (same transaction, same order), which saves round trips.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    pub(super) backend: Backend,
    /// SQLite: this process's writer slot, held until the transaction ends.
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
    events: Vec<PendingEvent>,
    finished: Vec<i64>,
    /// Records were newly queued: matcher workers are woken at commit.
    queued: bool,
    work: Arc<tokio::sync::Notify>,
    outbox: Arc<tokio::sync::Notify>,
    /// Per Source, how long its records wait for a PreMatch enricher ([`super::Holds`]).
    holds: super::Holds,
}

/// An outbox row, keyed by column for [`WriteTx::bulk_insert`].
#[derive(serde::Serialize)]
struct PendingEvent {
    profile_id: Option<i64>,
    record_id: Option<i64>,
    r#type: &'static str,
    payload: String,
    created_at_ms: i64,
}

const EVENT_COLUMNS: &[(&str, &str)] = &[
    ("profile_id", "bigint"),
    ("record_id", "bigint"),
    ("type", "text"),
    ("payload", "text"),
    ("created_at_ms", "bigint"),
];

/// A resolved record to store; its JSON columns are serialised already.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NewRecord {
    pub id: i64,
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    pub received_at_ms: i64,
    pub profile_id: i64,
    pub attributes: String,
    pub normalised: String,
    pub evidence: String,
    /// Hashes of the terms it added to the term counts, as a JSON array.
    pub terms: String,
    /// Hashes of its blocking keys and lookup identifiers.
    #[serde(skip)]
    pub keys: Vec<i64>,
}

const RECORD_INSERT_COLUMNS: &[(&str, &str)] = &[
    ("id", "bigint"),
    ("source", "text"),
    ("source_record_id", "text"),
    ("observed_at_ms", "bigint"),
    ("received_at_ms", "bigint"),
    ("profile_id", "bigint"),
    ("attributes", "text"),
    ("normalised", "text"),
    ("evidence", "text"),
    ("terms", "text"),
];

/// A key row carries the record's profile, so a block's profiles are read without a join;
/// merges and unmerges keep it current.
#[derive(serde::Serialize)]
struct RecordKey {
    hash: i64,
    profile_id: i64,
    record_id: i64,
}

const RECORD_KEY_COLUMNS: &[(&str, &str)] = &[("hash", "bigint"), ("profile_id", "bigint"), ("record_id", "bigint")];

/// A queued record another worker holds ([`WriteTx::held_before`]).
#[derive(Clone, Debug)]
pub struct HeldRecord {
    pub item: IntakeItem,
    /// Marked by a claim whose lease runs (no transaction holds it).
    pub marked: bool,
}

/// A record a profile named when it was merged away, keyed by column for [`WriteTx::add_merged_records`].
#[derive(serde::Serialize)]
struct MergedRecord {
    profile_id: i64,
    record_id: i64,
}

const MERGED_RECORD_COLUMNS: &[(&str, &str)] = &[("profile_id", "bigint"), ("record_id", "bigint")];

/// What the blocking keys of a batch reach in the store: see [`WriteTx::key_profiles`].
#[derive(Clone, Debug, Default)]
pub struct KeyProfiles {
    /// `(key hash, profile)`, sorted.
    pub pairs: Vec<(i64, i64)>,
    /// Hashes too common to look records up by, sorted.
    pub generic: Vec<i64>,
}

/// A pair for a person to look at.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NewReview {
    pub record_id: i64,
    pub other_record_id: i64,
    pub reason: &'static str,
    pub probability: f64,
    pub evidence: String,
    pub created_at_ms: i64,
}

const REVIEW_COLUMNS: &[(&str, &str)] = &[
    ("record_id", "bigint"),
    ("other_record_id", "bigint"),
    ("reason", "text"),
    ("probability", "double precision"),
    ("evidence", "text"),
    ("created_at_ms", "bigint"),
];

/// A profile created with an id from [`WriteTx::reserve_profile_ids`], in its final state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NewProfile {
    pub id: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Set when it was merged away in the transaction that created it.
    pub merged_into: Option<i64>,
    pub golden: Option<String>,
    pub record_count: i64,
}

const PROFILE_INSERT_COLUMNS: &[(&str, &str)] = &[
    ("id", "bigint"),
    ("created_at_ms", "bigint"),
    ("updated_at_ms", "bigint"),
    ("merged_into", "bigint"),
    ("golden", "text"),
    ("record_count", "bigint"),
];

/// A live profile's recomputed golden record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GoldenUpdate {
    pub id: i64,
    pub golden: String,
    pub record_count: i64,
}

/// A golden record update with the time of the change.
#[derive(serde::Serialize)]
struct Stamped<'a> {
    #[serde(flatten)]
    update: &'a GoldenUpdate,
    updated_at_ms: i64,
}

/// A change to one term count, keyed by column for [`WriteTx::add_term_counts`].
#[derive(serde::Serialize)]
struct TermDelta {
    term: i64,
    records: i64,
}

const TERM_COLUMNS: &[(&str, &str)] = &[("term", "bigint"), ("records", "bigint")];

const GOLDEN_COLUMNS: &[(&str, &str)] =
    &[("id", "bigint"), ("golden", "text"), ("record_count", "bigint"), ("updated_at_ms", "bigint")];

/// An intake queue row, keyed by column for [`WriteTx::enqueue`].
#[derive(serde::Serialize)]
struct IntakeRow<'a> {
    source: &'a str,
    source_record_id: &'a str,
    received_at_ms: i64,
    record: String,
    fingerprint: Option<&'a str>,
    held_until_ms: Option<i64>,
}

const INTAKE_COLUMNS: &[(&str, &str)] = &[
    ("source", "text"),
    ("source_record_id", "text"),
    ("received_at_ms", "bigint"),
    ("record", "text"),
    ("fingerprint", "text"),
    ("held_until_ms", "bigint"),
];

/// A record named for its source (unique in the intake queue).
#[derive(serde::Serialize)]
struct IntakeKey<'a> {
    source: &'a str,
    source_record_id: &'a str,
}

fn owned_key(source: &str, source_record_id: &str) -> (String, String) {
    (source.to_string(), source_record_id.to_string())
}

const INTAKE_KEY_COLUMNS: &[(&str, &str)] = &[("source", "text"), ("source_record_id", "text")];

/// An invalid payload to keep in quarantine with every reason it failed.
pub(super) struct NewQuarantine<'a> {
    pub(super) source: &'a str,
    pub(super) payload: &'a serde_json::Value,
    pub(super) errors: &'a [FieldError],
    /// The payload's [`super::fingerprint`]: a payload re-sent while its entry is kept is
    /// that entry, not a new one.
    pub(super) fingerprint: &'a str,
    pub(super) origin: Option<&'a super::MessageOrigin>,
}

/// A quarantine row, keyed by column for [`WriteTx::quarantine`].
#[derive(serde::Serialize)]
struct QuarantineRow<'a> {
    source: &'a str,
    received_at_ms: i64,
    payload: String,
    errors: String,
    fingerprint: &'a str,
    origin: Option<String>,
}

const QUARANTINE_COLUMNS: &[(&str, &str)] = &[
    ("source", "text"),
    ("received_at_ms", "bigint"),
    ("payload", "text"),
    ("errors", "text"),
    ("fingerprint", "text"),
    ("origin", "text"),
];

/// For each key, the position of its first occurrence: a redelivery inside one batch is
/// absorbed by the earlier copy.
fn first_occurrences<K: Ord + Copy>(keys: &[K]) -> Vec<usize> {
    let mut first = BTreeMap::new();
    keys.iter().enumerate().map(|(i, k)| *first.entry(*k).or_insert(i)).collect()
}

/// `(source, source_record_id) → id` of rows returning those three columns.
/// A quarantined payload named for its source.
#[derive(serde::Serialize)]
struct QuarantineKey<'a> {
    source: &'a str,
    fingerprint: &'a str,
}

const QUARANTINE_KEY_COLUMNS: &[(&str, &str)] = &[("source", "text"), ("fingerprint", "text")];

/// Quarantine entry ids by source and payload fingerprint.
fn quarantine_ids(found: Vec<sqlx::any::AnyRow>) -> Result<BTreeMap<(String, String), i64>> {
    found.iter().map(|r| Ok(((r.try_get("source")?, r.try_get("fingerprint")?), r.try_get("id")?))).collect()
}

fn keyed_ids(found: Vec<sqlx::any::AnyRow>) -> Result<BTreeMap<(String, String), i64>> {
    found.iter().map(|r| Ok(((r.try_get("source")?, r.try_get("source_record_id")?), r.try_get("id")?))).collect()
}

/// SQLite's bound on the parameters of one statement.
const SQLITE_MAX_PARAMETERS: usize = 32_766;
/// Rows in SQLite's largest `VALUES` chunk.
const SQLITE_MAX_CHUNK: usize = 256;

/// Rows in the next `VALUES` chunk of `remaining`: the largest power of two that fits, so
/// every chunk size is one of a few.
fn sqlite_chunk(remaining: usize, columns: usize) -> usize {
    let most = remaining.min(SQLITE_MAX_CHUNK).min(SQLITE_MAX_PARAMETERS / columns.max(1));
    1 << most.ilog2()
}

/// The derived table `x` over `rows` rows of `columns`, plus `ord`. Parameters are anonymous
/// (`?`): SQLite looks a numbered one's name up in a list, which made binding a chunk
/// quadratic in its size.
fn sqlite_values(columns: &[(&str, &str)], rows: usize) -> String {
    let width = columns.len();
    let tuple = vec!["?"; width].join(", ");
    let tuples: Vec<String> = (0..rows).map(|r| format!("({tuple}, {r})")).collect();
    let names: Vec<String> =
        columns.iter().enumerate().map(|(i, (c, _))| format!("column{} AS {c}", i + 1)).collect();
    format!("(SELECT {}, column{} AS ord FROM (VALUES {})) AS x", names.join(", "), width + 1, tuples.join(", "))
}

impl WriteTx {
    pub(super) fn new(
        tx: Transaction<'static, Any>,
        backend: Backend,
        writer: Option<tokio::sync::OwnedMutexGuard<()>>,
        work: Arc<tokio::sync::Notify>,
        outbox: Arc<tokio::sync::Notify>,
        holds: super::Holds,
    ) -> Self {
        WriteTx { tx, backend, _writer: writer, events: Vec::new(), finished: Vec::new(), queued: false, work, outbox, holds }
    }

    /// Matcher workers are woken at commit: records became claimable.
    pub(super) fn wake_matchers(&mut self) {
        self.queued = true;
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
        if self.queued && self.backend == Backend::Postgres {
            // delivered at commit, to the matcher workers of every process
            sqlx::query("SELECT pg_notify($1, '')").bind(super::postgres::CHANNEL).execute(&mut *self.tx).await?;
        }
        let wrote_events = !self.events.is_empty();
        if wrote_events {
            if self.backend == Backend::Postgres {
                // Outbox ids are handed out under this lock, held until commit, so they become
                // visible in id order and a feed reading after its cursor never skips an event
                // that commits late (SQLite's single writer gives the same guarantee). Taken
                // last, so a transaction never waits for anything while holding it.
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(super::postgres::OUTBOX_LOCK).execute(&mut *self.tx).await?;
                sqlx::query("SELECT pg_notify($1, '')").bind(super::postgres::OUTBOX_CHANNEL).execute(&mut *self.tx).await?;
            }
            let events = std::mem::take(&mut self.events);
            self.bulk_insert("outbox", EVENT_COLUMNS, &events).await?;
        }
        self.tx.commit().await?;
        if self.queued {
            self.work.notify_waiters();
        }
        if wrote_events {
            self.outbox.notify_waiters();
        }
        Ok(())
    }

    /// End the transaction without writing anything: its locks are released now, not when
    /// its connection is next used.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// `INSERT INTO table` the rows of the derived table `x` (see [`WriteTx::over_rows`]), in
    /// row order: ids handed out follow it.
    fn insert_sql(table: &str, columns: &[(&str, &str)]) -> impl Fn(&str) -> String {
        let names = columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
        let table = table.to_string();
        move |x: &str| format!("INSERT INTO {table} ({names}) SELECT {names} FROM {x} ORDER BY x.ord")
    }

    /// Insert `rows` (serialised to objects keyed by column name), in order.
    async fn bulk_insert<T: serde::Serialize>(&mut self, table: &str, columns: &[(&str, &str)], rows: &[T]) -> Result<()> {
        self.over_rows(columns, rows, Self::insert_sql(table, columns)).await?;
        Ok(())
    }

    /// Run a statement over `rows` (serialised to objects keyed by column name), which it sees
    /// as the derived table `x` of `columns` plus `ord`, each row's position; the statement
    /// has no other parameters. Returns the rows the statement returns.
    ///
    /// PostgreSQL: the rows as one JSON array parameter, one statement. SQLite: the rows bound
    /// as parameters of a `VALUES` list, in chunks of power-of-two sizes, so a handful of
    /// statement texts are prepared once; JSON made SQLite parse and unescape every text
    /// column (a golden record is JSON inside that JSON), a fifth of what a batch cost.
    async fn over_rows<T: serde::Serialize>(
        &mut self,
        columns: &[(&str, &str)],
        rows: &[T],
        statement: impl Fn(&str) -> String,
    ) -> Result<Vec<sqlx::any::AnyRow>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if self.backend == Backend::Postgres {
            let sql = statement(&postgres_json_rows(columns, 1));
            return Ok(sqlx::query(AssertSqlSafe(sql)).bind(serde_json::to_string(rows)?).fetch_all(&mut *self.tx).await?);
        }
        let mut out = Vec::new();
        let mut rest = rows;
        while !rest.is_empty() {
            let n = sqlite_chunk(rest.len(), columns.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let mut query = sqlx::query(AssertSqlSafe(statement(&sqlite_values(columns, n))));
            for row in chunk {
                let serde_json::Value::Object(mut fields) = serde_json::to_value(row)? else {
                    return Err(StoreError::RowShape("a row must serialise to an object".into()));
                };
                for (name, kind) in columns {
                    let value = fields.remove(*name).ok_or_else(|| StoreError::RowShape(format!("no column {name}")))?;
                    query = match (*kind, value) {
                        (_, serde_json::Value::Null) => query.bind(None::<i64>),
                        ("bigint", serde_json::Value::Number(n)) => query.bind(n.as_i64()),
                        ("double precision", serde_json::Value::Number(n)) => query.bind(n.as_f64()),
                        ("text", serde_json::Value::String(s)) => query.bind(s),
                        (kind, value) => {
                            return Err(StoreError::RowShape(format!("column {name} ({kind}) cannot hold {value}")));
                        }
                    };
                }
            }
            out.extend(query.fetch_all(&mut *self.tx).await?);
        }
        Ok(out)
    }

    /// Queue records, in order, in multi-row statements, each with the fingerprint of the
    /// payload it came from (none: unknown). A redelivery (same source + record id, already
    /// queued or earlier in `records`) is absorbed: reported as a duplicate with the id of the
    /// copy that was queued, and as a conflict when both fingerprints are known and differ.
    pub(super) async fn enqueue(&mut self, records: &[(&CanonicalRecord, Option<&str>)], now: i64) -> Result<Vec<Enqueued>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(&str, &str)> = records.iter().map(|(r, _)| (r.source.as_str(), r.source_record_id.as_str())).collect();
        let first = first_occurrences(&keys);
        let holds = self.holds.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let rows = (0..records.len())
            .filter(|&i| first[i] == i)
            .map(|i| {
                let (source, source_record_id) = keys[i];
                let (record, fingerprint) = records[i];
                let held_until_ms = holds.get(source).map(|wait_ms| now + wait_ms);
                let record = serde_json::to_string(record)?;
                Ok(IntakeRow { source, source_record_id, received_at_ms: now, record, fingerprint, held_until_ms })
            })
            .collect::<Result<Vec<_>>>()?;
        let insert = Self::insert_sql("intake", INTAKE_COLUMNS);
        let sql = |x: &str| format!("{} ON CONFLICT (source, source_record_id) DO NOTHING RETURNING id, source, source_record_id", insert(x));
        // RETURNING lists rows in no particular order: they are told apart by their key
        let inserted = keyed_ids(self.over_rows(INTAKE_COLUMNS, &rows, sql).await?)?;
        let absorbed: Vec<IntakeKey> = rows
            .iter()
            .filter(|r| !inserted.contains_key(&owned_key(r.source, r.source_record_id)))
            .map(|r| IntakeKey { source: r.source, source_record_id: r.source_record_id })
            .collect();
        // the id and fingerprint of each absorbed record's first delivery
        let mut existing: BTreeMap<(String, String), (i64, Option<String>)> = BTreeMap::new();
        if !absorbed.is_empty() {
            let sql = |x: &str| {
                format!(
                    "SELECT i.id, i.source, i.source_record_id, i.fingerprint FROM {x} JOIN intake i
                     ON i.source = x.source AND i.source_record_id = x.source_record_id"
                )
            };
            for row in self.over_rows(INTAKE_KEY_COLUMNS, &absorbed, sql).await? {
                let key = (row.try_get("source")?, row.try_get("source_record_id")?);
                existing.insert(key, (row.try_get("id")?, row.try_get("fingerprint")?));
            }
        }
        self.queued |= !inserted.is_empty();
        keys.iter()
            .enumerate()
            .map(|(i, &(source, id))| {
                let key = owned_key(source, id);
                let fingerprint = records[i].1;
                // queue rows are never deleted: a key not inserted now was queued before
                let (intake_id, first_fingerprint) = match (inserted.get(&key), existing.get(&key)) {
                    (Some(&intake_id), _) => (intake_id, records[first[i]].1),
                    (None, Some((intake_id, stored))) => (*intake_id, stored.as_deref()),
                    (None, None) => return Err(sqlx::Error::RowNotFound.into()),
                };
                let duplicate = first[i] != i || !inserted.contains_key(&key);
                let conflict = duplicate && matches!((fingerprint, first_fingerprint), (Some(a), Some(b)) if a != b);
                Ok(Enqueued { intake_id, duplicate, conflict })
            })
            .collect()
    }

    /// Keep invalid payloads in quarantine; returns their ids, in order. A payload its source
    /// sent before, whose entry is still kept (or earlier in `entries`), is that entry: the
    /// same invalid record re-sent is one entry, however often it comes.
    pub(super) async fn quarantine(&mut self, entries: &[NewQuarantine<'_>], now: i64) -> Result<Vec<i64>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<(&str, &str)> = entries.iter().map(|e| (e.source, e.fingerprint)).collect();
        let first = first_occurrences(&keys);
        let rows = (0..entries.len())
            .filter(|&i| first[i] == i)
            .map(|i| {
                let e = &entries[i];
                Ok(QuarantineRow {
                    source: e.source,
                    received_at_ms: now,
                    payload: e.payload.to_string(),
                    errors: serde_json::to_string(e.errors)?,
                    fingerprint: e.fingerprint,
                    origin: e.origin.map(serde_json::to_string).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let insert = Self::insert_sql("quarantine", QUARANTINE_COLUMNS);
        let sql = |x: &str| format!("{} ON CONFLICT (source, fingerprint) DO NOTHING RETURNING id, source, fingerprint", insert(x));
        let mut ids = quarantine_ids(self.over_rows(QUARANTINE_COLUMNS, &rows, sql).await?)?;
        let kept: Vec<QuarantineKey> = rows
            .iter()
            .filter(|r| !ids.contains_key(&(r.source.to_string(), r.fingerprint.to_string())))
            .map(|r| QuarantineKey { source: r.source, fingerprint: r.fingerprint })
            .collect();
        if !kept.is_empty() {
            let sql = |x: &str| {
                format!(
                    "SELECT q.id, q.source, q.fingerprint FROM {x} JOIN quarantine q
                     ON q.source = x.source AND q.fingerprint = x.fingerprint"
                )
            };
            ids.extend(quarantine_ids(self.over_rows(QUARANTINE_KEY_COLUMNS, &kept, sql).await?)?);
        }
        keys.iter()
            .map(|&(source, fingerprint)| {
                ids.get(&(source.to_string(), fingerprint.to_string())).copied().ok_or_else(|| sqlx::Error::RowNotFound.into())
            })
            .collect()
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

    /// The oldest queued intake items (those a claim would take), unmarked: this transaction
    /// claims them until it commits or rolls back, by SQLite's writer lock or by PostgreSQL's
    /// row locks, which other claimers skip.
    pub async fn queued(&mut self, limit: i64, lease: std::time::Duration) -> Result<Vec<IntakeItem>> {
        let now = super::now_ms();
        let stale = now - lease.as_millis() as i64;
        let sql = match self.backend {
            Backend::Sqlite => super::sqlite::QUEUED,
            Backend::Postgres => super::postgres::QUEUED,
        };
        let rows = sqlx::query(sql).bind(stale).bind(limit).bind(now).fetch_all(&mut *self.tx).await?;
        super::intake_items(&rows)
    }

    /// The queued records older than `newest` that this transaction did not claim (`mine`), in
    /// id order: other workers hold them, locked by a claiming transaction or marked by a
    /// claim under `lease` (or they were queued by a transaction that committed late).
    /// Records waiting for a PreMatch enricher are not held by anyone: waiting for them would
    /// delay the records of the same person that need no enrichment.
    pub async fn held_before(&mut self, newest: i64, mine: &[i64], lease: std::time::Duration) -> Result<Vec<HeldRecord>> {
        let now = super::now_ms();
        let stale = now - lease.as_millis() as i64;
        let sql = format!(
            "SELECT id, received_at_ms, record, claimed_at_ms FROM intake
             WHERE state = 'queued' AND id < $1 AND record IS NOT NULL AND NOT ({})
               AND (held_until_ms IS NULL OR held_until_ms <= $3) ORDER BY id",
            self.backend.in_ids("id", 2)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(newest).bind(json_ids(mine)).bind(now).fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|row| {
                let item = IntakeItem { id: row.try_get("id")?, received_at_ms: row.try_get("received_at_ms")?, record: json_col(row, "record")? };
                let claimed_at: Option<i64> = row.try_get("claimed_at_ms")?;
                Ok(HeldRecord { item, marked: claimed_at.is_some_and(|at| at >= stale) })
            })
            .collect()
    }

    /// Serialise with every other transaction touching one of these identities (blocking-key
    /// hashes). PostgreSQL: advisory locks taken in sorted order, so two transactions cannot
    /// deadlock on them; SQLite: the writer lock already serialises everything.
    pub async fn lock_keys(&mut self, hashes: &[i64]) -> Result<()> {
        let hashes_sql = format!("SELECT id AS hash FROM {} AS k", self.backend.id_table(1));
        self.lock_hashes(&hashes_sql, hashes).await
    }

    /// PostgreSQL: take the advisory locks of every key these stored records carry, as
    /// [`WriteTx::lock_keys`] does. Whoever moves records to another profile without merging
    /// their profile away (an unmerge) takes them first, so a batch that holds a key reads
    /// where its records are and nothing moves them until it commits.
    pub async fn lock_record_keys(&mut self, records: &[i64]) -> Result<()> {
        let hashes_sql = format!("SELECT hash FROM record_keys WHERE {}", self.backend.in_ids("record_id", 1));
        self.lock_hashes(&hashes_sql, records).await
    }

    /// PostgreSQL: the advisory locks of the hashes `hashes_sql` selects (a `hash` column, from
    /// the id list bound at `$1`), in sorted order.
    async fn lock_hashes(&mut self, hashes_sql: &str, ids: &[i64]) -> Result<()> {
        if self.backend != Backend::Postgres || ids.is_empty() {
            return Ok(());
        }
        // the ordered sub-select fixes the order the locks are taken in
        let sql = format!("SELECT COUNT(pg_advisory_xact_lock(hash)) AS n FROM (SELECT DISTINCT hash FROM ({hashes_sql}) h ORDER BY hash) s");
        sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_one(&mut *self.tx).await?;
        Ok(())
    }

    /// `(key hash, profile)` for every stored record carrying one of these key hashes, sorted,
    /// and the hashes that are generic: carried by more than `max_block` records, too common to
    /// find candidates by, so their records are not read. The profiles are live: a merge moves
    /// the records of the profiles it absorbs.
    pub async fn key_profiles(&mut self, hashes: &[i64], max_block: u32) -> Result<KeyProfiles> {
        if hashes.is_empty() {
            return Ok(KeyProfiles::default());
        }
        // counting stops at the limit, so a generic key costs `max_block` index entries, not
        // its whole block
        let select = match self.backend {
            // no LATERAL: the block is counted, then read again for the keys that are kept
            Backend::Sqlite => format!(
                "WITH counted AS MATERIALIZED (
                     SELECT w.id AS hash, (SELECT COUNT(*) FROM (SELECT 1 FROM record_keys k WHERE k.hash = w.id LIMIT $2) AS c) AS n
                     FROM {} AS w)
                 SELECT DISTINCT k.hash, k.profile_id FROM record_keys k WHERE k.hash IN (SELECT hash FROM counted WHERE n < $2)
                 UNION ALL SELECT hash, NULL FROM counted WHERE n >= $2",
                self.backend.id_table(1)
            ),
            // each block read once, up to the limit (counting first, then reading the kept
            // blocks, made this the server's costliest statement)
            Backend::Postgres => format!(
                "WITH hits AS MATERIALIZED (
                     SELECT w.id AS hash, l.profile_id, COUNT(*) OVER (PARTITION BY w.id) AS n
                     FROM (SELECT DISTINCT id FROM {} AS d) AS w CROSS JOIN LATERAL (SELECT k.profile_id FROM record_keys k WHERE k.hash = w.id LIMIT $2) AS l)
                 SELECT DISTINCT hash, profile_id FROM hits WHERE n < $2
                 UNION ALL SELECT DISTINCT hash, NULL::bigint FROM hits WHERE n >= $2",
                self.backend.id_table(1)
            ),
        };
        let rows: Vec<(i64, Option<i64>)> =
            self.id_rows(&select, "hash, profile_id", hashes, Some(i64::from(max_block) + 1)).await?;
        let mut out = KeyProfiles::default();
        for (hash, profile) in rows {
            match profile {
                Some(profile) => out.pairs.push((hash, profile)),
                None => out.generic.push(hash),
            }
        }
        out.pairs.sort_unstable();
        out.generic.sort_unstable();
        Ok(out)
    }

    /// `(key hash, profile)` for up to `per_key` profiles holding a record with each of these
    /// key hashes, sorted: for keys that are never generic (source identifiers), however many
    /// records carry them. The walk reads one index entry per profile, not one per record (a
    /// customer of ten years has thousands of records under one id, in one profile).
    pub async fn profiles_per_key(&mut self, hashes: &[i64], per_key: u32) -> Result<Vec<(i64, i64)>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!(
            "WITH RECURSIVE walk (hash, profile_id, n) AS (
                 SELECT w.id, (SELECT MIN(k.profile_id) FROM record_keys k WHERE k.hash = w.id), 1
                 FROM (SELECT DISTINCT id FROM {} AS d) AS w
                 UNION ALL
                 SELECT walk.hash, (SELECT MIN(k.profile_id) FROM record_keys k WHERE k.hash = walk.hash AND k.profile_id > walk.profile_id),
                        walk.n + 1
                 FROM walk WHERE walk.profile_id IS NOT NULL AND walk.n < $2)
             SELECT hash, profile_id FROM walk WHERE profile_id IS NOT NULL",
            self.backend.id_table(1)
        );
        let mut rows: Vec<(i64, i64)> = self.id_rows(&select, "hash, profile_id", hashes, Some(i64::from(per_key))).await?;
        rows.sort_unstable();
        Ok(rows)
    }

    /// Lock profile rows and return them. PostgreSQL: `NOWAIT`, because a transaction that
    /// resolves several records locks profiles in record order, not in one global order, so
    /// waiting could deadlock; a lock held elsewhere fails fast instead and the caller retries.
    pub async fn lock_profiles(&mut self, ids: &[i64]) -> Result<Vec<ProfileRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.lock_profiles_sql(PROFILE_COLUMNS);
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(profile_of).collect()
    }

    /// Lock profile rows as [`WriteTx::lock_profiles`] does; return `(id, merged_into)` only.
    pub async fn lock_profile_ids(&mut self, ids: &[i64]) -> Result<Vec<(i64, Option<i64>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let select = self.lock_profiles_sql("id, merged_into");
        let mut rows: Vec<(i64, Option<i64>)> = self.id_rows(&select, "id, merged_into", ids, None).await?;
        rows.sort_unstable();
        Ok(rows)
    }

    fn lock_profiles_sql(&self, columns: &str) -> String {
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE NOWAIT" } else { "" };
        format!("SELECT {columns} FROM profiles WHERE {} ORDER BY id{lock}", self.backend.in_ids("id", 1))
    }

    /// `columns` of `select` (which reads the id list bound at `$1`), aggregated into one JSON
    /// array: one row crosses from the database instead of thousands, and fetching row by row
    /// was what a batch spent most of its time on.
    async fn id_rows<T: serde::de::DeserializeOwned>(
        &mut self,
        select: &str,
        columns: &str,
        ids: &[i64],
        second: Option<i64>,
    ) -> Result<Vec<T>> {
        let sql = match self.backend {
            Backend::Sqlite => format!("SELECT json_group_array(json_array({columns})) AS rows FROM ({select})"),
            Backend::Postgres => {
                format!("SELECT COALESCE(json_agg(json_build_array({columns})), '[]')::text AS rows FROM ({select}) AS q")
            }
        };
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids));
        if let Some(second) = second {
            query = query.bind(second);
        }
        let row = query.fetch_one(&mut *self.tx).await?;
        let rows: String = row.try_get("rows")?;
        Ok(serde_json::from_str(&rows)?)
    }

    /// `(record id, profile id)` of every record of these profiles.
    pub async fn record_ids_of(&mut self, profiles: &[i64]) -> Result<Vec<(i64, i64)>> {
        if profiles.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!("SELECT id, profile_id FROM source_records WHERE {}", self.backend.in_ids("profile_id", 1));
        let mut rows: Vec<(i64, i64)> = self.id_rows(&select, "id, profile_id", profiles, None).await?;
        rows.sort_unstable();
        Ok(rows)
    }

    pub async fn records(&mut self, ids: &[i64]) -> Result<Vec<StoredRecord>> {
        self.record_rows(RECORD_COLUMNS, ids, record_of).await
    }

    /// The values of these records, for the matcher to prepare them, in id order. The matcher
    /// reads thousands per batch, so they come back as one aggregated row ([`WriteTx::id_rows`]).
    pub async fn record_values(&mut self, ids: &[i64]) -> Result<Vec<RecordValues>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let select = format!("SELECT {RECORD_VALUE_COLUMNS} FROM source_records WHERE {}", self.backend.in_ids("id", 1));
        // the two JSON columns are embedded as JSON, not as strings holding JSON
        let columns = match self.backend {
            Backend::Sqlite => "id, source, source_record_id, observed_at_ms, json(attributes), json(normalised)",
            Backend::Postgres => "id, source, source_record_id, observed_at_ms, attributes::json, normalised::json",
        };
        let mut rows: Vec<RecordValues> = self.id_rows(&select, columns, ids, None).await?;
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }

    /// `columns` of these records, in id order, each row read by `read`.
    async fn record_rows<T>(&mut self, columns: &str, ids: &[i64], read: fn(&sqlx::any::AnyRow) -> Result<T>) -> Result<Vec<T>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {columns} FROM source_records WHERE {} ORDER BY id", self.backend.in_ids("id", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_all(&mut *self.tx).await?;
        rows.iter().map(read).collect()
    }

    pub async fn create_profile(&mut self, now: i64) -> Result<i64> {
        let row = sqlx::query("INSERT INTO profiles (created_at_ms, updated_at_ms) VALUES ($1, $1) RETURNING id")
            .bind(now)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(row.try_get("id")?)
    }

    /// `n` ids for profiles this transaction creates with [`WriteTx::insert_profiles`], ascending.
    /// SQLite: the next ids after the highest ever used (the writer lock keeps them ours);
    /// PostgreSQL: drawn from the identity sequence, so concurrent transactions never share one.
    pub async fn reserve_profile_ids(&mut self, n: usize) -> Result<Vec<i64>> {
        match self.backend {
            Backend::Sqlite => {
                let row = sqlx::query(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'profiles'), 0),
                                COALESCE((SELECT MAX(id) FROM profiles), 0)) AS top",
                )
                .fetch_one(&mut *self.tx)
                .await?;
                let top: i64 = row.try_get("top")?;
                Ok((top + 1..=top + n as i64).collect())
            }
            Backend::Postgres => {
                let rows = sqlx::query(
                    "SELECT nextval(pg_get_serial_sequence('profiles', 'id')) AS id FROM generate_series(1, $1)",
                )
                .bind(n as i64)
                .fetch_all(&mut *self.tx)
                .await?;
                let mut ids = rows.iter().map(|r| r.try_get("id")).collect::<std::result::Result<Vec<i64>, _>>()?;
                ids.sort_unstable();
                Ok(ids)
            }
        }
    }

    pub async fn insert_profiles(&mut self, profiles: &[NewProfile]) -> Result<()> {
        self.bulk_insert("profiles", PROFILE_INSERT_COLUMNS, profiles).await
    }

    /// Store resolved records and their key hashes, in multi-row statements.
    pub async fn insert_records(&mut self, records: &[NewRecord]) -> Result<()> {
        self.bulk_insert("source_records", RECORD_INSERT_COLUMNS, records).await?;
        let mut keys: Vec<RecordKey> = Vec::new();
        for r in records {
            let mut hashes = r.keys.clone();
            hashes.sort_unstable();
            hashes.dedup();
            keys.extend(hashes.into_iter().map(|hash| RecordKey { hash, profile_id: r.profile_id, record_id: r.id }));
        }
        self.bulk_insert("record_keys", RECORD_KEY_COLUMNS, &keys).await
    }

    /// How many records carry each of `terms` (hashes of term keys); a term no record
    /// carries is absent.
    pub async fn term_counts(&mut self, terms: &[i64]) -> Result<HashMap<i64, i64>> {
        if terms.is_empty() {
            return Ok(HashMap::new());
        }
        let select = format!("SELECT term, records FROM term_counts WHERE {}", self.backend.in_ids("term", 1));
        let rows: Vec<(i64, i64)> = self.id_rows(&select, "term, records", terms, None).await?;
        Ok(rows.into_iter().collect())
    }

    /// Add each `(term, delta)` to the term counts; a count falling to zero is removed. Pass
    /// the terms sorted: concurrent writers then take the rows' locks in one order.
    pub async fn add_term_counts(&mut self, deltas: &[(i64, i64)]) -> Result<()> {
        let rows: Vec<TermDelta> = deltas.iter().map(|&(term, records)| TermDelta { term, records }).collect();
        let insert = Self::insert_sql("term_counts", TERM_COLUMNS);
        let sql = |x: &str| format!("{} ON CONFLICT (term) DO UPDATE SET records = term_counts.records + excluded.records", insert(x));
        self.over_rows(TERM_COLUMNS, &rows, sql).await?;
        let fallen: Vec<i64> = deltas.iter().filter(|(_, d)| *d < 0).map(|(t, _)| *t).collect();
        if !fallen.is_empty() {
            let sql = format!("DELETE FROM term_counts WHERE records <= 0 AND {}", self.backend.in_ids("term", 1));
            sqlx::query(AssertSqlSafe(sql)).bind(json_ids(&fallen)).execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Take the terms of these records back out of the term counts (before they are deleted).
    pub(super) async fn uncount_terms(&mut self, records: &[i64]) -> Result<()> {
        let select = format!("SELECT terms FROM source_records WHERE terms IS NOT NULL AND {}", self.backend.in_ids("id", 1));
        let rows: Vec<(String,)> = self.id_rows(&select, "terms", records, None).await?;
        let mut deltas: BTreeMap<i64, i64> = BTreeMap::new();
        for (terms,) in rows {
            for term in serde_json::from_str::<Vec<i64>>(&terms)? {
                *deltas.entry(term).or_default() -= 1;
            }
        }
        self.add_term_counts(&deltas.into_iter().collect::<Vec<_>>()).await
    }

    pub async fn add_reviews(&mut self, reviews: &[NewReview]) -> Result<()> {
        self.bulk_insert("review_items", REVIEW_COLUMNS, reviews).await
    }

    /// The pairs of profiles, `(smaller id, larger id)`, that an open review item links, among
    /// the items holding a record of one of `profiles`.
    pub async fn open_review_pairs(&mut self, profiles: &[i64]) -> Result<Vec<(i64, i64)>> {
        if profiles.is_empty() {
            return Ok(Vec::new());
        }
        // one index-driven half per side of the pair (an OR across the join would scan)
        let side = |mine: &str, theirs: &str| {
            format!(
                "SELECT a.profile_id AS p, b.profile_id AS q FROM source_records a
                 JOIN review_items r ON r.{mine} = a.id AND r.status = 'open'
                 JOIN source_records b ON b.id = r.{theirs}
                 WHERE {}",
                self.backend.in_ids("a.profile_id", 1)
            )
        };
        let select = format!("{} UNION ALL {}", side("record_id", "other_record_id"), side("other_record_id", "record_id"));
        let rows: Vec<(i64, i64)> = self.id_rows(&select, "p, q", profiles, None).await?;
        let mut pairs: Vec<(i64, i64)> = rows.into_iter().map(|(p, q)| (p.min(q), p.max(q))).collect();
        pairs.sort_unstable();
        pairs.dedup();
        Ok(pairs)
    }

    /// Store recomputed golden records of live profiles.
    pub async fn set_goldens(&mut self, updates: &[GoldenUpdate], now: i64) -> Result<()> {
        let sql = |x: &str| {
            format!(
                "UPDATE profiles SET golden = x.golden, record_count = x.record_count,
                 updated_at_ms = x.updated_at_ms, version = version + 1 FROM {x} WHERE profiles.id = x.id"
            )
        };
        let rows: Vec<Stamped<'_>> = updates.iter().map(|update| Stamped { update, updated_at_ms: now }).collect();
        self.over_rows(GOLDEN_COLUMNS, &rows, sql).await?;
        Ok(())
    }

    /// Move records to another profile, with the evidence of their new link. On PostgreSQL the
    /// caller holds the locks of their keys ([`WriteTx::lock_record_keys`]).
    pub async fn relink(&mut self, record: i64, profile: i64, evidence: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE source_records SET profile_id = $1, evidence = $2 WHERE id = $3")
            .bind(profile)
            .bind(evidence.to_string())
            .bind(record)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE record_keys SET profile_id = $1 WHERE record_id = $2")
            .bind(profile)
            .bind(record)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Merge `absorbed` into `survivor`: their records move, they become aliases (and so do
    /// their own aliases, so an alias always points at a live profile), and the open review
    /// items between them are closed as `superseded`.
    pub async fn merge_profiles(&mut self, survivor: i64, absorbed: &[i64], now: i64) -> Result<()> {
        if absorbed.is_empty() {
            return Ok(());
        }
        let b = self.backend;
        let absorbed = json_ids(absorbed);
        // what each absorbed id names from now on: the records it holds (a record of this
        // transaction not stored yet is named by the caller, `add_merged_records`)
        let named = format!(
            "INSERT INTO merged_records (profile_id, record_id) SELECT profile_id, id FROM source_records WHERE {}
             ON CONFLICT DO NOTHING",
            b.in_ids("profile_id", 1)
        );
        sqlx::query(AssertSqlSafe(named)).bind(&absorbed).execute(&mut *self.tx).await?;
        // key rows first: they find the moving records through the records' profile index
        let moves = [
            format!(
                "UPDATE record_keys SET profile_id = $1 WHERE record_id IN (SELECT id FROM source_records WHERE {})",
                b.in_ids("profile_id", 2)
            ),
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
        // the question an open item between the merged profiles asked is answered now
        sqlx::query(
            "UPDATE review_items SET status = 'superseded', decided_at_ms = $2 WHERE id IN (
                 SELECT r.id FROM source_records a
                 JOIN review_items r ON r.record_id = a.id AND r.status = 'open'
                 JOIN source_records b ON b.id = r.other_record_id
                 WHERE a.profile_id = $1 AND b.profile_id = $1)",
        )
        .bind(survivor)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Record that each `(profile, record)` profile, merged away, named that record (one
    /// written in this transaction, after it: [`WriteTx::merge_profiles`] names the stored ones).
    pub async fn add_merged_records(&mut self, named: &[(i64, i64)]) -> Result<()> {
        let rows: Vec<MergedRecord> = named.iter().map(|&(profile_id, record_id)| MergedRecord { profile_id, record_id }).collect();
        self.bulk_insert("merged_records", MERGED_RECORD_COLUMNS, &rows).await
    }

    /// `(alias, holder)`: for each id merged into `profile`, the live profiles now holding the
    /// records it named, sorted.
    pub async fn alias_holders(&mut self, profile: i64) -> Result<Vec<(i64, i64)>> {
        let select = format!(
            "SELECT DISTINCT a.id AS alias, r.profile_id AS holder FROM profiles a
             JOIN merged_records m ON m.profile_id = a.id JOIN source_records r ON r.id = m.record_id
             WHERE {}",
            self.backend.in_ids("a.merged_into", 1)
        );
        let mut rows: Vec<(i64, i64)> = self.id_rows(&select, "alias, holder", &[profile], None).await?;
        rows.sort_unstable();
        Ok(rows)
    }

    /// An alias leads to `holder` now: the profile that holds the records it named.
    pub async fn repoint_alias(&mut self, alias: i64, holder: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE profiles SET merged_into = $1, updated_at_ms = $2, version = version + 1 WHERE id = $3")
            .bind(holder)
            .bind(now)
            .bind(alias)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The records an alias named went to several profiles: it leads to none of them alone.
    pub async fn split_alias(&mut self, alias: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE profiles SET merged_into = NULL, split_at_ms = $1, updated_at_ms = $1, version = version + 1 WHERE id = $2",
        )
        .bind(now)
        .bind(alias)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Replace the evidence of a record's link to its profile (it stays where it is).
    pub async fn set_evidence(&mut self, record: i64, evidence: &serde_json::Value) -> Result<()> {
        sqlx::query("UPDATE source_records SET evidence = $1 WHERE id = $2")
            .bind(evidence.to_string())
            .bind(record)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Append an event to the outbox (written at commit, in call order).
    pub fn push_event(&mut self, kind: &'static str, profile: Option<i64>, record: Option<i64>, payload: &serde_json::Value, at: i64) {
        self.events.push(PendingEvent {
            profile_id: profile,
            record_id: record,
            r#type: kind,
            payload: payload.to_string(),
            created_at_ms: at,
        });
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

#[cfg(test)]
mod tests {
    use super::{SQLITE_MAX_CHUNK, first_occurrences, sqlite_chunk, sqlite_values};

    #[test]
    fn a_repeated_key_points_at_its_first_copy() {
        assert_eq!(first_occurrences(&[("a", "1"), ("a", "2"), ("a", "1"), ("b", "1"), ("a", "2")]), vec![0, 1, 0, 3, 1]);
        assert!(first_occurrences::<(&str, &str)>(&[]).is_empty());
    }

    #[test]
    fn values_chunks_cover_every_row_with_few_distinct_sizes() {
        for (rows, columns) in [(1, 3), (7, 3), (256, 9), (1000, 3), (2561, 3), (300, 20_000)] {
            let mut sizes = Vec::new();
            let mut left = rows;
            while left > 0 {
                let n = sqlite_chunk(left, columns);
                assert!(n >= 1 && n <= left && n <= SQLITE_MAX_CHUNK && n.is_power_of_two(), "{rows} rows: chunk {n}");
                assert!(n * columns <= 32_766 || n == 1, "{rows} rows: too many parameters");
                sizes.push(n);
                left -= n;
            }
            assert_eq!(sizes.iter().sum::<usize>(), rows);
            // full chunks first, then each smaller power of two at most once
            let tail: Vec<usize> = sizes.iter().copied().skip_while(|n| *n == sizes[0]).collect();
            assert!(tail.windows(2).all(|w| w[0] > w[1]), "{rows} rows: {sizes:?}");
        }
    }

    #[test]
    fn values_rows_keep_their_order_and_columns() {
        assert_eq!(
            sqlite_values(&[("id", "bigint"), ("golden", "text")], 2),
            "(SELECT column1 AS id, column2 AS golden, column3 AS ord FROM (VALUES (?, ?, 0), (?, ?, 1))) AS x"
        );
    }
}
