//! The matcher: claims intake work, resolves each record with the identity core against the
//! profiles its blocking keys reach, and persists the decision (links with evidence, merges,
//! golden records, review items, outbox events) in the same transaction.
//!
//! Concurrency: a transaction first takes locks on the blocking-key hashes of the records it
//! resolves (sorted), so two records that could belong to one person never resolve at the
//! same time; then it locks the candidate profiles of the batch (sorted) and checks they did
//! not change since it looked them up (another worker may have merged them meanwhile) — if
//! they did, the transaction is retried. Keys are always locked before profiles. Two batches
//! can still deadlock on profile rows (PostgreSQL detects it); that too is a retry. Before it
//! takes its key locks, a worker lets older records of the same people that other workers
//! hold go first ([`order`]), so each person's records are resolved in the order they arrived.

mod batch;
mod cache;
mod enrich;
mod order;
mod pace;
mod privacy;
mod service;
pub mod train;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::identity::{Engine, GoldenProfile, LengthLimits, PairEvidence, PreparedRecord, Shortfall, SourcedRecord};
use crate::pipeline::PipelineConfig;
use crate::store::{self, GoldenUpdate, IntakeItem, ProfileRow, ReviewRow, Store, StoreError, WriteTx, key_hash, profile_ref};

/// Prepared records of profiles: profile id → `(record id, record)` in record id order.
type Members = BTreeMap<i64, Vec<(i64, Arc<PreparedRecord>)>>;

pub use enrich::Enrichment;
pub use service::{BatchArgs, MatcherArgs, Worker, WorkerOptions, run, spawn_queue_gauge, spawn_workers, worker_spawner};

pub use crate::identity::record::lookup_key;

#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The candidate profiles changed while we locked them; the caller retries.
    #[error("candidate profiles changed concurrently")]
    Stale,
    #[error("profile {0} not found")]
    NoProfile(i64),
    #[error("{0}")]
    Invalid(String),
    #[error("profiles {0} and {1} hold records that must never be merged")]
    Forbidden(i64, i64),
    /// The two profiles of a merge are one already (one was merged into the other).
    #[error("already one profile, {0}")]
    AlreadyOne(i64),
    /// The id was merged away and an unmerge sent the records it named to several profiles.
    #[error("profile {0} was split; name one of the profiles holding its records")]
    Split(i64),
}

impl MatchError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Store(e) => e.reason(),
            Self::Stale => "stale",
            Self::NoProfile(_) => "not_found",
            Self::Invalid(_) => "invalid",
            Self::Forbidden(..) => "forbidden",
            Self::AlreadyOne(_) => "already_one",
            Self::Split(_) => "split",
        }
    }

    /// Worth retrying the whole transaction.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Stale) || matches!(self, Self::Store(e) if e.is_conflict())
    }
}

/// Why a record is in its profile, as stored with the link (levels and weights, no values).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum LinkEvidence {
    /// No profile was close enough: the record started one. `candidates` are the profiles it
    /// was compared with (those sharing a blocking key), each with the threshold it missed.
    New { thresholds: Thresholds, candidates: Vec<Candidate> },
    /// Joined a profile (or merged several, `links` has one entry per profile).
    Linked { links: Vec<LinkDetail> },
    /// Joined its profile when a person approved a review item: the profile that held it was
    /// merged with the one holding `other_record_id`.
    #[serde(rename_all = "camelCase")]
    Review {
        review_id: i64,
        approved_by: String,
        approved_at_ms: i64,
        record_id: i64,
        other_record_id: i64,
        probability: f64,
        /// The pair evidence the reviewer saw.
        pair: serde_json::Value,
    },
    /// Placed by a person: a merge, an unmerge.
    #[serde(rename_all = "camelCase")]
    Manual { action: String, at_ms: i64 },
}

