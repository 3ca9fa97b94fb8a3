//! Behaviour tests of the matching core: comparators, scoring, never-merge, resolution,
//! re-clustering, survivorship, training.

use std::collections::BTreeMap;

use crate::crd::matching::{Comparator, MatchingModel, SurvivorshipRule};
use crate::identity::engine::{Engine, ModelError, PairDecision, PreparedRecord};
use crate::identity::golden::SourcedRecord;
use crate::identity::record::CanonicalRecord;
use crate::identity::resolve::{CandidateProfile, Outcome, ReviewReason, select_candidates};
use crate::identity::{default_model, train::TrainOptions, train::train_with};

fn rec(id: &str, at: i64, kv: &[(&str, &str)]) -> CanonicalRecord {
    CanonicalRecord {
        source: "crm".into(),
        source_record_id: id.into(),
        observed_at_ms: at,
        attributes: kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn engine() -> Engine {
    Engine::new(&default_model()).unwrap()
}

fn prep(e: &Engine, id: &str, kv: &[(&str, &str)]) -> PreparedRecord {
    e.prepare(&rec(id, 0, kv), "FR")
}

fn level<'a>(ev: &'a crate::identity::PairEvidence, name: &str) -> &'a str {
    &ev.comparisons
        .iter()
        .find(|c| c.name == name)
        .unwrap()
        .level
}

#[test]
fn default_model_compiles_and_validation_rejects_bad_models() {
    let e = engine();
    assert!(e.merge_weight() > e.review_weight());
    let mut m = default_model();
    m.comparisons[0].attribute = "shoeSize".into();
    assert!(
        matches!(Engine::new(&m), Err(ModelError::UnknownAttribute { attribute, .. }) if attribute == "shoeSize")
    );
    let mut m = default_model();
    m.thresholds.review = 0.99;
    assert!(matches!(
        Engine::new(&m),
        Err(ModelError::Thresholds { .. })
    ));
    let mut m = default_model();
    m.comparisons[0].levels[0].u = 0.0;
    assert!(matches!(
        Engine::new(&m),
        Err(ModelError::Probability { .. })
    ));
    let mut m = default_model();
    m.comparisons[0].levels[2].threshold = None;
    assert!(matches!(
        Engine::new(&m),
        Err(ModelError::MissingThreshold {
            comparator: Comparator::JaroWinkler,
            ..
        })
    ));
    let mut m = default_model();
    m.comparisons[0].levels.remove(0);
    assert!(matches!(
        Engine::new(&m),
        Err(ModelError::TermFrequencyWithoutExact(place)) if place == "comparison given-name"
    ));
    let mut m = default_model();
    m.blocking.clear();
    assert_eq!(Engine::new(&m).unwrap_err(), ModelError::NoBlocking);
    let mut m = default_model();
    m.prior_match_probability = 0.0;
    assert_eq!(Engine::new(&m).unwrap_err(), ModelError::Prior(0.0));
    let mut m = default_model();
    m.never_merge[0].attribute = "identifiers.".into();
    assert!(Engine::new(&m).is_err());
    // the error message names the place
    let mut m = default_model();
    m.comparisons[1].attribute = "surname".into();
    assert!(
        Engine::new(&m)
            .unwrap_err()
            .to_string()
            .contains("comparison family-name")
    );
}

#[test]
fn candidates_sharing_most_keys_are_kept() {
    // profile 9 shares three keys, 4 and 7 two, the rest one
    let hits = vec![5, 9, 1, 9, 7, 3, 4, 9, 7, 4, 2];
    assert_eq!(select_candidates(hits.clone(), 10), vec![1, 2, 3, 4, 5, 7, 9]);
    assert_eq!(select_candidates(hits.clone(), 3), vec![4, 7, 9]);
    // ties on shared keys: the oldest profiles
    assert_eq!(select_candidates(hits, 5), vec![1, 2, 4, 7, 9]);
    assert!(select_candidates(Vec::<u32>::new(), 3).is_empty());
}

#[test]
fn a_blocking_key_on_one_identifier_is_its_lookup_key() {
    use crate::identity::record::lookup_key;
    let e = engine();
    let r = prep(
        &e,
        "1",
        &[
            ("givenName", "Jean"),
            ("familyName", "Smith"),
            ("email", " JP@x.fr "),
            ("phone", "06 12 34 56 78"),
        ],
    );
    let keys = e.blocking_keys(&r);
    // the same string the store indexes the identifier under, so one row serves both
    for (attribute, value) in [("email", "jp@x.fr"), ("phone", "+33612345678")] {
        assert_eq!(r.get(attribute), Some(value));
        assert!(keys.contains(&lookup_key(attribute, value)), "{keys:?}");
    }
    // keys on names or on several parts keep their policy name
    assert!(keys.contains(&"full-name:aehijmnst".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("email:") || k.starts_with("phone:")), "{keys:?}");
}

