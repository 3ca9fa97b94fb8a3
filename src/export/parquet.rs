//! `cdp export --format parquet`: flat tables, one file each, one row group per page of
//! profiles. Flat (one row per profile, attribute, record or consent statement) because that
//! is what data-frame and SQL engines read best; docs/export.md gives every column.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde::Serialize;

use super::{ExportError, ExportedProfile, Include, Sink};

const PROFILES: &str = "message profiles {
    required binary profile_id (UTF8);
    repeated binary aliases (UTF8);
    required int64 created_at (TIMESTAMP(MILLIS,true));
    required int64 updated_at (TIMESTAMP(MILLIS,true));
    required int64 version;
    required int64 record_count;
}";

const ATTRIBUTES: &str = "message attributes {
    required binary profile_id (UTF8);
    required binary attribute (UTF8);
    required binary value (UTF8);
    required binary display (UTF8);
    required binary source (UTF8);
    required binary source_record_id (UTF8);
    required int64 observed_at (TIMESTAMP(MILLIS,true));
    required binary rule (UTF8);
}";

const RECORDS: &str = "message records {
    required int64 record_id;
    required binary profile_id (UTF8);
    required binary source (UTF8);
    required binary source_record_id (UTF8);
    required int64 observed_at (TIMESTAMP(MILLIS,true));
    required int64 received_at (TIMESTAMP(MILLIS,true));
    required binary attributes (JSON);
}";

const CONSENTS: &str = "message consents {
    required binary profile_id (UTF8);
    required binary purpose (UTF8);
    required binary state (UTF8);
    required binary source (UTF8);
    required binary source_record_id (UTF8);
    required int64 observed_at (TIMESTAMP(MILLIS,true));
    required boolean current;
}";

/// One column of a row group.
enum Column {
    Text(Vec<ByteArray>),
    /// A repeated text column: values with their definition and repetition levels.
    TextLists { values: Vec<ByteArray>, definitions: Vec<i16>, repetitions: Vec<i16> },
    Int(Vec<i64>),
    Bool(Vec<bool>),
}

fn text<'a>(values: impl Iterator<Item = &'a str>) -> Column {
    Column::Text(values.map(ByteArray::from).collect())
}

fn ints(values: impl Iterator<Item = i64>) -> Column {
    Column::Int(values.collect())
}

fn text_lists<'a>(lists: impl Iterator<Item = &'a [String]>) -> Column {
    let (mut values, mut definitions, mut repetitions) = (Vec::new(), Vec::new(), Vec::new());
    for list in lists {
        if list.is_empty() {
            definitions.push(0);
            repetitions.push(0);
        }
        for (i, value) in list.iter().enumerate() {
            values.push(ByteArray::from(value.as_str()));
            definitions.push(1);
            repetitions.push(i16::from(i > 0));
        }
    }
    Column::TextLists { values, definitions, repetitions }
}

