//! The store: intake queue, quarantine, source records, profiles, review queue, outbox.
//!
//! One [`Store`] type serves SQLite (embedded, one file) and PostgreSQL with the same SQL and
//! the same behaviour: queries go through sqlx's `Any` driver, so every statement is written
//! once. What differs per database lives in [`sqlite`] and [`postgres`]: connection setup,
//! how a writer takes its transaction, how work is claimed and locked, how workers are woken.
//! Migrations are versioned under `migrations/{sqlite,postgres}` and applied at start.

mod enrich;
mod listing;
mod load;
mod feeds;
mod intake;
mod postgres;
mod privacy;
mod review;
mod sqlite;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::Notify;

use crate::identity::CanonicalRecord;

pub use enrich::{AppliedEnrichment, EnrichDeadLetter, EnrichJob, EnrichTarget, EnricherCounts, HeldRecord as HeldForEnrichment};
pub use feeds::{DeadLetterPage, Delivery, FeedBacklog, FeedPosition, FeedProgress, NewDelivery, RetryOutcome};
pub use intake::{Admission, Arrival, Payload, fingerprint};
pub use listing::parse_instant_ms;
pub use load::IntakeLoad;
pub use privacy::{ErasureAudit, ErasureRow, QueuedRecord, Removed};
pub use review::{REVIEW_STATUSES, ReviewFilter};
pub use write::{GoldenUpdate, HeldRecord, KeyProfiles, NewProfile, NewRecord, NewReview, WriteTx};
use write::NewQuarantine;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL (expected sqlite:PATH or postgres://...)")]
    Url,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON does not parse: {0}")]
    Json(#[from] serde_json::Error),
    /// The transaction of an intake group failed: every request of the group gets this.
    #[error("intake group commit: {0}")]
    Group(Arc<StoreError>),
    /// The intake committer is gone (the runtime is shutting down): nothing was stored.
    #[error("the intake committer stopped")]
    CommitterStopped,
    /// A row handed to a multi-row statement does not fit the statement's columns (a bug).
    #[error("row does not fit its columns: {0}")]
    RowShape(String),
}

impl StoreError {
    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Url => "url",
            Self::Db(_) if self.is_conflict() => "conflict",
            Self::Db(_) => "database",
            Self::Migrate(_) => "migration",
            Self::Json(_) => "json",
            Self::Group(e) => e.reason(),
            Self::CommitterStopped => "committer_stopped",
            Self::RowShape(_) => "row_shape",
        }
    }

    /// A transient conflict between concurrent writers (deadlock, serialisation failure,
    /// SQLite busy): retrying the transaction is the right answer.
    /// The server cannot be reached yet (no such host, connection refused, still starting up):
    /// worth waiting for, unlike a wrong password or a failed migration.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Group(e) => e.is_unreachable(),
            Self::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
            // PostgreSQL: the database system is starting up or shutting down
            Self::Db(sqlx::Error::Database(e)) => matches!(e.code().as_deref(), Some("57P03" | "57P01")),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(sqlx::Error::Io(_))) => true,
            _ => false,
        }
    }

    pub fn is_conflict(&self) -> bool {
        if let Self::Group(e) = self {
            return e.is_conflict();
        }
        let Self::Db(sqlx::Error::Database(e)) = self else { return false };
        match e.code().as_deref() {
            // PostgreSQL: deadlock detected, serialisation failure, lock not available (NOWAIT)
            Some("40P01" | "40001" | "55P03") => true,
            // SQLite extended result codes of the BUSY (5) and LOCKED (6) families
            Some(code) => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
            None => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Per Source name, how long (ms) its records wait for a PreMatch enricher before matching.
pub(crate) type Holds = Arc<std::sync::RwLock<BTreeMap<String, i64>>>;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run. SQLite: one connection of its own, because a connection
    /// drops its whole page cache whenever another one wrote: writers taking turns over the
    /// pool's connections started every batch cold and read its B-tree pages from the file
    /// again. PostgreSQL: the pool.
    writes: AnyPool,
    backend: Backend,
    url: Arc<str>,
    /// Wakes matcher workers of this process when work arrives (PostgreSQL feeds it from LISTEN).
    work: Arc<Notify>,
    /// Wakes feed workers of this process when outbox events commit (PostgreSQL: from LISTEN).
    outbox: Arc<Notify>,
    listener: Arc<tokio::sync::OnceCell<()>>,
    /// SQLite has one writer: this process's writers queue here, in order, instead of in
    /// SQLite's busy handler, which polls with sleeps of up to 100 ms.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Hands intake to this store's group committer ([`Store::admit`]). `None` only in the
    /// committer's own handle: a sender there would keep the committer waiting forever.
    intake: Option<intake::Queue>,
    /// When intake last handed records to the committer, Unix milliseconds
    /// ([`Store::intake_shares_writer`]).
    intake_seen_ms: Arc<AtomicI64>,
    /// Set by [`Store::hold_for_enrichment`]; read by intake as it queues records.
    holds: Holds,
}

/// How long after its last records intake counts as active for [`Store::intake_shares_writer`].
const INTAKE_ACTIVE_MS: i64 = 2_000;

/// Outcome of enqueuing one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enqueued {
    pub intake_id: i64,
    /// The source already delivered this record id: absorbed, not queued again.
    pub duplicate: bool,
    /// A duplicate whose payload differs from the one delivered first under its id: not
    /// stored, the first delivery stands ([`Admission::Conflict`] at intake).
    #[serde(skip)]
    pub conflict: bool,
}

