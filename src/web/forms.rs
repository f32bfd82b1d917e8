//! Form fields: a form's pairs, refusing any field the handler does not expect or
//! that repeats, so a client that thinks it is sending an option learns it is not.

use crate::auth::csrf;

/// The form's fields, refusing any it does not expect or that repeats (and ignoring
/// the CSRF token).
pub fn fields(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        if k == csrf::FIELD {
            continue;
        }
        if !allowed.contains(&k.as_str()) || out.iter().any(|(seen, _): &(String, String)| *seen == k) {
            return Err(format!("Unexpected form field {k:?}; nothing was changed."));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// The value of one field from [`fields`].
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