/// The policy's thresholds, as probabilities and as match weights (bits).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    pub merge_probability: f64,
    pub review_probability: f64,
    pub merge_weight: f64,
    pub review_weight: f64,
}

/// A candidate profile of a record that started a profile of its own, and why it fell short.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub shortfall: Shortfall,
    #[serde(flatten)]
    pub link: LinkDetail,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkDetail {
    pub profile_id: i64,
    pub profile_weight: f64,
    pub probability: f64,
    /// The profile's record closest to this one, and their pair evidence.
    pub closest_record_id: i64,
    pub pair: PairEvidence,
}

/// What happened to one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub intake_id: i64,
    pub profile_id: i64,
    pub decision: Decision,
    /// Stored records it was compared with: what its blocking keys cost.
    pub compared: usize,
    /// Review items it opened (a pair already open is not opened twice).
    pub reviews_opened: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    New,
    Join,
    Merge,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::New, Decision::Join, Decision::Merge];

    pub fn label(self) -> &'static str {
        match self {
            Decision::New => "new",
            Decision::Join => "join",
            Decision::Merge => "merge",
        }
    }
}

/// A record ready to resolve: normalised, with the hashes of its blocking keys.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub record: PreparedRecord,
    /// Every blocking key, the source identifiers' included.
    pub blocking: Vec<i64>,
    /// The keys of its source identifiers (among `blocking`): never generic, and the profiles
    /// they reach are always candidates ([`Engine::source_identifier_keys`]).
    pub identifiers: Vec<i64>,
}

/// Prepared records a matcher process keeps: the candidates that recur (people who come back)
/// stay prepared; the cache, not the store's size, bounds the memory this takes.
const PREPARED_CACHE_RECORDS: usize = 100_000;

/// The identity core bound to one platform's config, plus a cache of prepared records
/// (stored records never change, so preparing each one once is enough).
pub struct Resolver {
    engine: Engine,
    trust: HashMap<String, i32>,
    regions: HashMap<String, String>,
    /// Per source: values longer than its limits take no part in matching.
    limits: HashMap<String, LengthLimits>,
    cache: cache::PreparedCache,
}

impl Resolver {
    pub fn new(config: &PipelineConfig) -> Result<Resolver, crate::identity::ModelError> {
        Self::with_prepared_cache(config, PREPARED_CACHE_RECORDS)
    }