/// Training estimates m in one session per blocking key, over the pairs that key blocks
/// together: a key on one identifier blocks under its lookup key, not its policy name, and
/// must still have its session.
#[test]
fn training_blocks_on_every_key_of_the_policy() {
    let e = engine();
    let recs: Vec<PreparedRecord> = (0..200)
        .flat_map(|p| {
            let email = format!("person{p}@example.org");
            let e = &e;
            (0..2).map(move |k| {
                let given = if k == 0 { format!("ann{p}") } else { format!("anne{p}") };
                prep(e, &format!("{p}-{k}"), &[("givenName", given.as_str()), ("email", email.as_str())])
            })
        })
        .collect();
    let t = train_with(&recs, e.model(), &TrainOptions::default()).unwrap();
    let email = t.report.sessions.iter().find(|s| s.blocking_key == "email").expect("an email session");
    assert_eq!(email.pairs, 200, "{:?}", t.report.sessions);
}

#[test]
fn blocking_keys_are_stable_strings() {
    let e = engine();
    let r = prep(
        &e,
        "1",
        &[
            ("givenName", "Jean-Pierre"),
            ("familyName", "Smith"),
            ("birthDate", "1980-01-02"),
            ("postcode", "75 001"),
        ],
    );
    let keys = e.blocking_keys(&r);
    assert!(
        keys.contains(&"family-dob:SM0|1980-01-02".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"family-postcode:SM0|75001".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"dob-postcode:1980-01-02|75001".to_string()),
        "{keys:?}"
    );
    // no email → no email key
    assert!(!keys.iter().any(|k| k.starts_with("=email:")));
    // swapped given/family names share the sorted full-name key
    let s = prep(
        &e,
        "2",
        &[("givenName", "Smith"), ("familyName", "Jean Pierre")],
    );
    let full = |ks: Vec<String>| {
        ks.into_iter()
            .find(|k| k.starts_with("full-name:"))
            .unwrap()
    };
    assert_eq!(full(e.blocking_keys(&r)), full(e.blocking_keys(&s)));
}

#[test]
fn comparator_levels() {
    let e = engine();
    let a = prep(
        &e,
        "a",
        &[
            ("givenName", "Jean-Pierre"),
            ("familyName", "de la Fontaine"),
            ("birthDate", "1980-03-04"),
            ("email", "JP@x.fr"),
        ],
    );
    // compound and particle spellings compare exactly
    let b = prep(
        &e,
        "b",
        &[
            ("givenName", "jeanpierre"),
            ("familyName", "Fontaine"),
            ("birthDate", "1980-04-03"),
            ("email", "jp@x.fr"),
        ],
    );
    let ev = e.compare(&a, &b);
    assert_eq!(level(&ev, "given-name"), "exact");
    assert_eq!(level(&ev, "family-name"), "exact");
    assert_eq!(level(&ev, "birth-date"), "dateSwappedDayMonth");
    assert_eq!(level(&ev, "email"), "exact");
    assert_eq!(level(&ev, "phone"), "missing");
    let c = prep(
        &e,
        "c",
        &[
            ("givenName", "Bob"),
            ("familyName", "Fontaines"),
            ("birthDate", "1980-03-14"),
        ],
    );
    let d = prep(
        &e,
        "d",
        &[
            ("givenName", "Robert"),
            ("familyName", "Fontaine"),
            ("birthDate", "1980-03-04"),
        ],
    );
    let ev = e.compare(&c, &d);
    assert_eq!(level(&ev, "given-name"), "nickname");
    assert_eq!(level(&ev, "family-name"), "jaroWinkler>=0.92");
    assert_eq!(level(&ev, "birth-date"), "damerauLevenshtein<=1");
    // swapped given/family names
    let s1 = prep(
        &e,
        "s1",
        &[("givenName", "Martin"), ("familyName", "Claire")],
    );
    let s2 = prep(
        &e,
        "s2",
        &[("givenName", "Claire"), ("familyName", "Martin")],
    );
    let ev = e.compare(&s1, &s2);
    assert_eq!(level(&ev, "given-name"), "exact");
    assert!(
        ev.comparisons
            .iter()
            .find(|c| c.name == "given-name")
            .unwrap()
            .swapped
    );
    // unrelated names fall to else with a negative weight
    let x = prep(&e, "x", &[("givenName", "Paul")]);
    let y = prep(&e, "y", &[("givenName", "Zoe")]);
    let ev = e.compare(&x, &y);
    assert_eq!(level(&ev, "given-name"), "else");
    assert!(ev.comparisons[0].weight < -3.0);
}

