//! `cdp import --source NAME FILE`: a CSV or NDJSON file through the same mapping, validation,
//! quarantine and idempotency as HTTP intake, straight into the store.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Admitter;
use super::mapping::{Received, row_to_json};
use crate::runtime::ops::StartError;
use crate::local::{PlatformArgs, StoreArgs};
use crate::pipeline::PipelineConfig;
use crate::store::{Admission, Store, StoreError};

#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// The Source the file comes from (its mapping and validation apply).
    #[arg(long)]
    pub source: String,
    /// CSV (with a header row; `a.b` columns become nested fields) or NDJSON.
    pub file: PathBuf,
    /// File format; by default from the extension (.csv, else NDJSON).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Ndjson,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("unknown source {0:?} in this platform")]
    UnknownSource(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path} line {line}: not JSON: {source}")]
    Json { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ImportError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownSource(_) => "UnknownSource",
            Self::Read { .. } => "Read",
            Self::Csv { .. } | Self::Json { .. } => "Format",
            Self::Store(_) => "Store",
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// Records of erased people the Source may not send again: not stored.
    pub refused: usize,
    /// Records whose id the Source delivered before with other content: not stored, the
    /// first delivery stands.
    pub conflicts: usize,
    /// `field: code` → how many records failed that way (or, marked kept, carried an invalid
    /// value the Source keeps).
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "accepted:   {}", self.accepted)?;
        writeln!(f, "duplicates: {}", self.duplicates)?;
        writeln!(f, "refused:    {} (erased people, not stored)", self.refused)?;
        writeln!(f, "conflicts:  {} (id delivered before with other content, not stored)", self.conflicts)?;
        write!(f, "rejected:   {} (kept in quarantine)", self.rejected)?;
        for (reason, n) in &self.reasons {
            write!(f, "\n  {n:>8}  {reason}")?;
        }
        Ok(())
    }
}

const CHUNK: usize = 1000;

/// Import `path` for `source`; `progress(records, bytes_read, bytes_total)` after each chunk.
pub async fn import_file(
    store: &Store,
    config: &PipelineConfig,
    source: &str,
    path: &Path,
    format: Format,
    mut progress: impl FnMut(usize, u64, u64),
) -> Result<ImportSummary, ImportError> {
    let named = config.source(source).ok_or_else(|| ImportError::UnknownSource(source.into()))?;
    let admitter = Admitter::new(config, store.clone());
    let read_err = |source| ImportError::Read { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map_err(read_err)?.len();
    let counter = CountingReader { inner: file, read: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)) };
    let read = counter.read.clone();
    let mut rows: Box<dyn Iterator<Item = Result<Value, ImportError>>> = match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(counter);
            let csv_err = |source| ImportError::Csv { path: path.into(), source };
            let headers: Vec<String> = reader.headers().map_err(csv_err)?.iter().map(str::to_string).collect();
            let path = path.to_path_buf();
            Box::new(reader.into_records().map(move |row| {
                row.map(|r| row_to_json(&headers, &r)).map_err(|source| ImportError::Csv { path: path.clone(), source })
            }))
        }
        Format::Ndjson => {
            let path = path.to_path_buf();
            Box::new(
                BufReader::new(counter)
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                    .map(move |(i, line)| {
                        let line = line.map_err(|source| ImportError::Read { path: path.clone(), source })?;
                        serde_json::from_str(&line).map_err(|source| ImportError::Json { path: path.clone(), line: i + 1, source })
                    }),
            )
        }
    };
    let mut summary = ImportSummary::default();
    let mut done = 0usize;
    loop {
        let chunk: Vec<Value> = rows.by_ref().take(CHUNK).collect::<Result<_, _>>()?;
        if chunk.is_empty() {
            break;
        }
        let now = crate::store::now_ms();
        let size = chunk.len();
        let received: Vec<Received> = chunk.into_iter().map(Received::from).collect();
        for (admission, notes) in admitter.admit(named, &received, now).await? {
            match admission {
                Admission::Queued(e) => {
                    if e.duplicate {
                        summary.duplicates += 1;
                    } else {
                        summary.accepted += 1;
                    }
                    for w in notes {
                        *summary.reasons.entry(format!("{}: {} (kept)", w.field, w.code)).or_default() += 1;
                    }
                }
                Admission::Quarantined(_) => {
                    summary.rejected += 1;
                    for e in notes {
                        *summary.reasons.entry(format!("{}: {}", e.field, e.code)).or_default() += 1;
                    }
                }
                Admission::Refused(_) => summary.refused += 1,
                Admission::Conflict(_) => summary.conflicts += 1,
            }
        }
        done += size;
        progress(done, read.load(std::sync::atomic::Ordering::Relaxed), total);
    }
    Ok(summary)
}

struct CountingReader<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// A progress bar on stderr when it is a terminal: `(items, done, total)`, items counted in
/// `unit` (`records`, `profiles`); it ends its line when `done` reaches `total`.
pub fn progress_bar(label: String, unit: &'static str) -> impl FnMut(usize, u64, u64) {
    let tty = std::io::stderr().is_terminal();
    move |records, read, total| {
        if !tty {
            return;
        }
        let fraction = if total == 0 { 1.0 } else { (read as f64 / total as f64).min(1.0) };
        let filled = (fraction * 30.0) as usize;
        eprint!("\r{label} [{}{}] {:>3.0}% {records} {unit}", "#".repeat(filled), " ".repeat(30 - filled), fraction * 100.0);
        let _ = std::io::stderr().flush();
        if fraction >= 1.0 {
            eprintln!();
        }
    }
}

/// `cdp import`: prints the summary on stdout.
pub async fn run(args: ImportArgs) -> Result<ImportSummary, StartError> {
    let platform = args.platform.load()?;
    let store = Store::open(&args.store.url()?).await?;
    let format = args.format.unwrap_or_else(|| Format::of(&args.file));
    let label = args.file.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let summary = import_file(&store, &platform.config, &args.source, &args.file, format, progress_bar(label, "records"))
        .await?;
    store.close().await;
    println!("{summary}");
    if summary.accepted > 0 {
        println!(
            "\nThe accepted records are queued: the matcher resolves them into profiles (`cdp local` on \
             this store runs it; in a cluster, the platform's matcher). Progress: the backlog in \
             GET /v1/load, or the cdp_intake_queued metric."
        );
    }
    Ok(summary)
}
