//! One section as a Parquet file, through the parquet crate's low-level writer (no
//! Arrow): one optional column per catalog column, typed as
//! [`ColType::parquet_name`] says, Snappy-compressed pages. Rows arrive one at a
//! time, but Parquet writes a row group column by column, so a row group's values
//! are buffered: at most [`ROW_GROUP_ROWS`] rows or [`ROW_GROUP_BYTES`] of values,
//! whichever comes first, which bounds the memory whatever the section's size.

use std::{io::Write, sync::Arc};

use parquet::{
    basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical},
    data_type::{BoolType, ByteArray, ByteArrayType, Int32Type, Int64Type},
    errors::ParquetError,
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::Type,
};

use super::{types::ColType, values::Cell};

/// The most rows in one row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;
/// The most bytes of buffered values in one row group, counted as they sit in memory
/// (a string's length and about 64 bytes of allocation and handle, other values by
/// their width). The column writers' own buffers (dictionaries, the pages of a
/// chunk until it is written) come on top, about as much again: 6 MiB kept a
/// conversion of 1 M rows under 64 MiB of peak RSS where 12 MiB reached 60.
pub const ROW_GROUP_BYTES: usize = 6 * 1024 * 1024;

/// One column's buffered values (nulls only in the definition levels).
enum Values {
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
    Bytes(Vec<ByteArray>),
}

struct Column {
    ty: ColType,
    values: Values,
    /// 1 for a value, 0 for null.
    levels: Vec<i16>,
}

/// A section's Parquet file being written into `W`.
pub struct ParquetTable<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Vec<Column>,
    rows: usize,
    bytes: usize,
}

fn schema(columns: &[(&str, ColType)]) -> Result<Type, ParquetError> {
    let mut fields = Vec::with_capacity(columns.len());
    for (name, ty) in columns {
        let (physical, logical) = match ty {
            ColType::Int2 => (Physical::INT32, Some(LogicalType::integer(16, true))),
            ColType::Int4 => (Physical::INT32, None),
            ColType::Int8 => (Physical::INT64, None),
            ColType::Bool => (Physical::BOOLEAN, None),
            ColType::Text | ColType::Numeric => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
            ColType::Jsonb => (Physical::BYTE_ARRAY, Some(LogicalType::Json)),
            ColType::Date => (Physical::INT32, Some(LogicalType::Date)),
            ColType::TimestampTz => (Physical::INT64, Some(LogicalType::timestamp(true, TimeUnit::MICROS))),
        };
        let field = Type::primitive_type_builder(name, physical)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(logical)
            .build()?;
        fields.push(Arc::new(field));
    }
    Type::group_type_builder("schema").with_fields(fields).build()
}

impl<W: Write + Send> ParquetTable<W> {
    /// Starts the file for a section with `columns`.
    pub fn start(out: W, columns: &[(&str, ColType)]) -> Result<Self, ParquetError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("data-export {}", env!("CARGO_PKG_VERSION")))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = SerializedFileWriter::new(out, Arc::new(schema(columns)?), Arc::new(props))?;
        let columns = columns
            .iter()
            .map(|(_, ty)| Column {
                ty: *ty,
                values: match ty {
                    ColType::Int2 | ColType::Int4 | ColType::Date => Values::I32(Vec::new()),
                    ColType::Int8 | ColType::TimestampTz => Values::I64(Vec::new()),
                    ColType::Bool => Values::Bool(Vec::new()),
                    ColType::Text | ColType::Numeric | ColType::Jsonb => Values::Bytes(Vec::new()),
                },
                levels: Vec::new(),
            })
            .collect();
        Ok(Self { writer, columns, rows: 0, bytes: 0 })
    }

    /// Adds one row, its cells in column order; writes the row group once it is full.
    pub fn row(&mut self, cells: &[Cell<'_>]) -> Result<(), ParquetError> {
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            if *cell == Cell::Null {
                column.levels.push(0);
                continue;
            }
            column.levels.push(1);
            self.bytes += match (&mut column.values, *cell) {
                (Values::I32(v), Cell::Int(n)) => {
                    v.push(i32::try_from(n).map_err(|_| ParquetError::General(format!("{n} is not a 32-bit number")))?);
                    4
                }
                (Values::I32(v), Cell::Date(d)) => {
                    v.push(d);
                    4
                }
                (Values::I64(v), Cell::Int(n) | Cell::Timestamp(n)) => {
                    v.push(n);
                    8
                }
                (Values::Bool(v), Cell::Bool(b)) => {
                    v.push(b);
                    1
                }
                (Values::Bytes(v), Cell::Text(s) | Cell::Json(s)) => {
                    v.push(ByteArray::from(s.as_bytes().to_vec()));
                    s.len() + 64
                }
                (_, cell) => {
                    return Err(ParquetError::General(format!("a {cell:?} in a {} column", column.ty.pg_name())));
                }
            };
        }
        self.rows += 1;
        if self.rows >= ROW_GROUP_ROWS || self.bytes >= ROW_GROUP_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as one row group.
    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        for column in &mut self.columns {
            let mut writer = group.next_column()?.ok_or_else(|| ParquetError::General("a column is missing".into()))?;
            let levels = Some(column.levels.as_slice());
            match &mut column.values {
                Values::I32(v) => {
                    writer.typed::<Int32Type>().write_batch(v, levels, None)?;
                    v.clear();
                }
                Values::I64(v) => {
                    writer.typed::<Int64Type>().write_batch(v, levels, None)?;
                    v.clear();
                }
                Values::Bool(v) => {
                    writer.typed::<BoolType>().write_batch(v, levels, None)?;
                    v.clear();
                }
                Values::Bytes(v) => {
                    writer.typed::<ByteArrayType>().write_batch(v, levels, None)?;
                    v.clear();
                }
            }
            writer.close()?;
            column.levels.clear();
        }
        group.close()?;
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Writes what is buffered and the footer, and hands the writer back.
    pub fn finish(mut self) -> Result<W, ParquetError> {
        self.flush()?;
        self.writer.into_inner()
    }
}