    /// A resolver that keeps at most `records` prepared records in memory.
    pub fn with_prepared_cache(config: &PipelineConfig, records: usize) -> Result<Resolver, crate::identity::ModelError> {
        Ok(Resolver {
            engine: Engine::new(&config.matching.model)?,
            trust: config
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.spec.trust_rank))
                .chain(config.enrichers.iter().map(|e| (crate::pipeline::enricher_source(&e.name), e.spec.trust_rank)))
                .collect(),
            regions: config
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.spec.default_phone_region.clone().unwrap_or_default()))
                .collect(),
            limits: config.sources.iter().map(|s| (s.name.clone(), LengthLimits::of(&s.spec.validation))).collect(),
            cache: cache::PreparedCache::new(records),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The default phone region of a source ("" when it declares none).
    pub fn region(&self, source: &str) -> &str {
        self.regions.get(source).map_or("", String::as_str)
    }

    /// Normalise a record and hash its blocking keys (pure; done before the transaction).
    pub fn prepare(&self, item: &IntakeItem) -> Keyed {
        let source = &item.record.source;
        // a source no longer configured: the default limits
        let defaults = LengthLimits::default();
        let limits = self.limits.get(source).unwrap_or(&defaults);
        let record = self.engine.prepare_within(&item.record, self.region(source), limits);
        let blocking = self.engine.blocking_keys(&record).iter().map(|k| key_hash(k)).collect();
        let identifiers = self.engine.source_identifier_keys(&record).iter().map(|k| key_hash(k)).collect();
        Keyed { record, blocking, identifiers }
    }

    /// The policy's thresholds, for explanations.
    fn thresholds(&self) -> Thresholds {
        let t = &self.engine.model().thresholds;
        Thresholds {
            merge_probability: t.merge,
            review_probability: t.review,
            merge_weight: self.engine.merge_weight(),
            review_weight: self.engine.review_weight(),
        }
    }

    /// Hashes of the record's term keys ([`Engine::term_keys`]), as the store counts them.
    fn term_hashes(&self, prepared: &PreparedRecord) -> Vec<i64> {
        self.engine.term_keys(prepared).iter().map(|k| key_hash(k)).collect()
    }

    /// The stored counts of every term of `records`, by hash.
    async fn term_counts_of<'p>(
        &self,
        tx: &mut WriteTx,
        records: impl Iterator<Item = &'p PreparedRecord>,
    ) -> Result<HashMap<i64, i64>, MatchError> {
        let mut terms: Vec<i64> = records.flat_map(|r| self.term_hashes(r)).collect();
        terms.sort_unstable();
        terms.dedup();
        Ok(tx.term_counts(&terms).await?)
    }

    /// Prepared records of each profile, `(record id, record)` in id order.
    async fn members(
        &self,
        tx: &mut WriteTx,
        profiles: &[i64],
    ) -> Result<Members, MatchError> {
        let ids = tx.record_ids_of(profiles).await?;
        let record_ids: Vec<i64> = ids.iter().map(|(r, _)| *r).collect();
        let prepared = self.prepared(tx, &record_ids).await?;
        let mut out: Members = profiles.iter().map(|p| (*p, Vec::new())).collect();
        for ((record, profile), p) in ids.into_iter().zip(prepared) {
            out.entry(profile).or_default().push((record, p));
        }
        Ok(out)
    }

    /// Prepared records by id (from the cache, else from the store), in the order asked.
    async fn prepared(&self, tx: &mut WriteTx, ids: &[i64]) -> Result<Vec<Arc<PreparedRecord>>, MatchError> {
        let mut found: HashMap<i64, Arc<PreparedRecord>> =
            ids.iter().filter_map(|id| self.cache.get(*id).map(|r| (*id, r))).collect();
        let missing: Vec<i64> = ids.iter().copied().filter(|id| !found.contains_key(id)).collect();
        for r in tx.record_values(&missing).await? {
            let p = self.engine.prepare_normalised(&r.source, &r.source_record_id, r.observed_at_ms, r.normalised);
            let p = Arc::new(p.with_display(&r.attributes));
            self.cache.insert(r.id, p.clone());
            found.insert(r.id, p);
        }
        ids.iter()
            .map(|id| found.get(id).cloned().ok_or_else(|| MatchError::Invalid(format!("record {id} vanished"))))
            .collect()
    }

    /// Split `absorbed` into the profiles that may merge with `survivor` and those a
    /// never-merge pair keeps apart from it.
    async fn split_forbidden(
        &self,
        tx: &mut WriteTx,
        members: &Members,
        survivor: i64,
        absorbed: &[i64],
    ) -> Result<(Vec<i64>, Vec<i64>), MatchError> {
        let profile_of: HashMap<i64, i64> = std::iter::once(&survivor)
            .chain(absorbed)
            .flat_map(|p| members.get(p).into_iter().flatten().map(move |(r, _)| (*r, *p)))
            .collect();
        let all: Vec<i64> = profile_of.keys().copied().collect();
        let pairs = tx.never_merge_pairs(&all).await?;
        let mut group: BTreeSet<i64> = BTreeSet::from([survivor]);
        let (mut allowed, mut forbidden) = (Vec::new(), Vec::new());
        for &p in absorbed {
            let clash = pairs.iter().any(|(a, b)| {
                let (pa, pb) = (profile_of.get(a), profile_of.get(b));
                matches!((pa, pb), (Some(x), Some(y)) if (*x == p && group.contains(y)) || (*y == p && group.contains(x)))
            });
            if clash {
                forbidden.push(p);
            } else {
                group.insert(p);
                allowed.push(p);
            }
        }
        Ok((allowed, forbidden))
    }

    /// The golden record of a profile holding `records`.
    fn golden_of(&self, records: &[(i64, Arc<PreparedRecord>)]) -> GoldenProfile {
        let sourced: Vec<SourcedRecord<'_>> = records
            .iter()
            .map(|(_, r)| SourcedRecord { record: r, trust_rank: self.trust.get(&r.source).copied().unwrap_or(0) })
            .collect();
        self.engine.golden(&sourced)
    }

    /// Recompute and store a profile's golden record, with its `profile.created` or
    /// `profile.updated` event.
    async fn store_golden(
        &self,
        tx: &mut WriteTx,
        profile: i64,
        before: Option<&ProfileRow>,
        records: &[(i64, Arc<PreparedRecord>)],
        now: i64,
    ) -> Result<(), MatchError> {
        let golden = self.golden_of(records);
        let update = GoldenUpdate {
            id: profile,
            golden: serde_json::to_string(&golden).expect("golden serialises"),
            record_count: records.len() as i64,
        };
        tx.set_goldens(&[update], now).await?;
        let old: Option<GoldenProfile> =
            before.and_then(|p| p.golden.as_ref()).and_then(|g| serde_json::from_value(g.clone()).ok());
        push_golden_events(tx, profile, old.as_ref(), &golden, now);
        Ok(())
    }

    /// Merge two profiles by hand (or by an approved review). The older one survives; the
    /// records that started the other one are explained by this merge from now on.
    /// Returns the survivor, or an error when a never-merge pair forbids it.
    pub async fn merge<'a>(&self, tx: &mut WriteTx, a: i64, b: i64, by: impl Into<MergedBy<'a>>, now: i64) -> Result<i64, MatchError> {
        let by = by.into();
        let mut rows = tx.lock_profiles(&[a, b]).await?;
        let live = |id: i64, rows: &[ProfileRow]| -> Result<i64, MatchError> {
            let row = rows.iter().find(|p| p.id == id).ok_or(MatchError::NoProfile(id))?;
            if row.split_at_ms.is_some() {
                return Err(MatchError::Split(id));
            }
            Ok(row.merged_into.unwrap_or(id))
        };
        let (a, b) = (live(a, &rows)?, live(b, &rows)?);
        if a == b {
            return Err(MatchError::AlreadyOne(a));
        }
        rows = tx.lock_profiles(&[a, b]).await?;
        if rows.len() != 2 || rows.iter().any(|p| p.merged_into.is_some()) {
            return Err(MatchError::Stale);
        }
        let (survivor, absorbed) = (a.min(b), a.max(b));
        let members = self.members(tx, &[survivor, absorbed]).await?;
        let (allowed, _) = self.split_forbidden(tx, &members, survivor, &[absorbed]).await?;
        if allowed.is_empty() {
            return Err(MatchError::Forbidden(survivor, absorbed));
        }
        let absorbed_records: Vec<i64> = members[&absorbed].iter().map(|(id, _)| *id).collect();
        tx.merge_profiles(survivor, &[absorbed], now).await?;
        // the records that started the absorbed profile are in the survivor because of this
        // merge; the others keep the evidence of their link to them
        let evidence = serde_json::to_value(by.evidence(now)).expect("evidence serialises");
        for record in tx.records(&absorbed_records).await? {
            if record.evidence["decision"] == "new" {
                tx.set_evidence(record.id, &evidence).await?;
            }
        }
        let payload = serde_json::json!({
            "survivor": profile_ref(survivor), "absorbed": [profile_ref(absorbed)], "action": by.action(),
        });
        tx.push_event("profile.merged", Some(survivor), None, &payload, now);
        let mut records: Vec<(i64, Arc<PreparedRecord>)> = members.into_values().flatten().collect();
        records.sort_by_key(|(id, _)| *id);
        let before = rows.iter().find(|p| p.id == survivor);
        self.store_golden(tx, survivor, before, &records, now).await?;
        Ok(survivor)
    }

    /// Split `split` (record ids) out of `profile`: they are re-clustered into new profiles,
    /// the remaining records re-clustered too (the cluster holding the oldest record keeps the
    /// id), and never-merge pairs keep what a person separated from being merged back. Every
    /// id merged into `profile` follows the records it named: to the one profile now holding
    /// them, or, when they were split up, to none of them alone (it is marked split).
    /// Returns the ids of every profile created.
    pub async fn unmerge(&self, tx: &mut WriteTx, profile: i64, split: &[i64], now: i64) -> Result<Vec<i64>, MatchError> {
        let rows = tx.lock_profiles(&[profile]).await?;
        let row = rows.first().ok_or(MatchError::NoProfile(profile))?;
        if row.split_at_ms.is_some() {
            return Err(MatchError::Split(profile));
        }
        if let Some(survivor) = row.merged_into {
            return Err(MatchError::Invalid(format!(
                "profile {} was merged into {}; unmerge from that one",
                profile_ref(profile),
                profile_ref(survivor)
            )));
        }
        let members = self.members(tx, &[profile]).await?.remove(&profile).unwrap_or_default();
        let split: BTreeSet<i64> = split.iter().copied().collect();
        if split.is_empty() {
            return Err(MatchError::Invalid("name at least one record to split out".into()));
        }
        // what enrichers found describes the profile, not a record of its own: it stays with
        // the id (and the enrichers look at the new profiles afresh)
        let (enriched, members): (Vec<_>, Vec<_>) =
            members.into_iter().partition(|(_, r)| r.source.starts_with(crate::pipeline::ENRICHER_SOURCE_PREFIX));
        let (out, keep): (Vec<_>, Vec<_>) = members.into_iter().partition(|(id, _)| split.contains(id));
        if out.len() != split.len() {
            return Err(MatchError::Invalid("every record to split out must belong to the profile".into()));
        }
        if keep.is_empty() {
            return Err(MatchError::Invalid("cannot split every record out of a profile".into()));
        }
        let mut created = Vec::new();
        let action = serde_json::to_value(LinkEvidence::Manual { action: "unmerge".into(), at_ms: now }).expect("serialises");
        let mut groups = self.clusters_of(tx, &keep).await?;
        let mut kept = groups.remove(0);
        kept.extend(enriched);
        groups.extend(self.clusters_of(tx, &out).await?);
        // the profile stays live, so a batch would not notice its records leave: their keys
        // are locked first, which makes a batch holding one of them finish before, or wait
        let moved: Vec<i64> = groups.iter().flatten().map(|(record, _)| *record).collect();
        tx.lock_record_keys(&moved).await?;
        for group in groups {
            let id = tx.create_profile(now).await?;
            for (record, _) in &group {
                tx.relink(*record, id, &action).await?;
            }
            self.store_golden(tx, id, None, &group, now).await?;
            created.push(id);
        }
        for (record, _) in &out {
            tx.add_never_merge(*record, kept[0].0, now).await?;
        }
        self.store_golden(tx, profile, Some(row), &kept, now).await?;
        let aliases = follow_records(tx, profile, now).await?;
        let payload = serde_json::json!({
            "profileId": profile_ref(profile),
            "created": created.iter().copied().map(profile_ref).collect::<Vec<_>>(),
            "records": split,
            "aliases": aliases,
        });
        tx.push_event("profile.unmerged", Some(profile), None, &payload, now);
        Ok(created)
    }

    /// Re-cluster stored records with the identity core, names weighed by the store's current
    /// term counts; clusters in order of their oldest record.
    async fn clusters_of(
        &self,
        tx: &mut WriteTx,
        records: &[(i64, Arc<PreparedRecord>)],
    ) -> Result<Vec<Vec<(i64, Arc<PreparedRecord>)>>, MatchError> {
        let mut prepared: Vec<PreparedRecord> = records.iter().map(|(_, r)| (**r).clone()).collect();
        let counts = self.term_counts_of(tx, prepared.iter()).await?;
        for r in &mut prepared {
            self.engine.attach_term_counts(r, |key| stored_count(&counts, key));
        }
        Ok(self
            .engine
            .cluster(&prepared)
            .into_iter()
            .map(|c| c.into_iter().map(|i| records[i].clone()).collect())
            .collect())
    }
}

