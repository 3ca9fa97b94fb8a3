//! Record-to-profile resolution and re-clustering.
//!
//! A record is scored against a profile by **average linkage**: the mean of its pair match
//! weights (log-odds) against every record of the profile. One close record is not enough to
//! absorb someone into a profile whose other records disagree (the household case: a sibling
//! shares the surname, address and phone with one record of a profile but not its given name
//! or birth date elsewhere); a profile with one noisy record still attracts its owner because
//! the other records carry the mean. Never-merge constraints are checked against every record
//! of the profile. A deterministic rule hit lifts the profile to the merge threshold.
//!
//! When a record reaches the merge threshold with several profiles, they merge only if they
//! are compatible with each other (no never-merge conflict across them and their own mean
//! linkage at least at the review threshold); otherwise the record joins the best one and the
//! other profiles go to review. This stops one ambiguous record (say, one with no given name)
//! from chaining a whole household into one profile.

use std::borrow::Borrow;

use serde::{Deserialize, Serialize};

use crate::identity::engine::PreparedRecord;
use crate::identity::engine::{Engine, PairEvidence, PairScore, shared_source_identifier};

/// A profile the record may belong to: its opaque id and the prepared records it holds.
#[derive(Clone, Copy, Debug)]
pub struct CandidateProfile<'a, R: Borrow<PreparedRecord> = PreparedRecord> {
    pub id: &'a str,
    pub records: &'a [R],
}

/// The profiles a record is compared with, from `hits`: one entry per blocking key of the
/// record and profile holding that key (a profile reached through three keys appears three
/// times). When more than `max` profiles are reached, those sharing the most keys are kept:
/// the record's own person shares its email, phone, name and birth date keys, while the
/// hundred others a common surname in a big town reaches share one. Returned in ascending
/// order (the oldest profile first, as [`Engine::resolve`] expects).
pub fn select_candidates<P: Ord + Copy>(mut hits: Vec<P>, max: usize) -> Vec<P> {
    hits.sort_unstable();
    let mut counted: Vec<(P, usize)> = Vec::with_capacity(hits.len());
    for p in hits {
        match counted.last_mut() {
            Some((last, n)) if *last == p => *n += 1,
            _ => counted.push((p, 1)),
        }
    }
    if counted.len() > max {
        // most shared keys first, then the oldest; sort_by is stable over the ascending ids
        counted.sort_by(|a, b| b.1.cmp(&a.1));
        counted.truncate(max);
        counted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    counted.into_iter().map(|(p, _)| p).collect()
}

/// What to do with the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum Outcome {
    /// Start a new profile.
    New,
    /// Join this profile.
    Join { profile: String },
    /// Merge these profiles into `survivor` (the first of them in candidate order) and join it.
    Merge {
        survivor: String,
        absorbed: Vec<String>,
    },
}

/// Why the record belongs to a profile: the profile score and the closest pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileLink {
    pub profile: String,
    /// Mean match weight (bits) of the record against the profile's records.
    pub profile_weight: f64,
    pub profile_probability: f64,
    /// Index (in the candidate's `records`) of the record closest to the new one.
    pub closest_record: usize,
    /// Evidence of the closest pair.
    pub evidence: PairEvidence,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReviewReason {
    /// Score between the review and merge thresholds.
    Uncertain,
    /// Score high enough to merge, but a never-merge constraint forbids it.
    Forbidden,
    /// Linked to several profiles that cannot be merged with each other.
    Ambiguous,
}

impl ReviewReason {
    pub const ALL: [ReviewReason; 3] = [ReviewReason::Uncertain, ReviewReason::Forbidden, ReviewReason::Ambiguous];

    /// The name the review queue stores and the API shows.
    pub fn name(self) -> &'static str {
        match self {
            ReviewReason::Uncertain => "uncertain",
            ReviewReason::Forbidden => "forbidden",
            ReviewReason::Ambiguous => "ambiguous",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewItem {
    pub reason: ReviewReason,
    pub link: ProfileLink,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    pub outcome: Outcome,
    /// Evidence for every profile the record joins or merges.
    pub links: Vec<ProfileLink>,
    /// Pairs for a person to look at.
    pub review: Vec<ReviewItem>,
    /// The record's score against each candidate, in candidate order (`None`: no records),
    /// for [`Engine::shortfalls`].
    #[serde(skip)]
    pub scores: Vec<Option<ProfileScore>>,
}

/// Why a candidate profile was not linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Shortfall {
    /// Its score is below the review threshold.
    BelowReview,
    /// Its score lies between the review and merge thresholds: a question for a person.
    Uncertain,
    /// A never-merge constraint separates the record from one of the profile's records.
    NeverMerge,
}

/// A candidate profile the record was compared with and not linked to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unlinked {
    pub shortfall: Shortfall,
    pub link: ProfileLink,
}

