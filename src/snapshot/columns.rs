//! How each column of a table is written: the classification every section's table
//! must have, column by column. The engine reads a table's columns from the
//! catalog and writes only those its [`Classes`] classify as written: a column
//! that is `secret`, or that the classification does not know (a column a later
//! migration added without classifying it), is left out. Unknown columns are left
//! out with a warning in the log, so the file never gains a column by accident.
//!
//! The classification itself (which table has which columns) belongs to the
//! caller; the engine only applies it.

/// What may happen to a column's values in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Written as stored.
    Exported,
    /// Never written, in any file.
    Secret,
    /// Written, but where a snapshot's reader must not learn the stored value, through
    /// a rule (an SQL expression on the table's alias `t`) that removes what would link
    /// the row to a person. Files that hold only the person's own rows (the
    /// data-subject export) write the stored value.
    Pseudonymised(&'static str),
}

impl Class {
    /// Whether the column appears in a file at all (as stored or through its rule).
    pub fn is_written(self) -> bool {
        !matches!(self, Self::Secret)
    }

    /// The short name used in docs and figures.
    pub fn label(self) -> &'static str {
        match self {
            Self::Exported => "exported",
            Self::Secret => "secret",
            Self::Pseudonymised(_) => "pseudonymised",
        }
    }
}

/// One table's columns, each with its class.
#[derive(Debug)]
pub struct Classes {
    pub table: &'static str,
    pub columns: &'static [(&'static str, Class)],
    /// The rows' order where pseudonymised columns are applied, when the stored order
    /// (insertion order, so often the order of events) would itself link rows to
    /// people. An SQL `order by` list on alias `t`.
    pub order: Option<&'static str>,
    /// A join the rules and the order need where pseudonymised columns are applied
    /// (e.g. `left join elections e on e.id = t.election_id`). It must match at most
    /// one row for each row of `t`, as a left join on a key does.
    pub join: Option<&'static str>,
}

impl Classes {
    /// The class of `column`, or `None` when it is not classified.
    pub fn class(&self, column: &str) -> Option<Class> {
        self.columns.iter().find(|(c, _)| *c == column).map(|(_, class)| *class)
    }
}

/// How a section's columns become its select list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// Pseudonymised columns go through their rule (a snapshot others read).
    Pseudonyms,
    /// Pseudonymised columns are written as stored (the person's own rows).
    AsStored,
}

/// The select list (on alias `t`) for a table whose catalog columns, in order, are
/// `catalog`: written columns in catalog order, each as stored, through its rule or
/// through the caller's `overrides` (an expression replacing an exported column's
/// value). Returns the list and the columns left out because they are not classified.
pub fn select_list(
    classes: &Classes,
    catalog: &[String],
    apply: Apply,
    overrides: &[(&'static str, String)],
) -> (Vec<String>, Vec<String>) {
    let mut list = Vec::new();
    let mut unclassified = Vec::new();
    for name in catalog {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let plain = format!("t.{quoted}");
        match classes.class(name) {
            None => unclassified.push(name.clone()),
            Some(Class::Secret) => {}
            Some(Class::Exported) => match overrides.iter().find(|(c, _)| c == name) {
                Some((_, expr)) => list.push(format!("({expr}) as {quoted}")),
                None => list.push(plain),
            },
            Some(Class::Pseudonymised(rule)) => match apply {
                Apply::Pseudonyms => list.push(format!("({rule}) as {quoted}")),
                Apply::AsStored => list.push(plain),
            },
        }
    }
    (list, unclassified)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Classes = Classes {
        table: "t",
        columns: &[("id", Class::Exported), ("pw", Class::Secret), ("who", Class::Pseudonymised("null"))],
        order: None,
        join: None,
    };

    #[test]
    fn only_classified_written_columns_are_selected() {
        let catalog: Vec<String> = ["id", "pw", "who", "api_key"].map(String::from).to_vec();
        let (list, unknown) = select_list(&T, &catalog, Apply::Pseudonyms, &[]);
        assert_eq!(list, ["t.\"id\"", "(null) as \"who\""]);
        assert_eq!(unknown, ["api_key"]);
        let (list, _) = select_list(&T, &catalog, Apply::AsStored, &[("id", "t.id + 1".into())]);
        assert_eq!(list, ["(t.id + 1) as \"id\"", "t.\"who\""]);
    }
}