/// Who merged two profiles by hand.
#[derive(Clone, Copy, Debug)]
pub enum MergedBy<'a> {
    /// A person, through the merge endpoint (the name of their token).
    Person(&'a str),
    /// A person approving a review item.
    Review { item: &'a ReviewRow, by: &'a str },
}

/// A person's name: the merge endpoint's caller.
impl<'a> From<&'a str> for MergedBy<'a> {
    fn from(by: &'a str) -> Self {
        MergedBy::Person(by)
    }
}

impl MergedBy<'_> {
    /// The `action` of the `profile.merged` event.
    fn action(&self) -> String {
        match self {
            MergedBy::Person(by) => format!("merge by {by}"),
            MergedBy::Review { item, by } => format!("review {} approved by {by}", item.id),
        }
    }

    /// The evidence of a record that is in the survivor because of this merge.
    fn evidence(&self, now: i64) -> LinkEvidence {
        match *self {
            MergedBy::Person(_) => LinkEvidence::Manual { action: self.action(), at_ms: now },
            MergedBy::Review { item, by } => LinkEvidence::Review {
                review_id: item.id,
                approved_by: by.to_string(),
                approved_at_ms: now,
                record_id: item.record_id,
                other_record_id: item.other_record_id,
                probability: item.probability,
                pair: item.evidence.clone(),
            },
        }
    }
}

