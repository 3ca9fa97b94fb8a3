//! Resolution of a batch of intake records in one transaction. The profiles that the batch's
//! blocking keys reach are read (and locked, on PostgreSQL) once; each record is then resolved
//! in memory against that view, which the batch keeps current as it creates, joins and merges
//! profiles; records, new profiles, golden records and review items reach the store in a few
//! multi-row statements at the end. A batch costs a fixed number of round trips, not several
//! per record.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{
    Candidate, Decision, Keyed, LinkDetail, LinkEvidence, MatchError, Members, Resolved, Resolver, push_golden_events,
    stored_count,
};
use crate::identity::record::{is_lookup_attribute, lookup_key};
use crate::identity::{CandidateProfile, GoldenProfile, Outcome, PreparedRecord, ProfileLink, select_candidates};
use crate::store::{GoldenUpdate, IntakeItem, NewProfile, NewRecord, NewReview, WriteTx, key_hash, profile_ref};

pub(super) struct Batch<'r> {
    resolver: &'r Resolver,
    now: i64,
    /// Profiles holding a record with each blocking key (some may have been merged away since:
    /// see [`Batch::live`]).
    by_key: HashMap<i64, Vec<i64>>,
    /// Keys too common to find candidates by, as stored when the batch began.
    generic: HashSet<i64>,
    /// Records of every live profile in view, in id order.
    members: Members,
    /// Current golden record of the live profiles this batch changed.
    golden: HashMap<i64, GoldenProfile>,
    /// Profiles merged away in this batch → the profile that absorbed them.
    merged: HashMap<i64, i64>,
    /// Ids reserved for new profiles, largest first.
    spare_ids: Vec<i64>,
    created: BTreeSet<i64>,
    /// Live profiles whose golden record changed.
    changed: BTreeSet<i64>,
    records: Vec<NewRecord>,
    /// Ids of `records`: not in the store before the batch flushes.
    new_records: HashSet<i64>,
    /// `(profile, record)`: a record of `records` that a profile merged away named.
    named: Vec<(i64, i64)>,
    reviews: Vec<NewReview>,
    /// Term counts of the batch's terms: as stored, plus the batch's records so far.
    term_counts: HashMap<i64, i64>,
    /// What the batch's records add to the stored term counts.
    term_deltas: BTreeMap<i64, i64>,
}

impl<'r> Batch<'r> {
    /// Read and lock the candidate profiles of these records (prepared, with the hashes of their
    /// blocking keys), and read the term counts they need. `tx` must hold the locks on the
    /// keys already ([`WriteTx::lock_keys`]).
    pub(super) async fn load(
        resolver: &'r Resolver,
        tx: &mut WriteTx,
        prepared: &[Keyed],
        now: i64,
    ) -> Result<Self, MatchError> {
        let sorted = |keys: &mut Vec<i64>| {
            keys.sort_unstable();
            keys.dedup();
        };
        let mut identifiers: Vec<i64> = prepared.iter().flat_map(|k| k.identifiers.iter().copied()).collect();
        sorted(&mut identifiers);
        let mut keys: Vec<i64> =
            prepared.iter().flat_map(|k| k.blocking.iter().copied()).filter(|h| identifiers.binary_search(h).is_err()).collect();
        sorted(&mut keys);
        let model = resolver.engine.model();
        let reached = tx.key_profiles(&keys, model.max_block_size).await?;
        let mut by_key: HashMap<i64, Vec<i64>> = HashMap::new();
        for (hash, profile) in reached.pairs.iter().chain(&tx.profiles_per_key(&identifiers, model.max_candidates).await?) {
            by_key.entry(*hash).or_default().push(*profile);
        }
        let generic: HashSet<i64> = reached.generic.iter().copied().collect();
        // only each record's own candidates are read: a common key reaches many more
        let mut profiles: Vec<i64> = prepared
            .iter()
            .flat_map(|keyed| candidates(keyed, &generic, model.max_candidates, |h| by_key.get(&h).cloned().unwrap_or_default()))
            .collect();
        profiles.sort_unstable();
        profiles.dedup();
        // SQLite's single writer: the key rows' profiles are live (merges move them) and
        // nothing changes them before we commit. PostgreSQL: lock them and check. Records
        // that came or left since the look-up did so under our key locks (new records, an
        // unmerge) or merged their profile away, which the check sees.
        if !tx.serialised() {
            let rows = tx.lock_profile_ids(&profiles).await?;
            if rows.len() != profiles.len() || rows.iter().any(|(_, merged_into)| merged_into.is_some()) {
                return Err(MatchError::Stale);
            }
        }
        let members = resolver.members(tx, &profiles).await?;
        let term_counts = resolver.term_counts_of(tx, prepared.iter().map(|k| &k.record)).await?;
        Ok(Batch {
            resolver,
            now,
            by_key,
            generic,
            members,
            golden: HashMap::new(),
            merged: HashMap::new(),
            spare_ids: Vec::new(),
            created: BTreeSet::new(),
            changed: BTreeSet::new(),
            records: Vec::new(),
            new_records: HashSet::new(),
            named: Vec::new(),
            reviews: Vec::new(),
            term_counts,
            term_deltas: BTreeMap::new(),
        })
    }