/// A record's score against one profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProfileScore {
    /// Mean pair weight, lifted to the merge weight when a deterministic rule fired.
    pub weight: f64,
    pub best: usize,
    pub best_weight: f64,
    /// A never-merge constraint is violated with some record of the profile.
    pub forbidden: bool,
}

impl Engine {
    /// Score a record against a profile's records (average linkage; see the module docs).
    pub fn score_profile<R: Borrow<PreparedRecord>>(
        &self,
        r: &PreparedRecord,
        records: &[R],
    ) -> Option<ProfileScore> {
        self.score_profile_iter(r, records.iter().map(Borrow::borrow))
    }

    fn score_profile_iter<'a>(
        &self,
        r: &PreparedRecord,
        records: impl Iterator<Item = &'a PreparedRecord>,
    ) -> Option<ProfileScore> {
        let mut sum = 0.0;
        let mut n = 0usize;
        let mut best = 0usize;
        let mut best_weight = f64::NEG_INFINITY;
        let mut forbidden = false;
        let mut rule = false;
        for (i, p) in records.enumerate() {
            let PairScore {
                weight,
                rule: rh,
                forbidden: fb,
            } = self.score(r, p);
            sum += weight;
            n += 1;
            if weight > best_weight {
                best_weight = weight;
                best = i;
            }
            forbidden |= fb.is_some();
            rule |= rh.is_some();
        }
        if n == 0 {
            return None;
        }
        let mut weight = sum / n as f64;
        if rule && !forbidden {
            weight = weight.max(self.merge_weight());
        }
        Some(ProfileScore {
            weight,
            best,
            best_weight,
            forbidden,
        })
    }

    /// Whether two profiles may be merged by a record that links both: no never-merge
    /// conflict across them, and either their mean linkage reaches the review threshold, or
    /// none of their cross pairs disagrees on anything (they describe different facets of one
    /// person, say an email-only and a phone-only profile), or a pair of them shares a source
    /// identifier of its source ([`SOURCE_IDENTIFIER_RULE`]: the same customer of that source).
    ///
    /// [`SOURCE_IDENTIFIER_RULE`]: crate::identity::engine::SOURCE_IDENTIFIER_RULE
    pub fn profiles_compatible<R: Borrow<PreparedRecord>>(&self, a: &[R], b: &[R]) -> bool {
        let mut sum = 0.0;
        let mut n = 0usize;
        let mut disagree = false;
        let mut same_customer = false;
        for x in a.iter().map(Borrow::borrow) {
            for y in b.iter().map(Borrow::borrow) {
                let s = self.score(x, y);
                if s.forbidden.is_some() {
                    return false;
                }
                sum += s.weight;
                n += 1;
                disagree |= self.disagrees(x, y);
                same_customer |= shared_source_identifier(x, y).is_some();
            }
        }
        n > 0 && (same_customer || sum / n as f64 >= self.review_weight() || !disagree)
    }

    /// Why a record that starts a new profile ([`Outcome::New`]) joined none of its
    /// candidates: each with its score, its closest pair's evidence and the threshold it fell
    /// short of, in candidate order. `candidates` and `resolution` are what
    /// [`Engine::resolve`] was given and returned.
    pub fn shortfalls<R: Borrow<PreparedRecord>>(
        &self,
        r: &PreparedRecord,
        candidates: &[CandidateProfile<'_, R>],
        resolution: &Resolution,
    ) -> Vec<Unlinked> {
        candidates
            .iter()
            .zip(&resolution.scores)
            .filter(|(c, _)| !resolution.links.iter().any(|l| l.profile == c.id))
            .filter_map(|(c, s)| {
                let s = s.as_ref()?;
                let shortfall = if s.forbidden {
                    Shortfall::NeverMerge
                } else if s.weight >= self.review_weight() {
                    Shortfall::Uncertain
                } else {
                    Shortfall::BelowReview
                };
                Some(Unlinked { shortfall, link: self.link(r, c, s) })
            })
            .collect()
    }

    fn link<R: Borrow<PreparedRecord>>(&self, r: &PreparedRecord, c: &CandidateProfile<'_, R>, s: &ProfileScore) -> ProfileLink {
        ProfileLink {
            profile: c.id.to_string(),
            profile_weight: s.weight,
            profile_probability: crate::identity::engine::prob_of_weight(s.weight),
            closest_record: s.best,
            evidence: self.compare(r, c.records[s.best].borrow()),
        }
    }

    /// Decide where a record goes among candidate profiles (pass them oldest first: the
    /// survivor of a merge is the first linked profile in this order).
    pub fn resolve<R: Borrow<PreparedRecord>>(&self, r: &PreparedRecord, candidates: &[CandidateProfile<'_, R>]) -> Resolution {
        let scores: Vec<Option<ProfileScore>> = candidates
            .iter()
            .map(|c| self.score_profile(r, c.records))
            .collect();
        let mut review = Vec::new();
        let mut linked: Vec<usize> = Vec::new();
        for (i, s) in scores.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.forbidden {
                // only a pair the score alone would merge is a question for a person; an
                // uncertain pair that a never-merge rule also separates is two people
                if s.weight >= self.merge_weight() {
                    review.push(ReviewItem {
                        reason: ReviewReason::Forbidden,
                        link: self.link(r, &candidates[i], s),
                    });
                }
            } else if s.weight >= self.merge_weight() {
                linked.push(i);
            } else if s.weight >= self.review_weight() {
                review.push(ReviewItem {
                    reason: ReviewReason::Uncertain,
                    link: self.link(r, &candidates[i], s),
                });
            }
        }
        if linked.is_empty() {
            return Resolution {
                outcome: Outcome::New,
                links: Vec::new(),
                review,
                scores,
            };
        }
        // best first; ties keep candidate order
        linked.sort_by(|&a, &b| {
            let (sa, sb) = (scores[a].unwrap().weight, scores[b].unwrap().weight);
            sb.partial_cmp(&sa)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let mut group = vec![linked[0]];
        for &q in &linked[1..] {
            let compatible = group
                .iter()
                .all(|&g| self.profiles_compatible(candidates[g].records, candidates[q].records));
            if compatible {
                group.push(q);
            } else {
                review.push(ReviewItem {
                    reason: ReviewReason::Ambiguous,
                    link: self.link(r, &candidates[q], scores[q].as_ref().unwrap()),
                });
            }
        }
        let links: Vec<ProfileLink> = group
            .iter()
            .map(|&i| self.link(r, &candidates[i], scores[i].as_ref().unwrap()))
            .collect();
        let outcome = if group.len() == 1 {
            Outcome::Join {
                profile: candidates[group[0]].id.to_string(),
            }
        } else {
            let mut ordered = group.clone();
            ordered.sort_unstable();
            Outcome::Merge {
                survivor: candidates[ordered[0]].id.to_string(),
                absorbed: ordered[1..]
                    .iter()
                    .map(|&i| candidates[i].id.to_string())
                    .collect(),
            }
        };
        Resolution {
            outcome,
            links,
            review,
            scores,
        }
    }

    /// Re-cluster a set of records (for example what remains of a profile after a record was
    /// split out): records are resolved one at a time, in the given order, against the
    /// clusters built so far, with the same rules as live matching. Returns clusters of
    /// indices, each sorted, in order of their first record.
    pub fn cluster(&self, records: &[PreparedRecord]) -> Vec<Vec<usize>> {
        let mut clusters: Vec<Vec<usize>> = Vec::new();
        let mut members: Vec<Vec<PreparedRecord>> = Vec::new();
        let ids: Vec<String> = (0..records.len()).map(|i| i.to_string()).collect();
        for (i, r) in records.iter().enumerate() {
            let live: Vec<usize> = (0..clusters.len())
                .filter(|&c| !clusters[c].is_empty())
                .collect();
            let cands: Vec<CandidateProfile<'_>> = live
                .iter()
                .map(|&c| CandidateProfile {
                    id: &ids[c],
                    records: &members[c],
                })
                .collect();
            let res = self.resolve(r, &cands);
            let target = match &res.outcome {
                Outcome::New => None,
                Outcome::Join { profile } => Some(profile.parse::<usize>().unwrap()),
                Outcome::Merge { survivor, absorbed } => {
                    let s: usize = survivor.parse().unwrap();
                    for a in absorbed {
                        let a: usize = a.parse().unwrap();
                        let moved = std::mem::take(&mut clusters[a]);
                        clusters[s].extend(moved);
                        let moved = std::mem::take(&mut members[a]);
                        members[s].extend(moved);
                    }
                    Some(s)
                }
            };
            match target {
                Some(t) => {
                    clusters[t].push(i);
                    members[t].push(r.clone());
                }
                None => {
                    clusters.push(vec![i]);
                    members.push(vec![r.clone()]);
                }
            }
        }
        let mut out: Vec<Vec<usize>> = clusters.into_iter().filter(|c| !c.is_empty()).collect();
        for c in &mut out {
            c.sort_unstable();
        }
        out.sort();
        out
    }
}
