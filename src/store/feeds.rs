//! Per-feed delivery state: a cursor into the outbox per feed, and the events a feed still owes
//! its destination (retrying, held behind an earlier event of the same profile, dead-lettered).
//! Each feed has its own rows, so feeds progress independently of one another.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Notify;

use super::{Backend, Result, Store, WriteTx, json_col, json_ids, now_ms, postgres};
use crate::feeds::lease::{FeedClaim, LapsedLease};
use crate::identity::GoldenProfile;

/// Where a feed stands, read when its lease is taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedPosition {
    /// Every outbox event up to this id was delivered, filtered out or moved to the deliveries.
    pub cursor: i64,
    pub delivered: i64,
    pub failures: i64,
    pub last_error: Option<String>,
}

/// An event a feed has not delivered yet.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub feed: String,
    pub event_id: i64,
    pub profile_id: Option<i64>,
    #[serde(rename = "type")]
    pub kind: String,
    /// The message as it is sent.
    pub message: serde_json::Value,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    /// Set once the event went to the dead-letter list.
    pub dead_at_ms: Option<i64>,
}

/// An event to keep for a later attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDelivery {
    pub event_id: i64,
    pub profile_id: Option<i64>,
    pub kind: String,
    pub message: serde_json::Value,
    /// Attempts made so far (0 for an event held behind an earlier one of its profile).
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    /// Dead-lettered at once (a single attempt was allowed).
    pub dead: bool,
}

/// What happened to a kept event on its latest attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum RetryOutcome {
    Delivered { event_id: i64 },
    Failed { event_id: i64, error: String, next_attempt_ms: i64 },
    Dead { event_id: i64, error: String },
}

/// One step of a feed, written in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedProgress {
    /// The new cursor, when the step read new outbox events.
    pub cursor: Option<i64>,
    pub delivered: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub kept: Vec<NewDelivery>,
    pub retried: Vec<RetryOutcome>,
}

/// What a feed still has to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedBacklog {
    /// Outbox ids after the cursor (events, bar the few an erasure removed).
    pub unread: i64,
    /// Kept events waiting for an attempt (not dead-lettered).
    pub pending: i64,
    pub dead: i64,
    /// Creation time of the oldest waiting event, Unix ms.
    pub oldest_ms: Option<i64>,
    /// Id of the newest outbox event (for the arrival rate).
    pub head: i64,
}

/// A page of dead letters and where the next page starts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    pub dead_letters: Vec<Delivery>,
    pub next_after: Option<i64>,
}

const DELIVERY_COLUMNS: &str =
    "feed, event_id, profile_id, type, message, attempts, next_attempt_ms, last_error, created_at_ms, dead_at_ms";

fn delivery_of(row: &AnyRow) -> Result<Delivery> {
    Ok(Delivery {
        feed: row.try_get("feed")?,
        event_id: row.try_get("event_id")?,
        profile_id: row.try_get("profile_id")?,
        kind: row.try_get("type")?,
        message: json_col(row, "message")?,
        attempts: row.try_get("attempts")?,
        next_attempt_ms: row.try_get("next_attempt_ms")?,
        last_error: row.try_get("last_error")?,
        created_at_ms: row.try_get("created_at_ms")?,
        dead_at_ms: row.try_get("dead_at_ms")?,
    })
}

impl Store {
    /// Wait for outbox events: call before reading the outbox, then await the signal, so no
    /// wake-up is lost in between.
    pub async fn outbox_signal(&self) -> Result<Arc<Notify>> {
        if self.backend == Backend::Postgres {
            self.listener
                .get_or_try_init(|| postgres::spawn_listener(self.url.clone(), self.work.clone(), self.outbox.clone()))
                .await?;
        }
        Ok(self.outbox.clone())
    }

    /// The same store through a connection pool of its own, sharing this handle's wake-ups. A
    /// role running beside others in one process (the feeds in `cdp local`) then never waits
    /// for a connection behind their load, as it would not in a process of its own.
    pub async fn with_own_pool(&self) -> Result<Store> {
        Ok(Store { pool: super::connect(self.backend, &self.url).await?, ..self.clone() })
    }

