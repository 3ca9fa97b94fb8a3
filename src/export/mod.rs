//! `cdp export`: every golden profile (and optionally its records and consents) to NDJSON or
//! Parquet, straight from the store, a page at a time. An erased person is never exported:
//! erasure deletes the rows, and a page is checked again after it is read, so a person erased
//! while their page was being read is left out. The schema is in docs/export.md.

mod parquet;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::identity::golden::GoldenProfile;
use crate::local::StoreArgs;
use crate::privacy::{Consents, consents_of};
use crate::runtime::ops::StartError;
use crate::store::{ProfileRow, Store, StoreError, StoredRecord, profile_ref};

/// Profiles read per page (one Parquet row group each).
const PAGE: i64 = 1_000;

#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: Format,
    /// NDJSON: the file to write (default: standard output). Parquet: the directory to write
    /// the tables into (created when missing).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Include each profile's source records.
    #[arg(long)]
    pub records: bool,
    /// Include each profile's consents (the state per purpose and every statement).
    #[arg(long)]
    pub consents: bool,
    /// Only profiles updated at or after this instant (RFC 3339, or Unix milliseconds).
    #[arg(long, value_parser = crate::store::parse_instant_ms)]
    pub changed_since: Option<i64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per profile and line.
    Ndjson,
    /// A directory of Parquet tables: profiles, attributes, and records and consents when asked.
    Parquet,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("profile {profile}: its golden record is not readable: {source}")]
    Golden { profile: String, source: serde_json::Error },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Parquet { path: String, source: ::parquet::errors::ParquetError },
    #[error("--format parquet needs --output DIR")]
    NoDirectory,
}

/// One exported profile: an NDJSON line, and the rows of the Parquet tables.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedProfile {
    pub id: String,
    /// Ids merged into this profile.
    pub aliases: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: i64,
    pub record_count: i64,
    pub golden: GoldenProfile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<ExportedRecord>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consents: Option<Consents>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedRecord {
    pub id: i64,
    pub source: String,
    pub source_record_id: String,
    pub observed_at_ms: i64,
    pub received_at_ms: i64,
    /// Canonical attributes as the source sent them.
    pub attributes: BTreeMap<String, String>,
}

/// What an export includes beside the golden profiles.
#[derive(Clone, Copy, Debug, Default)]
pub struct Include {
    pub records: bool,
    pub consents: bool,
}

/// What `cdp export` wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub profiles: u64,
    pub records: u64,
}

/// Where a page of profiles goes.
trait Sink {
    fn write_page(&mut self, page: &[ExportedProfile]) -> Result<(), ExportError>;
    fn finish(self: Box<Self>) -> Result<(), ExportError>;
}

/// The profiles of one page as exported: those still live when the page was checked again,
/// in id order, each with its aliases, and its records and consents when included.
pub fn assemble(
    rows: Vec<ProfileRow>,
    aliases: &[(i64, i64)],
    records: Vec<StoredRecord>,
    still_live: &std::collections::BTreeSet<i64>,
    include: Include,
) -> Result<Vec<ExportedProfile>, ExportError> {
    let mut aliases_of: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (survivor, alias) in aliases {
        aliases_of.entry(*survivor).or_default().push(profile_ref(*alias));
    }
    let mut records_of: BTreeMap<i64, Vec<StoredRecord>> = BTreeMap::new();
    for record in records {
        records_of.entry(record.profile_id).or_default().push(record);
    }
    rows.into_iter()
        .filter(|row| still_live.contains(&row.id))
        .map(|row| {
            let golden: GoldenProfile = serde_json::from_value(row.golden.clone().unwrap_or_default())
                .map_err(|source| ExportError::Golden { profile: profile_ref(row.id), source })?;
            let held = records_of.remove(&row.id).unwrap_or_default();
            Ok(ExportedProfile {
                id: profile_ref(row.id),
                aliases: aliases_of.remove(&row.id).unwrap_or_default(),
                created_at_ms: row.created_at_ms,
                updated_at_ms: row.updated_at_ms,
                version: row.version,
                record_count: row.record_count,
                golden,
                consents: include.consents.then(|| consents_of(&held)),
                records: include.records.then(|| held.into_iter().map(exported_record).collect()),
            })
        })
        .collect()
}

fn exported_record(r: StoredRecord) -> ExportedRecord {
    ExportedRecord {
        id: r.id,
        source: r.source,
        source_record_id: r.source_record_id,
        observed_at_ms: r.observed_at_ms,
        received_at_ms: r.received_at_ms,
        attributes: r.attributes,
    }
}

/// `cdp export`.
pub async fn run(args: ExportArgs) -> Result<Summary, ExportError> {
    let include = Include { records: args.records, consents: args.consents };
    let sink: Box<dyn Sink> = match (args.format, &args.output) {
        (Format::Ndjson, path) => Box::new(Ndjson::create(path.as_deref())?),
        (Format::Parquet, Some(dir)) => Box::new(parquet::Tables::create(dir, include)?),
        (Format::Parquet, None) => return Err(ExportError::NoDirectory),
    };
    let store = Store::open(&args.store.url()?).await?;
    let result = export(&store, args.changed_since, include, sink).await;
    store.close().await;
    result
}

async fn export(store: &Store, changed_since: Option<i64>, include: Include, mut sink: Box<dyn Sink>) -> Result<Summary, ExportError> {
    let total = store.count_live_profiles(changed_since).await?.max(0) as u64;
    let mut progress = crate::ingest::import::progress_bar("export".into(), "profiles");
    let mut summary = Summary::default();
    let mut after = 0;
    loop {
        let rows = store.live_profiles(changed_since, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let records = if include.records || include.consents { store.records_of_profiles(&ids).await? } else { Vec::new() };
        let aliases = store.aliases_of_profiles(&ids).await?;
        // last: whoever was erased (or merged away) while the page was read drops out here
        let still_live = store.still_live(&ids).await?;
        let page = assemble(rows, &aliases, records, &still_live, include)?;
        sink.write_page(&page)?;
        summary.profiles += page.len() as u64;
        summary.records += page.iter().filter_map(|p| p.records.as_ref()).map(|r| r.len() as u64).sum::<u64>();
        progress(summary.profiles as usize, summary.profiles, total);
    }
    sink.finish()?;
    if summary.profiles < total {
        // profiles erased meanwhile left the count short of the total: the bar still ends
        progress(summary.profiles as usize, total, total);
    }
    Ok(summary)
}

/// NDJSON to a file or standard output.
struct Ndjson {
    out: std::io::BufWriter<Box<dyn Write>>,
    path: String,
}

impl Ndjson {
    fn create(path: Option<&std::path::Path>) -> Result<Ndjson, ExportError> {
        let (out, name): (Box<dyn Write>, String) = match path {
            Some(path) => {
                let name = path.display().to_string();
                let file = std::fs::File::create(path).map_err(|source| ExportError::Write { path: name.clone(), source })?;
                (Box::new(file), name)
            }
            None => (Box::new(std::io::stdout()), "standard output".into()),
        };
        Ok(Ndjson { out: std::io::BufWriter::new(out), path: name })
    }

    fn failed(&self, source: std::io::Error) -> ExportError {
        ExportError::Write { path: self.path.clone(), source }
    }
}

impl Sink for Ndjson {
    fn write_page(&mut self, page: &[ExportedProfile]) -> Result<(), ExportError> {
        for profile in page {
            serde_json::to_writer(&mut self.out, profile).map_err(|e| self.failed(e.into()))?;
            self.out.write_all(b"\n").map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ExportError> {
        self.out.flush().map_err(|e| self.failed(e))
    }
}
