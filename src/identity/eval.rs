//! Accuracy evaluation: dataset loaders (with ground truth) and pairwise metrics computed from
//! the final clusters of a streaming run. `cdp bench accuracy` is a thin wrapper over this.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::crd::matching::MatchingModel;
use crate::identity::engine::{Engine, ModelError, PreparedRecord};
use crate::identity::record::CanonicalRecord;
use crate::identity::stream::{StreamMatcher, StreamStats};
use crate::identity::train::{TrainOptions, TrainReport, train_with};

/// A record with its ground-truth entity and its source's default phone region.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledRecord {
    pub record: CanonicalRecord,
    pub entity: String,
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("missing column {0:?}")]
    Column(String),
}

struct Header(HashMap<String, usize>);
impl Header {
    fn new(r: &csv::StringRecord) -> Self {
        Header(
            r.iter()
                .enumerate()
                .map(|(i, h)| (h.to_string(), i))
                .collect(),
        )
    }
    fn col(&self, name: &str) -> Result<usize, LoadError> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| LoadError::Column(name.into()))
    }
}

fn reader(text: &str) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes())
}

fn join_nonempty(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn put(attrs: &mut std::collections::BTreeMap<String, String>, k: &str, v: &str) {
    let v = v.trim();
    if !v.is_empty() {
        attrs.insert(k.to_string(), v.to_string());
    }
}

/// FEBRL layout (`record_id, entity_id, given_name, surname, street_number, address_1,
/// address_2, suburb, postcode, state, date_of_birth, soc_sec_id`); Australian phone region.
pub fn load_febrl(text: &str) -> Result<Vec<LabelledRecord>, LoadError> {
    let mut rd = reader(text);
    let h = Header::new(rd.headers()?);
    let c = |n: &str| h.col(n);
    let (rid, eid, gn, sn, num, a1, a2, sub, pc, st, dob, ssn) = (
        c("record_id")?,
        c("entity_id")?,
        c("given_name")?,
        c("surname")?,
        c("street_number")?,
        c("address_1")?,
        c("address_2")?,
        c("suburb")?,
        c("postcode")?,
        c("state")?,
        c("date_of_birth")?,
        c("soc_sec_id")?,
    );
    let mut out = Vec::new();
    for (i, row) in rd.records().enumerate() {
        let row = row?;
        let mut a = std::collections::BTreeMap::new();
        put(&mut a, "givenName", &row[gn]);
        put(&mut a, "familyName", &row[sn]);
        put(&mut a, "street", &join_nonempty(&[&row[num], &row[a1]]));
        put(&mut a, "attributes.addressLine2", &row[a2]);
        put(&mut a, "city", &row[sub]);
        put(&mut a, "postcode", &row[pc]);
        put(&mut a, "attributes.state", &row[st]);
        put(&mut a, "birthDate", &row[dob]);
        put(&mut a, "nationalId", &row[ssn]);
        out.push(LabelledRecord {
            record: CanonicalRecord {
                source: "febrl".into(),
                source_record_id: row[rid].to_string(),
                observed_at_ms: i as i64,
                attributes: a,
            },
            entity: row[eid].to_string(),
            region: "AU".into(),
        });
    }
    Ok(out)
}

/// pseudopeople layout (`record_id, entity_id, source, first_name, middle_initial, last_name,
/// date_of_birth, street_number, street_name, unit_number, city, state, zipcode, ssn, sex,
/// phone`); US phone region.
pub fn load_pseudopeople(text: &str) -> Result<Vec<LabelledRecord>, LoadError> {
    let mut rd = reader(text);
    let h = Header::new(rd.headers()?);
    let c = |n: &str| h.col(n);
    let (rid, eid, src, fname, mi, lname, dob, num, sname, unit, city, st, zip, ssn, sex, phone) = (
        c("record_id")?,
        c("entity_id")?,
        c("source")?,
        c("first_name")?,
        c("middle_initial")?,
        c("last_name")?,
        c("date_of_birth")?,
        c("street_number")?,
        c("street_name")?,
        c("unit_number")?,
        c("city")?,
        c("state")?,
        c("zipcode")?,
        c("ssn")?,
        c("sex")?,
        c("phone")?,
    );
    let mut out = Vec::new();
    for (i, row) in rd.records().enumerate() {
        let row = row?;
        let mut a = std::collections::BTreeMap::new();
        put(&mut a, "givenName", &row[fname]);
        put(&mut a, "middleName", &row[mi]);
        put(&mut a, "familyName", &row[lname]);
        put(&mut a, "birthDate", &row[dob]);
        put(
            &mut a,
            "street",
            &join_nonempty(&[&row[num], &row[sname], &row[unit]]),
        );
        put(&mut a, "city", &row[city]);
        put(&mut a, "attributes.state", &row[st]);
        put(&mut a, "postcode", &row[zip]);
        put(&mut a, "nationalId", &row[ssn]);
        put(&mut a, "gender", &row[sex]);
        put(&mut a, "phone", &row[phone]);
        out.push(LabelledRecord {
            record: CanonicalRecord {
                source: row[src].to_string(),
                source_record_id: row[rid].to_string(),
                observed_at_ms: i as i64,
                attributes: a,
            },
            entity: row[eid].to_string(),
            region: "US".into(),
        });
    }
    Ok(out)
}

/// Canonical layout: columns named by canonical attributes (`givenName`, `email`,
/// `identifiers.crmId`, ...) plus `entity_id`, and optionally `source`, `record_id` and
/// `region`. Unknown columns are ignored.
pub fn load_canonical(text: &str, default_region: &str) -> Result<Vec<LabelledRecord>, LoadError> {
    let mut rd = reader(text);
    let headers = rd.headers()?.clone();
    let h = Header::new(&headers);
    let eid = h.col("entity_id")?;
    let src = h.col("source").ok();
    let rid = h.col("record_id").ok();
    let reg = h.col("region").ok();
    let attrs: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(_, n)| crate::identity::record::is_known_attribute(n))
        .map(|(i, n)| (i, n.to_string()))
        .collect();
    let mut out = Vec::new();
    for (i, row) in rd.records().enumerate() {
        let row = row?;
        let mut a = std::collections::BTreeMap::new();
        for (c, n) in &attrs {
            put(&mut a, n, &row[*c]);
        }
        out.push(LabelledRecord {
            record: CanonicalRecord {
                source: src
                    .map(|c| row[c].to_string())
                    .unwrap_or_else(|| "csv".into()),
                source_record_id: rid
                    .map(|c| row[c].to_string())
                    .unwrap_or_else(|| i.to_string()),
                observed_at_ms: i as i64,
                attributes: a,
            },
            entity: row[eid].to_string(),
            region: reg
                .map(|c| row[c].to_string())
                .unwrap_or_else(|| default_region.to_string()),
        });
    }
    Ok(out)
}