#[test]
fn scoring_math_is_fellegi_sunter() {
    let e = engine();
    let a = prep(
        &e,
        "a",
        &[
            ("givenName", "Anna"),
            ("familyName", "Ng"),
            ("email", "anna@ng.org"),
        ],
    );
    let b = prep(
        &e,
        "b",
        &[
            ("givenName", "Anna"),
            ("familyName", "Ng"),
            ("email", "anna@ng.org"),
        ],
    );
    let ev = e.compare(&a, &b);
    let m = default_model();
    let bits = |c: usize| (m.comparisons[c].levels[0].m / m.comparisons[c].levels[0].u).log2();
    let expected = (1e-4f64 / (1.0 - 1e-4)).log2() + bits(0) + bits(1) + bits(3);
    assert!(
        (ev.match_weight - expected).abs() < 1e-9,
        "{} vs {expected}",
        ev.match_weight
    );
    let sum: f64 = ev.prior_weight + ev.comparisons.iter().map(|c| c.weight).sum::<f64>();
    assert!((ev.match_weight - sum).abs() < 1e-9);
    assert!((ev.probability - 1.0 / (1.0 + (-expected).exp2())).abs() < 1e-12);
    assert_eq!(e.score(&a, &b).weight, ev.match_weight);
    // the deterministic rule email + given name fires
    assert_eq!(ev.rule.as_deref(), Some("email-given-name"));
    assert_eq!(e.decide(&ev), PairDecision::Merge);
    // evidence is serialisable for the API and round-trips
    let json = serde_json::to_string(&ev).unwrap();
    assert!(json.contains("\"matchWeight\""));
    let back: crate::identity::PairEvidence = serde_json::from_str(&json).unwrap();
    assert_eq!(back.comparisons, ev.comparisons);
    assert!((back.probability - ev.probability).abs() < 1e-12);
}

#[test]
fn a_shared_rare_name_weighs_more_than_a_shared_common_one() {
    let e = engine();
    let m = default_model();
    let family = &m.comparisons[1];
    assert_eq!(family.name, "family-name");
    let (exact_m, exact_u) = (family.levels[0].m, family.levels[0].u);
    let person = |id: &str, name: &str| prep(&e, id, &[("givenName", "Anna"), ("familyName", name)]);
    let family_weight = |a: &PreparedRecord, b: &PreparedRecord| {
        let ev = e.compare(a, b);
        let c = ev.comparisons.iter().find(|c| c.name == "family-name").unwrap();
        (c.weight, c.term_frequency, ev.match_weight)
    };
    // no counts attached: the level's average weight
    let (a, b) = (person("a", "Martin"), person("b", "Martin"));
    let (plain, tf, _) = family_weight(&a, &b);
    assert!((plain - (exact_m / exact_u).log2()).abs() < 1e-9);
    assert_eq!(tf, None);
    let mut keys = e.term_keys(&a);
    keys.sort();
    assert_eq!(keys, ["familyName", "familyName=martin", "givenName", "givenName=anna"]);

    // a store of 100,000 records: "martin" on 2,000 of them, "oyelaran" on 2
    let counted = |r: &PreparedRecord, value: u64| {
        let mut r = r.clone();
        e.attach_term_counts(&mut r, |key| match key {
            "familyName" | "givenName" => 100_000,
            k if k.starts_with("familyName=") => value,
            _ => 1_000,
        });
        r
    };
    let (common, common_tf, common_total) = family_weight(&counted(&a, 2_000), &b);
    let (x, y) = (person("x", "Oyelaran"), person("y", "Oyelaran"));
    let (rare, rare_tf, rare_total) = family_weight(&counted(&x, 2), &counted(&y, 1));
    let (common_tf, rare_tf) = (common_tf.unwrap(), rare_tf.unwrap());
    // the frequency comes from the larger count (the fresher one), pulled towards u a little
    assert!((common_tf - 2_010.0 / (100_000.0 + 10.0 / exact_u)).abs() < 1e-12);
    assert!((rare_tf - 12.0 / (100_000.0 + 10.0 / exact_u)).abs() < 1e-12);
    assert!((common - (exact_m / common_tf).log2()).abs() < 1e-9);
    assert!(common < plain && plain < rare, "{common} < {plain} < {rare}");
    assert!(common_total < rare_total);
    // the explanation says which frequency made the weight, and the score agrees with it
    assert_eq!(e.score(&counted(&a, 2_000), &b).weight, common_total);
    let json = serde_json::to_string(&e.compare(&counted(&x, 2), &y)).unwrap();
    assert!(json.contains("\"termFrequency\""), "{json}");
    // a swapped or fuzzy agreement keeps its level's weight
    let typo = counted(&person("t", "Martinn"), 1);
    let (fuzzy, fuzzy_tf, _) = family_weight(&typo, &counted(&a, 2_000));
    assert_eq!(fuzzy_tf, None);
    assert!((fuzzy - (family.levels[2].m / family.levels[2].u).log2()).abs() < 1e-9);
}

