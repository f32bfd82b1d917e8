//! A streaming decoder for PostgreSQL's binary COPY format: it finds each whole
//! tuple in the stream and hands over its field count and fields, which
//! [`super::row_json::RowFormat`] renders.

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
    /// Decodes what it can of `chunk`, calling `row` for each complete tuple with its
    /// field count and its fields (each a big-endian length, -1 for NULL, then the value).
    pub fn feed(&mut self, chunk: &[u8], mut row: impl FnMut(u16, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
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

    fn decode(&mut self, data: &[u8], row: &mut impl FnMut(u16, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<usize> {
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
            let Some(count) = data.get(pos..pos + 2) else {
                return Ok(pos);
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.finished = true;
                pos += 2;
                continue;
            }
            let Ok(count) = u16::try_from(count) else { bail!("a malformed COPY tuple") };
            // Walk the fields to find the tuple's end; hand it over only when whole.
            let start = pos + 2;
            let mut end = start;
            for _ in 0..count {
                let Some(len) = data.get(end..end + 4) else {
                    return Ok(pos);
                };
                let len = i32::from_be_bytes(len.try_into()?);
                ensure!(len >= -1, "a malformed COPY field");
                end += 4 + usize::try_from(len).unwrap_or(0);
                if end > data.len() {
                    return Ok(pos);
                }
            }
            row(count, &data[start..end])?;
            pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::row_json::{Render, RowFormat};

    /// A stream of two-column rows (NULL where `None`).
    fn stream(rows: &[[Option<&str>; 2]]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        for row in rows {
            v.extend_from_slice(&2i16.to_be_bytes());
            for field in row {
                match field {
                    Some(text) => {
                        v.extend_from_slice(&(text.len() as i32).to_be_bytes());
                        v.extend_from_slice(text.as_bytes());
                    }
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn decodes_across_any_chunking() {
        let data = stream(&[[Some("a"), None], [Some("x\\y"), Some("")], [None, None]]);
        let format = RowFormat::new([("k", Render::Text), ("v", Render::Text)]);
        let expected = [r#"{"k":"a","v":null}"#, r#"{"k":"x\\y","v":""}"#, r#"{"k":null,"v":null}"#];
        for size in 1..data.len() {
            let mut d = CopyDecoder::default();
            let mut got = Vec::new();
            for chunk in data.chunks(size) {
                d.feed(chunk, |count, fields| {
                    let mut out = Vec::new();
                    format.render(count, fields, &mut out)?;
                    got.push(String::from_utf8(out)?);
                    Ok(())
                })
                .unwrap();
            }
            d.finish().unwrap();
            assert_eq!(got, expected, "chunk size {size}");
        }
    }

    #[test]
    fn refuses_truncated_and_foreign_streams() {
        let data = stream(&[[Some("a"), Some("b")]]);
        let mut d = CopyDecoder::default();
        d.feed(&data[..data.len() - 3], |_, _| Ok(())).unwrap();
        assert!(d.finish().is_err());
        let mut d = CopyDecoder::default();
        assert!(d.feed(b"hello, this is not a copy stream", |_, _| Ok(())).is_err());
        let mut bad = data.clone();
        bad[19..21].copy_from_slice(&(-5i16).to_be_bytes());
        assert!(CopyDecoder::default().feed(&bad, |_, _| Ok(())).is_err(), "negative field count");
    }
}
