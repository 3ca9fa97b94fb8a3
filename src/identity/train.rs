//! Estimating m, u and λ from unlabelled records, the way Splink does.
//!
//! - **u** per level from random record pairs (almost all of which are different people).
//! - **m** per level by expectation–maximisation over blocked pairs, u fixed. One EM session
//!   per blocking key; a session does not estimate the comparisons of the attributes its key
//!   is built from (every pair agrees on them by construction), so each comparison's m is the
//!   mean over the sessions that could estimate it, weighted by each session's match share.
//! - **λ** (prior that two random records match): EM on λ alone over the union of blocked
//!   pairs with the final m and u, turned into expected matches over all pairs.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::crd::matching::MatchingModel;
use crate::identity::engine::{Engine, ModelError, PreparedRecord, logit2};

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Random pairs sampled for u.
    pub u_pairs: usize,
    pub max_iterations: usize,
    /// Stop when no m moves more than this between iterations.
    pub tolerance: f64,
    /// Blocks bigger than this are skipped in EM (they say little and cost quadratically).
    pub max_block: usize,
    pub seed: u64,
    /// Drop a never-merge constraint when more than this share of the estimated matches
    /// (carrying the attribute on both sides) disagree on it: the attribute is not reliable
    /// enough in this data to veto a merge. `None` keeps every constraint. A disagreement over
    /// one half is taken as a failed estimate, not as noise, and keeps the constraint.
    pub never_merge_max_disagreement: Option<f64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            u_pairs: 1_000_000,
            max_iterations: 40,
            tolerance: 1e-4,
            max_block: 1000,
            seed: 42,
            never_merge_max_disagreement: Some(0.01),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionReport {
    pub blocking_key: String,
    pub pairs: usize,
    pub iterations: usize,
    /// Share of the session's pairs estimated to be matches.
    pub match_share: f64,
    /// Comparisons whose m this session estimated.
    pub estimated: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainReport {
    pub records: usize,
    pub u_pairs: usize,
    pub sessions: Vec<SessionReport>,
    pub blocked_pairs: usize,
    pub expected_matches: f64,
    pub prior_match_probability: f64,
    /// How often each never-merge constraint contradicts the estimated matches.
    pub never_merge: Vec<NeverMergeReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NeverMergeReport {
    pub attribute: String,
    /// Expected number of matching pairs where both records carry the attribute.
    pub matches_with_both_values: f64,
    /// Share of those where the values differ enough for the constraint to forbid the merge.
    pub disagreement: f64,
    /// False when the data contradicts the constraint too often and train dropped it.
    pub kept: bool,
    /// The disagreement is too high to be noise (over half of the estimated matches): the
    /// estimate is not trusted and the constraint is kept.
    pub implausible: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainedModel {
    pub model: MatchingModel,
    pub report: TrainReport,
}

const MISSING: u8 = u8::MAX;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Train with default options.
pub fn train(
    records: &[PreparedRecord],
    model: &MatchingModel,
) -> Result<TrainedModel, ModelError> {
    train_with(records, model, &TrainOptions::default())
}

fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let mag = x.abs().log10().floor() as i32;
    let f = 10f64.powi(4 - mag);
    (x * f).round() / f
}

pub fn train_with(
    records: &[PreparedRecord],
    model: &MatchingModel,
    opts: &TrainOptions,
) -> Result<TrainedModel, ModelError> {
    let engine = Engine::new(model)?;
    // re-prepare so the features follow this model's slots
    let recs: Vec<PreparedRecord> = records
        .iter()
        .map(|r| {
            engine.prepare_normalised(&r.source, &r.source_record_id, r.observed_at_ms, r.values.clone())
        })
        .collect();
    let n = recs.len();
    let cs = &engine.comparisons;
    let nc = cs.len();
    let levels: Vec<usize> = cs.iter().map(|c| c.level_count()).collect();
    let pair_levels = |i: usize, j: usize, out: &mut Vec<u8>| {
        for c in cs {
            out.push(engine.hit(c, &recs[i], &recs[j]).level.unwrap_or(MISSING));
        }
    };

    // ---- u from random pairs
    let mut rng = Rng(opts.seed.max(1));
    let total_pairs = if n < 2 { 0 } else { n * (n - 1) / 2 };
    let u_pairs = opts.u_pairs.min(total_pairs);
    let mut u_counts: Vec<Vec<f64>> = levels.iter().map(|&l| vec![0.0; l]).collect();
    let mut buf = Vec::with_capacity(nc);
    for _ in 0..u_pairs {
        let i = rng.below(n);
        let mut j = rng.below(n - 1);
        if j >= i {
            j += 1;
        }
        buf.clear();
        pair_levels(i, j, &mut buf);
        for (c, &l) in buf.iter().enumerate() {
            if l != MISSING {
                u_counts[c][l as usize] += 1.0;
            }
        }
    }
    let mut u: Vec<Vec<f64>> = Vec::with_capacity(nc);
    for (c, counts) in u_counts.iter().enumerate() {
        let total: f64 = counts.iter().sum();
        if total < 1.0 {
            // never observed: keep the policy's values
            u.push(model_probs(model, c).1);
        } else {
            // add-one smoothing spread over levels so no level has u = 0
            let l = counts.len() as f64;
            u.push(
                counts
                    .iter()
                    .map(|&k| (k + 1.0 / l) / (total + 1.0))
                    .collect(),
            );
        }
    }

    // ---- m by EM, one session per blocking key
    let mut m_sum: Vec<Vec<f64>> = levels.iter().map(|&l| vec![0.0; l]).collect();
    let mut m_w = vec![0f64; nc];
    let mut sessions = Vec::new();
    let mut union: HashSet<(u32, u32)> = HashSet::new();
    for (key_index, bk) in model.blocking.iter().enumerate() {
        let mut blocks: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, r) in recs.iter().enumerate() {
            if let Some(key) = engine.blocking_key(key_index, r) {
                blocks.entry(key).or_default().push(i as u32);
            }
        }
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for members in blocks.values() {
            if members.len() > opts.max_block {
                continue;
            }
            for a in 0..members.len() {
                for b in a + 1..members.len() {
                    pairs.push((members[a], members[b]));
                }
            }
        }
        union.extend(pairs.iter().copied());
        // comparisons this key's attributes decide are not estimated here
        let key_attrs: Vec<&str> = bk.parts.iter().map(|p| p.attribute.as_str()).collect();
        let related = |a: &str| -> bool {
            key_attrs
                .iter()
                .any(|k| *k == a || (*k == "fullName" && (a == "givenName" || a == "familyName")))
        };
        let estimated: Vec<usize> = (0..nc)
            .filter(|&c| {
                let mc = &model.comparisons[c];
                !related(&mc.attribute) && !mc.swapped_with.as_deref().is_some_and(related)
            })
            .collect();
        if pairs.is_empty() || estimated.is_empty() {
            sessions.push(SessionReport {
                blocking_key: bk.name.clone(),
                pairs: pairs.len(),
                iterations: 0,
                match_share: 0.0,
                estimated: vec![],
            });
            continue;
        }
        let mut lv: Vec<u8> = Vec::with_capacity(pairs.len() * estimated.len());
        for &(i, j) in &pairs {
            buf.clear();
            pair_levels(i as usize, j as usize, &mut buf);
            lv.extend(estimated.iter().map(|&c| buf[c]));
        }
        let m_prior: Vec<Vec<f64>> = estimated.iter().map(|&c| model_probs(model, c).0).collect();
        let mut m = m_prior.clone();
        let ue: Vec<Vec<f64>> = estimated.iter().map(|&c| u[c].clone()).collect();
        let mut lambda = 0.1f64;
        let mut iterations = 0;
        let ne = estimated.len();
        for it in 0..opts.max_iterations {
            iterations = it + 1;
            let w: Vec<Vec<f64>> = m
                .iter()
                .zip(&ue)
                .map(|(mm, uu)| mm.iter().zip(uu).map(|(a, b)| (a / b).log2()).collect())
                .collect();
            let prior = logit2(lambda.clamp(1e-9, 1.0 - 1e-9));
            let mut acc: Vec<Vec<f64>> = m.iter().map(|v| vec![0.0; v.len()]).collect();
            let mut psum = 0.0;
            for p in lv.chunks_exact(ne) {
                let mut s = prior;
                for (e, &l) in p.iter().enumerate() {
                    if l != MISSING {
                        s += w[e][l as usize];
                    }
                }
                let prob = 1.0 / (1.0 + (-s).exp2());
                psum += prob;
                for (e, &l) in p.iter().enumerate() {
                    if l != MISSING {
                        acc[e][l as usize] += prob;
                    }
                }
            }
            lambda = psum / pairs.len() as f64;
            let mut delta: f64 = 0.0;
            for (e, a) in acc.iter().enumerate() {
                let tot: f64 = a.iter().sum();
                if tot <= 0.0 {
                    continue;
                }
                // A level that less than one expected match lands on cannot be estimated: it
                // keeps the policy's m (otherwise a rare level such as `nickname` would get
                // m ≈ 0 and turn agreement into evidence against a match).
                let prior = &m_prior[e];
                let supported = |l: usize| a[l] >= 1.0;
                let prior_mass: f64 = (0..a.len())
                    .filter(|&l| !supported(l))
                    .map(|l| prior[l])
                    .sum();
                let scale = (1.0 - prior_mass).max(0.0);
                for (l, &x) in a.iter().enumerate() {
                    let new = if supported(l) {
                        (scale * x / tot).clamp(1e-6, 1.0)
                    } else {
                        prior[l]
                    };
                    delta = delta.max((new - m[e][l]).abs());
                    m[e][l] = new;
                }
            }
            if delta < opts.tolerance {
                break;
            }
        }
        // weight the session by its match share: where most pairs are one person, the match
        // class is that person; where few are, structured non-matches (a household sharing a
        // surname and an address) can take the match class over
        for (e, &c) in estimated.iter().enumerate() {
            for (l, &x) in m[e].iter().enumerate() {
                m_sum[c][l] += lambda * x;
            }
            m_w[c] += lambda;
        }
        sessions.push(SessionReport {
            blocking_key: bk.name.clone(),
            pairs: pairs.len(),
            iterations,
            match_share: lambda,
            estimated: estimated.iter().map(|&c| cs[c].name.clone()).collect(),
        });
    }
    let m_final: Vec<Vec<f64>> = (0..nc)
        .map(|c| {
            if m_w[c] <= 1e-9 {
                model_probs(model, c).0
            } else {
                m_sum[c].iter().map(|x| x / m_w[c]).collect()
            }
        })
        .collect();

    // ---- λ: EM on λ alone over the union of blocked pairs
    let w_final: Vec<Vec<f64>> = m_final
        .iter()
        .zip(&u)
        .map(|(mm, uu)| mm.iter().zip(uu).map(|(a, b)| (a / b).log2()).collect())
        .collect();
    let union: Vec<(u32, u32)> = union.into_iter().collect();
    let mut union_levels: Vec<u8> = Vec::with_capacity(union.len() * nc);
    for &(i, j) in &union {
        pair_levels(i as usize, j as usize, &mut union_levels);
    }
    let bayes_excluding = |skip: &dyn Fn(usize) -> bool| -> Vec<f64> {
        union_levels
            .chunks_exact(nc.max(1))
            .map(|p| {
                p.iter()
                    .enumerate()
                    .filter(|(c, l)| **l != MISSING && !skip(*c))
                    .map(|(c, &l)| w_final[c][l as usize])
                    .sum()
            })
            .collect()
    };
    let bayes = if nc == 0 {
        vec![0.0; union.len()]
    } else {
        bayes_excluding(&|_| false)
    };
    let mut lambda_b = 0.1f64;
    for _ in 0..opts.max_iterations * 2 {
        let prior = logit2(lambda_b.clamp(1e-12, 1.0 - 1e-12));
        let sum: f64 = bayes
            .iter()
            .map(|s| 1.0 / (1.0 + (-(s + prior)).exp2()))
            .sum();
        let new = if bayes.is_empty() {
            lambda_b
        } else {
            sum / bayes.len() as f64
        };
        if (new - lambda_b).abs() < 1e-9 {
            lambda_b = new;
            break;
        }
        lambda_b = new;
    }
    let expected_matches = lambda_b * union.len() as f64;
    let prior = if total_pairs == 0 {
        model.prior_match_probability
    } else {
        (expected_matches / total_pairs as f64).clamp(1e-12, 0.5)
    };

    // ---- never-merge: how often would it split pairs that the rest of the evidence calls matches?
    let mut never_merge = Vec::new();
    let prior_b = logit2(lambda_b.clamp(1e-12, 1.0 - 1e-12));
    for nm in &model.never_merge {
        let on_attr = |c: usize| model.comparisons[c].attribute == nm.attribute;
        let b = if nc == 0 {
            vec![0.0; union.len()]
        } else {
            bayes_excluding(&on_attr)
        };
        let (mut both, mut differ) = (0.0, 0.0);
        for (k, &(i, j)) in union.iter().enumerate() {
            let p = 1.0 / (1.0 + (-(b[k] + prior_b)).exp2());
            let (ri, rj) = (&recs[i as usize], &recs[j as usize]);
            if let (Some(x), Some(y)) = (ri.get(&nm.attribute), rj.get(&nm.attribute)) {
                both += p;
                if x != y && engine.forbidden_on(&nm.attribute, ri, rj) {
                    differ += p;
                }
            }
        }
        let rate = if both > 0.0 { differ / both } else { 0.0 };
        // An identity attribute that disagrees in most "matches" says the match class has
        // absorbed a structured group of different people (a household, people sharing an
        // id); the estimate is not to be trusted, and the constraint is what protects them.
        let implausible = rate > 0.5;
        never_merge.push(NeverMergeReport {
            attribute: nm.attribute.clone(),
            matches_with_both_values: both,
            disagreement: rate,
            kept: implausible
                || opts
                    .never_merge_max_disagreement
                    .is_none_or(|max| rate <= max),
            implausible,
        });
    }

    let mut out = model.clone();
    for (c, comp) in out.comparisons.iter_mut().enumerate() {
        let k = comp.levels.len();
        for (l, level) in comp.levels.iter_mut().enumerate() {
            level.m = round_sig(m_final[c][l]);
            level.u = round_sig(u[c][l]);
        }
        comp.else_level.m = round_sig(m_final[c][k]);
        comp.else_level.u = round_sig(u[c][k]);
    }
    out.prior_match_probability = round_sig(prior);
    out.never_merge.retain(|nm| {
        never_merge
            .iter()
            .any(|r| r.attribute == nm.attribute && r.kept)
    });
    Ok(TrainedModel {
        model: out,
        report: TrainReport {
            records: n,
            u_pairs,
            sessions,
            blocked_pairs: union.len(),
            expected_matches,
            prior_match_probability: prior,
            never_merge,
        },
    })
}

/// (m, u) per level of comparison `c`, else level last.
fn model_probs(model: &MatchingModel, c: usize) -> (Vec<f64>, Vec<f64>) {
    let comp = &model.comparisons[c];
    let mut m: Vec<f64> = comp.levels.iter().map(|l| l.m).collect();
    let mut u: Vec<f64> = comp.levels.iter().map(|l| l.u).collect();
    m.push(comp.else_level.m);
    u.push(comp.else_level.u);
    (m, u)
}