#[test]
fn the_stream_weighs_names_by_how_common_they_are_in_it() {
    // two records sharing only a name, after 600 others: whether the pair is a question for a
    // person depends on how many of those 600 carry the same family name
    let e = engine();
    let second_namesake = |others_family: &dyn Fn(usize) -> String| {
        let mut stream = crate::identity::StreamMatcher::new(&e);
        for i in 0..600 {
            let r = prep(&e, &format!("o{i}"), &[("givenName", "Zoe"), ("familyName", &others_family(i))]);
            stream.push(r, i);
        }
        let namesake = |id: &str| prep(&e, id, &[("givenName", "Anna"), ("familyName", "Martin")]);
        stream.push(namesake("a"), 100);
        stream.push(namesake("b"), 101)
    };
    let rare = second_namesake(&|i| format!("Other{i}"));
    assert_eq!(rare.outcome, Outcome::New);
    assert_eq!(rare.review.len(), 1, "a rare shared name is worth a look");
    let common = second_namesake(&|_| "Martin".to_string());
    assert_eq!(common.outcome, Outcome::New);
    assert!(common.review.is_empty(), "one namesake among many: {:?}", common.review);
}

#[test]
fn address_parts_are_not_double_counted() {
    let e = engine();
    let a = prep(
        &e,
        "a",
        &[
            ("street", "3 rue des Lilas"),
            ("postcode", "75011"),
            ("city", "Paris"),
        ],
    );
    let b = prep(
        &e,
        "b",
        &[
            ("street", "3 Rue des Lilas"),
            ("postcode", "75011"),
            ("city", "paris"),
        ],
    );
    let ev = e.compare(&a, &b);
    let get = |n: &str| ev.comparisons.iter().find(|c| c.name == n).unwrap().clone();
    assert!(get("street").weight > 0.0);
    assert_eq!(get("postcode").weight, 0.0);
    assert!(get("postcode").implied);
    assert_eq!(get("city").weight, 0.0);
    // without a street, the postcode counts
    let c = prep(&e, "c", &[("postcode", "75011"), ("city", "Paris")]);
    let d = prep(&e, "d", &[("postcode", "75011"), ("city", "Lyon")]);
    let ev = e.compare(&c, &d);
    assert!(
        ev.comparisons
            .iter()
            .find(|c| c.name == "postcode")
            .unwrap()
            .weight
            > 0.0
    );
    assert!(
        ev.comparisons
            .iter()
            .find(|c| c.name == "city")
            .unwrap()
            .weight
            < 0.0
    );
}

#[test]
fn never_merge_forbids_but_tolerates_typos() {
    let e = engine();
    let base = [
        ("givenName", "Marc"),
        ("familyName", "Dupont"),
        ("email", "marc@dupont.fr"),
    ];
    let with = |dob: &str| {
        let mut kv = base.to_vec();
        kv.push(("birthDate", dob));
        prep(&e, dob, &kv)
    };
    let a = with("1970-05-06");
    // a different birth date: forbidden even though the rule (email + given name) fires
    let ev = e.compare(&a, &with("1982-11-23"));
    assert_eq!(ev.forbidden_by.as_deref(), Some("birthDate"));
    assert_eq!(e.decide(&ev), PairDecision::Forbidden);
    // one typo or a day/month swap is not "different"
    assert_eq!(e.compare(&a, &with("1970-05-08")).forbidden_by, None);
    assert_eq!(e.compare(&a, &with("1970-06-05")).forbidden_by, None);
    // missing on one side never forbids
    assert_eq!(e.compare(&a, &prep(&e, "n", &base)).forbidden_by, None);
}

fn profile_person(e: &Engine, id: &str, given: &str, extra: &[(&str, &str)]) -> PreparedRecord {
    let mut kv = vec![
        ("givenName", given),
        ("familyName", "Martin"),
        ("street", "12 rue des Lilas"),
        ("postcode", "75011"),
        ("city", "Paris"),
        ("phone", "01 43 22 11 00"),
    ];
    kv.extend_from_slice(extra);
    prep(e, id, &kv)
}

#[test]
fn sibling_in_household_is_not_absorbed() {
    let e = engine();
    // Claire's profile: two records, one of them without a given name
    let claire = vec![
        profile_person(
            &e,
            "c1",
            "Claire",
            &[
                ("birthDate", "1990-02-03"),
                ("email", "claire.martin@mail.fr"),
            ],
        ),
        prep(
            &e,
            "c2",
            &[
                ("familyName", "Martin"),
                ("street", "12 rue des Lilas"),
                ("postcode", "75011"),
                ("phone", "0143221100"),
            ],
        ),
    ];
    // her brother: same surname, address, phone; different given name, no birth date
    let paul = profile_person(&e, "p1", "Paul", &[]);
    // the nameless record alone is close to Paul...
    assert!(e.score(&paul, &claire[1]).weight >= e.merge_weight());
    // ...but the profile as a whole is not
    let res = e.resolve(
        &paul,
        &[CandidateProfile {
            id: "claire",
            records: &claire,
        }],
    );
    assert_eq!(res.outcome, Outcome::New, "{res:?}");
    // Claire herself joins
    let claire3 = profile_person(&e, "c3", "Claire", &[]);
    let res = e.resolve(
        &claire3,
        &[CandidateProfile {
            id: "claire",
            records: &claire,
        }],
    );
    assert_eq!(
        res.outcome,
        Outcome::Join {
            profile: "claire".into()
        }
    );
    assert_eq!(res.links[0].profile, "claire");
    assert!(res.links[0].evidence.probability > 0.95);
}

