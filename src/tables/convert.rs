//! A snapshot file into a zip of tables: one `SECTION.csv` or `SECTION.parquet` per
//! section, `manifest.json` and `README.txt` (docs/tables-format.md). It streams:
//! the snapshot is read by the bounded reader that verify and restore use
//! ([`verify::read`], one row in memory at a time, every check of `data-export
//! verify` included), each row goes straight into its section's file inside the
//! zip, and a Parquet file buffers at most one bounded row group.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{Read, Seek, Write},
};

use serde_json::{Value, value::RawValue};
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

use super::{
    Format,
    csv_table::CsvTable,
    parquet_table::ParquetTable,
    types::{self, ColType, Table},
    values::cell,
};
use crate::snapshot::verify::{self, Invalid};

/// What a conversion wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub export_id: String,
    pub organization: String,
    pub snapshot_at: String,
    pub format: Format,
    /// The snapshot file's SHA-256 and size.
    pub source_sha256: String,
    pub source_size_bytes: u64,
    /// Rows per table (each section's, `organization` included).
    pub counts: BTreeMap<String, u64>,
    pub rows: u64,
    pub tables: usize,
}

/// Why a conversion stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The input is not a whole, valid snapshot (or a value does not fit its column).
    #[error("not a valid snapshot: {0}")]
    Input(String),
    /// The zip could not be written.
    #[error("cannot write the tables: {0}")]
    Output(String),
}

/// How often (in rows) the progress callback is called.
pub const PROGRESS_EVERY: u64 = 20_000;

/// The deflate level of the CSV files in the zip: the fastest, since the zip is a
/// download and a conversion should not take much longer than the export.
const CSV_LEVEL: i64 = 1;

fn entry_options(format: Format) -> SimpleFileOptions {
    let now = chrono::Utc::now();
    let when = {
        use chrono::{Datelike, Timelike};
        zip::DateTime::from_date_and_time(
            now.year().clamp(1980, 2107) as u16,
            now.month() as u8,
            now.day() as u8,
            now.hour() as u8,
            now.minute() as u8,
            now.second() as u8,
        )
        .unwrap_or_default()
    };
    let options = SimpleFileOptions::default().last_modified_time(when).large_file(true).unix_permissions(0o644);
    match format {
        Format::Csv => options.compression_method(CompressionMethod::Deflated).compression_level(Some(CSV_LEVEL)),
        // Parquet pages are compressed already.
        Format::Parquet => options.compression_method(CompressionMethod::Stored),
    }
}

/// A section's file being written: it owns the zip until it is finished.
enum Open<W: Write + Seek + Send> {
    Csv(CsvTable<ZipWriter<W>>),
    Parquet(ParquetTable<ZipWriter<W>>),
}

/// The converter's state between rows.
struct Tables<W: Write + Seek + Send> {
    format: Format,
    options: SimpleFileOptions,
    /// The zip while no section's file is open.
    zip: Option<ZipWriter<W>>,
    open: Option<(&'static Table, Open<W>)>,
    written: BTreeMap<String, u64>,
    /// Columns of the file that the format's version 1 does not have (a newer
    /// writer's), per section: left out, and named in the manifest.
    ignored: BTreeMap<String, BTreeSet<String>>,
}

fn out_err(e: impl std::fmt::Display) -> ConvertError {
    ConvertError::Output(e.to_string())
}

impl<W: Write + Seek + Send> Tables<W> {
    fn start(&mut self, table: &'static Table) -> Result<(), ConvertError> {
        let mut zip = self.zip.take().ok_or_else(|| out_err("the zip is not open"))?;
        let name = format!("{}.{}", table.section, self.format.as_str());
        zip.start_file(name, self.options).map_err(out_err)?;
        let open = match self.format {
            Format::Csv => {
                let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
                Open::Csv(CsvTable::start(zip, &names).map_err(out_err)?)
            }
            Format::Parquet => Open::Parquet(ParquetTable::start(zip, table.columns).map_err(out_err)?),
        };
        self.written.insert(table.section.to_string(), 0);
        self.open = Some((table, open));
        Ok(())
    }

    fn finish_open(&mut self) -> Result<(), ConvertError> {
        if let Some((_, open)) = self.open.take() {
            self.zip = Some(match open {
                Open::Csv(t) => t.finish().map_err(out_err)?,
                Open::Parquet(t) => t.finish().map_err(out_err)?,
            });
        }
        Ok(())
    }

