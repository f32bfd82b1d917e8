//! Tables for analysis: a snapshot converted into a zip of one CSV or Parquet file
//! per section ([`convert`], pure: a file in, a zip out, streaming), and, for the
//! Export History, the conversions of an org's completed exports
//! ([`records`]: the `export_tables` table) carried out by a job on queue `tables`
//! ([`job`]), stored beside the export's file in the org's bucket. The pages and the
//! API that start and download them are the exports feature's (`exports::web`,
//! `exports::api`). See docs/tables-format.md.

pub mod convert;
pub mod csv_table;
pub mod job;
pub mod parquet_table;
pub mod records;
pub mod types;
pub mod values;

use std::path::{Path, PathBuf};

pub use convert::{ConvertError, Summary, convert};

/// What the tables are written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Csv, Format::Parquet];

    /// `csv` or `parquet`: the files' extension and the API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }

    /// The format named `s` (`csv` or `parquet`, any case).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str().eq_ignore_ascii_case(s))
    }

    /// What the buttons and the docs call it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Csv => "spreadsheets (CSV)",
            Self::Parquet => "Parquet",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bad-format message of the CLI and the API.
pub const FORMAT_HELP: &str = "the format must be \"csv\" or \"parquet\"";

/// The tables' object key beside an export's file: `exports/2026/12/ID.json.gz`
/// becomes `exports/2026/12/ID.csv.zip` or `.parquet.zip`.
pub fn object_key(export_key: &str, format: Format) -> String {
    let stem = export_key.strip_suffix(".json.gz").unwrap_or(export_key);
    format!("{stem}.{}.zip", format.as_str())
}

/// Converts the snapshot file `input` into the zip `out`, written under a temporary
/// name beside it and renamed into place only when whole: a failed conversion leaves
/// no file at `out` (and an existing one as it was).
pub fn convert_file(input: &Path, format: Format, out: &Path) -> anyhow::Result<Summary> {
    use anyhow::Context;
    let file = std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    if out.is_dir() {
        anyhow::bail!("{} is a directory: give the zip file's path", out.display());
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out.file_name().with_context(|| format!("{} names no file", out.display()))?;
    let temp = dir.join(format!(".{}.{}.part", name.to_string_lossy(), ulid::Ulid::generate()));
    let sink = std::fs::File::create_new(&temp)
        .with_context(|| format!("cannot write in {} (for {})", dir.display(), out.display()))?;
    let result = (|| {
        let (summary, sink) = convert(std::io::BufReader::new(file), None, format, sink, &mut |_| {})?;
        sink.sync_all().map_err(|e| ConvertError::Output(e.to_string()))?;
        Ok::<_, ConvertError>(summary)
    })();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e.into());
        }
    };
    if let Err(e) = std::fs::rename(&temp, out) {
        let _ = std::fs::remove_file(&temp);
        return Err(anyhow::Error::new(e).context(format!("cannot move the zip to {}", out.display())));
    }
    Ok(summary)
}