/// A claimed unit of matcher work.
#[derive(Clone, Debug)]
pub struct IntakeItem {
    pub id: i64,
    pub received_at_ms: i64,
    pub record: CanonicalRecord,
}

/// A source record as stored, with its link to a profile.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRecord {
    pub id: i64,
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    pub received_at_ms: i64,
    pub profile_id: i64,
    pub attributes: BTreeMap<String, String>,
    pub normalised: BTreeMap<String, String>,
    pub evidence: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileRow {
    pub id: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub merged_into: Option<i64>,
    /// When an unmerge sent the records this id named (it was merged away) to several
    /// profiles: it leads to none of them alone ([`Store::named_holders`]).
    pub split_at_ms: Option<i64>,
    pub golden: Option<serde_json::Value>,
    pub record_count: i64,
    pub version: i64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: i64,
    pub profile_id: Option<i64>,
    pub record_id: Option<i64>,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: serde_json::Value,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRow {
    pub id: i64,
    pub record_id: i64,
    pub other_record_id: i64,
    pub reason: String,
    pub probability: f64,
    pub evidence: serde_json::Value,
    pub status: String,
    pub created_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub decided_by: Option<String>,
}

/// One failing field of an invalid record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldError {
    /// Canonical attribute, or the payload field for structural errors.
    pub field: String,
    /// Stable machine code (`required`, `requireAnyOf`, `invalid`, `eventId`, ...).
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineEntry {
    pub id: i64,
    pub source: String,
    pub received_at_ms: i64,
    pub payload: serde_json::Value,
    pub errors: Vec<FieldError>,
    /// The Kafka message it was read from; none for HTTP intake and files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<MessageOrigin>,
}

/// Where in Kafka a payload was read: enough to find the message again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageOrigin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's position in the message, when the message is an array of records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl MessageOrigin {
    /// `topic/partition/offset`, and `/index` for a record of an array: unique per record of a
    /// topic, and the same when the message is read again.
    pub fn event_id(&self) -> String {
        let MessageOrigin { topic, partition, offset, index } = self;
        match index {
            Some(index) => format!("{topic}/{partition}/{offset}/{index}"),
            None => format!("{topic}/{partition}/{offset}"),
        }
    }
}

/// The columns a [`QuarantineEntry`] is read from.
const QUARANTINE_SELECT: &str = "SELECT id, source, received_at_ms, payload, errors, origin FROM quarantine";

/// Queue and table sizes, for metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub queued: i64,
    pub records: i64,
    pub profiles: i64,
    pub open_reviews: i64,
    pub quarantined: i64,
}

/// A profile id as the API and the events show it: `p12`.
pub fn profile_ref(id: i64) -> String {
    format!("p{id}")
}

