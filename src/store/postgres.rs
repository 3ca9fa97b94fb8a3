//! PostgreSQL specifics: claims with `FOR UPDATE SKIP LOCKED`, identities serialised with
//! transaction-scoped advisory locks, workers woken by `LISTEN/NOTIFY`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// The channel `enqueue` notifies and matcher workers listen on.
pub(super) const CHANNEL: &str = "cdp_intake";
/// The channel a commit with outbox events notifies and feed workers listen on.
pub(super) const OUTBOX_CHANNEL: &str = "cdp_outbox";
/// Advisory lock key serialising outbox inserts until commit (see `WriteTx::commit`).
pub(super) const OUTBOX_LOCK: i64 = 0x0cd9_0007_b0c5;
/// Advisory lock key between intake's suppression check (shared) and erasures (exclusive).
pub(super) const SUPPRESSION_LOCK: i64 = 0x0cd9_0007_5e55;

/// Concurrent claimers skip each other's rows instead of waiting for them.
pub(super) const CLAIM: &str = "UPDATE intake SET claimed_by = $1, claimed_at_ms = $2
     WHERE id IN (SELECT id FROM intake WHERE state = 'queued' AND (claimed_at_ms IS NULL OR claimed_at_ms < $3)
                  AND (held_until_ms IS NULL OR held_until_ms <= $2)
                  ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
     RETURNING id, received_at_ms, record";

/// The rows [`CLAIM`] would claim, locked instead of marked: the transaction that resolves
/// them holds them, other claimers skip them, and a rollback or a crash leaves them queued.
pub(super) const QUEUED: &str = "SELECT id, received_at_ms, record FROM intake
     WHERE state = 'queued' AND (claimed_at_ms IS NULL OR claimed_at_ms < $1)
       AND (held_until_ms IS NULL OR held_until_ms <= $3) ORDER BY id LIMIT $2
     FOR UPDATE SKIP LOCKED";

pub(super) async fn connect(options: AnyPoolOptions, url: &str) -> Result<AnyPool, sqlx::Error> {
    options
        .max_connections(16)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // A prepared statement switches to a generic plan after five runs, costed with
                // the statistics of that moment. A store starts empty, so its pooled
                // connections kept sequential scans of the key and record tables long after
                // they had grown (the candidate look-up went from milliseconds to 400 ms).
                // Planning each run with its parameters costs far less than that.
                conn.execute("SET plan_cache_mode = force_custom_plan").await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}

/// How often the analyzer looks for tables that outgrew their statistics.
const ANALYZE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Row changes below which a table is left to autovacuum's own analyze.
const ANALYZE_MIN_CHANGES: i64 = 1000;

/// Keep the planner's statistics in step with a fast-growing store. The candidate and merge
/// queries are index-driven only when the planner knows how big the tables are: on a store
/// filling up faster than autovacuum's round (a minute by default) it planned with the sizes
/// of a near-empty store (or none at all), and chose sequential scans of the key table and of
/// every open review item in each merge. The throughput benchmark on PostgreSQL spent half
/// its run in such plans, at a third of its rate, until autovacuum's first analyze.
/// PostgreSQL advises an ANALYZE after a bulk load; this runs one on any table of the store
/// that changed by more rows than it held at its last analyze (so at doubling sizes: a handful
/// of times as a store grows, then rarely).
pub(super) fn spawn_analyzer(pool: AnyPool) {
    tokio::spawn(async move {
        while !pool.is_closed() {
            tokio::time::sleep(ANALYZE_CHECK_EVERY).await;
            match analyze_grown(&pool).await {
                Ok(()) => {}
                Err(_) if pool.is_closed() => {}
                Err(error) => tracing::warn!(%error, "ANALYZE of grown tables failed"),
            }
        }
    });
}

async fn analyze_grown(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
         WHERE s.schemaname = current_schema() AND s.n_mod_since_analyze > GREATEST($1, c.reltuples)",
    )
    .bind(ANALYZE_MIN_CHANGES)
    .fetch_all(pool)
    .await?;
    for table in grown {
        tracing::debug!(%table, "analyzing a table that outgrew its statistics");
        // a name PostgreSQL itself listed, quoted as an identifier
        pool.execute(sqlx::AssertSqlSafe(format!("ANALYZE \"{}\"", table.replace('"', "\"\"")))).await?;
    }
    Ok(())
}

/// VACUUM `tables`: the dead tuples of what a delete or an update freed are removed and their
/// space marked for reuse, without locking out readers or writers. The freed bytes stay in the
/// files until PostgreSQL writes over them (a rewrite, `VACUUM FULL`, would remove them at
/// once, but locks each table while it copies it: intake would wait on every erasure). Runs
/// outside any transaction, as VACUUM must.
pub(super) async fn vacuum_tables(pool: &AnyPool, tables: &[&str]) -> Result<(), super::privacy::ScrubError> {
    pool.execute(sqlx::AssertSqlSafe(format!("VACUUM {}", tables.join(", ")))).await?;
    Ok(())
}

pub(super) fn migrator() -> Migrator {
    super::migrator(&[
        (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
        (2, "feeds", include_str!("../../migrations/postgres/0002_feeds.sql")),
        (3, "privacy", include_str!("../../migrations/postgres/0003_privacy.sql")),
        (5, "intake_arrivals", include_str!("../../migrations/postgres/0005_intake_arrivals.sql")),
        (6, "candidate_indexes", include_str!("../../migrations/postgres/0006_candidate_indexes.sql")),
        (7, "review_pairs", include_str!("../../migrations/postgres/0007_review_pairs.sql")),
        (8, "term_counts", include_str!("../../migrations/postgres/0008_term_counts.sql")),
        (9, "key_rows_unchecked", include_str!("../../migrations/postgres/0009_key_rows_unchecked.sql")),
        (11, "privacy_key_check_and_lifts", include_str!("../../migrations/postgres/0011_privacy_key_check_and_lifts.sql")),
        (12, "merged_records", include_str!("../../migrations/postgres/0012_merged_records.sql")),
        (13, "payload_fingerprints", include_str!("../../migrations/postgres/0013_payload_fingerprints.sql")),
        (14, "quarantine_origin", include_str!("../../migrations/postgres/0014_quarantine_origin.sql")),
        (15, "enrichment", include_str!("../../migrations/postgres/0015_enrichment.sql")),
    ])
}

/// Forward notifications on [`CHANNEL`] to the process's matcher workers and on
/// [`OUTBOX_CHANNEL`] to its feed workers. The listener reconnects by itself; while it is down,
/// workers still wake on their fallback timer.
pub(super) async fn spawn_listener(url: Arc<str>, work: Arc<Notify>, outbox: Arc<Notify>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(&url).await?;
    listener.listen_all([CHANNEL, OUTBOX_CHANNEL]).await?;
    tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(n) if n.channel() == OUTBOX_CHANNEL => outbox.notify_waiters(),
                Ok(_) => work.notify_waiters(),
                Err(error) => {
                    tracing::warn!(%error, "store listener failed; retrying");
                    work.notify_waiters();
                    outbox.notify_waiters();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}
