//! GDPR across the platform: erasure (with its audit and the suppression list), export (the
//! right of access), consents as the API shows them, and the intake gate that refuses an
//! erased person's data. Retention purges are in [`retention`].
//!
//! A person's identifiers (email, phone, national id, `identifiers.*`) are never kept once they
//! are erased: the audit entry and the suppression list hold keyed hashes of them
//! (HMAC-SHA256 under the platform's secret, kept apart from the store in a cluster), which
//! match the same identifier arriving again without revealing it. A suppression can be lifted
//! for a person who comes back, audited the same way.

pub mod retention;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::identity::consent::{self, ConsentStatement};
use crate::identity::normalise::{NormaliseFlags, normalise_with};
use crate::identity::record::IDENTIFIER_PREFIX;
use crate::ingest::mapping::at_path;
use crate::matcher::{MatchError, lookup_key};
use crate::pipeline::{NamedSource, PipelineConfig};
use crate::store::{
    ErasureAudit, Event, ProfileRow, QuarantineEntry, Removed, ReviewRow, Store, StoreError, StoredRecord, WriteTx,
    key_hash, now_ms,
};

/// Where a cluster's workloads find the key of the identifier hashes (from the platform's
/// Secret). Unset: the store keeps a key of its own (`cdp local`, stores made before the key
/// moved to a Secret). See [`Store::privacy_secret_with`].
pub const PRIVACY_KEY_ENV: &str = "CDP_PRIVACY_KEY";

/// The key given from outside the store cannot be used with it: hashes made with another key
/// would no longer match the suppression list, and erased people would come back.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyKeyError {
    #[error(
        "{PRIVACY_KEY_ENV} is not the key this store's identifier hashes were made with: give the \
         workloads the key they had (restore the platform's privacy-key Secret)"
    )]
    Mismatch,
    #[error(
        "this store's identifier hashes were made with a key given in {PRIVACY_KEY_ENV}, which is \
         not set: give it (the platform's privacy-key Secret)"
    )]
    Missing,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// A record of the person is being resolved by a matcher: erasing now could miss it.
    #[error("a record of this person is being resolved; retry in a moment")]
    InFlight,
    /// The profiles the subject names changed between the look-up and the erasure's
    /// transaction (a record of the person was resolved meanwhile): looked up again.
    #[error("the person's profiles changed during the erasure; retry in a moment")]
    Changed,
}

impl PrivacyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Store(e) => e.reason(),
            Self::Match(e) => e.reason(),
            Self::NotFound(_) => "not_found",
            Self::Invalid(_) => "invalid",
            Self::InFlight => "in_flight",
            Self::Changed => "changed",
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_conflict(),
            Self::Match(e) => e.is_retryable(),
            Self::InFlight | Self::Changed => true,
            _ => false,
        }
    }
}

