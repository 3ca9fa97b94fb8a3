//! The model used when a platform declares no MatchingPolicy.
//!
//! The m and u values are priors, not fitted to any data set: u is roughly how often two
//! different people agree at that level (1/number of plausible distinct values), m how often the
//! same person's two records do (data-entry error rates of a few percent per field, people who
//! move or change their email). `cdp train` replaces them with estimates from the store.

use std::collections::BTreeMap;

use crate::crd::matching::{
    BlockingKey, Comparator, Comparison, ComparisonLevel, DeterministicRule, KeyPart, KeyTransform,
    MatchingModel, NeverMerge, NormaliseOptions, Probabilities, Survivorship, SurvivorshipRule,
    Thresholds,
};

fn key(name: &str, parts: &[(&str, KeyTransform)]) -> BlockingKey {
    BlockingKey {
        name: name.into(),
        parts: parts
            .iter()
            .map(|(a, t)| KeyPart {
                attribute: (*a).into(),
                transform: *t,
            })
            .collect(),
    }
}

fn lvl(comparator: Comparator, threshold: Option<f64>, m: f64, u: f64) -> ComparisonLevel {
    ComparisonLevel {
        comparator,
        threshold,
        m,
        u,
    }
}

fn cmp(
    name: &str,
    attribute: &str,
    swapped_with: Option<&str>,
    levels: Vec<ComparisonLevel>,
) -> Comparison {
    // else level: what the listed levels leave over
    let m = (1.0 - levels.iter().map(|l| l.m).sum::<f64>()).max(0.001);
    let u = (1.0 - levels.iter().map(|l| l.u).sum::<f64>()).max(0.001);
    Comparison {
        name: name.into(),
        attribute: attribute.into(),
        swapped_with: swapped_with.map(Into::into),
        levels,
        else_level: Probabilities { m, u },
        term_frequency_adjustments: false,
    }
}

/// Common given-name short forms (English and French), nickname → canonical form.
pub const NICKNAMES: &[(&str, &str)] = &[
    ("abby", "abigail"),
    ("al", "albert"),
    ("alex", "alexander"),
    ("andy", "andrew"),
    ("drew", "andrew"),
    ("tony", "anthony"),
    ("barb", "barbara"),
    ("ben", "benjamin"),
    ("bill", "william"),
    ("billy", "william"),
    ("will", "william"),
    ("willy", "william"),
    ("liam", "william"),
    ("bob", "robert"),
    ("bobby", "robert"),
    ("rob", "robert"),
    ("robbie", "robert"),
    ("bert", "robert"),
    ("cathy", "catherine"),
    ("kate", "catherine"),
    ("katie", "catherine"),
    ("kathy", "katherine"),
    ("chris", "christopher"),
    ("chuck", "charles"),
    ("charlie", "charles"),
    ("dan", "daniel"),
    ("danny", "daniel"),
    ("dave", "david"),
    ("deb", "deborah"),
    ("debbie", "deborah"),
    ("dick", "richard"),
    ("rick", "richard"),
    ("rich", "richard"),
    ("ricky", "richard"),
    ("don", "donald"),
    ("ed", "edward"),
    ("eddie", "edward"),
    ("ted", "edward"),
    ("ned", "edward"),
    ("liz", "elizabeth"),
    ("beth", "elizabeth"),
    ("betty", "elizabeth"),
    ("lisa", "elizabeth"),
    ("eliza", "elizabeth"),
    ("frank", "francis"),
    ("fred", "frederick"),
    ("gabe", "gabriel"),
    ("greg", "gregory"),
    ("hank", "henry"),
    ("harry", "henry"),
    ("jack", "john"),
    ("johnny", "john"),
    ("jim", "james"),
    ("jimmy", "james"),
    ("jamie", "james"),
    ("jeff", "jeffrey"),
    ("jen", "jennifer"),
    ("jenny", "jennifer"),
    ("jerry", "gerald"),
    ("joe", "joseph"),
    ("joey", "joseph"),
    ("josh", "joshua"),
    ("kim", "kimberly"),
    ("larry", "lawrence"),
    ("len", "leonard"),
    ("lenny", "leonard"),
    ("maggie", "margaret"),
    ("peggy", "margaret"),
    ("meg", "margaret"),
    ("marge", "margaret"),
    ("matt", "matthew"),
    ("mike", "michael"),
    ("mikey", "michael"),
    ("mick", "michael"),
    ("nate", "nathan"),
    ("nick", "nicholas"),
    ("pat", "patricia"),
    ("patty", "patricia"),
    ("trish", "patricia"),
    ("pete", "peter"),
    ("phil", "phillip"),
    ("philip", "phillip"),
    ("ray", "raymond"),
    ("ron", "ronald"),
    ("ronnie", "ronald"),
    ("sam", "samuel"),
    ("sammy", "samuel"),
    ("steve", "stephen"),
    ("steven", "stephen"),
    ("stan", "stanley"),
    ("sue", "susan"),
    ("susie", "susan"),
    ("tom", "thomas"),
    ("tommy", "thomas"),
    ("tim", "timothy"),
    ("vicky", "victoria"),
    ("walt", "walter"),
    ("zach", "zachary"),
    ("jon", "jonathan"),
    ("nathaniel", "nathan"),
    ("cindy", "cynthia"),
    ("becky", "rebecca"),
    ("sandy", "sandra"),
    ("mandy", "amanda"),
    ("manny", "emmanuel"),
    ("manu", "emmanuel"),
    ("val", "valerie"),
    ("jo", "josephine"),
    ("max", "maximilian"),
    ("nico", "nicolas"),
    ("seb", "sebastien"),
    ("fanny", "stephanie"),
    ("steph", "stephanie"),
    ("christophe", "christopher"),
    ("isa", "isabelle"),
    ("babette", "elizabeth"),
    ("jb", "jean baptiste"),
    ("jp", "jean pierre"),
];

