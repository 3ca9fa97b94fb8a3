//! PostgreSQL specifics: claims with `FOR UPDATE SKIP LOCKED`, identities serialised with
//! transaction-scoped advisory locks, workers woken by `LISTEN/NOTIFY`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// The channel `enqueue` notifies and matcher workers listen on.
pub(super) const CHANNEL: &str = "cdp_intake";

/// Concurrent claimers skip each other's rows instead of waiting for them.
pub(super) const CLAIM: &str = "UPDATE intake SET claimed_by = $1, claimed_at_ms = $2
     WHERE id IN (SELECT id FROM intake WHERE state = 'queued' AND (claimed_at_ms IS NULL OR claimed_at_ms < $3)
                  ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
     RETURNING id, received_at_ms, record";

pub(super) fn migrator() -> Migrator {
    super::migrator(&[
        (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
        (3, "privacy", include_str!("../../migrations/postgres/0003_privacy.sql")),
        (5, "intake_arrivals", include_str!("../../migrations/postgres/0005_intake_arrivals.sql")),
    ])
}

/// Forward notifications on [`CHANNEL`] to the process's workers. The listener reconnects by
/// itself; while it is down, workers still wake on their fallback timer.
pub(super) async fn spawn_listener(url: Arc<str>, work: Arc<Notify>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(&url).await?;
    listener.listen(CHANNEL).await?;
    tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(_) => work.notify_waiters(),
                Err(error) => {
                    tracing::warn!(%error, "intake listener failed; retrying");
                    work.notify_waiters();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}
