//! A snapshot row's JSON values as typed cells: what both the CSV and the Parquet
//! writers take. A value that does not fit its column's type is refused with the
//! column's name, so a damaged or foreign file stops the conversion with a reason.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::Value;

use super::types::ColType;

/// One typed value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Bool(bool),
    /// Text, or a numeric's exact decimal text.
    Text(&'a str),
    /// A jsonb value's JSON text, as in the file.
    Json(&'a str),
    /// Days since 1970-01-01 (`i32::MAX` / `i32::MIN`: PostgreSQL's `infinity` / `-infinity`).
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z (`i64::MAX` / `i64::MIN`: `infinity` / `-infinity`).
    Timestamp(i64),
}

/// The cell for `value` (the row's value, parsed one level deep) in a column of type
/// `ty`; `raw` is the value's JSON text (needed for jsonb). `Err` says what is wrong.
pub fn cell<'a>(ty: ColType, value: Option<&'a Value>, raw: Option<&'a str>) -> Result<Cell<'a>, String> {
    let Some(value) = value else { return Ok(Cell::Null) };
    if value.is_null() {
        return Ok(Cell::Null);
    }
    match ty {
        ColType::Int2 | ColType::Int4 | ColType::Int8 => {
            let n = value.as_i64().ok_or_else(|| format!("{} is not a whole number", short(value)))?;
            let fits = match ty {
                ColType::Int2 => i16::try_from(n).is_ok(),
                ColType::Int4 => i32::try_from(n).is_ok(),
                _ => true,
            };
            if !fits {
                return Err(format!("{n} is out of range for a {}", ty.pg_name()));
            }
            Ok(Cell::Int(n))
        }
        ColType::Bool => {
            value.as_bool().map(Cell::Bool).ok_or_else(|| format!("{} is not true or false", short(value)))
        }
        ColType::Text => value.as_str().map(Cell::Text).ok_or_else(|| format!("{} is not a text", short(value))),
        ColType::Numeric => match (value, raw) {
            (Value::Number(_), Some(raw)) => Ok(Cell::Text(raw)),
            // `NaN`, `Infinity`: PostgreSQL's numeric has them, JSON writes them as text.
            (Value::String(s), _) => Ok(Cell::Text(s)),
            _ => Err(format!("{} is not a number", short(value))),
        },
        ColType::Jsonb => raw.map(Cell::Json).ok_or_else(|| "the value's JSON text is missing".to_string()),
        ColType::Date => {
            let s = value.as_str().ok_or_else(|| format!("{} is not a date", short(value)))?;
            date_days(s).map(Cell::Date).ok_or_else(|| format!("{} is not a date (YYYY-MM-DD)", short(value)))
        }
        ColType::TimestampTz => {
            let s = value.as_str().ok_or_else(|| format!("{} is not a time", short(value)))?;
            timestamp_micros(s).map(Cell::Timestamp).ok_or_else(|| format!("{} is not an RFC 3339 time", short(value)))
        }
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 40 { text } else { format!("{}...", text.chars().take(40).collect::<String>()) }
}

/// Splits PostgreSQL's ` BC` suffix off: the text before it, and whether it was there.
fn era(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// `YYYY-MM-DD` (PostgreSQL's `to_json` of a date: also `infinity`, `-infinity` and
/// ` BC` years) as days since 1970-01-01.
pub fn date_days(s: &str) -> Option<i32> {
    match s {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let (s, bc) = era(s);
    let mut d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    if bc {
        // Year n BC is year 1 - n in the proleptic calendar chrono counts in.
        d = chrono::Datelike::with_year(&d, 1 - chrono::Datelike::year(&d))?;
    }
    i32::try_from((d - NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days()).ok()
}

/// An RFC 3339 time with any offset (PostgreSQL's `to_json` of a timestamptz: also
/// `infinity`, `-infinity`, and ` BC` years) as microseconds since the Unix epoch.
pub fn timestamp_micros(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = era(s);
    let mut t = DateTime::parse_from_rfc3339(s).ok()?.with_timezone(&Utc);
    if bc {
        t = chrono::Datelike::with_year(&t, 1 - chrono::Datelike::year(&t))?;
    }
    Some(t.timestamp_micros())
}

/// A date as the CSV writes it: `YYYY-MM-DD`, `infinity`, `-infinity`.
pub fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::TimeDelta::days(i64::from(days))))
            .map_or_else(String::new, |d| d.format("%Y-%m-%d").to_string()),
    }
}

/// A time as the CSV writes it: RFC 3339 in UTC (`2026-12-08T02:04:54.5Z`, the
/// fraction to the millisecond or microsecond, none when whole), `infinity`, `-infinity`.
pub fn timestamp_text(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => DateTime::<Utc>::from_timestamp_micros(micros)
            .map_or_else(String::new, |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_dates_read_as_postgresql_writes_them() {
        let t = timestamp_micros("2024-02-29T13:05:09.5+00:00").unwrap();
        assert_eq!(timestamp_text(t), "2024-02-29T13:05:09.500Z");
        assert_eq!(timestamp_text(timestamp_micros("2024-02-29T14:05:09+01:00").unwrap()), "2024-02-29T13:05:09Z");
        assert_eq!(
            timestamp_text(timestamp_micros("2024-02-29T13:05:09.000001+00:00").unwrap()),
            "2024-02-29T13:05:09.000001Z"
        );
        assert_eq!(timestamp_micros("infinity"), Some(i64::MAX));
        assert_eq!(date_days("1970-01-02"), Some(1));
        assert_eq!(date_text(date_days("2024-02-29").unwrap()), "2024-02-29");
        assert_eq!(date_days("0044-03-15 BC"), date_days("-0043-03-15"));
        assert_eq!(date_days("2024-02-30"), None);
        assert_eq!(timestamp_micros("yesterday"), None);
    }

    #[test]
    fn values_that_do_not_fit_their_column_are_refused() {
        let v = serde_json::json!(70000);
        assert!(cell(ColType::Int2, Some(&v), None).unwrap_err().contains("out of range"));
        assert_eq!(cell(ColType::Int8, Some(&v), None), Ok(Cell::Int(70000)));
        let s = serde_json::json!("x");
        assert!(cell(ColType::Int8, Some(&s), None).unwrap_err().contains("not a whole number"));
        assert!(cell(ColType::Bool, Some(&s), None).is_err());
        assert_eq!(cell(ColType::Text, None, None), Ok(Cell::Null));
        assert_eq!(cell(ColType::Jsonb, Some(&s), Some("\"x\"")), Ok(Cell::Json("\"x\"")));
    }
}
