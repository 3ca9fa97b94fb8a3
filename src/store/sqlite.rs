//! SQLite specifics: one file in WAL mode, one writer at a time (`BEGIN IMMEDIATE`), claims
//! taken by marking rows (the writer lock already serialises claimers), wake-ups in process.


use sqlx::migrate::Migrator;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

/// Claim the oldest queued rows not claimed, or claimed by a worker whose lease ran out.
pub(super) const CLAIM: &str = "UPDATE intake SET claimed_by = $1, claimed_at_ms = $2
     WHERE id IN (SELECT id FROM intake WHERE state = 'queued' AND (claimed_at_ms IS NULL OR claimed_at_ms < $3)
                  ORDER BY id LIMIT $4)
     RETURNING id, received_at_ms, record";

pub(super) async fn connect(options: AnyPoolOptions, url: &str) -> Result<AnyPool, sqlx::Error> {
    // create the file when missing
    let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
    options
        .max_connections(8)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL: readers never block the writer; NORMAL sync is durable across process
                // crashes in WAL mode; busy_timeout makes concurrent writers queue, not fail.
                // Memory temp store: a multi-row statement journals the pages it changes (to
                // undo itself on a constraint error), and a temporary file made that journal
                // cost as much as the writes themselves.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000;
                     PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
}

pub(super) fn migrator() -> Migrator {
    super::migrator(&[
        (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
        (2, "feeds", include_str!("../../migrations/sqlite/0002_feeds.sql")),
        (3, "privacy", include_str!("../../migrations/sqlite/0003_privacy.sql")),
        (5, "intake_arrivals", include_str!("../../migrations/sqlite/0005_intake_arrivals.sql")),
        (6, "candidate_indexes", include_str!("../../migrations/sqlite/0006_candidate_indexes.sql")),
    ])
}