/// Pairwise precision / recall / F1 of a clustering against the truth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairwiseMetrics {
    pub true_pairs: u64,
    pub predicted_pairs: u64,
    pub true_positives: u64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

fn c2(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// `entities[i]` is record i's true entity; `clusters` lists record indices.
pub fn pairwise(entities: &[&str], clusters: &[Vec<usize>]) -> PairwiseMetrics {
    let mut per_entity: HashMap<&str, u64> = HashMap::new();
    for e in entities {
        *per_entity.entry(e).or_default() += 1;
    }
    let true_pairs: u64 = per_entity.values().map(|&n| c2(n)).sum();
    let mut predicted_pairs = 0;
    let mut tp = 0;
    for c in clusters {
        predicted_pairs += c2(c.len() as u64);
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for &i in c {
            *counts.entry(entities[i]).or_default() += 1;
        }
        tp += counts.values().map(|&n| c2(n)).sum::<u64>();
    }
    let precision = if predicted_pairs == 0 {
        1.0
    } else {
        tp as f64 / predicted_pairs as f64
    };
    let recall = if true_pairs == 0 {
        1.0
    } else {
        tp as f64 / true_pairs as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    PairwiseMetrics {
        true_pairs,
        predicted_pairs,
        true_positives: tp,
        precision,
        recall,
        f1,
    }
}

/// One streaming run's outcome.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamReport {
    pub records: usize,
    pub profiles: usize,
    pub metrics: PairwiseMetrics,
    /// Records resolved per second (prepare + block + resolve + golden), this process.
    pub records_per_second: f64,
    pub seconds: f64,
    pub merges: usize,
    pub review_items: usize,
    pub mean_candidate_profiles: f64,
    pub mean_compared_records: f64,
}

/// Prepare every record with the engine (in input order).
pub fn prepare_all(engine: &Engine, data: &[LabelledRecord]) -> Vec<PreparedRecord> {
    data.iter()
        .map(|l| engine.prepare(&l.record, &l.region))
        .collect()
}

/// Stream the records one at a time, in input order, through a fresh in-memory matcher and
/// score the final profiles.
pub fn stream_eval(engine: &Engine, data: &[LabelledRecord]) -> StreamReport {
    let start = Instant::now();
    let mut m = StreamMatcher::new(engine);
    for (i, l) in data.iter().enumerate() {
        let p = engine.prepare(&l.record, &l.region);
        m.push(p, i);
    }
    let seconds = start.elapsed().as_secs_f64();
    let clusters = m.clusters();
    let entities: Vec<&str> = data.iter().map(|l| l.entity.as_str()).collect();
    let StreamStats {
        records,
        merges,
        review_items,
        candidate_profiles,
        compared_records,
        ..
    } = m.stats;
    StreamReport {
        records,
        profiles: clusters.len(),
        metrics: pairwise(&entities, &clusters),
        records_per_second: records as f64 / seconds.max(1e-9),
        seconds,
        merges,
        review_items,
        mean_candidate_profiles: candidate_profiles as f64 / records.max(1) as f64,
        mean_compared_records: compared_records as f64 / records.max(1) as f64,
    }
}

/// Train a model on the dataset (labels unused) and report on both.
pub fn train_on(
    base: &MatchingModel,
    data: &[LabelledRecord],
    opts: &TrainOptions,
) -> Result<(MatchingModel, TrainReport), ModelError> {
    let engine = Engine::new(base)?;
    let prepared = prepare_all(&engine, data);
    let t = train_with(&prepared, base, opts)?;
    Ok((t.model, t.report))
}

/// One line of the accuracy table.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccuracyRow {
    pub dataset: String,
    /// `default` (the model given) or `trained` (what `train` made of it on this data).
    pub model: String,
    pub report: StreamReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
}