    /// Count the record's terms and attach the counts to it (they include the record).
    fn count_terms(&mut self, prepared: &mut PreparedRecord) -> Vec<i64> {
        let terms = self.resolver.term_hashes(prepared);
        for &term in &terms {
            *self.term_counts.entry(term).or_default() += 1;
            *self.term_deltas.entry(term).or_default() += 1;
        }
        let counts = &self.term_counts;
        self.resolver.engine.attach_term_counts(prepared, |key| stored_count(counts, key));
        terms
    }

    /// The live profile `profile` is now part of.
    fn live(&self, mut profile: i64) -> i64 {
        while let Some(next) = self.merged.get(&profile) {
            profile = *next;
        }
        profile
    }

    /// A new profile id; reserves enough for the `remaining` records of the batch at once.
    async fn new_profile(&mut self, tx: &mut WriteTx, remaining: usize) -> Result<i64, MatchError> {
        if self.spare_ids.is_empty() {
            self.spare_ids = tx.reserve_profile_ids(remaining.max(1)).await?;
            self.spare_ids.reverse();
        }
        let id = self.spare_ids.pop().expect("reserved above");
        self.created.insert(id);
        self.members.insert(id, Vec::new());
        Ok(id)
    }

    /// Resolve one record against the view; `remaining` counts it and the records after it.
    pub(super) async fn resolve(
        &mut self,
        tx: &mut WriteTx,
        item: &IntakeItem,
        keyed: Keyed,
        remaining: usize,
    ) -> Result<Resolved, MatchError> {
        // per key, the live profiles it reaches that the batch holds (those it read for this
        // record, and those the batch created or joined)
        let reached = |h: i64| -> Vec<i64> {
            let live = self.by_key.get(&h).into_iter().flatten().map(|p| self.live(*p));
            live.filter(|p| self.members.contains_key(p)).collect::<BTreeSet<_>>().into_iter().collect()
        };
        let candidates = candidates(&keyed, &self.generic, self.resolver.engine.model().max_candidates, reached);
        let Keyed { record: mut prepared, blocking, .. } = keyed;
        let terms = self.count_terms(&mut prepared);
        let cands: Vec<(String, Vec<Arc<PreparedRecord>>)> = candidates
            .iter()
            .map(|p| (p.to_string(), self.members[p].iter().map(|(_, r)| r.clone()).collect()))
            .collect();
        let views: Vec<CandidateProfile<'_, Arc<PreparedRecord>>> =
            cands.iter().map(|(id, records)| CandidateProfile { id, records }).collect();
        let resolution = self.resolver.engine.resolve(&prepared, &views);
        let compared = cands.iter().map(|(_, records)| records.len()).sum();

        // everything that reads the profiles' records, before a merge moves them
        let members = &self.members;
        let profile_id = |link: &ProfileLink| -> i64 { link.profile.parse().expect("profile ids are ours") };
        let record_of = |link: &ProfileLink| -> i64 { members[&profile_id(link)][link.closest_record].0 };
        let review = |link: &ProfileLink, reason: &'static str| NewReview {
            record_id: item.id,
            other_record_id: record_of(link),
            reason,
            probability: link.profile_probability,
            evidence: serde_json::to_string(&link.evidence).expect("evidence serialises"),
            created_at_ms: self.now,
        };
        let mut reviews: Vec<NewReview> =
            resolution.review.iter().map(|r| review(&r.link, r.reason.name())).collect();
        let details: Vec<LinkDetail> = resolution
            .links
            .iter()
            .map(|link| LinkDetail {
                profile_id: profile_id(link),
                profile_weight: link.profile_weight,
                probability: link.profile_probability,
                closest_record_id: record_of(link),
                pair: link.evidence.clone(),
            })
            .collect();
        let (target, decision, absorbed) = match &resolution.outcome {
            Outcome::New => (None, Decision::New, Vec::new()),
            Outcome::Join { profile } => (Some(profile.parse().expect("profile ids are ours")), Decision::Join, Vec::new()),
            Outcome::Merge { survivor, absorbed } => {
                let survivor: i64 = survivor.parse().expect("profile ids are ours");
                let absorbed: Vec<i64> = absorbed.iter().map(|a| a.parse().expect("profile ids are ours")).collect();
                // people said these must stay apart: join the survivor, send the others to review
                let (allowed, forbidden) = self.resolver.split_forbidden(tx, members, survivor, &absorbed).await?;
                for p in forbidden {
                    if let Some(link) = resolution.links.iter().find(|l| profile_id(l) == p) {
                        reviews.push(review(link, "forbidden"));
                    }
                }
                let decision = if allowed.is_empty() { Decision::Join } else { Decision::Merge };
                (Some(survivor), decision, allowed)
            }
        };
        let evidence = match decision {
            Decision::New => LinkEvidence::New {
                thresholds: self.resolver.thresholds(),
                candidates: self
                    .resolver
                    .engine
                    .shortfalls(&prepared, &views, &resolution)
                    .into_iter()
                    .map(|unlinked| Candidate {
                        shortfall: unlinked.shortfall,
                        link: LinkDetail {
                            profile_id: profile_id(&unlinked.link),
                            profile_weight: unlinked.link.profile_weight,
                            probability: unlinked.link.profile_probability,
                            closest_record_id: record_of(&unlinked.link),
                            pair: unlinked.link.evidence,
                        },
                    })
                    .collect(),
            },
            _ => LinkEvidence::Linked {
                links: details
                    .into_iter()
                    .filter(|d| Some(d.profile_id) == target || absorbed.contains(&d.profile_id))
                    .collect(),
            },
        };
        let target = match target {
            Some(t) => t,
            None => self.new_profile(tx, remaining).await?,
        };
        // the golden record before this record (and any merge it makes): as stored, which is
        // the survivorship of the stored records; none for a profile created in this batch
        let before = match self.golden.remove(&target) {
            Some(golden) => Some(golden),
            None if self.created.contains(&target) => None,
            None => Some(self.resolver.golden_of(&self.members[&target])),
        };
        if !absorbed.is_empty() {
            self.merge(tx, target, &absorbed, item.id).await?;
        }