/// After an unmerge of `profile`, send each id merged into it after the records it named:
/// to the one profile now holding them all, or to none when they are in several (marked
/// split). Returns what changed, for the `profile.unmerged` event.
async fn follow_records(tx: &mut WriteTx, profile: i64, now: i64) -> Result<Vec<serde_json::Value>, MatchError> {
    let mut holders: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (alias, holder) in tx.alias_holders(profile).await? {
        holders.entry(alias).or_default().push(holder);
    }
    let mut changed = Vec::new();
    for (alias, holders) in holders {
        match holders[..] {
            [holder] if holder == profile => {}
            [holder] => {
                tx.repoint_alias(alias, holder, now).await?;
                changed.push(serde_json::json!({"alias": profile_ref(alias), "profileId": profile_ref(holder)}));
            }
            _ => {
                tx.split_alias(alias, now).await?;
                let split: Vec<String> = holders.into_iter().map(profile_ref).collect();
                changed.push(serde_json::json!({"alias": profile_ref(alias), "splitInto": split}));
            }
        }
    }
    Ok(changed)
}

/// A term key's count among `counts` (read from the store by hash).
fn stored_count(counts: &HashMap<i64, i64>, key: &str) -> u64 {
    counts.get(&key_hash(key)).map_or(0, |&n| n.max(0) as u64)
}

