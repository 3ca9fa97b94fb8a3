//! An in-memory streaming matcher: the same steps the real matcher takes per record
//! (prepare → blocking keys → candidate profiles → resolve → apply → golden), with a hash map
//! standing in for the store. Used by the accuracy benchmark and tests.

use std::collections::{HashMap, HashSet};

use crate::identity::engine::{Engine, PreparedRecord};
use crate::identity::golden::{GoldenProfile, SourcedRecord};
use crate::identity::resolve::{CandidateProfile, Outcome, Resolution, select_candidates};

#[derive(Clone, Debug, Default)]
struct Profile {
    records: Vec<PreparedRecord>,
    /// Caller's index of every record (the order they were pushed in).
    members: Vec<usize>,
    golden: GoldenProfile,
}

/// Counters of what the stream did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub records: usize,
    pub new_profiles: usize,
    pub joins: usize,
    pub merges: usize,
    /// Open review items: one per pair of live profiles, as the store keeps them.
    pub review_items: usize,
    pub candidate_profiles: usize,
    pub compared_records: usize,
}

#[derive(Default)]
struct Block {
    profiles: Vec<u32>,
    records: u32,
}

pub struct StreamMatcher<'e> {
    engine: &'e Engine,
    profiles: Vec<Option<Profile>>,
    ids: Vec<String>,
    /// merged-away profile → survivor
    alias: Vec<usize>,
    /// Per blocking key: the profiles holding it and how many records carry it.
    index: HashMap<String, Block>,
    trust: HashMap<String, i32>,
    /// Pairs of live profiles (smaller first) with an open review item.
    open_reviews: HashSet<(usize, usize)>,
    /// Term counts ([`Engine::term_keys`]) of every record pushed.
    terms: HashMap<String, u64>,
    pub stats: StreamStats,
}

impl<'e> StreamMatcher<'e> {
    pub fn new(engine: &'e Engine) -> Self {
        StreamMatcher {
            engine,
            profiles: Vec::new(),
            ids: Vec::new(),
            alias: Vec::new(),
            index: HashMap::new(),
            trust: HashMap::new(),
            open_reviews: HashSet::new(),
            terms: HashMap::new(),
            stats: StreamStats::default(),
        }
    }

    /// Trust rank of a source for survivorship (default 0).
    pub fn set_trust_rank(&mut self, source: &str, rank: i32) {
        self.trust.insert(source.to_string(), rank);
    }

    fn find(&self, mut p: usize) -> usize {
        while self.alias[p] != p {
            p = self.alias[p];
        }
        p
    }

    /// The open review items of `absorbed` now concern `survivor`; those between the two are
    /// answered by the merge.
    fn move_reviews(&mut self, absorbed: usize, survivor: usize) {
        let moved: Vec<(usize, usize)> = self.open_reviews.iter().copied().filter(|&(p, q)| p == absorbed || q == absorbed).collect();
        for (p, q) in moved {
            self.open_reviews.remove(&(p, q));
            let other = if p == absorbed { q } else { p };
            if other != survivor {
                self.open_reviews.insert((other.min(survivor), other.max(survivor)));
            }
        }
    }

