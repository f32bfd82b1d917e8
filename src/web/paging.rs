//! Keyset paging from the query string: `?limit=N&before=ID`, newest first, each
//! page starting below the last id of the one before it.

use super::path::RecordId;
use crate::error::AppError;

/// Where a page starts and how long it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub limit: i64,
    /// Only what is older than this record.
    pub before: Option<RecordId>,
}

impl Cursor {
    /// Reads `limit` (1..=`max`, else `default`) and `before` (a record id) from a raw
    /// query string; other parameters are left to their handler. A value that is
    /// given but malformed is refused with what is expected.
    pub fn parse(query: Option<&str>, default: i64, max: i64) -> Result<Self, AppError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|_| AppError::BadRequest("The query string is malformed.".into()))?;
        let value = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let limit = match value("limit") {
            None | Some("") => default,
            Some(raw) => raw.parse::<i64>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
                AppError::BadRequest(format!("limit must be a whole number from 1 to {max} (got {raw:?})."))
            })?,
        };
        let before = match value("before") {
            None | Some("") => None,
            Some(raw) => Some(RecordId::parse(raw).ok_or_else(|| {
                AppError::BadRequest(format!("before must be the id of a record from the list (got {raw:?})."))
            })?),
        };
        Ok(Self { limit, before })
    }

    /// [`Self::parse`] for a page of fixed length, `limit` (the UI's histories): a
    /// `limit` in the query is still checked, but the page is always this long.
    pub fn fixed(query: Option<&str>, limit: i64) -> Result<Self, AppError> {
        Self::parse(query, limit, limit).map(|c| Self { limit, ..c })
    }

    /// The first page, `limit` long.
    pub fn first(limit: i64) -> Self {
        Self { limit, before: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01JDXM5Z8Q9V3W4X5Y6Z7A8B9C";

    #[test]
    fn reads_limit_and_before_and_refuses_what_is_malformed() {
        assert_eq!(Cursor::parse(None, 100, 500).unwrap(), Cursor { limit: 100, before: None });
        let c = Cursor::parse(Some(&format!("limit=7&before={ID}&x=1")), 100, 500).unwrap();
        assert_eq!((c.limit, c.before.unwrap().as_str()), (7, ID));
        assert_eq!(Cursor::parse(Some("limit=&before="), 100, 500).unwrap(), Cursor { limit: 100, before: None });
        for bad in ["limit=0", "limit=501", "limit=-1", "limit=abc", "limit=1e3", "before=nope", "before=../x"] {
            let e = Cursor::parse(Some(bad), 100, 500).unwrap_err();
            assert!(matches!(e, AppError::BadRequest(_)), "{bad}: {e:?}");
        }
    }
}
