//! A streaming decoder for PostgreSQL's binary COPY format, for a query with one
//! `json` column: each tuple's field is the JSON text itself, with no escaping to
//! undo (unlike COPY's text format).

use anyhow::{bail, ensure};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Feeds chunks in, yields each row's bytes to a callback. Keeps only the bytes of
/// an incomplete tuple between chunks.
#[derive(Default)]
pub struct CopyDecoder {
    buf: Vec<u8>,
    header_done: bool,
    finished: bool,
}

impl CopyDecoder {
    /// Decodes what it can of `chunk`, calling `row` for each complete row.
    pub fn feed(&mut self, chunk: &[u8], mut row: impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
        // Fast path: nothing buffered, decode straight from the chunk.
        if self.buf.is_empty() {
            let used = self.decode(chunk, &mut row)?;
            self.buf.extend_from_slice(&chunk[used..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let buf = std::mem::take(&mut self.buf);
            let used = self.decode(&buf, &mut row)?;
            let mut buf = buf;
            buf.drain(..used);
            self.buf = buf;
        }
        Ok(())
    }

    /// Checks the stream ended on the trailer with nothing left over.
    pub fn finish(&self) -> anyhow::Result<()> {
        ensure!(self.finished && self.buf.is_empty(), "the COPY stream ended early");
        Ok(())
    }

    fn decode(&mut self, data: &[u8], row: &mut impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<usize> {
        let mut pos = 0;
        if !self.header_done {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            ensure!(&data[..SIGNATURE.len()] == SIGNATURE, "not a binary COPY stream");
            let ext = u32::from_be_bytes(data[15..19].try_into()?) as usize;
            if data.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            self.header_done = true;
        }
        loop {
            if self.finished {
                ensure!(pos == data.len(), "data after the COPY trailer");
                return Ok(pos);
            }
            let Some(fields) = data.get(pos..pos + 2) else {
                return Ok(pos);
            };
            let fields = i16::from_be_bytes([fields[0], fields[1]]);
            if fields == -1 {
                self.finished = true;
                pos += 2;
                continue;
            }
            if fields != 1 {
                bail!("expected one column per row, got {fields}");
            }
            let Some(len) = data.get(pos + 2..pos + 6) else {
                return Ok(pos);
            };
            let len = i32::from_be_bytes(len.try_into()?);
            ensure!(len >= 0, "a row's JSON was null");
            let end = pos + 6 + len as usize;
            let Some(bytes) = data.get(pos + 6..end) else {
                return Ok(pos);
            };
            row(bytes)?;
            pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[&str]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            v.extend_from_slice(&1i16.to_be_bytes());
            v.extend_from_slice(&(r.len() as i32).to_be_bytes());
            v.extend_from_slice(r.as_bytes());
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn decodes_across_any_chunking() {
        let rows = [r#"{"a":1}"#, r#"{"b":"x\\y"}"#, "{}"];
        let data = stream(&rows);
        for size in 1..data.len() {
            let mut d = CopyDecoder::default();
            let mut got = Vec::new();
            for chunk in data.chunks(size) {
                d.feed(chunk, |r| {
                    got.push(String::from_utf8(r.to_vec())?);
                    Ok(())
                })
                .unwrap();
            }
            d.finish().unwrap();
            assert_eq!(got, rows, "chunk size {size}");
        }
    }

    #[test]
    fn refuses_truncated_and_foreign_streams() {
        let data = stream(&[r#"{"a":1}"#]);
        let mut d = CopyDecoder::default();
        d.feed(&data[..data.len() - 3], |_| Ok(())).unwrap();
        assert!(d.finish().is_err());
        let mut d = CopyDecoder::default();
        assert!(d.feed(b"hello, this is not a copy stream", |_| Ok(())).is_err());
    }
}
