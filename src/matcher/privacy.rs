//! The matcher's part of consents and retention: `consent.changed` events when a profile's
//! golden record is recomputed, and removing purged records from a profile (with what
//! enrichers found, once no record of a Source is left).

use super::{MatchError, Resolver};
use crate::identity::consent::changes;
use crate::identity::GoldenProfile;
use crate::store::{Removed, WriteTx, profile_ref};

/// One `consent.changed` event per purpose whose current state differs between `before`
/// (`None` for a new profile) and `after`, in the transaction that changed it.
pub(super) fn push_consent_changes(
    tx: &mut WriteTx,
    profile: i64,
    before: Option<&GoldenProfile>,
    after: &GoldenProfile,
    now: i64,
) {
    let empty = Default::default();
    let before = before.map_or(&empty, |g| &g.consents);
    for change in changes(before, &after.consents) {
        let payload = serde_json::json!({
            "profileId": profile_ref(profile),
            "purpose": change.purpose,
            "previous": change.previous,
            "current": change.current,
            "statement": change.statement,
        });
        tx.push_event("consent.changed", Some(profile), None, &payload, now);
    }
}

impl Resolver {
    /// Remove those of `records` that `profile` holds (one moved away by a concurrent merge
    /// or unmerge is left to the caller's next look) and recompute its golden record, with
    /// the usual events. Returns how many records the profile still holds (at 0 the caller
    /// erases it), or `None` when it is no longer a live profile (merged meanwhile: its
    /// records now belong to the survivor).
    pub async fn remove_records(
        &self,
        tx: &mut WriteTx,
        profile: i64,
        records: &[i64],
        removed: &mut Removed,
        now: i64,
    ) -> Result<Option<usize>, MatchError> {
        let rows = tx.lock_profiles(&[profile]).await?;
        let Some(row) = rows.first().filter(|r| r.merged_into.is_none()) else { return Ok(None) };
        let held: Vec<i64> = tx.record_ids_of(&[profile]).await?.into_iter().map(|(r, _)| r).collect();
        let records: Vec<i64> = records.iter().copied().filter(|r| held.contains(r)).collect();
        tx.delete_records(&records, removed).await?;
        self.cache.forget(records.iter().copied());
        let mut remaining = self.members(tx, &[profile]).await?.remove(&profile).unwrap_or_default();
        // what enrichers found about the person goes with the last record a Source sent
        if remaining.iter().all(|(_, r)| r.source.starts_with(crate::pipeline::ENRICHER_SOURCE_PREFIX)) {
            let enriched: Vec<i64> = remaining.drain(..).map(|(id, _)| id).collect();
            tx.delete_records(&enriched, removed).await?;
            self.cache.forget(enriched.iter().copied());
        }
        if !remaining.is_empty() {
            self.store_golden(tx, profile, Some(row), &remaining, now).await?;
        }
        Ok(Some(remaining.len()))
    }
}
