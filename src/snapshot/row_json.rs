//! Renders binary COPY tuples as JSON objects, byte for byte as PostgreSQL's
//! `row_to_json` renders the same row. PostgreSQL then sends each column's plain
//! binary value and builds no JSON: building it there (`row_to_json`, escaping every
//! text byte by byte) was the export's critical path (see docs/benchmarks.md).
//!
//! Only the types below are rendered here. A column of any other type is selected as
//! `to_json(column)`, which PostgreSQL renders exactly as `row_to_json` would, and is
//! copied verbatim ([`Render::Json`]): a new column type never changes the output.
//!
//! Dates and times are rendered in UTC with `row_to_json`'s ISO 8601 style; the
//! snapshot's transaction sets `timezone = 'UTC'`, which is what PostgreSQL would use.

use anyhow::{Context, ensure};

/// How one column's binary value becomes JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    Bool,
    Int2,
    Int4,
    Int8,
    /// `text` and `varchar`: a JSON string.
    Text,
    /// `json`, and every column selected as `to_json(..)`: copied verbatim.
    Json,
    /// `jsonb`: a version byte, then the text `jsonb_out` gives.
    Jsonb,
    Date,
    TimestampTz,
}

impl Render {
    /// The renderer for a column of type `oid` (from `pg_type`), or `None` when the
    /// column is to be selected as `to_json(..)` instead.
    pub fn for_type(oid: Option<u32>) -> Option<Self> {
        Some(match oid? {
            16 => Self::Bool,
            21 => Self::Int2,
            23 => Self::Int4,
            20 => Self::Int8,
            25 | 1043 => Self::Text,
            114 => Self::Json,
            3802 => Self::Jsonb,
            1082 => Self::Date,
            1184 => Self::TimestampTz,
            _ => return None,
        })
    }

    fn value(self, v: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        match self {
            Self::Bool => {
                let [b] = v else { anyhow::bail!("a bool of {} bytes", v.len()) };
                out.extend_from_slice(if *b != 0 { b"true" } else { b"false" });
            }
            Self::Int2 => int(out, i16::from_be_bytes(fixed(v)?)),
            Self::Int4 => int(out, i32::from_be_bytes(fixed(v)?)),
            Self::Int8 => int(out, i64::from_be_bytes(fixed(v)?)),
            Self::Text => string(out, v),
            Self::Json => out.extend_from_slice(v),
            Self::Jsonb => {
                let (version, text) = v.split_first().context("an empty jsonb value")?;
                ensure!(*version == 1, "jsonb binary version {version}");
                out.extend_from_slice(text);
            }
            Self::Date => date(out, i32::from_be_bytes(fixed(v)?)),
            Self::TimestampTz => timestamptz(out, i64::from_be_bytes(fixed(v)?)),
        }
        Ok(())
    }
}

fn fixed<const N: usize>(v: &[u8]) -> anyhow::Result<[u8; N]> {
    v.try_into().map_err(|_| anyhow::anyhow!("a value of {} bytes where {N} were expected", v.len()))
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A row's shape: each column's key (with the brace or comma before it) and renderer.
#[derive(Debug)]
pub struct RowFormat {
    columns: Vec<(Vec<u8>, Render)>,
}

impl RowFormat {
    pub fn new<'a>(columns: impl IntoIterator<Item = (&'a str, Render)>) -> Self {
        let columns = columns
            .into_iter()
            .enumerate()
            .map(|(i, (name, render))| {
                let mut key = vec![if i == 0 { b'{' } else { b',' }];
                string(&mut key, name.as_bytes());
                key.push(b':');
                (key, render)
            })
            .collect();
        Self { columns }
    }

    /// Appends the JSON object of one tuple: `count` fields, then the fields' bytes
    /// as binary COPY lays them out (a length, -1 for NULL, then the value).
    pub fn render(&self, count: u16, mut fields: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        ensure!(usize::from(count) == self.columns.len(), "a row of {count} columns, {} expected", self.columns.len());
        if self.columns.is_empty() {
            out.extend_from_slice(b"{}");
            return Ok(());
        }
        for (key, render) in &self.columns {
            let (len, rest) = fields.split_first_chunk::<4>().context("a truncated row")?;
            out.extend_from_slice(key);
            let Ok(len) = usize::try_from(i32::from_be_bytes(*len)) else {
                out.extend_from_slice(b"null");
                fields = rest;
                continue;
            };
            let (value, rest) = rest.split_at_checked(len).context("a truncated row")?;
            render.value(value, out)?;
            fields = rest;
        }
        out.push(b'}');
        Ok(())
    }
}

/// Bytes that `escape_json` escapes: control characters, `"` and `\`.
const ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A JSON string as PostgreSQL's `escape_json` writes it: the short escapes where
/// JSON has them, `\u00xx` (lower-case hex) for other control characters, and every
/// other byte (UTF-8 included) as it is.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Julian day number of 2000-01-01, PostgreSQL's epoch for dates and timestamps.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// A julian day number to (year, month, day): PostgreSQL's `j2date`, which also
/// counts years before 1 AD as 0, -1, ...
fn j2date(jd: i64) -> (i64, u32, u32) {
    let mut julian = jd + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = (if y != 0 { (julian + 305) % 365 } else { (julian + 306) % 366 }) + 123;
    y += quad * 4;
    let quad = julian * 2141 / 65536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (y - 4800, month as u32, day as u32)
}