#[test]
fn record_bridging_two_profiles_merges_them() {
    let e = engine();
    // the same person seen by the shop (email) and the call centre (phone), with a typo in the
    // shop's family name: apart, the two profiles were not sure enough to merge
    let shop = vec![prep(
        &e,
        "s1",
        &[
            ("givenName", "Amélie"),
            ("familyName", "Poulainn"),
            ("email", "amelie@poulain.fr"),
            ("birthDate", "1975-01-02"),
        ],
    )];
    let call = vec![prep(
        &e,
        "c1",
        &[
            ("givenName", "Amelie"),
            ("familyName", "Poulain"),
            ("phone", "06 11 22 33 44"),
            ("postcode", "75018"),
        ],
    )];
    assert!(e.score(&shop[0], &call[0]).weight < e.merge_weight());
    let bridge = prep(
        &e,
        "b1",
        &[
            ("givenName", "Amelie"),
            ("familyName", "Poulain"),
            ("email", "amelie@poulain.fr"),
            ("phone", "+33611223344"),
            ("birthDate", "02/01/1975"),
        ],
    );
    let res = e.resolve(
        &bridge,
        &[
            CandidateProfile {
                id: "shop",
                records: &shop,
            },
            CandidateProfile {
                id: "call",
                records: &call,
            },
        ],
    );
    assert_eq!(
        res.outcome,
        Outcome::Merge {
            survivor: "shop".into(),
            absorbed: vec!["call".into()]
        },
        "{res:?}"
    );
    assert_eq!(res.links.len(), 2);
}

#[test]
fn forbidden_bridge_joins_best_and_sends_the_rest_to_review() {
    let e = engine();
    // two people sharing a family email address, with different birth dates
    let a = vec![prep(
        &e,
        "a1",
        &[
            ("givenName", "Lea"),
            ("familyName", "Roux"),
            ("email", "roux@famille.fr"),
            ("birthDate", "1980-01-01"),
            ("phone", "0611111111"),
        ],
    )];
    let b = vec![prep(
        &e,
        "b1",
        &[
            ("givenName", "Lea"),
            ("familyName", "Roux"),
            ("email", "roux@famille.fr"),
            ("birthDate", "2010-07-07"),
        ],
    )];
    // a record with no birth date matches both
    let r = prep(
        &e,
        "r",
        &[
            ("givenName", "Lea"),
            ("familyName", "Roux"),
            ("email", "roux@famille.fr"),
            ("phone", "06 11 11 11 11"),
        ],
    );
    let res = e.resolve(
        &r,
        &[
            CandidateProfile {
                id: "a",
                records: &a,
            },
            CandidateProfile {
                id: "b",
                records: &b,
            },
        ],
    );
    assert_eq!(
        res.outcome,
        Outcome::Join {
            profile: "a".into()
        },
        "{res:?}"
    );
    assert_eq!(res.review.len(), 1);
    assert_eq!(res.review[0].reason, ReviewReason::Ambiguous);
    assert_eq!(res.review[0].link.profile, "b");
    // a record whose birth date conflicts with a profile cannot join it, even by rule
    let c = prep(
        &e,
        "c",
        &[
            ("givenName", "Lea"),
            ("familyName", "Roux"),
            ("email", "roux@famille.fr"),
            ("birthDate", "1999-09-09"),
        ],
    );
    let res = e.resolve(
        &c,
        &[CandidateProfile {
            id: "a",
            records: &a,
        }],
    );
    assert_eq!(res.outcome, Outcome::New);
    assert_eq!(res.review[0].reason, ReviewReason::Forbidden);
    assert!(res.review[0].link.profile_weight >= e.merge_weight());
}

/// A never-merge rule only makes a question of a pair the score alone would merge: an
/// uncertain pair it also separates (a relative sharing the surname and a phone, with another
/// given name and postcode) is two people.
#[test]
fn an_uncertain_pair_a_rule_separates_is_not_reviewed() {
    let e = engine();
    let a = [prep(&e, "a", &[("givenName", "Lea"), ("familyName", "Roux"), ("phone", "06 11 11 11 11"), ("postcode", "75011")])];
    let profile = [CandidateProfile { id: "a", records: &a }];
    let c = prep(&e, "c", &[("givenName", "Marc"), ("familyName", "Roux"), ("phone", "06 11 11 11 11"), ("postcode", "69003")]);
    let score = e.score_profile(&c, &a).unwrap();
    assert!(score.forbidden && score.weight >= e.review_weight() && score.weight < e.merge_weight(), "{score:?}");
    let res = e.resolve(&c, &profile);
    assert_eq!(res.outcome, Outcome::New);
    assert!(res.review.is_empty(), "{res:?}");
}

