//! SQLite specifics: one file in WAL mode, one writer at a time (`BEGIN IMMEDIATE`), claims
//! taken by marking rows (the writer lock already serialises claimers), wake-ups in process.


use sqlx::migrate::Migrator;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

/// Claim the oldest queued rows not claimed, or claimed by a worker whose lease ran out.
pub(super) const CLAIM: &str = "UPDATE intake SET claimed_by = $1, claimed_at_ms = $2
     WHERE id IN (SELECT id FROM intake WHERE state = 'queued' AND (claimed_at_ms IS NULL OR claimed_at_ms < $3)
                  AND (held_until_ms IS NULL OR held_until_ms <= $2)
                  ORDER BY id LIMIT $4)
     RETURNING id, received_at_ms, record";

/// The rows [`CLAIM`] would claim, read without marking them: inside the writer's
/// transaction, the writer lock is the claim.
pub(super) const QUEUED: &str = "SELECT id, received_at_ms, record FROM intake
     WHERE state = 'queued' AND (claimed_at_ms IS NULL OR claimed_at_ms < $1)
       AND (held_until_ms IS NULL OR held_until_ms <= $3) ORDER BY id LIMIT $2";

pub(super) async fn connect(options: AnyPoolOptions, url: &str, connections: u32) -> Result<AnyPool, sqlx::Error> {
    // create the file when missing
    let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
    options
        .max_connections(connections)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL: readers never block the writer; NORMAL sync is durable across process
                // crashes in WAL mode; busy_timeout makes concurrent writers queue, not fail.
                // Memory temp store: a multi-row statement journals the pages it changes (to
                // undo itself on a constraint error), and a temporary file made that journal
                // cost as much as the writes themselves. Secure delete: what a delete or an
                // update frees is overwritten with zeros, or an erased person's values would stay
                // readable in the file's free space.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000;
                     PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;
                     PRAGMA wal_autocheckpoint = 0; PRAGMA secure_delete = ON",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
}

/// WAL frames above which the checkpointer finishes its work under the writer lock, so the
/// log is fully copied and the next writer starts it over (128 MB of 4 KB pages).
const WAL_RESET_FRAMES: i64 = 32768;

/// How long the log grows between two copies into the database. A copy writes each page once
/// however many commits changed it, and a batch's key rows land on thousands of scattered
/// index pages that the next batches change again: copying every second instead of every
/// 100 ms cut the bytes written to disk by about a fifth and sped the matcher up by about a
/// tenth (`cdp bench throughput`, 200,000 records).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Copy the write-ahead log into the database beside the writers, instead of in the commit
/// that crosses the threshold (that copy was 8 % of the matcher's time, on the writer's
/// path). A passive checkpoint never blocks a writer, but while writers keep appending it
/// never finishes and the log grows: past [`WAL_RESET_FRAMES`] the last stretch is copied
/// holding this process's writer lock. Ends when the pool closes.
pub(super) fn spawn_checkpointer(pool: AnyPool, writer: std::sync::Arc<tokio::sync::Mutex<()>>) {
    tokio::spawn(async move {
        let checkpoint = || async {
            let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await?;
            row.try_get::<i64, _>(1)
        };
        while !pool.is_closed() {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            match checkpoint().await {
                Ok(log) if log >= WAL_RESET_FRAMES => {
                    let _writer = writer.lock().await;
                    if let Err(error) = checkpoint().await {
                        tracing::warn!(%error, "WAL checkpoint failed");
                    }
                }
                Ok(_) => {}
                Err(_) if pool.is_closed() => {}
                Err(error) => tracing::warn!(%error, "WAL checkpoint failed"),
            }
        }
    });
}

/// Copy the whole write-ahead log into the database and truncate the log file: its frames are
/// the pages as each commit wrote them, so until the log starts over they still hold what
/// later commits deleted. Holds this process's writer lock, so that no commit lands in
/// between, and waits (`busy_timeout`) for readers still on an older snapshot.
pub(super) async fn truncate_wal(writes: &AnyPool, writer: &tokio::sync::Mutex<()>) -> Result<(), super::privacy::ScrubError> {
    let _writer = writer.lock().await;
    let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(writes).await?;
    // busy: a reader or another process's writer kept the log in use past the busy timeout
    match row.try_get::<i64, _>(0)? {
        0 => Ok(()),
        _ => Err(super::privacy::ScrubError::LogInUse),
    }
}

pub(super) fn migrator() -> Migrator {
    super::migrator(&[
        (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
        (2, "feeds", include_str!("../../migrations/sqlite/0002_feeds.sql")),
        (3, "privacy", include_str!("../../migrations/sqlite/0003_privacy.sql")),
        (5, "intake_arrivals", include_str!("../../migrations/sqlite/0005_intake_arrivals.sql")),
        (6, "candidate_indexes", include_str!("../../migrations/sqlite/0006_candidate_indexes.sql")),
        (7, "review_pairs", include_str!("../../migrations/sqlite/0007_review_pairs.sql")),
        (8, "term_counts", include_str!("../../migrations/sqlite/0008_term_counts.sql")),
        (11, "privacy_key_check_and_lifts", include_str!("../../migrations/sqlite/0011_privacy_key_check_and_lifts.sql")),
        (12, "merged_records", include_str!("../../migrations/sqlite/0012_merged_records.sql")),
        (13, "payload_fingerprints", include_str!("../../migrations/sqlite/0013_payload_fingerprints.sql")),
        (14, "quarantine_origin", include_str!("../../migrations/sqlite/0014_quarantine_origin.sql")),
        (15, "enrichment", include_str!("../../migrations/sqlite/0015_enrichment.sql")),
    ])
}