/// Stream the dataset with `base`, train on it (labels unused), stream again with the trained
/// model. Returns both rows and the trained model (to print as a MatchingPolicy).
pub fn evaluate(
    dataset: &str,
    data: &[LabelledRecord],
    base: &MatchingModel,
    opts: &TrainOptions,
) -> Result<(Vec<AccuracyRow>, MatchingModel, TrainReport), ModelError> {
    let engine = Engine::new(base)?;
    let default = stream_eval(&engine, data);
    let start = Instant::now();
    let (trained, report) = train_on(base, data, opts)?;
    let train_seconds = start.elapsed().as_secs_f64();
    let trained_report = stream_eval(&Engine::new(&trained)?, data);
    Ok((
        vec![
            AccuracyRow {
                dataset: dataset.into(),
                model: "default".into(),
                report: default,
                train_seconds: None,
            },
            AccuracyRow {
                dataset: dataset.into(),
                model: "trained".into(),
                report: trained_report,
                train_seconds: Some(train_seconds),
            },
        ],
        trained,
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_metrics() {
        // truth: {0,1,2} {3,4}; predicted: {0,1} {2,3} {4}
        let ents = ["a", "a", "a", "b", "b"];
        let m = pairwise(&ents, &[vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(
            (m.true_pairs, m.predicted_pairs, m.true_positives),
            (4, 2, 1)
        );
        assert!((m.precision - 0.5).abs() < 1e-12);
        assert!((m.recall - 0.25).abs() < 1e-12);
        assert!((m.f1 - 2.0 * 0.5 * 0.25 / 0.75).abs() < 1e-12);
        let perfect = pairwise(&ents, &[vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(perfect.f1, 1.0);
    }

    #[test]
    fn loaders_map_columns_to_canonical_attributes() {
        let febrl = "record_id,entity_id,given_name,surname,street_number,address_1,address_2,suburb,postcode,state,date_of_birth,soc_sec_id\n\
                     rec-1-org,1,mitchell,green,7,wallaby place,delmar,cleveland,2119,sa,19560409,1804974\n";
        let r = &load_febrl(febrl).unwrap()[0];
        assert_eq!(r.entity, "1");
        assert_eq!(r.record.attributes["street"], "7 wallaby place");
        assert_eq!(r.record.attributes["nationalId"], "1804974");
        assert!(!r.record.attributes.contains_key("email"));
        let pp = "record_id,entity_id,source,first_name,middle_initial,last_name,date_of_birth,street_number,street_name,unit_number,city,state,zipcode,ssn,sex,phone\n\
                  d1,0_1,census_2020,Eliot,J,Sherman,1981-07-19,\"108,110\",hickory mdws ct,,Anytown,WA,00000,,Male,\n";
        let r = &load_pseudopeople(pp).unwrap()[0];
        assert_eq!(r.record.source, "census_2020");
        assert_eq!(r.record.attributes["street"], "108,110 hickory mdws ct");
        assert_eq!(r.record.attributes["postcode"], "00000");
        assert!(!r.record.attributes.contains_key("nationalId"));
        let canon = "entity_id,givenName,email,shoe\nx,Ann,ann@x.org,42\n";
        let r = &load_canonical(canon, "FR").unwrap()[0];
        assert_eq!(r.record.attributes.len(), 2);
        assert!(load_febrl("a,b\n1,2\n").is_err());
    }
}