    /// Take `feed`'s lease for `owner` (one replica works a feed at a time) when it is free,
    /// ran out, or is `owner`'s already. Taken, it comes with where the feed stands.
    pub async fn take_feed(&self, feed: &str, owner: &str, lease: Duration) -> Result<FeedClaim> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let found = sqlx::query("SELECT owner, lease_until_ms FROM feed_state WHERE feed = $1").bind(feed).fetch_optional(tx.conn()).await?;
        let (holder, until_ms): (Option<String>, i64) = match &found {
            Some(row) => (row.try_get("owner")?, row.try_get("lease_until_ms")?),
            None => {
                sqlx::query("INSERT INTO feed_state (feed) VALUES ($1) ON CONFLICT (feed) DO NOTHING").bind(feed).execute(tx.conn()).await?;
                (None, 0)
            }
        };
        if let Some(other) = holder.as_ref().filter(|h| *h != owner && until_ms >= now) {
            return Ok(FeedClaim::Held { owner: other.clone(), until_ms });
        }
        // the condition again, for a replica that took the lease since the read above
        let taken = sqlx::query(
            "UPDATE feed_state SET owner = $2, lease_until_ms = $3
             WHERE feed = $1 AND (owner IS NULL OR owner = $2 OR lease_until_ms < $4)
             RETURNING cursor_id, delivered, failures, last_error",
        )
        .bind(feed)
        .bind(owner)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .fetch_optional(tx.conn())
        .await?;
        let Some(row) = taken else {
            return Ok(FeedClaim::Held { owner: holder.unwrap_or_default(), until_ms });
        };
        let position = FeedPosition {
            cursor: row.try_get("cursor_id")?,
            delivered: row.try_get("delivered")?,
            failures: row.try_get("failures")?,
            last_error: row.try_get("last_error")?,
        };
        tx.commit().await?;
        let lapsed = holder.filter(|h| h != owner).map(|owner| LapsedLease { owner, ended_at_ms: until_ms });
        Ok(FeedClaim::Taken { position, lapsed })
    }

    /// Extend `owner`'s lease on `feed` to `lease` from now; false when another replica holds it.
    pub async fn renew_feed(&self, feed: &str, owner: &str, lease: Duration) -> Result<bool> {
        let mut tx = self.begin().await?;
        let renewed = sqlx::query("UPDATE feed_state SET lease_until_ms = $3 WHERE feed = $1 AND owner = $2")
            .bind(feed)
            .bind(owner)
            .bind(now_ms() + lease.as_millis() as i64)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Give the lease up (at shutdown), so another replica takes the feed over at once.
    pub async fn release_feed(&self, feed: &str, owner: &str) -> Result<()> {
        sqlx::query("UPDATE feed_state SET owner = NULL, lease_until_ms = 0 WHERE feed = $1 AND owner = $2")
            .bind(feed)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Write one step of `feed` in one transaction. `false` (nothing written) when `owner` lost
    /// the lease meanwhile: the new owner redoes the step (delivery is at least once).
    pub async fn feed_progress(&self, feed: &str, owner: &str, step: &FeedProgress) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let held = sqlx::query(
            "UPDATE feed_state SET cursor_id = COALESCE($3, cursor_id), delivered = delivered + $4,
                    failures = failures + $5, last_error = COALESCE($6, last_error)
             WHERE feed = $1 AND owner = $2",
        )
        .bind(feed)
        .bind(owner)
        .bind(step.cursor)
        .bind(step.delivered)
        .bind(step.failures)
        .bind(step.last_error.as_deref())
        .execute(tx.conn())
        .await?;
        if held.rows_affected() != 1 {
            return Ok(false);
        }
        // a message is kept only while its profile exists: an erasure that committed while
        // this step was sending has dropped the profile, and its messages must not come back
        for d in &step.kept {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO feed_deliveries ({DELIVERY_COLUMNS})
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10
                 WHERE $4 = '{erased}' OR EXISTS (SELECT 1 FROM profiles WHERE id = $3)
                 ON CONFLICT (feed, event_id) DO NOTHING",
                erased = crate::feeds::select::ERASED
            )))
            .bind(feed)
            .bind(d.event_id)
            .bind(d.profile_id)
            .bind(&d.kind)
            .bind(d.message.to_string())
            .bind(d.attempts)
            .bind(d.next_attempt_ms)
            .bind(d.last_error.as_deref())
            .bind(now)
            .bind(d.dead.then_some(now))
            .execute(tx.conn())
            .await?;
        }
        for outcome in &step.retried {
            let query = match outcome {
                RetryOutcome::Delivered { event_id } => {
                    sqlx::query("DELETE FROM feed_deliveries WHERE feed = $1 AND event_id = $2").bind(feed).bind(*event_id)
                }
                RetryOutcome::Failed { event_id, error, next_attempt_ms } => sqlx::query(
                    "UPDATE feed_deliveries SET attempts = attempts + 1, last_error = $3, next_attempt_ms = $4
                     WHERE feed = $1 AND event_id = $2",
                )
                .bind(feed)
                .bind(*event_id)
                .bind(error.as_str())
                .bind(*next_attempt_ms),
                RetryOutcome::Dead { event_id, error } => sqlx::query(
                    "UPDATE feed_deliveries SET attempts = attempts + 1, last_error = $3, dead_at_ms = $4
                     WHERE feed = $1 AND event_id = $2",
                )
                .bind(feed)
                .bind(*event_id)
                .bind(error.as_str())
                .bind(now),
            };
            query.execute(tx.conn()).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Which of `profiles` have events `feed` has not delivered yet (not dead-lettered): their
    /// next events must wait behind those.
    pub async fn held_profiles(&self, feed: &str, profiles: &[i64]) -> Result<BTreeSet<i64>> {
        if profiles.is_empty() {
            return Ok(BTreeSet::new());
        }
        let sql = format!(
            "SELECT DISTINCT profile_id FROM feed_deliveries WHERE feed = $1 AND dead_at_ms IS NULL AND {}",
            self.backend.in_ids("profile_id", 2)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(feed).bind(json_ids(profiles)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("profile_id")?)).collect()
    }

    /// Kept events whose attempt is due and that are the oldest waiting one of their profile.
    pub async fn due_deliveries(&self, feed: &str, now: i64, limit: i64) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM feed_deliveries d
             WHERE d.feed = $1 AND d.dead_at_ms IS NULL AND d.next_attempt_ms <= $2
               AND NOT EXISTS (SELECT 1 FROM feed_deliveries e WHERE e.feed = d.feed AND e.dead_at_ms IS NULL
                               AND e.profile_id = d.profile_id AND e.event_id < d.event_id)
             ORDER BY d.event_id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(feed).bind(now).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(delivery_of).collect()
    }

    /// Dead letters of `feed`, oldest event first, after event `after`.
    pub async fn dead_letters(&self, feed: &str, after: i64, limit: i64) -> Result<DeadLetterPage> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM feed_deliveries WHERE feed = $1 AND dead_at_ms IS NOT NULL AND event_id > $2
             ORDER BY event_id LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(feed).bind(after).bind(limit + 1).fetch_all(&self.pool).await?;
        let mut dead_letters = rows.iter().map(delivery_of).collect::<Result<Vec<_>>>()?;
        let next_after = (dead_letters.len() as i64 > limit).then(|| {
            dead_letters.truncate(limit as usize);
            dead_letters.last().map_or(after, |d| d.event_id)
        });
        Ok(DeadLetterPage { dead_letters, next_after })
    }

    pub async fn dead_letter(&self, feed: &str, event_id: i64) -> Result<Option<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM feed_deliveries WHERE feed = $1 AND event_id = $2 AND dead_at_ms IS NOT NULL"
        );
        let row = sqlx::query(AssertSqlSafe(sql)).bind(feed).bind(event_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(delivery_of).transpose()
    }

    /// Put a dead letter back in line with fresh attempts; false when it is not dead-lettered.
    pub async fn replay_dead_letter(&self, feed: &str, event_id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE feed_deliveries SET dead_at_ms = NULL, attempts = 0, next_attempt_ms = $3
             WHERE feed = $1 AND event_id = $2 AND dead_at_ms IS NOT NULL",
        )
        .bind(feed)
        .bind(event_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            // the feed's worker in this process looks at once (others on their next poll)
            self.outbox.notify_waiters();
        }
        Ok(done.rows_affected() == 1)
    }

    /// What `feed` still has to deliver. A feed that has not started yet starts at the
    /// beginning of the outbox: it owes all of it.
    pub async fn feed_backlog(&self, feed: &str) -> Result<FeedBacklog> {
        let row = sqlx::query(
            "SELECT
               (SELECT COALESCE(MAX(id), 0) FROM outbox) - s.cursor_id AS unread,
               (SELECT created_at_ms FROM outbox WHERE id = (SELECT MIN(id) FROM outbox WHERE id > s.cursor_id)) AS unread_oldest,
               (SELECT COUNT(*) FROM feed_deliveries WHERE feed = s.feed AND dead_at_ms IS NULL) AS pending,
               (SELECT MIN(created_at_ms) FROM feed_deliveries WHERE feed = s.feed AND dead_at_ms IS NULL) AS pending_oldest,
               (SELECT COUNT(*) FROM feed_deliveries WHERE feed = s.feed AND dead_at_ms IS NOT NULL) AS dead,
               (SELECT COALESCE(MAX(id), 0) FROM outbox) AS head
             FROM (SELECT CAST($1 AS TEXT) AS feed,
                          COALESCE((SELECT cursor_id FROM feed_state WHERE feed = $1), 0) AS cursor_id) AS s",
        )
        .bind(feed)
        .fetch_one(&self.pool)
        .await?;
        let unread_oldest: Option<i64> = row.try_get("unread_oldest")?;
        let pending_oldest: Option<i64> = row.try_get("pending_oldest")?;
        Ok(FeedBacklog {
            unread: row.try_get("unread")?,
            pending: row.try_get("pending")?,
            dead: row.try_get("dead")?,
            oldest_ms: unread_oldest.into_iter().chain(pending_oldest).min(),
            head: row.try_get("head")?,
        })
    }

    /// Golden profiles of `ids`, each id resolved to the live profile it stands for (itself, or
    /// the survivor it was merged into), in two queries whatever the number of ids.
    pub async fn goldens(&self, ids: &[i64]) -> Result<BTreeMap<i64, GoldenProfile>> {
        let rows = self.profile_goldens(ids).await?;
        let survivors: Vec<i64> = rows.values().filter_map(|(merged_into, _)| *merged_into).collect();
        let merged = self.profile_goldens(&survivors).await?;
        let mut out = BTreeMap::new();
        for (id, (merged_into, golden)) in rows {
            let golden = match merged_into {
                Some(survivor) => merged.get(&survivor).and_then(|(_, g)| g.clone()),
                None => golden,
            };
            if let Some(golden) = golden {
                out.insert(id, golden);
            }
        }
        Ok(out)
    }

    async fn profile_goldens(&self, ids: &[i64]) -> Result<BTreeMap<i64, (Option<i64>, Option<GoldenProfile>)>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sql = format!("SELECT id, merged_into, golden FROM profiles WHERE {}", self.backend.in_ids("id", 1));
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(json_ids(ids)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let golden: Option<String> = row.try_get("golden")?;
                let golden = golden.map(|g| serde_json::from_str(&g)).transpose()?;
                Ok((row.try_get("id")?, (row.try_get("merged_into")?, golden)))
            })
            .collect()
    }
}

impl WriteTx {
    /// Drop what the feeds still hold of these profiles (kept and dead-lettered messages carry
    /// their allow-listed attributes): for an erasure, in its transaction. Erasure events carry
    /// no attributes and stay, so the erasure still reaches every feed.
    pub async fn erase_feed_deliveries(&mut self, profiles: &[i64]) -> Result<u64> {
        let mut erased = 0;
        for profile in profiles {
            let done = sqlx::query("DELETE FROM feed_deliveries WHERE profile_id = $1 AND type <> $2")
                .bind(profile)
                .bind(crate::feeds::select::ERASED)
                .execute(self.conn())
                .await?;
            erased += done.rows_affected();
        }
        Ok(erased)
    }
}
