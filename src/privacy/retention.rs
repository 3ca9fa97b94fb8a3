//! Retention: per Source, records observed longer ago than its `privacy.retentionDays` are
//! purged on a schedule, with its quarantined payloads received that long ago. A profile
//! losing records gets its golden record recomputed (with the usual events); a profile left
//! with no record is erased (`profile.erased`, audited as `retention`, nothing suppressed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Privacy, PrivacyError};
use crate::runtime::ops::Shutdown;
use crate::matcher::Resolver;
use crate::pipeline::PipelineConfig;
use crate::store::{Removed, Store, now_ms};

const DAY_MS: i64 = 86_400_000;

/// Records purged per query.
const PAGE: i64 = 500;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    pub records: u64,
    pub quarantine_entries: u64,
    /// Profiles that kept records (golden record recomputed).
    pub profiles_updated: u64,
    /// Profiles left with no record, erased.
    pub profiles_erased: u64,
}

/// Purge every source's records older than its retention, as of `now_ms`.
pub async fn purge(privacy: &Privacy, resolver: &Resolver, now_ms: i64) -> Result<PurgeReport, PrivacyError> {
    let mut report = PurgeReport::default();
    for source in &privacy.config.sources {
        let Some(days) = source.spec.privacy.retention_days else { continue };
        let cutoff = now_ms - i64::from(days) * DAY_MS;
        report.quarantine_entries += privacy.store.purge_quarantine(&source.name, cutoff).await?;
        loop {
            let batch = privacy.store.records_observed_before(&source.name, cutoff, PAGE).await?;
            if batch.is_empty() {
                break;
            }
            let mut by_profile: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            for (record, profile) in batch {
                by_profile.entry(profile).or_default().push(record);
            }
            for (profile, records) in by_profile {
                let (removed, erased) = purge_profile(privacy, resolver, profile, &records, now_ms).await?;
                report.records += removed;
                if erased {
                    report.profiles_erased += 1;
                } else {
                    report.profiles_updated += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Remove `records` from `profile` in one transaction (erasing it when nothing is left),
/// retried while concurrent writers conflict. Returns the records removed (none when the
/// profile was merged meanwhile: the next look finds them in the survivor) and whether the
/// profile was erased.
async fn purge_profile(
    privacy: &Privacy,
    resolver: &Resolver,
    profile: i64,
    records: &[i64],
    now: i64,
) -> Result<(u64, bool), PrivacyError> {
    // before any transaction: on SQLite, making the key needs the writer lock
    let key = privacy.key().await?;
    super::retrying(|| async {
        let mut tx = privacy.store.begin().await?;
        let mut removed = Removed::default();
        let left = resolver.remove_records(&mut tx, profile, records, &mut removed, now).await?;
        if left == Some(0) {
            privacy.erase_emptied(&mut tx, &key, profile, &mut removed).await?;
        }
        tx.commit().await?;
        Ok((removed.records, left == Some(0)))
    })
    .await
}

/// How often the purge runs: retention is declared in days, an hour late is well within it.
const EVERY: Duration = Duration::from_secs(3600);

/// Purge hourly until shutdown (nothing to do when no source declares a retention).
pub fn spawn(store: &Store, config: &PipelineConfig, resolver: Arc<Resolver>, shutdown: Shutdown) {
    if config.sources.iter().all(|s| s.spec.privacy.retention_days.is_none()) {
        return;
    }
    let privacy = Privacy::new(store.clone(), Arc::new(config.clone()));
    tokio::spawn(async move {
        while !shutdown.requested() {
            match purge(&privacy, &resolver, now_ms()).await {
                Ok(report) => tracing::info!(?report, "retention purge"),
                Err(error) => tracing::warn!(%error, reason = error.reason(), "retention purge failed; next round retries"),
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.clone().wait() => {}
            }
        }
    });
}
