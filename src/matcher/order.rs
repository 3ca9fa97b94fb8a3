//! Arrival order per person across concurrent workers.
//!
//! Two records of one person can be claimed by two workers at once (a web-shop sign-up
//! carrying a consent, then a ticket scan 20 ms later). Their key locks serialise them, but
//! in whichever order the workers reach the locks: the scan could be resolved first, and its
//! `record.received` evaluated before the consent existed. So before taking its key locks, a
//! worker looks at the queued records older than its own that it does not hold (another
//! worker holds them: locked by its claiming transaction, or marked by a record-by-record
//! claim) and that share a blocking key with its own. Its records that have such an older
//! record, and its later records sharing a key with those, stay queued for a later claim; the
//! others are resolved now. When that leaves nothing to resolve, the worker ends its
//! transaction, waits for the older records' holders, and claims again.
//!
//! No deadlock: a worker waits only after ending its transaction, so a waiting worker holds
//! no lock at all (no row of the queue, no key lock, no profile), and what it waits for (the
//! transaction holding an older record's row) never waits for it. The transaction it waits
//! for may itself wait for key locks or fail on a profile lock, as without this rule; it
//! then ends, and the waiter claims again and looks again. A worker that goes on to resolve
//! adds no wait to those it had before this rule: it only leaves some records queued. And
//! someone always goes on: whoever holds the oldest queued record of a person has no older
//! one to wait for. Records queued by a transaction that commits after a newer one (ids are
//! handed out at insert) are treated as held, and claimed next.
//!
//! The record-by-record path ([`super::resolve_batch`], for a batch whose transaction kept
//! failing) resolves its records in their order but waits for nobody: it is there to isolate
//! a failing record. Its marked records are waited for like any other.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{Keyed, Resolver};
use crate::store::{HeldRecord, IntakeItem, Store, StoreError, WriteTx};

/// What a claim can do now.
pub(super) enum Turn {
    /// Resolve these records (in id order, with their keys); the rest of the claim waits.
    Resolve { items: Vec<IntakeItem>, keyed: Vec<Keyed> },
    /// Every claimed record has to wait: end the claim and wait for these older records.
    Wait(Older),
}

/// Older records of the same person as the first claimed record, held by other workers.
pub(super) struct Older {
    /// Held by another worker's open transaction: waited for by locking them in turn.
    locked: Vec<i64>,
    /// One is marked by a record-by-record claim: there is no transaction to wait for, so the
    /// worker polls until it is resolved (or its claim lapses and it can be claimed again).
    marked: bool,
}

/// Which of `claimed` (in id order, keyed as `keyed`) may be resolved now, in `tx`, which
/// holds them: those with no older queued record of the same person in another worker's hands.
pub(super) async fn turn(
    tx: &mut WriteTx,
    resolver: &Resolver,
    claimed: &[IntakeItem],
    keyed: Vec<Keyed>,
    lease: Duration,
) -> Result<Turn, StoreError> {
    let mine: Vec<i64> = claimed.iter().map(|i| i.id).collect();
    let newest = mine.iter().copied().max().unwrap_or_default();
    let held = tx.held_before(newest, &mine, lease).await?;
    if held.is_empty() {
        return Ok(Turn::Resolve { items: claimed.to_vec(), keyed });
    }
    // the oldest held record carrying each key (`held` is in id order)
    let mut oldest: HashMap<i64, &HeldRecord> = HashMap::new();
    for record in &held {
        for key in resolver.prepare(&record.item).blocking {
            oldest.entry(key).or_insert(record);
        }
    }
    let mut deferred_keys: HashSet<i64> = HashSet::new();
    let mut first_waits_for: Vec<&HeldRecord> = Vec::new();
    let (mut items, mut ready) = (Vec::new(), Vec::new());
    for (position, (item, keys)) in claimed.iter().zip(keyed).enumerate() {
        let older: Vec<&HeldRecord> =
            keys.blocking.iter().filter_map(|key| oldest.get(key).copied()).filter(|h| h.item.id < item.id).collect();
        if older.is_empty() && !keys.blocking.iter().any(|key| deferred_keys.contains(key)) {
            items.push(item.clone());
            ready.push(keys);
            continue;
        }
        // a later record of the same person must not overtake this one either
        deferred_keys.extend(keys.blocking.iter().copied());
        if position == 0 {
            first_waits_for = older;
        }
    }
    if !items.is_empty() {
        return Ok(Turn::Resolve { items, keyed: ready });
    }
    Ok(Turn::Wait(Older {
        locked: first_waits_for.iter().filter(|h| !h.marked).map(|h| h.item.id).collect(),
        marked: first_waits_for.iter().any(|h| h.marked),
    }))
}

/// Longest pause between two looks at a marked record.
const MARKED_POLL_MAX: Duration = Duration::from_millis(200);

/// Wait for `older` to be resolved (or given up) by the workers holding them; `waits` counts
/// this worker's waits in a row.
pub(super) async fn wait(store: &Store, older: &Older, waits: u32) -> Result<(), StoreError> {
    store.wait_for_intake(&older.locked).await?;
    if older.marked {
        tokio::time::sleep((Duration::from_millis(10) * waits).min(MARKED_POLL_MAX)).await;
    }
    Ok(())
}