/// Attributes that single a person out: what erasure suppresses, and what finds an erased
/// person's quarantined or queued data.
pub fn is_identifying(attribute: &str) -> bool {
    matches!(attribute, "email" | "phone" | "nationalId") || attribute.starts_with(IDENTIFIER_PREFIX)
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new().chain_update(block.map(|b| b ^ 0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(block.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
}

/// Keyed hashes of identifiers.
#[derive(Clone)]
pub struct SubjectKey(Arc<[u8]>);

impl SubjectKey {
    pub fn new(secret: &str) -> SubjectKey {
        SubjectKey(secret.as_bytes().into())
    }

    /// The keyed hash of one normalised identifier.
    pub fn hash(&self, attribute: &str, normalised: &str) -> String {
        hex::encode(hmac_sha256(&self.0, lookup_key(attribute, normalised).as_bytes()))
    }

    /// Keyed hash → attribute, for the identifying attributes among `(attribute, raw value)`
    /// pairs that normalise (already normalised values pass unchanged).
    pub fn identifiers<'a>(
        &self,
        attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
        region: &str,
        flags: NormaliseFlags,
    ) -> BTreeMap<String, String> {
        attributes
            .into_iter()
            .filter(|(a, _)| is_identifying(a))
            .filter_map(|(a, raw)| match normalise_with(a, raw, region, flags) {
                Ok(Some(v)) => Some((self.hash(a, &v), a.to_string())),
                _ => None,
            })
            .collect()
    }

    /// [`SubjectKey::identifiers`] of a stored record's normalised values.
    fn stored_identifiers(&self, record: &StoredRecord, flags: NormaliseFlags) -> BTreeMap<String, String> {
        self.identifiers(record.normalised.iter().map(|(a, v)| (a.as_str(), v.as_str())), "", flags)
    }

    /// [`SubjectKey::identifiers`] of a payload as its source sent it (valid or not).
    pub fn payload_identifiers(&self, source: &NamedSource, payload: &Value, flags: NormaliseFlags) -> BTreeMap<String, String> {
        let raw: Vec<(&str, String)> = source
            .spec
            .mapping
            .iter()
            .filter(|m| is_identifying(&m.to))
            .filter_map(|m| {
                let value = match at_path(payload, &m.from)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((m.to.as_str(), value))
            })
            .collect();
        let region = source.spec.default_phone_region.as_deref().unwrap_or("");
        self.identifiers(raw.iter().map(|(a, v)| (*a, v.as_str())), region, flags)
    }
}

/// Whom to erase.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A profile id; an alias erases its survivor.
    Profile(i64),
    /// Every profile holding this identifier (`email`, `phone`, `nationalId`, `identifiers.*`).
    Identifier { attribute: String, value: String, region: Option<String> },
}

/// What an erasure did.
#[derive(Clone, Debug)]
pub struct ErasureReport {
    /// The audit entry.
    pub erasure_id: i64,
    /// Live profiles erased (their aliases went with them).
    pub profiles: Vec<i64>,
    pub removed: Removed,
    /// The person's identifiers now refused at intake: keyed hash → attribute.
    pub suppressed: BTreeMap<String, String>,
    /// The store's files were scrubbed of what the erasure deleted. False when the scrub
    /// failed: the erasure stands, and the next one's scrub covers it.
    pub scrubbed: bool,
}

/// Consents of a profile: the state in force per purpose and every statement, oldest first.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consents {
    pub current: BTreeMap<String, ConsentStatement>,
    pub history: Vec<ConsentStatement>,
}

/// Everything held on a person.
#[derive(Clone, Debug)]
pub struct Export {
    pub exported_at_ms: i64,
    pub profile: ProfileRow,
    pub aliases: Vec<i64>,
    pub records: Vec<StoredRecord>,
    pub consents: Consents,
    pub review_items: Vec<ReviewRow>,
    pub never_merge: Vec<(i64, i64)>,
    pub events: Vec<Event>,
    /// Invalid payloads kept in quarantine that carry one of the person's identifiers.
    pub quarantine: Vec<QuarantineEntry>,
    /// Values enrichers wrote into the person's records before matching, with their
    /// provenance (those written into the profile are records of `enricher/<name>`).
    pub enrichments: Vec<crate::store::AppliedEnrichment>,
}

/// Rows scanned per query when an erasure looks through quarantine and the intake queue.
const SCAN_PAGE: i64 = 500;

/// GDPR operations over one store and platform.
#[derive(Clone)]
pub struct Privacy {
    store: Store,
    config: Arc<PipelineConfig>,
    flags: NormaliseFlags,
    key: Arc<OnceCell<SubjectKey>>,
}

impl Privacy {
    pub fn new(store: Store, config: Arc<PipelineConfig>) -> Privacy {
        let flags = crate::ingest::normalise_flags(&config);
        Privacy { store, config, flags, key: Arc::new(OnceCell::new()) }
    }

    async fn key(&self) -> Result<SubjectKey, StoreError> {
        self.key.get_or_try_init(|| async { Ok(SubjectKey::new(&self.store.privacy_secret().await?)) }).await.cloned()
    }