/// `YYYY-MM-DD` (at least four year digits), then ` BC` for years before 1 AD.
fn ymd(out: &mut Vec<u8>, (year, month, day): (i64, u32, u32)) -> bool {
    let shown = if year > 0 { year } else { 1 - year };
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(shown).as_bytes();
    out.extend(std::iter::repeat_n(b'0', 4usize.saturating_sub(digits.len())));
    out.extend_from_slice(digits);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    year <= 0
}

fn two(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

/// A date (days since 2000-01-01) as `to_json` gives it: `"2024-02-29"`,
/// `"0044-03-15 BC"`, `"infinity"`.
fn date(out: &mut Vec<u8>, days: i32) {
    match days {
        i32::MAX => out.extend_from_slice(b"\"infinity\""),
        i32::MIN => out.extend_from_slice(b"\"-infinity\""),
        _ => {
            out.push(b'"');
            if ymd(out, j2date(i64::from(days) + POSTGRES_EPOCH_JDATE)) {
                out.extend_from_slice(b" BC");
            }
            out.push(b'"');
        }
    }
}

/// A timestamptz (microseconds since 2000-01-01 UTC) as `to_json` gives it in UTC:
/// `"2024-02-29T13:05:09.5+00:00"` (the fraction without trailing zeros, none when
/// it is zero), ` BC` after the offset for years before 1 AD, `"infinity"`.
fn timestamptz(out: &mut Vec<u8>, micros: i64) {
    match micros {
        i64::MAX => out.extend_from_slice(b"\"infinity\""),
        i64::MIN => out.extend_from_slice(b"\"-infinity\""),
        _ => {
            let mut days = micros / USECS_PER_DAY;
            let mut time = micros - days * USECS_PER_DAY;
            if time < 0 {
                time += USECS_PER_DAY;
                days -= 1;
            }
            out.push(b'"');
            let bc = ymd(out, j2date(days + POSTGRES_EPOCH_JDATE));
            let secs = time / 1_000_000;
            let fraction = (time % 1_000_000) as u32;
            out.push(b'T');
            two(out, (secs / 3600) as u32);
            out.push(b':');
            two(out, (secs / 60 % 60) as u32);
            out.push(b':');
            two(out, (secs % 60) as u32);
            if fraction != 0 {
                let mut digits = [b'0'; 6];
                let mut f = fraction;
                for d in digits.iter_mut().rev() {
                    *d = b'0' + (f % 10) as u8;
                    f /= 10;
                }
                let keep = 6 - digits.iter().rev().take_while(|d| **d == b'0').count();
                out.push(b'.');
                out.extend_from_slice(&digits[..keep]);
            }
            out.extend_from_slice(b"+00:00");
            if bc {
                out.extend_from_slice(b" BC");
            }
            out.push(b'"');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: Render, v: &[u8]) -> String {
        let mut out = Vec::new();
        r.value(v, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_postgresql_escapes_them() {
        let mut out = Vec::new();
        string(&mut out, "a\"b\\c\n\r\t\x08\x0c\x01\x1f é ✓ </script>".as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\n\r\t\b\f\u0001\u001f é ✓ </script>""#);
    }

    #[test]
    fn dates_and_times_follow_to_json() {
        let day = |s: &str| {
            let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
            (d - chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()).num_days() as i32
        };
        assert_eq!(render(Render::Date, &day("2024-02-29").to_be_bytes()), "\"2024-02-29\"");
        assert_eq!(render(Render::Date, &day("1999-12-31").to_be_bytes()), "\"1999-12-31\"");
        assert_eq!(render(Render::Date, &i32::MAX.to_be_bytes()), "\"infinity\"");
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros() - 946_684_800_000_000;
        assert_eq!(
            render(Render::TimestampTz, &at("2024-02-29T13:05:09Z").to_be_bytes()),
            "\"2024-02-29T13:05:09+00:00\""
        );
        assert_eq!(
            render(Render::TimestampTz, &at("1969-07-20T20:17:40.120Z").to_be_bytes()),
            "\"1969-07-20T20:17:40.12+00:00\""
        );
        assert_eq!(render(Render::TimestampTz, &(-1i64).to_be_bytes()), "\"1999-12-31T23:59:59.999999+00:00\"");
        assert_eq!(render(Render::TimestampTz, &i64::MIN.to_be_bytes()), "\"-infinity\"");
    }

    #[test]
    fn rows_have_keys_nulls_and_refuse_malformed_tuples() {
        let f = RowFormat::new([("id", Render::Int8), ("na\"me", Render::Text), ("on", Render::Bool)]);
        let mut fields = Vec::new();
        fields.extend_from_slice(&8i32.to_be_bytes());
        fields.extend_from_slice(&(-42i64).to_be_bytes());
        fields.extend_from_slice(&(-1i32).to_be_bytes());
        fields.extend_from_slice(&1i32.to_be_bytes());
        fields.push(1);
        let mut out = Vec::new();
        f.render(3, &fields, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"id":-42,"na\"me":null,"on":true}"#);
        let mut out = Vec::new();
        assert!(f.render(2, &fields, &mut out).is_err(), "wrong column count");
        assert!(f.render(3, &fields[..fields.len() - 1], &mut out).is_err(), "truncated");
        assert!(Render::Int4.value(&[0, 1], &mut out).is_err(), "wrong width");
        assert!(Render::Jsonb.value(b"\x02{}", &mut out).is_err(), "unknown jsonb version");
    }
}