/// Hash of a blocking key or lookup identifier: the index never holds a plaintext value.
pub fn key_hash(key: &str) -> i64 {
    let digest = Sha256::digest(key.as_bytes());
    i64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Backend {
    /// A derived table with one column `id`: the integers of the JSON array bound at `$n`.
    /// Passing a list as one parameter keeps the statement text fixed whatever the list, so
    /// it is parsed and prepared once (inlined lists made every statement a new one).
    fn id_table(self, n: u8) -> String {
        match self {
            Backend::Sqlite => format!("(SELECT value AS id FROM json_each(${n}))"),
            Backend::Postgres => format!("(SELECT json_array_elements_text(${n}::json)::bigint AS id)"),
        }
    }

    /// `column` is one of the integers of the JSON array bound at `$n`. PostgreSQL gets
    /// `= ANY(ARRAY(...))`, which it answers from an index whatever its statistics say (an
    /// `IN (subquery)` over a set-returning function was planned as a sequential scan).
    fn in_ids(self, column: &str, n: u8) -> String {
        match self {
            Backend::Sqlite => format!("{column} IN (SELECT value FROM json_each(${n}))"),
            Backend::Postgres => format!("{column} = ANY(ARRAY(SELECT json_array_elements_text(${n}::json)::bigint))"),
        }
    }
}

/// PostgreSQL: a derived table `x` with the given `(column, type)` columns, read from the JSON
/// array of objects bound at `$n` (one object per row, keyed by column), plus `ord`, each
/// row's position in the array (order by it: outbox ids must follow push order).
/// `json_to_recordset` parses each object once; reading the columns one `->>` at a time
/// parsed and unescaped the whole object again for every column, which took a sixth of the
/// server's time in `cdp bench throughput`.
fn postgres_json_rows(columns: &[(&str, &str)], n: u8) -> String {
    let definitions: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    format!(
        "ROWS FROM (json_to_recordset(${n}::json) AS ({})) WITH ORDINALITY AS x({}, ord)",
        definitions.join(", "),
        names.join(", ")
    )
}

/// A backend's migrations, `(version, description, SQL)` in version order.
fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(*version, (*description).into(), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

/// `[1,2,3]`: the value bound for [`Backend::id_table`].
fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).expect("integers serialise")
}

/// Intake items from rows of `id, received_at_ms, record`, in id order.
fn intake_items(rows: &[AnyRow]) -> Result<Vec<IntakeItem>> {
    let mut items = rows
        .iter()
        .map(|row| {
            Ok(IntakeItem { id: row.try_get("id")?, received_at_ms: row.try_get("received_at_ms")?, record: json_col(row, "record")? })
        })
        .collect::<Result<Vec<_>>>()?;
    items.sort_by_key(|i| i.id);
    Ok(items)
}

fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    Ok(serde_json::from_str(&text)?)
}

const RECORD_COLUMNS: &str =
    "id, source, source_record_id, observed_at_ms, received_at_ms, profile_id, attributes, normalised, evidence";

fn record_of(row: &AnyRow) -> Result<StoredRecord> {
    let RecordValues { id, source, source_record_id, observed_at_ms, attributes, normalised } = record_values_of(row)?;
    Ok(StoredRecord {
        id,
        source,
        source_record_id,
        observed_at_ms,
        received_at_ms: row.try_get("received_at_ms")?,
        profile_id: row.try_get("profile_id")?,
        attributes,
        normalised,
        evidence: json_col(row, "evidence")?,
    })
}

/// What the matcher prepares a stored record from: no evidence (the largest column, which
/// only explanations read). Deserialised from a JSON array of the fields in order.
#[derive(Clone, Debug, Deserialize)]
pub struct RecordValues {
    pub id: i64,
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    /// Canonical attributes as sent (the display values of the golden record).
    pub attributes: BTreeMap<String, String>,
    pub normalised: BTreeMap<String, String>,
}

const RECORD_VALUE_COLUMNS: &str = "id, source, source_record_id, observed_at_ms, attributes, normalised";