    /// Resolve one record and apply the outcome. `member` is the caller's id for the record.
    pub fn push(&mut self, mut record: PreparedRecord, member: usize) -> Resolution {
        self.stats.records += 1;
        for k in self.engine.term_keys(&record) {
            *self.terms.entry(k).or_default() += 1;
        }
        self.engine.attach_term_counts(&mut record, |k| self.terms.get(k).copied().unwrap_or(0));
        let keys = self.engine.blocking_keys(&record);
        let identifiers = self.engine.source_identifier_keys(&record);
        let model = self.engine.model();
        let reached = |k: &String| -> Vec<usize> {
            let mut reached: Vec<usize> =
                self.index.get(k).into_iter().flat_map(|b| &b.profiles).map(|&p| self.find(p as usize)).collect();
            reached.sort_unstable();
            reached.dedup();
            reached
        };
        // a generic key (more records than the limit) finds no candidates, as in the store;
        // a source identifier is never generic, and its profiles are always candidates
        let hits: Vec<usize> = keys
            .iter()
            .filter(|k| identifiers.contains(*k) || self.index.get(*k).is_some_and(|b| b.records <= model.max_block_size))
            .flat_map(reached)
            .collect();
        let mut cand = select_candidates(hits, model.max_candidates as usize);
        cand.extend(identifiers.iter().flat_map(|k| reached(k).into_iter().take(model.max_candidates as usize)));
        cand.sort_unstable();
        cand.dedup();
        self.stats.candidate_profiles += cand.len();
        let resolution = {
            let cands: Vec<CandidateProfile<'_>> = cand
                .iter()
                .map(|&p| {
                    let prof = self.profiles[p].as_ref().expect("live profile");
                    CandidateProfile {
                        id: &self.ids[p],
                        records: &prof.records,
                    }
                })
                .collect();
            self.stats.compared_records += cands.iter().map(|c| c.records.len()).sum::<usize>();
            self.engine.resolve(&record, &cands)
        };
        let pos = |id: &str| -> usize {
            id.strip_prefix('p')
                .and_then(|s| s.parse().ok())
                .expect("profile id")
        };
        let target = match &resolution.outcome {
            Outcome::New => {
                self.stats.new_profiles += 1;
                let p = self.profiles.len();
                self.profiles.push(Some(Profile::default()));
                self.ids.push(format!("p{p}"));
                self.alias.push(p);
                p
            }
            Outcome::Join { profile } => {
                self.stats.joins += 1;
                pos(profile)
            }
            Outcome::Merge { survivor, absorbed } => {
                self.stats.merges += 1;
                let s = pos(survivor);
                for a in absorbed {
                    let a = pos(a);
                    let gone = self.profiles[a].take().expect("live absorbed profile");
                    self.alias[a] = s;
                    self.move_reviews(a, s);
                    let sp = self.profiles[s].as_mut().expect("live survivor");
                    sp.records.extend(gone.records);
                    sp.members.extend(gone.members);
                }
                s
            }
        };
        for item in &resolution.review {
            let other = self.find(pos(&item.link.profile));
            if other != target {
                self.open_reviews.insert((target.min(other), target.max(other)));
            }
        }
        self.stats.review_items = self.open_reviews.len();
        for k in keys {
            let block = self.index.entry(k).or_default();
            block.records += 1;
            if !block.profiles.contains(&(target as u32)) {
                block.profiles.push(target as u32);
            }
        }
        self.engine.detach_term_counts(&mut record);
        let prof = self.profiles[target].as_mut().expect("live target");
        prof.records.push(record);
        prof.members.push(member);
        let sourced: Vec<SourcedRecord<'_>> = prof
            .records
            .iter()
            .map(|r| SourcedRecord {
                record: r,
                trust_rank: self.trust.get(&r.source).copied().unwrap_or(0),
            })
            .collect();
        let golden = self.engine.golden(&sourced);
        prof.golden = golden;
        resolution
    }

    /// Final profiles as lists of the callers' record ids.
    pub fn clusters(&self) -> Vec<Vec<usize>> {
        self.profiles
            .iter()
            .flatten()
            .map(|p| p.members.clone())
            .collect()
    }

    /// Live profiles: (id, golden record, member ids).
    pub fn profiles(&self) -> impl Iterator<Item = (&str, &GoldenProfile, &[usize])> {
        self.profiles.iter().enumerate().filter_map(|(i, p)| {
            p.as_ref()
                .map(|p| (self.ids[i].as_str(), &p.golden, p.members.as_slice()))
        })
    }

    /// The live profile a (possibly merged-away) profile id resolves to.
    pub fn resolve_alias(&self, id: &str) -> Option<&str> {
        let p: usize = id.strip_prefix('p')?.parse().ok()?;
        (p < self.alias.len()).then(|| self.ids[self.find(p)].as_str())
    }
}