/// Name-like attributes, compared with exact / nickname / Jaro-Winkler levels.
fn name_levels(exact_u: f64) -> Vec<ComparisonLevel> {
    vec![
        lvl(Comparator::Exact, None, 0.88, exact_u),
        lvl(Comparator::Nickname, None, 0.02, exact_u / 10.0),
        lvl(Comparator::JaroWinkler, Some(0.92), 0.05, exact_u),
        lvl(Comparator::JaroWinkler, Some(0.80), 0.025, 0.03),
    ]
}

/// A general-purpose model for person records: any attribute a record lacks is simply not
/// compared (it neither helps nor hurts).
pub fn default_model() -> MatchingModel {
    use KeyTransform::*;
    let blocking = vec![
        key("email", &[("email", Exact)]),
        key("phone", &[("phone", Exact)]),
        key("national-id", &[("nationalId", Exact)]),
        key(
            "family-dob",
            &[("familyName", Phonetic), ("birthDate", Exact)],
        ),
        key(
            "given-dob",
            &[("givenName", Phonetic), ("birthDate", Exact)],
        ),
        key(
            "family-postcode",
            &[("familyName", Phonetic), ("postcode", Exact)],
        ),
        key("full-name", &[("fullName", SortedTokens)]),
        key("given-street", &[("givenName", Prefix3), ("street", Exact)]),
        key("dob-postcode", &[("birthDate", Exact), ("postcode", Exact)]),
    ];
    // names are weighed by how common they are: a shared "Smith" says far less than a shared
    // "Oyelaran", and one average u cannot say both
    let by_frequency = |c: Comparison| Comparison {
        term_frequency_adjustments: true,
        ..c
    };
    let comparisons = vec![
        by_frequency(cmp(
            "given-name",
            "givenName",
            Some("familyName"),
            name_levels(0.01),
        )),
        by_frequency(cmp(
            "family-name",
            "familyName",
            Some("givenName"),
            name_levels(0.003),
        )),
        cmp(
            "middle-name",
            "middleName",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.85, 0.05),
                lvl(Comparator::JaroWinkler, Some(0.88), 0.05, 0.01),
            ],
        ),
        cmp(
            "email",
            "email",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.75, 1e-5),
                lvl(Comparator::DamerauLevenshtein, Some(2.0), 0.05, 1e-4),
            ],
        ),
        cmp(
            "phone",
            "phone",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.75, 1e-5),
                lvl(Comparator::DamerauLevenshtein, Some(1.0), 0.05, 1e-4),
            ],
        ),
        cmp(
            "birth-date",
            "birthDate",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.88, 1e-4),
                lvl(Comparator::DamerauLevenshtein, Some(1.0), 0.06, 2e-3),
                lvl(Comparator::DateSwappedDayMonth, None, 0.01, 1e-4),
                lvl(Comparator::DateWithinDays, Some(366.0), 0.02, 0.02),
            ],
        ),
        cmp(
            "street",
            "street",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.7, 1e-3),
                lvl(Comparator::JaroWinkler, Some(0.9), 0.1, 5e-3),
            ],
        ),
        cmp(
            "postcode",
            "postcode",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.75, 0.01),
                lvl(Comparator::DamerauLevenshtein, Some(1.0), 0.05, 0.03),
            ],
        ),
        cmp(
            "city",
            "city",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.8, 0.05),
                lvl(Comparator::JaroWinkler, Some(0.9), 0.05, 0.01),
            ],
        ),
        cmp(
            "national-id",
            "nationalId",
            None,
            vec![
                lvl(Comparator::Exact, None, 0.9, 1e-6),
                lvl(Comparator::DamerauLevenshtein, Some(1.0), 0.06, 1e-5),
            ],
        ),
    ];
    MatchingModel {
        normalise: NormaliseOptions {
            email_provider_rules: vec![],
            nicknames: NICKNAMES
                .iter()
                .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
                .collect(),
        },
        blocking,
        comparisons,
        rules: vec![
            DeterministicRule {
                name: "email-given-name".into(),
                all_equal: vec!["email".into(), "givenName".into()],
            },
            DeterministicRule {
                name: "national-id-birth-date".into(),
                all_equal: vec!["nationalId".into(), "birthDate".into()],
            },
        ],
        // A clearly different given name is a different person, however much else two
        // records share: household members share a surname, an address, a phone and often an
        // email, and those agreements must not outvote the one attribute that tells them apart.
        never_merge: vec![
            NeverMerge {
                attribute: "nationalId".into(),
            },
            NeverMerge {
                attribute: "birthDate".into(),
            },
            NeverMerge {
                attribute: "givenName".into(),
            },
        ],
        prior_match_probability: 1e-4,
        max_block_size: crate::crd::matching::DEFAULT_MAX_BLOCK_SIZE,
        max_candidates: crate::crd::matching::DEFAULT_MAX_CANDIDATES,
        thresholds: Thresholds {
            merge: 0.95,
            review: 0.5,
        },
        survivorship: Survivorship {
            default: SurvivorshipRule::TrustRank,
            attributes: BTreeMap::from([
                ("email".to_string(), SurvivorshipRule::MostRecent),
                ("phone".to_string(), SurvivorshipRule::MostRecent),
                ("street".to_string(), SurvivorshipRule::MostRecent),
                ("postcode".to_string(), SurvivorshipRule::MostRecent),
                ("city".to_string(), SurvivorshipRule::MostRecent),
                ("middleName".to_string(), SurvivorshipRule::MostComplete),
                ("birthDate".to_string(), SurvivorshipRule::MostFrequent),
            ]),
        },
    }
}