fn golden_values(golden: &GoldenProfile) -> BTreeMap<&str, &str> {
    golden.attributes.iter().map(|(k, v)| (k.as_str(), v.value.as_str())).collect()
}

/// Write the events a golden record change makes: `consent.changed` for each purpose whose
/// state changed, then `profile.created` or `profile.updated`.
fn push_golden_events(tx: &mut WriteTx, profile: i64, before: Option<&GoldenProfile>, golden: &GoldenProfile, now: i64) {
    privacy::push_consent_changes(tx, profile, before, golden, now);
    if let Some((kind, payload)) = golden_event(profile, before, golden) {
        tx.push_event(kind, Some(profile), None, &payload, now);
    }
}

/// The event a golden record change makes: `profile.created` for a profile's first golden
/// record, `profile.updated` with the attributes that changed, nothing when none did.
fn golden_event(profile: i64, before: Option<&GoldenProfile>, golden: &GoldenProfile) -> Option<(&'static str, serde_json::Value)> {
    match before {
        None => Some(("profile.created", serde_json::json!({"profileId": profile_ref(profile), "attributes": golden_values(golden)}))),
        Some(old) => {
            let changed: BTreeMap<&str, Option<&str>> = golden
                .attributes
                .keys()
                .chain(old.attributes.keys())
                .filter(|a| golden.get(a) != old.get(a))
                .map(|a| (a.as_str(), golden.get(a)))
                .collect();
            (!changed.is_empty()).then(|| ("profile.updated", serde_json::json!({"profileId": profile_ref(profile), "changed": changed})))
        }
    }
}