        let mut keys = blocking.clone();
        keys.extend(
            prepared
                .values
                .iter()
                .filter(|(a, _)| is_lookup_attribute(a))
                .map(|(a, v)| key_hash(&lookup_key(a, v))),
        );
        // a blocking key on one identifier is that identifier's lookup key: one index row
        keys.sort_unstable();
        keys.dedup();
        for hash in blocking {
            self.by_key.entry(hash).or_default().push(target);
        }
        let record = &item.record;
        self.new_records.insert(item.id);
        self.records.push(NewRecord {
            id: item.id,
            source: record.source.clone(),
            source_record_id: record.source_record_id.clone(),
            observed_at_ms: record.observed_at_ms,
            received_at_ms: item.received_at_ms,
            profile_id: target,
            attributes: serde_json::to_string(&record.attributes).expect("attributes serialise"),
            normalised: serde_json::to_string(&prepared.values).expect("values serialise"),
            evidence: serde_json::to_string(&evidence).expect("evidence serialises"),
            terms: serde_json::to_string(&terms).expect("terms serialise"),
            keys,
        });
        self.reviews.extend(reviews);
        self.resolver.engine.detach_term_counts(&mut prepared);
        let prepared = Arc::new(prepared);
        self.resolver.cache.insert(item.id, prepared.clone());
        let held = self.members.entry(target).or_default();
        held.push((item.id, prepared));