    /// Writes one row of `section` (the row's text and its one-level parse).
    fn row(&mut self, section: &str, raw: &RawValue, row: &Value) -> Result<(), ConvertError> {
        if self.open.as_ref().is_none_or(|(t, _)| t.section != section) {
            self.finish_open()?;
            let table = types::of(section)
                .ok_or_else(|| ConvertError::Input(format!("section {section} is not a section of the format")))?;
            self.start(table)?;
        }
        let Some((table, open)) = self.open.as_mut() else { return Err(out_err("no table is open")) };
        let n = self.written.get(section).copied().unwrap_or(0) + 1;
        let Value::Object(map) = row else {
            return Err(ConvertError::Input(format!("row {n} of section {section} is not an object")));
        };
        // The JSON text of each value, for jsonb columns (the parse is one level deep).
        let texts: Option<HashMap<&str, &RawValue>> = if table.columns.iter().any(|(_, t)| *t == ColType::Jsonb)
            || table.columns.iter().any(|(_, t)| *t == ColType::Numeric)
        {
            Some(
                serde_json::from_str(raw.get())
                    .map_err(|e| ConvertError::Input(format!("row {n} of section {section}: {e}")))?,
            )
        } else {
            None
        };
        let mut cells = Vec::with_capacity(table.columns.len());
        let mut found = 0;
        for (name, ty) in table.columns {
            let value = map.get(*name);
            found += usize::from(value.is_some());
            let text = texts.as_ref().and_then(|t| t.get(name)).map(|r| r.get());
            let c = cell(*ty, value, text)
                .map_err(|e| ConvertError::Input(format!("row {n} of section {section}, column {name}: {e}")))?;
            cells.push(c);
        }
        if found < map.len() {
            let known: BTreeSet<&str> = table.columns.iter().map(|(n, _)| *n).collect();
            let extra = self.ignored.entry(section.to_string()).or_default();
            extra.extend(map.keys().filter(|k| !known.contains(k.as_str())).cloned());
            // Listed in the manifest, so bounded: a file with ever new names is not
            // a snapshot of this platform (review of issue 32).
            if extra.len() > MAX_IGNORED_COLUMNS || extra.iter().map(String::len).sum::<usize>() > 64 * 1024 {
                return Err(ConvertError::Input(format!(
                    "section {section} has more than {MAX_IGNORED_COLUMNS} unknown columns (or their names exceed \
                     64 KiB): this is not a snapshot of this platform"
                )));
            }
        }
        match open {
            Open::Csv(t) => t.row(&cells).map_err(out_err)?,
            Open::Parquet(t) => t.row(&cells).map_err(out_err)?,
        }
        *self.written.entry(section.to_string()).or_default() = n;
        Ok(())
    }

    /// Adds a whole file to the zip.
    fn add_file(&mut self, name: &str, body: &[u8]) -> Result<(), ConvertError> {
        let zip = self.zip.as_mut().ok_or_else(|| out_err("the zip is not open"))?;
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(6))
            .unix_permissions(0o644);
        zip.start_file(name, options).map_err(out_err)?;
        zip.write_all(body).map_err(out_err)
    }
}

