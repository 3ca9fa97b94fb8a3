//! `cdp bench accuracy`: pairwise precision, recall and F1 of the final profiles, with the
//! default model and with the model `cdp train` makes of the same data (labels unused). Each
//! dataset is streamed twice: one record at a time through the identity core alone, and one
//! record per HTTP request through intake, the matcher and the store, scored from the
//! profiles the store ends with (what a user gets).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BENCH_KEY, bench_source, open_scratch, payload, remove_sqlite};
use crate::runtime::ops::{self, Metrics, Secrets, StartError};
use crate::crd::SecretKeyRef;
use crate::crd::matching::MatchingModel;
use crate::crd::source::{InvalidValuePolicy, ValidationRules};
use crate::identity::eval::{self, AccuracyRow, LabelledRecord, PairwiseMetrics, pairwise};
use crate::identity::{ModelError, TrainOptions, default_model};
use crate::matcher::{Resolver, WorkerOptions, spawn_workers};
use crate::pipeline::{MatchingConfig, PipelineConfig};

#[derive(clap::Args, Clone, Debug)]
pub struct AccuracyArgs {
    /// Directory holding febrl2.csv, febrl3.csv and pseudopeople-dev.csv.
    #[arg(long, default_value = "benches/data")]
    pub data: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AccuracyError {
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("intake refused a record: {0}")]
    Intake(String),
}

/// One dataset and model streamed through intake, matcher and store.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreRow {
    pub dataset: String,
    pub model: String,
    pub records: usize,
    pub quarantined: i64,
    pub profiles: i64,
    pub open_reviews: i64,
    pub metrics: PairwiseMetrics,
    /// Records accepted and resolved per second, end to end (one request per record).
    pub records_per_second: f64,
}

type Loader = fn(&str) -> Result<Vec<LabelledRecord>, eval::LoadError>;

/// Every dataset, evaluated through the core and through the store.
pub async fn run(args: &AccuracyArgs) -> Result<(Vec<AccuracyRow>, Vec<StoreRow>), AccuracyError> {
    let datasets: [(&str, &str, Loader); 3] = [
        ("febrl3", "febrl3.csv", eval::load_febrl),
        ("febrl2", "febrl2.csv", eval::load_febrl),
        ("pseudopeople-dev", "pseudopeople-dev.csv", eval::load_pseudopeople),
    ];
    let (mut rows, mut stored) = (Vec::new(), Vec::new());
    for (name, file, load) in datasets {
        let data = read(&args.data.join(file), load)?;
        let default = default_model();
        let (mut evaluated, trained, _) = eval::evaluate(name, &data, &default, &TrainOptions::default())?;
        rows.append(&mut evaluated);
        for (model_name, model) in [("default", &default), ("trained", &trained)] {
            stored.push(through_store(name, model_name, &data, model).await?);
        }
    }
    Ok((rows, stored))
}

/// A platform with one source per source name in `data`, whose payload fields are the
/// canonical attribute names, matching with `model`.
fn dataset_config(data: &[LabelledRecord], model: &MatchingModel) -> PipelineConfig {
    let mut sources: BTreeMap<&str, (&str, std::collections::BTreeSet<&str>)> = BTreeMap::new();
    for r in data {
        let entry = sources.entry(&r.record.source).or_insert((&r.region, Default::default()));
        entry.1.extend(r.record.attributes.keys().map(String::as_str));
    }
    let sources = sources
        .into_iter()
        .map(|(name, (region, attributes))| {
            // the datasets corrupt some values on purpose (impossible dates): every record is
            // matched, on its valid values, as a Source that keeps invalid values does
            let validation = ValidationRules { on_invalid_value: InvalidValuePolicy::Keep, ..Default::default() };
            bench_source(name, attributes, region, 50, validation)
        })
        .collect();
    PipelineConfig {
        platform: "accuracy".into(),
        namespace: "default".into(),
        sources,
        matching: MatchingConfig { policy: None, model: model.clone() },
        feeds: Vec::new(),
        scaling: Vec::new(),
        enrichers: Vec::new(),
        api_tokens: None,
    }
}