        let golden = self.resolver.golden_of(held);
        push_golden_events(tx, target, before.as_ref(), &golden, self.now);
        self.golden.insert(target, golden);
        self.changed.insert(target);
        let payload = serde_json::json!({
            "recordId": item.id, "source": record.source, "sourceRecordId": record.source_record_id,
            "profileId": profile_ref(target),
        });
        tx.push_event("record.received", Some(target), Some(item.id), &payload, self.now);
        tx.finish_intake(item.id);
        Ok(Resolved { intake_id: item.id, profile_id: target, decision, compared, reviews_opened: 0 })
    }

    /// Merge `absorbed` into `survivor`, in the store for stored profiles and in the view.
    async fn merge(&mut self, tx: &mut WriteTx, survivor: i64, absorbed: &[i64], record: i64) -> Result<(), MatchError> {
        let stored: Vec<i64> = absorbed.iter().copied().filter(|p| !self.created.contains(p)).collect();
        // the survivor is the oldest (smallest id) candidate, and ids created here come after
        // every stored one, so a stored profile is never absorbed into one created here
        debug_assert!(stored.is_empty() || !self.created.contains(&survivor));
        tx.merge_profiles(survivor, &stored, self.now).await?;
        for p in absorbed {
            let moved = self.members.remove(p).unwrap_or_default();
            // the id names what it held: the stored records by `merge_profiles`, these at flush
            let new = moved.iter().map(|(r, _)| *r).filter(|r| self.new_records.contains(r));
            self.named.extend(new.map(|r| (*p, r)));
            self.members.entry(survivor).or_default().extend(moved);
            self.golden.remove(p);
            self.changed.remove(p);
            self.merged.insert(*p, survivor);
        }
        if let Some(held) = self.members.get_mut(&survivor) {
            held.sort_by_key(|(id, _)| *id);
        }
        let payload = serde_json::json!({
            "survivor": profile_ref(survivor),
            "absorbed": absorbed.iter().copied().map(profile_ref).collect::<Vec<_>>(),
            "recordId": record,
        });
        tx.push_event("profile.merged", Some(survivor), Some(record), &payload, self.now);
        Ok(())
    }

    /// The review items to open: one per pair of profiles, none where one is open already, and
    /// none for a pair a later record of the batch merged into one profile.
    async fn open_reviews(&mut self, tx: &mut WriteTx) -> Result<Vec<NewReview>, MatchError> {
        let profile_of: HashMap<i64, i64> =
            self.members.iter().flat_map(|(p, records)| records.iter().map(move |(r, _)| (*r, *p))).collect();
        let pair = |r: &NewReview| {
            let (p, q) = (profile_of[&r.record_id], profile_of[&r.other_record_id]);
            (p.min(q), p.max(q))
        };
        // a profile this batch created has no stored item yet
        let mut profiles: Vec<i64> = self
            .reviews
            .iter()
            .map(pair)
            .filter(|(p, q)| !self.created.contains(p) && !self.created.contains(q))
            .flat_map(|(p, q)| [p, q])
            .collect();
        profiles.sort_unstable();
        profiles.dedup();
        let mut open: HashSet<(i64, i64)> = tx.open_review_pairs(&profiles).await?.into_iter().collect();
        let mut reviews = std::mem::take(&mut self.reviews);
        reviews.retain(|r| {
            let (p, q) = pair(r);
            p != q && open.insert((p, q))
        });
        Ok(reviews)
    }

    /// Write what the batch resolved: new profiles, records with their keys, review items and
    /// the golden records of the profiles that changed. Returns the review items opened, per
    /// record that opened them.
    pub(super) async fn flush(mut self, tx: &mut WriteTx) -> Result<HashMap<i64, usize>, MatchError> {
        let golden_json = |g: &GoldenProfile| serde_json::to_string(g).expect("golden serialises");
        let profiles: Vec<NewProfile> = self
            .created
            .iter()
            .map(|&id| {
                let merged_into = self.merged.contains_key(&id).then(|| self.live(id));
                let golden = self.golden.get(&id).filter(|_| merged_into.is_none());
                NewProfile {
                    id,
                    created_at_ms: self.now,
                    updated_at_ms: self.now,
                    merged_into,
                    golden: golden.map(golden_json),
                    record_count: if merged_into.is_some() { 0 } else { self.members.get(&id).map_or(0, Vec::len) as i64 },
                }
            })
            .collect();
        tx.insert_profiles(&profiles).await?;
        let mut records = std::mem::take(&mut self.records);
        for r in &mut records {
            r.profile_id = self.live(r.profile_id);
        }
        tx.insert_records(&records).await?;
        tx.add_merged_records(&self.named).await?;
        let reviews = self.open_reviews(tx).await?;
        tx.add_reviews(&reviews).await?;
        let mut opened: HashMap<i64, usize> = HashMap::new();
        for review in &reviews {
            *opened.entry(review.record_id).or_default() += 1;
        }
        let updates: Vec<GoldenUpdate> = self
            .changed
            .iter()
            .filter(|p| !self.created.contains(p))
            .filter_map(|p| {
                let golden = self.golden.get(p)?;
                Some(GoldenUpdate { id: *p, golden: golden_json(golden), record_count: self.members[p].len() as i64 })
            })
            .collect();
        tx.set_goldens(&updates, self.now).await?;
        // last: the hot rows (a common name, each attribute's total) stay locked the shortest
        let deltas: Vec<(i64, i64)> = self.term_deltas.into_iter().collect();
        tx.add_term_counts(&deltas).await?;
        Ok(opened)
    }
}

/// The candidate profiles of a record, ascending: those sharing the most blocking keys with it
/// (at most `max`, generic keys left out), plus every profile one of its source identifiers
/// reaches (the same customer of its source, whatever else the record carries). `reached`
/// gives the profiles a key reaches, once each.
fn candidates(keyed: &Keyed, generic: &HashSet<i64>, max: u32, reached: impl Fn(i64) -> Vec<i64>) -> Vec<i64> {
    let hits = keyed.blocking.iter().filter(|h| !generic.contains(h)).flat_map(|h| reached(*h)).collect();
    let mut out = select_candidates(hits, max as usize);
    out.extend(keyed.identifiers.iter().flat_map(|h| reached(*h)));
    out.sort_unstable();
    out.dedup();
    out
}
