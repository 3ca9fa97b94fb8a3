//! `cdp train`: estimate m, u and λ by EM from the records in the store (or a file), and print
//! a MatchingPolicy the user can review and apply.

use std::path::PathBuf;

use serde_json::json;

use crate::runtime::ops::StartError;
use crate::crd::matching::MatchingModel;
use crate::identity::eval::{self, LabelledRecord};
use crate::identity::{Engine, PreparedRecord, TrainOptions, default_model, train_with};
use crate::store::Store;

#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Train on a file instead of the store.
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub store: crate::local::StoreArgs,
    /// Layout of `--input`.
    #[arg(long, value_enum, default_value = "canonical")]
    pub format: InputFormat,
    /// Default phone region for `--input` records without one.
    #[arg(long, default_value = "FR")]
    pub region: String,
    /// Start from this MatchingPolicy (YAML) instead of the built-in default model.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Name of the printed MatchingPolicy and of the platform it targets.
    #[arg(long, default_value = "trained")]
    pub name: String,
    #[arg(long, default_value = "default-platform")]
    pub platform: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum InputFormat {
    /// CSV whose columns are canonical attribute names (plus `source`, `sourceRecordId`).
    Canonical,
    Febrl,
    Pseudopeople,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("nothing to train on: the store holds no resolved records")]
    Empty,
}

pub async fn run(args: TrainArgs) -> Result<(), TrainError> {
    let base = match &args.policy {
        Some(path) => read_policy(path)?,
        None => default_model(),
    };
    let engine = Engine::new(&base).map_err(StartError::from)?;
    let records = match &args.input {
        Some(path) => {
            let input = |message: String| TrainError::Input { path: path.clone(), message };
            let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
            let data = match args.format {
                InputFormat::Canonical => eval::load_canonical(&text, &args.region),
                InputFormat::Febrl => eval::load_febrl(&text),
                InputFormat::Pseudopeople => eval::load_pseudopeople(&text),
            }
            .map_err(|e| input(e.to_string()))?;
            prepare(&engine, &data)
        }
        None => stored_records(&engine, &args.store).await?,
    };
    if records.is_empty() {
        return Err(TrainError::Empty);
    }
    let trained = train_with(&records, &base, &TrainOptions::default()).map_err(StartError::from)?;
    eprintln!(
        "trained on {} records: λ = {:.2e}, {} never-merge constraint(s) checked",
        trained.report.records,
        trained.report.prior_match_probability,
        trained.report.never_merge.len()
    );
    let mut spec = serde_json::to_value(&trained.model).expect("a model serialises");
    spec["platformRef"] = json!({"name": args.platform});
    let policy = json!({
        "apiVersion": "cdp.dev/v1alpha1",
        "kind": "MatchingPolicy",
        "metadata": {"name": args.name},
        "spec": spec,
    });
    print!("{}", serde_saphyr::to_string(&policy).expect("a policy serialises"));
    Ok(())
}

fn read_policy(path: &PathBuf) -> Result<MatchingModel, TrainError> {
    let input = |message: String| TrainError::Input { path: path.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
    let doc: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| input(e.to_string()))?;
    serde_json::from_value(doc["spec"].clone()).map_err(|e| input(format!("not a MatchingPolicy: {e}")))
}

fn prepare(engine: &Engine, data: &[LabelledRecord]) -> Vec<PreparedRecord> {
    eval::prepare_all(engine, data)
}

/// Every resolved record, rebuilt from its stored normalised values.
async fn stored_records(engine: &Engine, store: &crate::local::StoreArgs) -> Result<Vec<PreparedRecord>, TrainError> {
    let store = Store::open(&store.url()?).await.map_err(StartError::from)?;
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let page = store.records_page(after, 5_000).await.map_err(StartError::from)?;
        let Some(last) = page.last() else { break };
        after = last.id;
        records.extend(page.iter().map(|r| {
            engine.prepare_normalised(&r.source, &r.source_record_id, r.observed_at_ms, r.normalised.clone())
        }));
    }
    store.close().await;
    Ok(records)
}