/// Post `data` in order, one record per request, to intake on a fresh SQLite store while one
/// matcher worker resolves what arrives; score the profiles once the queue is empty.
async fn through_store(dataset: &str, model_name: &str, data: &[LabelledRecord], model: &MatchingModel) -> Result<StoreRow, AccuracyError> {
    let config = dataset_config(data, model);
    let (store, file) = open_scratch(None).await.map_err(StartError::from)?;
    let metrics = Metrics::new();
    let secrets = Secrets::Values([(SecretKeyRef { name: "bench".into(), key: "token".into() }, BENCH_KEY.to_string())].into());
    let ingest = crate::ingest::IngestState::new(&config, &secrets, store.clone(), metrics.clone())?;
    let (trigger, shutdown) = ops::shutdown_channel();
    let listener = ops::bind("127.0.0.1:0".parse().expect("addr")).await?;
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(ops::serve(listener, crate::ingest::router(ingest), shutdown.clone()));
    let resolver = Arc::new(Resolver::new(&config).map_err(StartError::from)?);
    let workers = spawn_workers(&store, resolver, metrics, 1, WorkerOptions::default(), &shutdown);

    let client = reqwest::Client::new();
    let started = Instant::now();
    for r in data {
        let response = client
            .post(format!("{url}/v1/sources/{}/records", r.record.source))
            .bearer_auth(BENCH_KEY)
            .json(&payload(&r.record))
            .send()
            .await
            .map_err(|e| AccuracyError::Intake(e.to_string()))?;
        // a 422 is a finding (the record is quarantined and counted), anything else an error
        let status = response.status();
        if status != reqwest::StatusCode::ACCEPTED && status != reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            return Err(AccuracyError::Intake(format!("{status}: {}", response.text().await.unwrap_or_default())));
        }
    }
    while store.counts_queued().await.map_err(StartError::from)? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    trigger.trigger();
    for w in workers {
        let _ = w.await;
    }
    let index: HashMap<(&str, &str), usize> =
        data.iter().enumerate().map(|(i, r)| ((r.record.source.as_str(), r.record.source_record_id.as_str()), i)).collect();
    let clusters: Vec<Vec<usize>> = store
        .clusters()
        .await
        .map_err(StartError::from)?
        .iter()
        .map(|c| c.iter().filter_map(|(s, id)| index.get(&(s.as_str(), id.as_str())).copied()).collect())
        .collect();
    let entities: Vec<&str> = data.iter().map(|r| r.entity.as_str()).collect();
    let counts = store.counts().await.map_err(StartError::from)?;
    store.close().await;
    remove_sqlite(file);
    Ok(StoreRow {
        dataset: dataset.into(),
        model: model_name.into(),
        records: data.len(),
        quarantined: counts.quarantined,
        profiles: counts.profiles,
        open_reviews: counts.open_reviews,
        metrics: pairwise(&entities, &clusters),
        records_per_second: data.len() as f64 / seconds,
    })
}

fn read(path: &Path, load: Loader) -> Result<Vec<LabelledRecord>, AccuracyError> {
    let error = |message: String| AccuracyError::Data { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    load(&text).map_err(|e| error(e.to_string()))
}

/// The rows as markdown tables.
pub fn table(rows: &[AccuracyRow], stored: &[StoreRow]) -> String {
    let mut out = String::from("Through the identity core alone:\n\n| data | model | precision | recall | F1 | profiles | review items | records/s |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let r = &row.report;
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {} | {} | {:.0} |\n",
            row.dataset, row.model, r.metrics.precision, r.metrics.recall, r.metrics.f1, r.profiles, r.review_items, r.records_per_second
        ));
    }
    out.push_str("\nThrough intake (one HTTP request per record), matcher and SQLite store, scored from the stored profiles:\n\n| data | model | precision | recall | F1 | profiles | review items | quarantined | records/s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in stored {
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {} | {} | {} | {:.0} |\n",
            r.dataset, r.model, r.metrics.precision, r.metrics.recall, r.metrics.f1, r.profiles, r.open_reviews, r.quarantined, r.records_per_second
        ));
    }
    out
}