#[test]
fn cluster_splits_what_does_not_belong() {
    let e = engine();
    let recs = vec![
        prep(
            &e,
            "1",
            &[
                ("givenName", "Ines"),
                ("familyName", "Garcia"),
                ("email", "ines@g.es"),
                ("birthDate", "1991-01-01"),
            ],
        ),
        prep(
            &e,
            "2",
            &[
                ("givenName", "Hugo"),
                ("familyName", "Weber"),
                ("phone", "0622334455"),
            ],
        ),
        prep(
            &e,
            "3",
            &[
                ("givenName", "Inès"),
                ("familyName", "García"),
                ("email", "ines@g.es"),
            ],
        ),
        prep(
            &e,
            "4",
            &[
                ("givenName", "Hugo"),
                ("familyName", "Weber"),
                ("phone", "+33 6 22 33 44 55"),
                ("postcode", "67000"),
            ],
        ),
    ];
    assert_eq!(e.cluster(&recs), vec![vec![0, 2], vec![1, 3]]);
    assert_eq!(e.cluster(&recs[..1]), vec![vec![0]]);
    assert!(e.cluster(&[]).is_empty());
}

#[test]
fn survivorship_rules() {
    let mut m = default_model();
    m.survivorship.default = SurvivorshipRule::TrustRank;
    m.survivorship.attributes = BTreeMap::from([
        ("email".to_string(), SurvivorshipRule::MostRecent),
        ("city".to_string(), SurvivorshipRule::MostFrequent),
        ("middleName".to_string(), SurvivorshipRule::MostComplete),
    ]);
    let e = Engine::new(&m).unwrap();
    let mk = |id: &str, src: &str, at: i64, kv: &[(&str, &str)]| {
        let mut r = rec(id, at, kv);
        r.source = src.into();
        e.prepare(&r, "FR")
    };
    let r1 = mk(
        "1",
        "crm",
        100,
        &[
            ("givenName", "Jon"),
            ("email", "old@x.fr"),
            ("city", "Lyon"),
            ("middleName", "M"),
        ],
    );
    let r2 = mk(
        "2",
        "shop",
        300,
        &[
            ("givenName", "John"),
            ("email", "new@x.fr"),
            ("city", "Paris"),
            ("middleName", "Marie"),
        ],
    );
    let r3 = mk(
        "3",
        "till",
        200,
        &[("givenName", "Johnny"), ("city", "Lyon")],
    );
    let r4 = mk("4", "till", 250, &[("givenName", "Jean")]);
    let sourced = [
        SourcedRecord {
            record: &r1,
            trust_rank: 10,
        },
        SourcedRecord {
            record: &r2,
            trust_rank: 5,
        },
        SourcedRecord {
            record: &r3,
            trust_rank: 10,
        },
        SourcedRecord {
            record: &r4,
            trust_rank: 1,
        },
    ];
    let g = e.golden(&sourced);
    // trust rank; tie between crm and till (both 10) goes to the most recent
    assert_eq!(g.get("givenName"), Some("johnny"));
    assert_eq!(g.attributes["givenName"].source_record_id, "3");
    assert_eq!(g.get("email"), Some("new@x.fr"));
    assert_eq!(g.get("city"), Some("lyon"));
    assert_eq!(g.get("middleName"), Some("marie"));
    // deterministic whatever the order
    let mut rev = sourced;
    rev.reverse();
    assert_eq!(e.golden(&rev), g);
}

#[test]
fn stream_matcher_follows_aliases() {
    use crate::identity::stream::StreamMatcher;
    let e = engine();
    let mut s = StreamMatcher::new(&e);
    s.push(
        prep(
            &e,
            "1",
            &[
                ("givenName", "Ana"),
                ("familyName", "Silva"),
                ("email", "ana@silva.pt"),
            ],
        ),
        0,
    );
    s.push(
        prep(
            &e,
            "2",
            &[
                ("givenName", "Ana"),
                ("familyName", "Silva"),
                ("phone", "0612121212"),
                ("birthDate", "1985-05-05"),
            ],
        ),
        1,
    );
    let r = s.push(
        prep(
            &e,
            "3",
            &[
                ("givenName", "Ana"),
                ("familyName", "Silva"),
                ("email", "ana@silva.pt"),
                ("phone", "06 12 12 12 12"),
                ("birthDate", "1985-05-05"),
            ],
        ),
        2,
    );
    assert!(matches!(
        r.outcome,
        Outcome::Merge { .. } | Outcome::Join { .. }
    ));
    let mut clusters = s.clusters();
    clusters.iter_mut().for_each(|c| c.sort());
    assert_eq!(clusters, vec![vec![0, 1, 2]]);
    let (id, golden, _) = s.profiles().next().unwrap();
    assert_eq!(s.resolve_alias("p1"), Some(id));
    assert_eq!(golden.get("email"), Some("ana@silva.pt"));
}

