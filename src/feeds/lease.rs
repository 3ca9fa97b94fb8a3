//! One replica works a feed at a time, under a lease kept in the store. The lease is short
//! (a few seconds), so that a replica that died without releasing it (a crash, a kill -9, a
//! node lost) holds its feeds up for no longer than that, and a task of its own renews it
//! often, whatever the sends in flight take. A replica that cannot renew in time gives the
//! lease up before it ends in the store, dropping its sends in flight: two replicas never send
//! a feed's events at once, which keeps them in order per profile.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{FeedPosition, Store};

/// What came of asking for a feed's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedClaim {
    /// The lease is the caller's. `lapsed` is set when it was taken from another replica whose
    /// lease ran out without a release (that replica stopped, or lost the store).
    Taken { position: FeedPosition, lapsed: Option<LapsedLease> },
    /// Another replica holds it, until `until_ms` unless renewed.
    Held { owner: String, until_ms: i64 },
}

/// The lease another replica left behind without releasing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LapsedLease {
    pub owner: String,
    /// When it ran out (Unix ms).
    pub ended_at_ms: i64,
}

/// How often a lease of `length` is renewed; also how much sooner than the store a replica
/// considers it over, a margin for clock differences between replicas and for a request
/// already on the wire when a send is dropped.
fn renewal_interval(length: Duration) -> Duration {
    length / 5
}

/// A feed's lease held by this replica, renewed by a task of its own until dropped.
pub(crate) struct Lease {
    pub(crate) cursor: i64,
    /// Until when this replica may send: `None` once the lease is lost or could not be renewed.
    sending_until: watch::Receiver<Option<Instant>>,
    keeper: JoinHandle<()>,
}

impl Lease {
    /// The lease was just taken (its request sent at `asked_at`): start renewing it.
    pub fn start(store: &Store, feed: &str, owner: &str, length: Duration, asked_at: Instant, cursor: i64) -> Lease {
        let margin = renewal_interval(length);
        let (tx, sending_until) = watch::channel(Some(asked_at + length - margin));
        let keeper = tokio::spawn(keep(store.clone(), feed.to_string(), owner.to_string(), length, asked_at, tx));
        Lease { cursor, sending_until, keeper }
    }

    /// Whether this replica may still send under the lease.
    pub fn valid(&self) -> bool {
        self.sending_until.borrow().is_some_and(|until| Instant::now() < until)
    }

    /// Resolves when the lease is lost or ran out unrenewed: whatever is sending under it must
    /// stop.
    pub async fn lapsed(&self) {
        let mut until = self.sending_until.clone();
        loop {
            let Some(deadline) = *until.borrow_and_update() else { return };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    // unless a renewal came in at that very moment
                    if until.borrow().is_none_or(|renewed| renewed <= deadline) {
                        return;
                    }
                }
                changed = until.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renew the lease every fifth of its length. Each renewal must succeed before the replica's
/// own deadline (a fifth short of the lease in the store); otherwise, or when another replica
/// holds the lease, the deadline becomes `None` and the keeper stops.
async fn keep(store: Store, feed: String, owner: String, length: Duration, taken_at: Instant, tx: watch::Sender<Option<Instant>>) {
    let interval = renewal_interval(length);
    let mut renewed_at = taken_at;
    let mut next = renewed_at + interval;
    let mut failing = false;
    loop {
        tokio::time::sleep_until(next).await;
        let asked_at = Instant::now();
        let deadline = renewed_at + length - interval;
        let renewal = if asked_at < deadline {
            tokio::time::timeout_at(deadline, store.renew_feed(&feed, &owner, length)).await.ok()
        } else {
            None
        };
        match renewal {
            Some(Ok(true)) => {
                if failing {
                    tracing::info!(%feed, "lease renewed again");
                    failing = false;
                }
                renewed_at = asked_at;
                next = renewed_at + interval;
                let _ = tx.send(Some(renewed_at + length - interval));
            }
            Some(Ok(false)) => {
                tracing::warn!(%feed, "lease taken by another replica: stopped sending; the events in flight are sent again there");
                let _ = tx.send(None);
                return;
            }
            Some(Err(error)) => {
                if !failing {
                    tracing::warn!(%feed, %error, reason = error.reason(), "cannot renew the feed's lease; trying again");
                    failing = true;
                }
                next = (Instant::now() + interval / 4).min(deadline);
            }
            None => {
                tracing::warn!(
                    %feed,
                    lease_ms = length.as_millis() as u64,
                    "lease not renewed in time: stopped sending, so that another replica can take the feed over and send the events in flight again"
                );
                let _ = tx.send(None);
                return;
            }
        }
    }
}
