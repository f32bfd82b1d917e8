//! The org snapshot (`data-export/snapshot`, version 1; docs/snapshot-format.md):
//! what the engine reads for one org, and what the file's header says.

use anyhow::Context;
use sqlx::PgPool;

use crate::{
    orgs::{columns, modules, sections},
    snapshot::{
        Header, Reader, SectionQuery, Snapshot,
        columns::{Apply, select_list},
        sink::Label,
    },
};

/// The file's `format`.
pub const FORMAT: &str = "data-export/snapshot";

/// What the object's metadata says about an org snapshot.
pub fn label(export_id: &str) -> Label {
    Label { format: "data-export/snapshot;version=1", id_key: "export-id", id: export_id.to_string() }
}

/// Opens the consistent read of `org_id`: its own row, its modules, and a section
/// for each of its tables whose module is on, all counted in the same snapshot.
/// Every column is written as the registry (`orgs::columns`) classifies it, with
/// pseudonymised columns through their rule: org admins read this file.
pub async fn open(pool: &PgPool, org_id: i64) -> anyhow::Result<Snapshot> {
    let mut read = Reader::begin(pool).await?;
    // The org's own row through the registry too (the fixed columns the format
    // documents; an unclassified column is left out like anywhere else).
    let org_columns: Vec<String> = ["id", "slug", "name", "bucket", "created_at"].map(String::from).to_vec();
    let (list, _) = select_list(columns::of("organizations"), &org_columns, Apply::Pseudonyms, &[]);
    let organization: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select row_to_json(o)::text from (select {} from organizations t where t.id = $1) o",
        list.join(", ")
    )))
    .bind(org_id)
    .fetch_optional(read.conn())
    .await?;
    let (organization,) = organization.context("the organization no longer exists")?;
    let modules = modules::states(read.conn(), org_id).await?;
    for s in sections::enabled(&modules) {
        let query = SectionQuery::new(columns::of(s.table), format!("t.org_id = {org_id}"), Apply::Pseudonyms);
        read.add(&query);
    }
    let mut switches = String::from("{\"core\":true");
    for (m, enabled) in &modules {
        switches.push_str(&format!(",\"{}\":{enabled}", m.key()));
    }
    switches.push('}');
    let header = Header {
        format: FORMAT,
        id_key: "export_id",
        fields: vec![("organization", organization.clone()), ("modules", switches)],
        lead: Some(("organization", organization)),
    };
    read.finish(header).await
}