/// Synthetic data with known m and u: EM must recover them.
#[test]
fn em_recovers_known_m_and_u() {
    // one comparison on `identifiers.code` with levels exact / else, blocked on city
    let model: MatchingModel = serde_json::from_value(serde_json::json!({
        "blocking": [{"name": "city", "parts": [{"attribute": "city"}]}],
        "comparisons": [
            {"name": "code", "attribute": "identifiers.code",
             "levels": [{"comparator": "exact", "m": 0.5, "u": 0.5}], "elseLevel": {"m": 0.5, "u": 0.5}},
            {"name": "colour", "attribute": "attributes.colour",
             "levels": [{"comparator": "exact", "m": 0.5, "u": 0.5}], "elseLevel": {"m": 0.5, "u": 0.5}},
            {"name": "size", "attribute": "attributes.size",
             "levels": [{"comparator": "exact", "m": 0.5, "u": 0.5}], "elseLevel": {"m": 0.5, "u": 0.5}}
        ],
        "thresholds": {"merge": 0.9, "review": 0.5}
    }))
    .unwrap();
    let e = Engine::new(&model).unwrap();
    // 600 people, 2 records each; each of the three fields is copied to the duplicate with
    // probability 0.9, otherwise redrawn; values are uniform over 100 (u ≈ 0.01)
    let mut seed = 7u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut recs = Vec::new();
    for p in 0..600 {
        let city = format!("c{}", p % 30);
        let vals: Vec<u64> = (0..3).map(|_| rnd(100)).collect();
        for k in 0..2 {
            let v: Vec<String> = vals
                .iter()
                .map(|&x| {
                    if k == 0 || rnd(100) < 90 {
                        x.to_string()
                    } else {
                        rnd(100).to_string()
                    }
                })
                .collect();
            recs.push(e.prepare(
                &rec(
                    &format!("{p}-{k}"),
                    0,
                    &[
                        ("city", &city),
                        ("identifiers.code", &v[0]),
                        ("attributes.colour", &v[1]),
                        ("attributes.size", &v[2]),
                    ],
                ),
                "FR",
            ));
        }
    }
    let t = train_with(
        &recs,
        &model,
        &TrainOptions {
            u_pairs: 200_000,
            ..Default::default()
        },
    )
    .unwrap();
    for c in &t.model.comparisons {
        let (m, u) = (c.levels[0].m, c.levels[0].u);
        // a redraw can land on the same value: true m = 0.9 + 0.1/100
        assert!((m - 0.901).abs() < 0.03, "{}: m={m}", c.name);
        assert!((u - 0.01).abs() < 0.003, "{}: u={u}", c.name);
    }
    // 600 true pairs among 1200·1199/2
    let truth = 600.0 / (1200.0 * 1199.0 / 2.0);
    let prior = t.model.prior_match_probability;
    assert!(
        (prior / truth - 1.0).abs() < 0.2,
        "prior {prior} vs {truth}"
    );
}

#[test]
fn jaro_winkler_agrees_with_strsim() {
    for (a, b) in [
        ("martha", "marhta"),
        ("dixon", "dicksonx"),
        ("jellyfish", "smellyfish"),
        ("a", "b"),
        ("jeff", "jeffrey"),
        ("", "x"),
    ] {
        let (ours, theirs) = (
            crate::identity::engine::jaro_winkler(a, b),
            strsim::jaro_winkler(a, b),
        );
        assert!((ours - theirs).abs() < 1e-12, "{a} {b}: {ours} vs {theirs}");
    }
}

proptest::proptest! {
    #[test]
    fn jaro_winkler_matches_strsim(a in "[a-e]{0,12}", b in "[a-e]{0,12}") {
        let ours = crate::identity::engine::jaro_winkler(&a, &b);
        proptest::prop_assert!((ours - strsim::jaro_winkler(&a, &b)).abs() < 1e-12, "{} {}", ours, strsim::jaro_winkler(&a, &b));
    }

    #[test]
    fn edit_distances_match_strsim(a in "[a-d]{0,10}", b in "[a-d]{0,10}", max in 0usize..4) {
        use crate::identity::engine::edit_distance_within;
        proptest::prop_assert_eq!(edit_distance_within(&a, &b, max, true), strsim::osa_distance(&a, &b) <= max);
        proptest::prop_assert_eq!(edit_distance_within(&a, &b, max, false), strsim::levenshtein(&a, &b) <= max);
    }

    #[test]
    fn compare_is_symmetric(
        g1 in "[a-z]{2,8}", g2 in "[a-z]{2,8}", f1 in "[a-z]{2,8}", f2 in "[a-z]{2,8}",
        d1 in 1u32..28, d2 in 1u32..28, swap in proptest::bool::ANY,
    ) {
        let e = engine();
        let a = prep(&e, "a", &[("givenName", &g1), ("familyName", &f1), ("birthDate", &format!("1980-01-{d1:02}"))]);
        let b = if swap {
            prep(&e, "b", &[("givenName", &f1), ("familyName", &g2), ("birthDate", &format!("1980-01-{d2:02}"))])
        } else {
            prep(&e, "b", &[("givenName", &g2), ("familyName", &f2), ("birthDate", &format!("1980-01-{d2:02}"))])
        };
        let (ab, ba) = (e.compare(&a, &b), e.compare(&b, &a));
        proptest::prop_assert!((ab.match_weight - ba.match_weight).abs() < 1e-9);
        proptest::prop_assert_eq!(&ab.forbidden_by, &ba.forbidden_by);
        proptest::prop_assert_eq!(e.decide(&ab), e.decide(&ba));
    }
}