/// Converts the snapshot read from `input` into a zip of tables written to `out`
/// (a file: the zip's entries are finished by seeking back). With `expected_sha256`,
/// the snapshot must have that hash. `progress` is called with the rows written so
/// far every [`PROGRESS_EVERY`] rows. Returns what was written and `out`.
///
/// On an error, what was written to `out` is not a usable zip: the caller removes it.
pub fn convert<W: Write + Seek + Send>(
    input: impl Read,
    expected_sha256: Option<&str>,
    format: Format,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<(Summary, W), ConvertError> {
    let mut tables = Tables {
        format,
        options: entry_options(format),
        zip: Some(ZipWriter::new(out)),
        open: None,
        written: BTreeMap::new(),
        ignored: BTreeMap::new(),
    };
    let mut output_error = None;
    let mut rows = 0u64;
    let read = verify::read(input, expected_sha256, &mut |section, raw, row| {
        if let Err(e) = tables.row(section, raw, row) {
            let why = e.to_string();
            output_error = Some(e);
            return Err(Invalid(why));
        }
        rows += 1;
        if rows.is_multiple_of(PROGRESS_EVERY) {
            progress(rows);
        }
        Ok(())
    });
    let (report, header) = match read {
        Ok(done) => done,
        Err(Invalid(why)) => return Err(output_error.unwrap_or(ConvertError::Input(why))),
    };
    tables.finish_open()?;
    // The organization (an object, kept by the reader), then the sections that had
    // no rows, in the format's order.
    let organization = header.get("sections").and_then(|s| s.get("organization")).cloned().unwrap_or(Value::Null);
    let org_text = serde_json::value::to_raw_value(&organization).map_err(|e| ConvertError::Input(e.to_string()))?;
    tables.row("organization", &org_text, &shallow(&organization))?;
    tables.finish_open()?;
    for table in types::TABLES {
        if report.counts.contains_key(table.section) && !tables.written.contains_key(table.section) {
            tables.start(table)?;
            tables.finish_open()?;
        }
    }
    progress(rows);
    let summary = Summary {
        export_id: report.export_id.clone(),
        organization: report.organization.clone(),
        snapshot_at: report.snapshot_at.clone(),
        format,
        source_sha256: report.sha256.clone(),
        source_size_bytes: report.size_bytes,
        counts: tables.written.clone(),
        rows: tables.written.values().sum(),
        tables: tables.written.len(),
    };
    let manifest = manifest(&summary, &header, &tables.ignored);
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(out_err)?;
    tables.add_file("manifest.json", &manifest)?;
    tables.add_file("README.txt", readme(&summary).as_bytes())?;
    let zip = tables.zip.take().ok_or_else(|| out_err("the zip is not open"))?;
    let out = zip.finish().map_err(out_err)?;
    Ok((summary, out))
}

/// A value parsed one level deep, as the reader hands rows on.
fn shallow(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Object(_) => Value::Object(serde_json::Map::new()),
                        Value::Array(_) => Value::Array(Vec::new()),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `manifest.json`: where the tables come from and what each holds.
fn manifest(
    summary: &Summary,
    header: &serde_json::Map<String, Value>,
    ignored: &BTreeMap<String, BTreeSet<String>>,
) -> Value {
    let tables: Vec<Value> = types::TABLES
        .iter()
        .filter(|t| summary.counts.contains_key(t.section))
        .map(|t| {
            let columns: Vec<Value> = t
                .columns
                .iter()
                .map(|(name, ty)| {
                    let mut c = serde_json::json!({ "name": name, "type": ty.pg_name() });
                    if summary.format == Format::Parquet {
                        c["parquet_type"] = ty.parquet_name().into();
                    }
                    c
                })
                .collect();
            serde_json::json!({
                "name": t.section,
                "file": format!("{}.{}", t.section, summary.format.as_str()),
                "rows": summary.counts.get(t.section),
                "columns": columns,
            })
        })
        .collect();
    serde_json::json!({
        "format": "data-export/tables",
        "version": 1,
        "table_format": summary.format.as_str(),
        "source": {
            "format": "data-export/snapshot",
            "version": 1,
            "export_id": summary.export_id,
            "organization": header.get("organization"),
            "generated_at": header.get("generated_at"),
            "snapshot_at": summary.snapshot_at,
            "modules": header.get("modules"),
            "sha256": summary.source_sha256,
            "size_bytes": summary.source_size_bytes,
        },
        "converted_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "converted_by": format!("data-export {}", env!("CARGO_PKG_VERSION")),
        "numeric": "numeric columns are written as their exact decimal text (a string), not as DECIMAL",
        "null": match summary.format {
            Format::Csv => "an empty field (an empty text is an empty field too)",
            Format::Parquet => "a null value (every column is optional)",
        },
        "counts": summary.counts,
        "rows": summary.rows,
        "tables": tables,
        "ignored_columns": ignored,
    })
}

/// The most unknown column names a section may carry (they are listed in the manifest).
const MAX_IGNORED_COLUMNS: usize = 256;

/// `README.txt`: how to open the tables.
fn readme(summary: &Summary) -> String {
    let head = format!(
        "Data Export: the tables of export {} of {}, read at {}.\n\
         One file per section (table), {} rows in all. manifest.json lists each table's\n\
         rows and columns with their types, and the source file's SHA-256.\n\n",
        summary.export_id, summary.organization, summary.snapshot_at, summary.rows
    );
    let how = match summary.format {
        Format::Csv => {
            "The .csv files are RFC 4180 CSV in UTF-8 with a header row. An empty field is\n\
             null (or an empty text); booleans are true/false; times are RFC 3339 in UTC;\n\
             jsonb columns hold JSON text.\n\n\
             The values are the members' own text, unchanged: a cell that starts with =, +,\n\
             - or @ is a formula to a spreadsheet. Open the files as text (Calc: untick\n\
             \"Evaluate formulas\"; Excel: import through Data > From Text/CSV, not by\n\
             double-click) when the data may hold such values.\n\n\
             Spreadsheets: LibreOffice Calc opens a .csv directly (choose UTF-8 and comma).\n\
             Excel: Data > From Text/CSV, File origin 65001: Unicode (UTF-8).\n\
             DuckDB: select * from read_csv('memberships.csv');\n\
             pandas: pd.read_csv('memberships.csv')\n"
        }
        Format::Parquet => {
            "The .parquet files have typed columns (bigint INT64, integer INT32, boolean,\n\
             date DATE, timestamptz TIMESTAMP(MICROS, UTC), text and jsonb strings) and\n\
             Snappy-compressed pages.\n\n\
             DuckDB:  duckdb -c \"select count(*) from 'memberships.parquet'\"\n\
             Python:  pandas.read_parquet('memberships.parquet'), polars.read_parquet(...)\n"
        }
    };
    format!("{head}{how}\nThe format is described in docs/tables-format.md of Data Export.\n")
}