/// Records per transaction on PostgreSQL when claimed records are redone apart: enough to
/// amortise the round trips, few enough that a conflict costs little to redo.
const POSTGRES_CHUNK: usize = 32;

/// Claim up to `limit` queued records for `worker` and resolve them; returns the items
/// resolved with what became of each. Workers size `limit` to a time budget ([`pace::BatchSizer`]).
///
/// The oldest queued records are read and resolved in one transaction, which is their claim:
/// SQLite's writer lock, or PostgreSQL's row locks that other claimers skip. A crash rolls it
/// back and leaves them queued, and each intake row is written once, as done, instead of
/// being marked as claimed in a transaction of its own first (on PostgreSQL, 1.14× the
/// records per second with two workers). Claimed records whose person has an older record in
/// another worker's hands are left queued for a later claim, or, when that holds back every
/// claimed record, the worker waits for the older one and claims again ([`order`]). Should
/// the transaction keep failing, the records are claimed by marking them and resolved by
/// [`resolve_batch`], which isolates the record at fault.
///
/// Also returns how long the batch held the store: from its transaction's start (SQLite's
/// writer taken) to its commit. A worker sizes its next batch on that, not on the time it
/// waited for the writer behind intake and the other workers: counted in, those waits made
/// each batch look slower per record, so the next one smaller, until under steady intake the
/// matcher resolved a few records a batch and fell ever further behind.
pub async fn claim_and_resolve(
    store: &Store,
    resolver: &Resolver,
    worker: &str,
    limit: i64,
    lease: std::time::Duration,
) -> Result<(Vec<IntakeItem>, Vec<Result<Resolved, MatchError>>, std::time::Duration), StoreError> {
    let (mut attempt, mut waits) = (0, 0);
    while attempt < RETRIES {
        let mut tx = store.begin().await?;
        let held_since = std::time::Instant::now();
        let claimed = tx.queued(limit, lease).await?;
        if claimed.is_empty() {
            return Ok((claimed, Vec::new(), held_since.elapsed()));
        }
        let keyed: Vec<Keyed> = claimed.iter().map(|i| resolver.prepare(i)).collect();
        let (items, keyed) = match order::turn(&mut tx, resolver, &claimed, keyed, lease).await? {
            order::Turn::Resolve { items, keyed } => (items, keyed),
            order::Turn::Wait(older) => {
                // nothing held while waiting: the claim ends before the wait begins
                tx.rollback().await?;
                waits += 1;
                order::wait(store, &older, waits).await?;
                continue;
            }
        };
        let resolved = async {
            let resolved = resolve_in(&mut tx, resolver, &items, &keyed).await?;
            tx.commit().await?;
            Ok::<_, MatchError>(resolved)
        };
        match resolved.await {
            Ok(resolved) => return Ok((items, resolved.into_iter().map(Ok).collect(), held_since.elapsed())),
            Err(error) => {
                // the failed transaction may have cached records it never committed
                resolver.cache.forget(items.iter().map(|i| i.id));
                if !error.is_retryable() {
                    tracing::debug!(%error, "batch transaction failed; claiming and resolving record by record");
                    break;
                }
                attempt += 1;
                back_off(attempt).await;
            }
        }
    }
    let started = std::time::Instant::now();
    let items = store.claim(worker, limit, lease).await?;
    let results = resolve_batch(store, resolver, &items).await;
    Ok((items, results, started.elapsed()))
}