/// The JSON name of an enum value (`trustRank`, `granted`).
fn label(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn profile_columns(page: &[ExportedProfile]) -> Vec<Column> {
    vec![
        text(page.iter().map(|p| p.id.as_str())),
        text_lists(page.iter().map(|p| &p.aliases[..])),
        ints(page.iter().map(|p| p.created_at_ms)),
        ints(page.iter().map(|p| p.updated_at_ms)),
        ints(page.iter().map(|p| p.version)),
        ints(page.iter().map(|p| p.record_count)),
    ]
}

fn attribute_columns(page: &[ExportedProfile]) -> Vec<Column> {
    let rows: Vec<_> = page.iter().flat_map(|p| p.golden.attributes.iter().map(move |(name, v)| (p, name, v))).collect();
    let rules: Vec<String> = rows.iter().map(|(_, _, v)| label(&v.rule)).collect();
    vec![
        text(rows.iter().map(|(p, _, _)| p.id.as_str())),
        text(rows.iter().map(|(_, name, _)| name.as_str())),
        text(rows.iter().map(|(_, _, v)| v.value.as_str())),
        text(rows.iter().map(|(_, _, v)| v.display.as_str())),
        text(rows.iter().map(|(_, _, v)| v.source.as_str())),
        text(rows.iter().map(|(_, _, v)| v.source_record_id.as_str())),
        ints(rows.iter().map(|(_, _, v)| v.observed_at_ms)),
        text(rules.iter().map(String::as_str)),
    ]
}

fn record_columns(page: &[ExportedProfile]) -> Vec<Column> {
    let rows: Vec<_> = page.iter().flat_map(|p| p.records.iter().flatten().map(move |r| (p, r))).collect();
    let attributes: Vec<String> =
        rows.iter().map(|(_, r)| serde_json::to_string(&r.attributes).expect("a map of strings serialises")).collect();
    vec![
        ints(rows.iter().map(|(_, r)| r.id)),
        text(rows.iter().map(|(p, _)| p.id.as_str())),
        text(rows.iter().map(|(_, r)| r.source.as_str())),
        text(rows.iter().map(|(_, r)| r.source_record_id.as_str())),
        ints(rows.iter().map(|(_, r)| r.observed_at_ms)),
        ints(rows.iter().map(|(_, r)| r.received_at_ms)),
        text(attributes.iter().map(String::as_str)),
    ]
}

fn consent_columns(page: &[ExportedProfile]) -> Vec<Column> {
    let rows: Vec<_> = page
        .iter()
        .flat_map(|p| p.consents.iter().flat_map(move |c| c.history.iter().map(move |s| (p, s, c.current.get(&s.purpose) == Some(s)))))
        .collect();
    let states: Vec<String> = rows.iter().map(|(_, s, _)| label(&s.state)).collect();
    vec![
        text(rows.iter().map(|(p, _, _)| p.id.as_str())),
        text(rows.iter().map(|(_, s, _)| s.purpose.as_str())),
        text(states.iter().map(String::as_str)),
        text(rows.iter().map(|(_, s, _)| s.source.as_str())),
        text(rows.iter().map(|(_, s, _)| s.source_record_id.as_str())),
        ints(rows.iter().map(|(_, s, _)| s.observed_at_ms)),
        Column::Bool(rows.iter().map(|(_, _, current)| *current).collect()),
    ]
}

struct Table {
    path: String,
    writer: SerializedFileWriter<File>,
    columns: fn(&[ExportedProfile]) -> Vec<Column>,
}

impl Table {
    fn create(dir: &Path, name: &str, schema: &str, columns: fn(&[ExportedProfile]) -> Vec<Column>) -> Result<Table, ExportError> {
        let path = dir.join(format!("{name}.parquet")).display().to_string();
        let file = File::create(&path).map_err(|source| ExportError::Write { path: path.clone(), source })?;
        let schema = Arc::new(parse_message_type(schema).expect("the export's schemas parse"));
        let properties = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let writer =
            SerializedFileWriter::new(file, schema, properties).map_err(|source| ExportError::Parquet { path: path.clone(), source })?;
        Ok(Table { path, writer, columns })
    }

    fn write(&mut self, page: &[ExportedProfile]) -> Result<(), parquet::errors::ParquetError> {
        let columns = (self.columns)(page);
        let rows = match columns.first() {
            Some(Column::Text(v)) => v.len(),
            Some(Column::Int(v)) => v.len(),
            _ => unreachable!("every table starts with a plain column"),
        };
        if rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for column in columns {
            let mut writer = group.next_column()?.expect("one column writer per column of the schema");
            match column {
                Column::Text(values) => writer.typed::<ByteArrayType>().write_batch(&values, None, None)?,
                Column::TextLists { values, definitions, repetitions } => {
                    writer.typed::<ByteArrayType>().write_batch(&values, Some(&definitions), Some(&repetitions))?
                }
                Column::Int(values) => writer.typed::<Int64Type>().write_batch(&values, None, None)?,
                Column::Bool(values) => writer.typed::<BoolType>().write_batch(&values, None, None)?,
            };
            writer.close()?;
        }
        group.close()?;
        Ok(())
    }
}

/// The export's tables in a directory.
pub struct Tables(Vec<Table>);

impl Tables {
    pub fn create(dir: &Path, include: Include) -> Result<Tables, ExportError> {
        std::fs::create_dir_all(dir).map_err(|source| ExportError::Write { path: dir.display().to_string(), source })?;
        let mut tables = vec![
            Table::create(dir, "profiles", PROFILES, profile_columns)?,
            Table::create(dir, "attributes", ATTRIBUTES, attribute_columns)?,
        ];
        if include.records {
            tables.push(Table::create(dir, "records", RECORDS, record_columns)?);
        }
        if include.consents {
            tables.push(Table::create(dir, "consents", CONSENTS, consent_columns)?);
        }
        Ok(Tables(tables))
    }
}

impl Sink for Tables {
    fn write_page(&mut self, page: &[ExportedProfile]) -> Result<(), ExportError> {
        for table in &mut self.0 {
            table.write(page).map_err(|source| ExportError::Parquet { path: table.path.clone(), source })?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), ExportError> {
        for table in self.0 {
            table.writer.close().map_err(|source| ExportError::Parquet { path: table.path, source })?;
        }
        Ok(())
    }
}