    /// Intake gate: the keyed hashes of each payload's identifiers (hash → attribute), for
    /// the store to refuse the payloads carrying one of an erased person, in the transaction
    /// that stores them ([`crate::store::Arrival`]). None when the source may start a new
    /// profile for an erased person.
    pub async fn gate<'a>(
        &self,
        source: &NamedSource,
        payloads: impl IntoIterator<Item = &'a Value>,
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        use crate::crd::source::AfterErasure;
        let payloads: Vec<&Value> = payloads.into_iter().collect();
        if source.spec.privacy.after_erasure == AfterErasure::NewProfile {
            return Ok(vec![BTreeMap::new(); payloads.len()]);
        }
        let key = self.key().await?;
        Ok(payloads.iter().map(|p| key.payload_identifiers(source, p, self.flags)).collect())
    }

    /// An identifier as the store indexes it: normalised as at intake (a phone written without
    /// a country code in `region`, or the first Source's default region).
    fn normalised_identifier(&self, attribute: &str, value: &str, region: Option<&str>) -> Result<String, PrivacyError> {
        if !is_identifying(attribute) {
            return Err(PrivacyError::Invalid(format!(
                "{attribute} does not identify a person (use email, phone, nationalId or identifiers.<name>)"
            )));
        }
        let default_region = self.config.sources.iter().find_map(|s| s.spec.default_phone_region.as_deref());
        let region = region.or(default_region).unwrap_or_default();
        match normalise_with(attribute, value, region, self.flags) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(PrivacyError::Invalid(format!("{attribute} is empty"))),
            Err(e) => Err(PrivacyError::Invalid(format!("{attribute}: {e}"))),
        }
    }

    /// The keyed hash of an identifier, as the suppression list and the audit hold it.
    pub async fn identifier_hash(&self, attribute: &str, value: &str, region: Option<&str>) -> Result<String, PrivacyError> {
        let normalised = self.normalised_identifier(attribute, value, region)?;
        Ok(self.key().await?.hash(attribute, &normalised))
    }

    /// The live profiles a subject names (none: the person may still have quarantined or
    /// queued data), and the keyed hash (→ attribute) of the identifier it was named by.
    async fn subject_profiles(&self, subject: &Subject) -> Result<(Vec<i64>, BTreeMap<String, String>), PrivacyError> {
        match subject {
            Subject::Profile(id) => {
                let row = self.store.profile(*id).await?.ok_or_else(|| PrivacyError::NotFound(format!("profile p{id}")))?;
                Ok((vec![row.id], BTreeMap::new()))
            }
            Subject::Identifier { attribute, value, region } => {
                let normalised = self.normalised_identifier(attribute, value, region.as_deref())?;
                let profiles = self.store.profiles_with_keys(&[key_hash(&lookup_key(attribute, &normalised))], 0, 1000).await?;
                let hash = self.key().await?.hash(attribute, &normalised);
                Ok((profiles, BTreeMap::from([(hash, attribute.clone())])))
            }
        }
    }

    /// Erase a person everywhere, audit it, and suppress their identifiers (retried on
    /// conflicts with concurrent writers); then scrub the store's files of what it deleted.
    pub async fn erase(&self, subject: &Subject, reason: &str, requested_by: &str) -> Result<ErasureReport, PrivacyError> {
        let mut report = retrying(|| async {
            // looked up again on a retry: a concurrent merge may have changed the live profiles
            let (profiles, named) = self.subject_profiles(subject).await?;
            let erasure = Erasure { profiles: &profiles, named: &named, reason, requested_by, suppress: true };
            self.erase_once(&erasure, subject).await
        })
        .await?;
        // after the commit: the deletes must be final before their traces can be removed
        match self.store.scrub_personal_data().await {
            Ok(()) => report.scrubbed = true,
            Err(error) => tracing::warn!(
                %error, erasure_id = report.erasure_id,
                "erased, but the store's files may keep traces of the erased data until the next erasure scrubs them"
            ),
        }
        Ok(report)
    }

    async fn erase_once(&self, erasure: &Erasure<'_>, subject: &Subject) -> Result<ErasureReport, PrivacyError> {
        // before the transaction: on SQLite, making the key needs the writer lock it holds
        let key = self.key().await?;
        let mut tx = self.store.begin().await?;
        // a record of the person may have been resolved since the look-up (into a new
        // profile, or one found through another identifier): look again now that the writer
        // lock is held (SQLite); on PostgreSQL this narrows the window to a commit in flight
        if self.subject_profiles(subject).await?.0 != erasure.profiles {
            return Err(PrivacyError::Changed);
        }
        let mut removed = Removed::default();
        let report = self.erase_in(&mut tx, &key, erasure, &mut removed).await?;
        // PostgreSQL: a matcher may have committed a record of the person between the look-up
        // above and the scan of the queue (too late for the one, no longer queued for the
        // other). Once the scan is done, every record of the person is either committed, and
        // found by this look-up, or still queued or claimed, which the scan refused or held.
        if self.subject_profiles(subject).await?.0 != erasure.profiles {
            return Err(PrivacyError::Changed);
        }
        tx.commit().await?;
        Ok(report)
    }

    /// The erasure proper, inside `tx`: profiles (live ones, locked, plus their aliases) and
    /// what hangs off them, then quarantined and queued payloads carrying one of the person's
    /// identifiers, the audit entry, the suppression list, one `profile.erased` per profile.
    async fn erase_in(
        &self,
        tx: &mut WriteTx,
        key: &SubjectKey,
        erasure: &Erasure<'_>,
        removed: &mut Removed,
    ) -> Result<ErasureReport, PrivacyError> {
        let now = now_ms();
        let locked = tx.lock_profiles(erasure.profiles).await?;
        if locked.len() != erasure.profiles.len() || locked.iter().any(|p| p.merged_into.is_some()) {
            return Err(MatchError::Stale.into());
        }
        let mut identifiers = erasure.named.clone();
        let record_ids: Vec<i64> = tx.record_ids_of(erasure.profiles).await?.into_iter().map(|(r, _)| r).collect();
        for record in tx.records(&record_ids).await? {
            identifiers.extend(key.stored_identifiers(&record, self.flags));
        }
        let hashes: &BTreeSet<String> = &identifiers.keys().cloned().collect();
        let mut erased_events = Vec::new();
        for &profile in erasure.profiles {
            let aliases = tx.aliases_of(&[profile]).await?;
            let family: Vec<i64> = std::iter::once(profile).chain(aliases.iter().copied()).collect();
            tx.erase_profiles(&family, removed).await?;
            erased_events.push((profile, aliases));
        }
        if !hashes.is_empty() {
            if erasure.suppress {
                // no intake may check the list between this scan of the queue and the commit
                tx.exclude_intake().await?;
            }
            self.drop_unresolved(tx, key, hashes, removed).await?;
        }
        let audit = ErasureAudit {
            subject_hashes: hashes,
            profile_ids: erasure.profiles,
            reason: erasure.reason,
            requested_by: erasure.requested_by,
            removed,
        };
        let erasure_id = tx.add_erasure(&audit).await?;
        if erasure.suppress {
            tx.suppress(hashes, erasure_id).await?;
        }
        for (profile, aliases) in erased_events {
            let aliases: Vec<String> = aliases.iter().copied().map(crate::store::profile_ref).collect();
            let payload = serde_json::json!({"profileId": crate::store::profile_ref(profile), "aliases": aliases, "erasureId": erasure_id});
            tx.push_event("profile.erased", Some(profile), None, &payload, now);
        }
        tracing::info!(erasure_id, profiles = ?erasure.profiles, reason = erasure.reason, "erased");
        let suppressed = if erasure.suppress { identifiers } else { BTreeMap::new() };
        Ok(ErasureReport { erasure_id, profiles: erasure.profiles.to_vec(), removed: *removed, suppressed, scrubbed: false })
    }

    /// Drop quarantined and queued payloads carrying one of `hashes`.
    async fn drop_unresolved(
        &self,
        tx: &mut WriteTx,
        key: &SubjectKey,
        hashes: &BTreeSet<String>,
        removed: &mut Removed,
    ) -> Result<(), PrivacyError> {
        let (mut quarantined, mut queued_ids) = (Vec::new(), Vec::new());
        let mut after = 0;
        loop {
            let page = tx.quarantine_page(after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            quarantined.extend(page.iter().filter(|e| self.entry_matches(key, e, hashes)).map(|e| e.id));
        }
        after = 0;
        loop {
            let page = tx.queued_page(after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for queued in &page {
                let record = &queued.record;
                let region = self.config.source(&record.source).and_then(|s| s.spec.default_phone_region.as_deref()).unwrap_or("");
                let attributes = record.attributes.iter().map(|(a, v)| (a.as_str(), v.as_str()));
                if key.identifiers(attributes, region, self.flags).keys().any(|h| hashes.contains(h)) {
                    if queued.claimed {
                        return Err(PrivacyError::InFlight);
                    }
                    queued_ids.push(queued.id);
                }
            }
        }
        tx.delete_quarantine_entries(&quarantined, removed).await?;
        if !tx.drop_queued(&queued_ids, removed).await? {
            return Err(PrivacyError::InFlight);
        }
        Ok(())
    }

    /// A quarantined payload carries one of `hashes` (read through its Source's mapping; a
    /// payload of a source no longer declared is read through every declared source's).
    fn entry_matches(&self, key: &SubjectKey, entry: &QuarantineEntry, hashes: &BTreeSet<String>) -> bool {
        let sources: Vec<&NamedSource> = match self.config.source(&entry.source) {
            Some(source) => vec![source],
            None => self.config.sources.iter().collect(),
        };
        sources.iter().any(|s| key.payload_identifiers(s, &entry.payload, self.flags).keys().any(|h| hashes.contains(h)))
    }

    /// Erase a profile a retention purge emptied: no subject to suppress, audited as `retention`.
    pub(crate) async fn erase_emptied(
        &self,
        tx: &mut WriteTx,
        key: &SubjectKey,
        profile: i64,
        removed: &mut Removed,
    ) -> Result<i64, PrivacyError> {
        let none = BTreeMap::new();
        let erasure = Erasure { profiles: &[profile], named: &none, reason: "retention", requested_by: "retention", suppress: false };
        Ok(self.erase_in(tx, key, &erasure, removed).await?.erasure_id)
    }

    /// The consents of the live profile `id` resolves to.
    pub async fn consents(&self, id: i64) -> Result<Consents, PrivacyError> {
        let row = self.live(id).await?;
        Ok(consents_of(&self.store.records_of(row.id).await?))
    }

    async fn live(&self, id: i64) -> Result<ProfileRow, PrivacyError> {
        self.store.profile(id).await?.ok_or_else(|| PrivacyError::NotFound(format!("profile p{id}")))
    }

    /// Everything held on the person of profile `id`.
    pub async fn export(&self, id: i64) -> Result<Export, PrivacyError> {
        let profile = self.live(id).await?;
        let aliases = self.store.aliases(profile.id).await?;
        let records = self.store.records_of(profile.id).await?;
        let record_ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let family: Vec<i64> = std::iter::once(profile.id).chain(aliases.iter().copied()).collect();
        let key = self.key().await?;
        let hashes: BTreeSet<String> = records.iter().flat_map(|r| key.stored_identifiers(r, self.flags).into_keys()).collect();
        let mut quarantine = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.quarantined(None, after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            quarantine.extend(page.into_iter().filter(|e| self.entry_matches(&key, e, &hashes)));
        }
        Ok(Export {
            exported_at_ms: now_ms(),
            consents: consents_of(&records),
            review_items: self.store.reviews_of_records(&record_ids).await?,
            never_merge: self.store.never_merge_of_records(&record_ids).await?,
            events: self.store.events_of(&family, i64::MAX).await?,
            enrichments: self.store.enrichment_of_records(&record_ids).await?,
            profile,
            aliases,
            records,
            quarantine,
        })
    }
}

struct Erasure<'a> {
    profiles: &'a [i64],
    /// Keyed hash (→ attribute) of the identifier the request named the person by (none for a
    /// profile id).
    named: &'a BTreeMap<String, String>,
    reason: &'a str,
    requested_by: &'a str,
    suppress: bool,
}

