//! One section as CSV (RFC 4180): UTF-8, CRLF line ends, a header row of the
//! column names, fields quoted only when they hold a comma, a quote or a line end,
//! null as an empty field, booleans `true` / `false`, jsonb as its JSON text, dates
//! `YYYY-MM-DD`, times RFC 3339 in UTC.

use std::io::Write;

use super::values::{Cell, date_text, timestamp_text};

/// A section's CSV file being written into `W`.
pub struct CsvTable<W: Write> {
    out: csv::Writer<W>,
    /// One row's fields, reused.
    fields: Vec<Vec<u8>>,
}

impl<W: Write> CsvTable<W> {
    /// Starts the file with its header row.
    pub fn start(out: W, columns: &[&str]) -> csv::Result<Self> {
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .quote_style(csv::QuoteStyle::Necessary)
            .buffer_capacity(256 * 1024)
            .from_writer(out);
        out.write_record(columns)?;
        Ok(Self { out, fields: vec![Vec::new(); columns.len()] })
    }

    /// Writes one row, its cells in column order.
    pub fn row(&mut self, cells: &[Cell<'_>]) -> csv::Result<()> {
        for (field, cell) in self.fields.iter_mut().zip(cells) {
            field.clear();
            match *cell {
                Cell::Null => {}
                Cell::Int(n) => field.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                Cell::Bool(b) => field.extend_from_slice(if b { b"true" } else { b"false" }),
                Cell::Text(s) | Cell::Json(s) => field.extend_from_slice(s.as_bytes()),
                Cell::Date(d) => field.extend_from_slice(date_text(d).as_bytes()),
                Cell::Timestamp(t) => field.extend_from_slice(timestamp_text(t).as_bytes()),
            }
        }
        self.out.write_record(&self.fields)
    }

    /// Ends the file and hands the writer back.
    pub fn finish(self) -> Result<W, String> {
        self.out.into_inner().map_err(|e| e.error().to_string())
    }
}