/// Attempts of a transaction that failed on a conflict (a deadlock, a profile changed under it).
const RETRIES: u32 = 20;

/// A short random pause, longer with each attempt, so two conflicting workers part ways.
async fn back_off(attempt: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(1..5) * u64::from(attempt))).await;
}

/// Resolve `items` with retries. SQLite: one transaction for the whole batch (one writer,
/// one commit). PostgreSQL: one transaction per chunk, which first locks the blocking keys of
/// every record in it (sorted), then resolves them one by one.
pub async fn resolve_batch(store: &Store, resolver: &Resolver, items: &[IntakeItem]) -> Vec<Result<Resolved, MatchError>> {
    let chunk = match store.backend() {
        store::Backend::Sqlite => items.len().max(1),
        store::Backend::Postgres => POSTGRES_CHUNK,
    };
    let mut out = Vec::with_capacity(items.len());
    for group in items.chunks(chunk) {
        match resolve_chunk(store, resolver, group).await {
            Ok(resolved) => out.extend(resolved.into_iter().map(Ok)),
            // one bad record must not sink the batch: redo it record by record
            Err(_) if group.len() > 1 => {
                for item in group {
                    out.push(resolve_chunk(store, resolver, std::slice::from_ref(item)).await.map(|mut r| r.remove(0)));
                }
            }
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

async fn resolve_chunk(store: &Store, resolver: &Resolver, items: &[IntakeItem]) -> Result<Vec<Resolved>, MatchError> {
    let prepared: Vec<Keyed> = items.iter().map(|i| resolver.prepare(i)).collect();
    let mut attempt = 0u32;
    loop {
        let result = async {
            let mut tx = store.begin().await?;
            let resolved = resolve_in(&mut tx, resolver, items, &prepared).await?;
            tx.commit().await?;
            Ok::<_, MatchError>(resolved)
        }
        .await;
        match result {
            Err(e) if e.is_retryable() && attempt < RETRIES => {
                attempt += 1;
                // the failed transaction may have cached records it never committed
                resolver.cache.forget(items.iter().map(|i| i.id));
                back_off(attempt).await;
            }
            Err(e) => {
                resolver.cache.forget(items.iter().map(|i| i.id));
                return Err(e);
            }
            ok => return ok,
        }
    }
}

/// Resolve `items` (prepared, with their blocking-key hashes) in `tx`: lock their keys, read
/// the profiles they reach, decide each record in order, write what the batch decided.
async fn resolve_in(
    tx: &mut WriteTx,
    resolver: &Resolver,
    items: &[IntakeItem],
    prepared: &[Keyed],
) -> Result<Vec<Resolved>, MatchError> {
    let keys: Vec<i64> = prepared.iter().flat_map(|k| k.blocking.iter().copied()).collect();
    tx.lock_keys(&keys).await?;
    let mut batch = batch::Batch::load(resolver, tx, prepared, store::now_ms()).await?;
    let mut resolved = Vec::with_capacity(items.len());
    for (i, (item, p)) in items.iter().zip(prepared).enumerate() {
        resolved.push(batch.resolve(tx, item, p.clone(), items.len() - i).await?);
    }
    let opened = batch.flush(tx).await?;
    for r in &mut resolved {
        r.reviews_opened = opened.get(&r.intake_id).copied().unwrap_or(0);
    }
    Ok(resolved)
}
