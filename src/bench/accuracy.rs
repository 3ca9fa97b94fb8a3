//! `cdp bench accuracy`: pairwise precision, recall and F1 of the final profiles, records
//! streamed one at a time through the identity core, with the default model and with the
//! model `cdp train` makes of the same data (labels unused).

use std::path::{Path, PathBuf};

use crate::identity::eval::{self, AccuracyRow, LabelledRecord};
use crate::identity::{ModelError, TrainOptions, default_model};

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
}

type Loader = fn(&str) -> Result<Vec<LabelledRecord>, eval::LoadError>;

/// Every dataset, evaluated: the rows of the accuracy table.
pub fn run(args: &AccuracyArgs) -> Result<Vec<AccuracyRow>, AccuracyError> {
    let datasets: [(&str, &str, Loader); 3] = [
        ("febrl3", "febrl3.csv", eval::load_febrl),
        ("febrl2", "febrl2.csv", eval::load_febrl),
        ("pseudopeople-dev", "pseudopeople-dev.csv", eval::load_pseudopeople),
    ];
    let mut rows = Vec::new();
    for (name, file, load) in datasets {
        let data = read(&args.data.join(file), load)?;
        let (mut evaluated, _, _) = eval::evaluate(name, &data, &default_model(), &TrainOptions::default())?;
        rows.append(&mut evaluated);
    }
    Ok(rows)
}

fn read(path: &Path, load: Loader) -> Result<Vec<LabelledRecord>, AccuracyError> {
    let error = |message: String| AccuracyError::Data { path: path.to_path_buf(), message };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    load(&text).map_err(|e| error(e.to_string()))
}

/// The rows as a markdown table.
pub fn table(rows: &[AccuracyRow]) -> String {
    let mut out = String::from("| data | model | precision | recall | F1 | profiles | review items | records/s |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let r = &row.report;
        out.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.4} | {} | {} | {:.0} |\n",
            row.dataset, row.model, r.metrics.precision, r.metrics.recall, r.metrics.f1, r.profiles, r.review_items, r.records_per_second
        ));
    }
    out
}