/// The matcher rebuilds stored records from their normalised values without normalising
/// them again: what it compares must be what intake prepared.
#[test]
fn a_record_rebuilt_from_its_normalised_values_compares_as_prepared() {
    let e = engine();
    let sent = prep(
        &e,
        "a",
        &[
            ("givenName", "Jean-Pierre"),
            ("familyName", "de la Fontaine"),
            ("email", " JP.Fontaine@Example.COM "),
            ("phone", "06 12 34 56 78"),
            ("birthDate", "14/07/1981"),
            ("street", "12 Avenue Victor Hugo"),
            ("postcode", "75016"),
        ],
    );
    let rebuilt = e.prepare_normalised(&sent.source, &sent.source_record_id, sent.observed_at_ms, sent.values.clone());
    assert_eq!(rebuilt.values, sent.values);
    assert_eq!(rebuilt.features, sent.features);
    let other = prep(&e, "b", &[("givenName", "Jean Pierre"), ("familyName", "Lafontaine"), ("birthDate", "1981-07-14")]);
    assert_eq!(e.compare(&rebuilt, &other), e.compare(&sent, &other));
}

/// A value longer than its Source's limit (kept as sent under `onInvalidValue: Keep`, or
/// queued before the limits) is left out of matching, as an invalid one is.
#[test]
fn values_longer_than_their_limit_take_no_part_in_matching() {
    use crate::crd::source::ValidationRules;
    use crate::identity::LengthLimits;
    let e = engine();
    let rules = ValidationRules { max_length: [("givenName".to_string(), 5)].into(), ..Default::default() };
    let r = e.prepare_within(&rec("a", 0, &[("givenName", "Annabel"), ("familyName", "Martin")]), "FR", &LengthLimits::of(&rules));
    assert_eq!(r.get("givenName"), None);
    assert_eq!(r.invalid, [("givenName".to_string(), "longer than 5 characters".to_string())]);
    assert_eq!(r.get("familyName"), Some("martin"));
    // without a Source, the default limits
    let r = prep(&e, "b", &[("givenName", &"a".repeat(101)), ("email", "ann@example.com")]);
    assert_eq!(r.get("givenName"), None);
    assert!(e.blocking_keys(&r).iter().all(|k| !k.contains("aaaa")), "{:?}", e.blocking_keys(&r));
}

/// Records already stored hold values of any length (taken before the limits, or under a
/// raised one): the fuzzy comparators, whose work grows with the product of the lengths,
/// only tell such values equal or not, so comparing a pair stays bounded work.
#[test]
fn values_beyond_the_fuzzy_bound_are_compared_for_equality_only() {
    use crate::identity::engine::{MAX_FUZZY_CHARS, edit_distance_within, jaro_winkler};
    let e = engine();
    let stored = |id: &str, given: &str| e.prepare_normalised("crm", id, 0, [("givenName".to_string(), given.to_string())].into());
    let name = |length: usize| -> String { "ab".chars().cycle().take(length).collect() };
    let typo = |length: usize| format!("{}x", name(length - 1));
    let given_level = |a: &str, b: &str| level(&e.compare(&stored("a", a), &stored("b", b)), "given-name").to_string();
    // up to the bound, one typo is a close match
    assert_eq!(given_level(&name(MAX_FUZZY_CHARS), &typo(MAX_FUZZY_CHARS)), "jaroWinkler>=0.92");
    for length in [MAX_FUZZY_CHARS + 1, 2_000, 200_000] {
        let (same, other) = (name(length), typo(length));
        assert_eq!(given_level(&same, &same), "exact", "{length}");
        assert_eq!(given_level(&same, &other), "else", "{length}");
        assert_eq!(jaro_winkler(&same, &other), 0.0);
        assert!(!edit_distance_within(&same, &other, 2, true) && !edit_distance_within(&same, &other, 2, false));
        assert!(edit_distance_within(&same, &same, 0, true));
    }
}