/// Run `attempt` again while it fails on a conflict with a concurrent writer, at most 20
/// times, pausing a little longer (and at random) each time.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, PrivacyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PrivacyError>>,
{
    let mut retries = 0u32;
    loop {
        match attempt().await {
            Err(e) if e.is_retryable() && retries < 20 => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(rand::random_range(1..5) * u64::from(retries))).await;
            }
            other => return other,
        }
    }
}

pub fn consents_of(records: &[StoredRecord]) -> Consents {
    let history = consent::in_order(
        records
            .iter()
            .flat_map(|r| consent::record_statements(&r.source, &r.source_record_id, r.observed_at_ms, &r.normalised))
            .collect(),
    );
    Consents { current: consent::current(&history), history }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let long_key = [0xaa; 131];
        let mac = hmac_sha256(&long_key, b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex::encode(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn identifiers_hash_normalised_values_under_the_key() {
        let key = SubjectKey::new("k1");
        let raw = key.identifiers([("email", " Ann@Example.com"), ("givenName", "Ann"), ("phone", "06 12 34 56 78")], "FR", NormaliseFlags::default());
        let stored = key.identifiers([("email", "ann@example.com"), ("phone", "+33612345678")], "", NormaliseFlags::default());
        assert_eq!(raw, stored);
        assert_eq!(raw.values().map(String::as_str).collect::<BTreeSet<_>>(), BTreeSet::from(["email", "phone"]));
        let other = SubjectKey::new("k2").identifiers([("email", "ann@example.com")], "", NormaliseFlags::default());
        assert!(other.keys().all(|h| !raw.contains_key(h)));
    }
}
