//! The matcher's part of enrichment: values an enricher found for a profile join it as a
//! record of the enricher's source (`enricher/<name>`), so they take part in survivorship
//! with the enricher's trust rank and carry their provenance (the enricher, the call as the
//! record's id, its time) into the golden record, explanations and exports.

use std::collections::BTreeMap;

use super::{MatchError, Resolver};
use crate::identity::CanonicalRecord;
use crate::store::{IntakeItem, NewRecord, Removed, WriteTx};

/// The values of one enrichment call for one profile.
#[derive(Clone, Debug)]
pub struct Enrichment<'a> {
    /// The enricher's source name (`enricher/<name>`).
    pub source: &'a str,
    pub call_id: &'a str,
    pub values: &'a BTreeMap<String, String>,
    /// Why the values are there, stored as the record's evidence (no values).
    pub evidence: serde_json::Value,
}

impl Resolver {
    /// Put an enrichment into the live profile `profile` resolves to, in place of the one the
    /// same enricher made before, and recompute its golden record (with its events). Returns
    /// the profile it went to, or `None` when there is none (erased, or split by an unmerge).
    pub async fn attach_enrichment(
        &self,
        tx: &mut WriteTx,
        profile: i64,
        enrichment: &Enrichment<'_>,
        now: i64,
    ) -> Result<Option<i64>, MatchError> {
        let mut rows = tx.lock_profiles(&[profile]).await?;
        if let Some(survivor) = rows.first().and_then(|r| r.merged_into) {
            rows = tx.lock_profiles(&[survivor]).await?;
        }
        let Some(row) = rows.into_iter().next().filter(|r| r.merged_into.is_none() && r.split_at_ms.is_none()) else {
            return Ok(None);
        };
        let members = self.members(tx, &[row.id]).await?.remove(&row.id).unwrap_or_default();
        let replaced: Vec<i64> = members.iter().filter(|(_, r)| r.source == enrichment.source).map(|(id, _)| *id).collect();
        tx.delete_records(&replaced, &mut Removed::default()).await?;
        self.cache.forget(replaced.iter().copied());

        let id = tx.enrichment_record_id(enrichment.source, enrichment.call_id, now).await?;
        let record = CanonicalRecord {
            source: enrichment.source.to_string(),
            source_record_id: enrichment.call_id.to_string(),
            observed_at_ms: now,
            attributes: enrichment.values.clone(),
        };
        let keyed = self.prepare(&IntakeItem { id, received_at_ms: now, record });
        let prepared = std::sync::Arc::new(keyed.record);
        // no match keys nor term counts: an enrichment describes a profile, it finds none
        tx.insert_records(&[NewRecord {
            id,
            source: enrichment.source.to_string(),
            source_record_id: enrichment.call_id.to_string(),
            observed_at_ms: now,
            received_at_ms: now,
            profile_id: row.id,
            attributes: serde_json::to_string(enrichment.values).expect("attributes serialise"),
            normalised: serde_json::to_string(&prepared.values).expect("values serialise"),
            evidence: enrichment.evidence.to_string(),
            terms: "[]".to_string(),
            keys: Vec::new(),
        }])
        .await?;
        let mut records: Vec<_> = members.into_iter().filter(|(r, _)| !replaced.contains(r)).collect();
        records.push((id, prepared));
        self.store_golden(tx, row.id, Some(&row), &records, now).await?;
        Ok(Some(row.id))
    }
}