fn record_values_of(row: &AnyRow) -> Result<RecordValues> {
    Ok(RecordValues {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        source_record_id: row.try_get("source_record_id")?,
        observed_at_ms: row.try_get("observed_at_ms")?,
        attributes: json_col(row, "attributes")?,
        normalised: json_col(row, "normalised")?,
    })
}

const PROFILE_COLUMNS: &str = "id, created_at_ms, updated_at_ms, merged_into, split_at_ms, golden, record_count, version";

fn profile_of(row: &AnyRow) -> Result<ProfileRow> {
    let golden: Option<String> = row.try_get("golden")?;
    Ok(ProfileRow {
        id: row.try_get("id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        merged_into: row.try_get("merged_into")?,
        split_at_ms: row.try_get("split_at_ms")?,
        golden: golden.map(|g| serde_json::from_str(&g)).transpose()?,
        record_count: row.try_get("record_count")?,
        version: row.try_get("version")?,
    })
}

const REVIEW_COLUMNS: &str = "id, record_id, other_record_id, reason, probability, evidence, status, created_at_ms, decided_at_ms, decided_by";

fn review_of(row: &AnyRow) -> Result<ReviewRow> {
    Ok(ReviewRow {
        id: row.try_get("id")?,
        record_id: row.try_get("record_id")?,
        other_record_id: row.try_get("other_record_id")?,
        reason: row.try_get("reason")?,
        probability: row.try_get("probability")?,
        evidence: json_col(row, "evidence")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at_ms")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decided_by: row.try_get("decided_by")?,
    })
}

fn event_of(row: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        profile_id: row.try_get("profile_id")?,
        record_id: row.try_get("record_id")?,
        kind: row.try_get("type")?,
        payload: json_col(row, "payload")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

impl Store {
    /// Open the store at `url` (`sqlite:PATH` or `postgres://...`) and apply pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url);
        };
        let pool = connect(backend, url).await?;
        let migrator = match backend {
            Backend::Sqlite => sqlite::migrator(),
            Backend::Postgres => postgres::migrator(),
        };
        migrator.run(&pool).await?;
        let writes = match backend {
            Backend::Sqlite => sqlite::connect(AnyPoolOptions::new(), url, 1).await?,
            Backend::Postgres => pool.clone(),
        };
        let store = Store {
            pool,
            writes,
            backend,
            url: url.into(),
            work: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
            listener: Arc::new(tokio::sync::OnceCell::new()),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            intake: None,
            intake_seen_ms: Arc::new(AtomicI64::new(0)),
            holds: Holds::default(),
        };
        match backend {
            Backend::Sqlite => sqlite::spawn_checkpointer(store.pool.clone(), store.writer.clone()),
            Backend::Postgres => postgres::spawn_analyzer(store.pool.clone()),
        }
        Ok(Store { intake: Some(intake::spawn_committer(store.clone())), ..store })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether intake took records in the last seconds and waits for the same one writer as
    /// the matcher (SQLite, in this process): matcher batches then stay short, so that a
    /// touchpoint's `202` never waits behind a long one.
    pub fn intake_shares_writer(&self) -> bool {
        self.backend == Backend::Sqlite && now_ms() - self.intake_seen_ms.load(Ordering::Relaxed) < INTAKE_ACTIVE_MS
    }

    pub async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Begin a write transaction (SQLite: takes the single writer lock up front).
    pub async fn begin(&self) -> Result<WriteTx> {
        let (tx, writer) = match self.backend {
            Backend::Sqlite => {
                let writer = self.writer.clone().lock_owned().await;
                (self.writes.begin_with("BEGIN IMMEDIATE").await?, Some(writer))
            }
            Backend::Postgres => (self.pool.begin().await?, None),
        };
        Ok(WriteTx::new(tx, self.backend, writer, self.work.clone(), self.outbox.clone(), self.holds.clone()))
    }

    /// Durably queue valid records in one transaction of their own; redeliveries (same
    /// source + record id) are absorbed. Intake goes through [`Store::admit`] instead.
    pub async fn enqueue(&self, records: &[CanonicalRecord]) -> Result<Vec<Enqueued>> {
        let mut tx = self.begin().await?;
        let out = tx.enqueue(&records.iter().map(|r| (r, None)).collect::<Vec<_>>(), now_ms()).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Keep an invalid record with every reason it failed.
    pub async fn quarantine(&self, source: &str, payload: &serde_json::Value, errors: &[FieldError]) -> Result<i64> {
        self.quarantine_from(source, payload, errors, None).await
    }

    /// Quarantine a payload read from `origin`, a Kafka message (none for other intake). The
    /// same payload quarantined again is the entry kept before.
    pub async fn quarantine_from(
        &self,
        source: &str,
        payload: &serde_json::Value,
        errors: &[FieldError],
        origin: Option<&MessageOrigin>,
    ) -> Result<i64> {
        let mut tx = self.begin().await?;
        let fingerprint = intake::fingerprint(source, payload);
        let ids = tx.quarantine(&[NewQuarantine { source, payload, errors, fingerprint: &fingerprint, origin }], now_ms()).await?;
        tx.commit().await?;
        Ok(ids.into_iter().next().ok_or(sqlx::Error::RowNotFound)?)
    }

    /// Quarantined entries, oldest first, after `after_id`, optionally for one source.
    pub async fn quarantined(&self, source: Option<&str>, after_id: i64, limit: i64) -> Result<Vec<QuarantineEntry>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{QUARANTINE_SELECT} WHERE id > $1 AND ($2 IS NULL OR source = $2) ORDER BY id LIMIT $3"
        )))
        .bind(after_id)
        .bind(source)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(quarantine_of).collect()
    }

    /// Delete a quarantined entry; false when there was none.
    pub async fn delete_quarantined(&self, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM quarantine WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn quarantine_entry(&self, id: i64) -> Result<Option<QuarantineEntry>> {
        let row = sqlx::query(AssertSqlSafe(format!("{QUARANTINE_SELECT} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(quarantine_of).transpose()
    }

    /// Replace a quarantined entry: it passed validation now (`Ok(record)` admitted as intake
    /// admits it, and the entry removed) or still fails (`Err(errors)` stored in its place).
    /// One transaction. `identifiers` are the keyed hashes of the payload's identifiers
    /// ([`Arrival::identifiers`]): a replay is a record arriving now, so one of an erased
    /// person is refused, and its entry removed all the same. A record whose event id its
    /// source has since used for other content ([`Admission::Conflict`]) keeps its entry.
    pub async fn replay_quarantined(
        &self,
        entry: &QuarantineEntry,
        outcome: std::result::Result<CanonicalRecord, Vec<FieldError>>,
        identifiers: BTreeMap<String, String>,
    ) -> Result<Option<Admission>> {
        let id = entry.id;
        let mut tx = self.begin().await?;
        let admission = match outcome {
            Ok(record) => {
                let fingerprint = intake::fingerprint(&entry.source, &entry.payload);
                let arrival = Arrival { identifiers, fingerprint, payload: Payload::Record(record) };
                let admission = tx.admit(&[&arrival], now_ms()).await?.pop();
                if !matches!(admission, Some(Admission::Conflict(_))) {
                    tx.delete_quarantined(id).await?;
                }
                admission
            }
            Err(errors) => {
                tx.set_quarantine_errors(id, &errors).await?;
                None
            }
        };
        tx.commit().await?;
        Ok(admission)
    }

    /// Claim up to `limit` queued records for `worker`. A claim older than `lease` is presumed
    /// abandoned (its worker died) and may be taken again.
    pub async fn claim(&self, worker: &str, limit: i64, lease: Duration) -> Result<Vec<IntakeItem>> {
        let now = now_ms();
        let stale = now - lease.as_millis() as i64;
        let sql = match self.backend {
            Backend::Sqlite => sqlite::CLAIM,
            Backend::Postgres => postgres::CLAIM,
        };
        let mut tx = self.begin().await?;
        let rows = sqlx::query(sql).bind(worker).bind(now).bind(stale).bind(limit).fetch_all(tx.conn()).await?;
        tx.commit().await?;
        intake_items(&rows)
    }

    /// PostgreSQL: wait until the transactions holding these queued records end (each row is
    /// locked in turn, in a statement of its own, so the lock lasts no longer than the wait).
    /// SQLite has no row locks: a transaction holds the writer lock, and nothing waits here.
    pub async fn wait_for_intake(&self, ids: &[i64]) -> Result<()> {
        if self.backend != Backend::Postgres || ids.is_empty() {
            return Ok(());
        }
        let sql = format!("SELECT id FROM intake WHERE {} FOR SHARE", self.backend.in_ids("id", 1));
        sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_all(&self.pool).await?;
        Ok(())
    }

    /// Wait until work may have arrived, or `timeout` passes. Call [`Store::work_signal`]
    /// before checking the queue, then await the signal, so no wake-up is lost in between.
    pub async fn work_signal(&self) -> Result<Arc<Notify>> {
        if self.backend == Backend::Postgres {
            self.listener
                .get_or_try_init(|| postgres::spawn_listener(self.url.clone(), self.work.clone(), self.outbox.clone()))
                .await?;
        }
        Ok(self.work.clone())
    }

    /// Record a processing failure on claimed items and release them for a retry.
    pub async fn release(&self, ids: &[i64], error: &str) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE intake SET claimed_by = NULL, claimed_at_ms = NULL, attempts = attempts + 1, last_error = $1
             WHERE {}",
            self.backend.in_ids("id", 2)
        );
        let mut tx = self.begin().await?;
        sqlx::query(AssertSqlSafe(sql)).bind(error).bind(json_ids(ids)).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- reads ----

    /// A profile row by id, as stored (an alias has `merged_into` set).
    pub async fn profile_row(&self, id: i64) -> Result<Option<ProfileRow>> {
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM profiles WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(profile_of).transpose()
    }

    /// The live profile `id` resolves to: itself, the profile holding the records it named when
    /// it was merged away, or none (no such id, or a split one whose records are in several
    /// profiles: [`Store::named_holders`] lists them).
    pub async fn profile(&self, id: i64) -> Result<Option<ProfileRow>> {
        match self.profile_row(id).await? {
            // a later merge may have brought the records of a split id together again
            Some(ProfileRow { split_at_ms: Some(_), .. }) => match self.named_holders(id).await?[..] {
                [holder] => self.profile_row(holder).await,
                _ => Ok(None),
            },
            Some(ProfileRow { merged_into: Some(survivor), .. }) => self.profile_row(survivor).await,
            other => Ok(other),
        }
    }

    /// The live profiles holding the records `alias` held when it was merged away, by id.
    pub async fn named_holders(&self, alias: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT r.profile_id FROM merged_records m JOIN source_records r ON r.id = m.record_id
             WHERE m.profile_id = $1 ORDER BY r.profile_id",
        )
        .bind(alias)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("profile_id")?)).collect()
    }

    /// Ids merged into `survivor` (its aliases).
    pub async fn aliases(&self, survivor: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT id FROM profiles WHERE merged_into = $1 ORDER BY id")
            .bind(survivor)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    pub async fn records_of(&self, profile: i64) -> Result<Vec<StoredRecord>> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM source_records WHERE profile_id = $1 ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(profile).fetch_all(&self.pool).await?;
        rows.iter().map(record_of).collect()
    }

    /// Resolved records in id order, `limit` at a time after `after_id` (for training).
    pub async fn records_page(&self, after_id: i64, limit: i64) -> Result<Vec<StoredRecord>> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM source_records WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(after_id).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(record_of).collect()
    }

    pub async fn record(&self, id: i64) -> Result<Option<StoredRecord>> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM source_records WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(record_of).transpose()
    }

    pub async fn record_by_source_id(&self, source: &str, source_record_id: &str) -> Result<Option<StoredRecord>> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM source_records WHERE source = $1 AND source_record_id = $2");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(source).bind(source_record_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(record_of).transpose()
    }

    /// Live profiles holding a record with every one of the given key hashes, by id: at most
    /// `limit` of those above `after`.
    pub async fn profiles_with_keys(&self, hashes: &[i64], after: i64, limit: i64) -> Result<Vec<i64>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT DISTINCT profile_id FROM (
                 SELECT record_id, profile_id FROM record_keys WHERE {} GROUP BY record_id, profile_id HAVING COUNT(*) = $1
             ) AS r WHERE profile_id > $2 ORDER BY profile_id LIMIT $3",
            self.backend.in_ids("hash", 4)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(hashes.len() as i64)
            .bind(after)
            .bind(limit)
            .bind(json_ids(hashes))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("profile_id")?)).collect()
    }

    /// Events about a profile and the profiles merged into it, oldest first.
    pub async fn events_of(&self, profiles: &[i64], limit: i64) -> Result<Vec<Event>> {
        let sql = format!(
            "SELECT id, profile_id, record_id, type, payload, created_at_ms FROM outbox
             WHERE {} ORDER BY id LIMIT $1",
            self.backend.in_ids("profile_id", 2)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(limit).bind(json_ids(profiles)).fetch_all(&self.pool).await?;
        rows.iter().map(event_of).collect()
    }

    /// Outbox events after `after_id`, in order (what the feeds will consume).
    pub async fn events_after(&self, after_id: i64, limit: i64) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, profile_id, record_id, type, payload, created_at_ms FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_of).collect()
    }

    pub async fn review_item(&self, id: i64) -> Result<Option<ReviewRow>> {
        let sql = format!("SELECT {REVIEW_COLUMNS} FROM review_items WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(review_of).transpose()
    }

    /// Every live profile's record ids (sorted), sorted: the clustering a user gets.
    pub async fn clusters(&self) -> Result<Vec<Vec<(String, String)>>> {
        let rows = sqlx::query("SELECT profile_id, source, source_record_id FROM source_records ORDER BY profile_id")
            .fetch_all(&self.pool)
            .await?;
        let mut by_profile: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
        for row in &rows {
            by_profile
                .entry(row.try_get("profile_id")?)
                .or_default()
                .push((row.try_get("source")?, row.try_get("source_record_id")?));
        }
        let mut out: Vec<Vec<(String, String)>> = by_profile
            .into_values()
            .map(|mut c| {
                c.sort();
                c
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Records waiting in the intake queue (cheap: a partial index covers it).
    pub async fn counts_queued(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM intake WHERE state = 'queued'").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    /// Review items waiting for a decision (partial indexes cover the open ones).
    pub async fn counts_open_reviews(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM review_items WHERE status = 'open'").fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    pub async fn counts(&self) -> Result<Counts> {
        let row = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM intake WHERE state = 'queued') AS queued,
               (SELECT COUNT(*) FROM source_records) AS records,
               (SELECT COUNT(*) FROM profiles WHERE merged_into IS NULL AND record_count > 0) AS profiles,
               (SELECT COUNT(*) FROM review_items WHERE status = 'open') AS open_reviews,
               (SELECT COUNT(*) FROM quarantine) AS quarantined",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            queued: row.try_get("queued")?,
            records: row.try_get("records")?,
            profiles: row.try_get("profiles")?,
            open_reviews: row.try_get("open_reviews")?,
            quarantined: row.try_get("quarantined")?,
        })
    }
}

async fn connect(backend: Backend, url: &str) -> Result<AnyPool> {
    let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
    Ok(match backend {
        Backend::Sqlite => sqlite::connect(options, url, 8).await?,
        Backend::Postgres => postgres::connect(options, url).await?,
    })
}

/// PostgreSQL: create an empty database on the server `url` points at and return its URL
/// (for tests and benchmarks that need a fresh store each).
pub async fn scratch_database(url: &str, prefix: &str) -> Result<String> {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    let name = format!("{prefix}_{:016x}", rand::random::<u64>());
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))).await?;
    conn.close().await?;
    let mut parsed = url::Url::parse(url).map_err(|_| StoreError::Url)?;
    parsed.set_path(&name);
    Ok(parsed.to_string())
}

fn quarantine_of(row: &AnyRow) -> Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        received_at_ms: row.try_get("received_at_ms")?,
        payload: json_col(row, "payload")?,
        errors: json_col(row, "errors")?,
        origin: row.try_get::<Option<String>, _>("origin")?.map(|o| serde_json::from_str(&o)).transpose()?,
    })
}
