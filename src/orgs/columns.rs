//! Every column of every section's table, classified: `exported`, `secret` (never
//! written) or `pseudonymised` (written through a rule in org snapshots; see
//! docs/snapshot-format.md). The org snapshot, the data-subject export and restore
//! all read columns through this one registry; a column it does not name is never
//! written, and a test compares it with the migrated schema both ways.

use crate::snapshot::columns::{
    Class::{self, Exported as E, Pseudonymised as P, Secret as S},
    Classes,
};

// Whether the vote's election is an open ballot: `e.ballot = 'open'`, where `e` is
// the vote's election, joined by [`VOTE_JOIN`]. (A join rather than a subquery per
// rule: four subqueries per vote took 1.2 s for 125,000 votes, the join 0.3 s.)

/// The vote's election, for the rules below; a key, so one row per vote. An election
/// of another org (which no foreign key rules out) counts as a secret ballot.
const VOTE_JOIN: &str = "left join elections e on e.id = t.election_id and e.org_id = t.org_id";
/// A vote's voter, in an org snapshot: kept for open ballots, null for secret ones.
const VOTER: &str = "case when e.ballot = 'open' then t.voter_user_id end";
/// When a vote was cast, in an org snapshot: kept for open ballots, null for secret
/// ones (a time could be joined with audit entries, sign-ins or participation).
const CAST_AT: &str = "case when e.ballot = 'open' then t.cast_at end";
/// Votes in an org snapshot, in an order that says nothing about who cast them or
/// when: by election and choice; open ballots then by their stored id.
const VOTE_ORDER: &str = "t.election_id, t.choice, case when e.ballot = 'open' then t.id end";
/// A vote's id in an org snapshot: its place in [`VOTE_ORDER`] (stored ids follow
/// the order votes were cast in).
const VOTE_ID: &str = "row_number() over (order by t.election_id, t.choice, case when e.ballot = 'open' then t.id end)";

const fn table(table: &'static str, columns: &'static [(&'static str, Class)]) -> Classes {
    Classes { table, columns, order: None, join: None }
}

/// Tables that are not sections but whose rows a file writes: the org's own row
/// (`organization` in an org snapshot) and the account (`subject` in a data-subject
/// file).
pub const ALSO_WRITTEN: &[&str] = &["organizations", "users"];

/// The registry: one entry per section table (the sections of
/// [`super::sections::SECTIONS`]) and per table of [`ALSO_WRITTEN`], every column of
/// each.
pub const REGISTRY: &[Classes] = &[
    // The bucket's last check is the platform's bookkeeping (its error may name the
    // endpoint), not the org's record: it never leaves; nor does the closing's.
    table(
        "organizations",
        &[
            ("id", E),
            ("slug", E),
            ("name", E),
            ("bucket", E),
            ("created_at", E),
            ("bucket_state", S),
            ("bucket_error", S),
            ("bucket_checked_at", S),
            // The closing's bookkeeping (docs/runbooks/offboarding.md) is the
            // platform's, like the bucket's: who asked, the receipt.
            ("lifecycle", S),
            ("close_requested_at", S),
            ("close_requested_by", S),
            ("close_requested_by_email", S),
            ("close_via", S),
            ("close_grace_days", S),
            ("final_export_id", S),
            ("close_after", S),
            ("close_error", S),
            ("erased_at", S),
            ("close_receipt", S),
            ("bucket_removed_at", S),
        ],
    ),
    // The password hash is an argon2id PHC string: it never leaves.
    table("users", &[("id", E), ("email", E), ("display_name", E), ("password_hash", S), ("created_at", E)]),
    table("regions", &[("id", E), ("org_id", E), ("code", E), ("name", E), ("created_at", E)]),
    table("chapters", &[("id", E), ("org_id", E), ("region_id", E), ("name", E), ("city", E), ("founded_on", E)]),
    table(
        "memberships",
        &[
            ("id", E),
            ("org_id", E),
            ("user_id", E),
            ("role", E),
            ("status", E),
            ("chapter_id", E),
            ("member_no", E),
            ("joined_on", E),
            ("renews_on", E),
        ],
    ),
    table(
        "user_profiles",
        &[
            ("id", E),
            ("org_id", E),
            ("user_id", E),
            ("first_name", E),
            ("last_name", E),
            ("email", E),
            ("phone", E),
            ("city", E),
            ("country", E),
            ("bio", E),
            ("updated_at", E),
        ],
    ),
    table("custom_fields", &[("id", E), ("org_id", E), ("key", E), ("label", E), ("field_type", E), ("required", E)]),
    table("custom_field_values", &[("id", E), ("org_id", E), ("field_id", E), ("membership_id", E), ("value", E)]),
    table(
        "saved_views",
        &[("id", E), ("org_id", E), ("owner_user_id", E), ("name", E), ("filters", E), ("created_at", E)],
    ),
    table(
        "member_enrichment",
        &[("id", E), ("org_id", E), ("membership_id", E), ("source", E), ("data", E), ("enriched_at", E)],
    ),
    table(
        "documents",
        &[
            ("id", E),
            ("org_id", E),
            ("uploaded_by", E),
            ("title", E),
            ("content_type", E),
            ("size_bytes", E),
            ("object_key", E),
            ("created_at", E),
        ],
    ),
    table(
        "audit_log",
        &[
            ("id", E),
            ("org_id", E),
            ("actor_user_id", E),
            ("action", E),
            ("target", E),
            ("details", E),
            ("created_at", E),
        ],
    ),
    table(
        "forum_posts",
        &[("id", E), ("org_id", E), ("author_user_id", E), ("title", E), ("body", E), ("pinned", E), ("created_at", E)],
    ),
    table(
        "forum_comments",
        &[("id", E), ("org_id", E), ("post_id", E), ("author_user_id", E), ("body", E), ("created_at", E)],
    ),
    table(
        "compliance_records",
        &[
            ("id", E),
            ("org_id", E),
            ("membership_id", E),
            ("kind", E),
            ("status", E),
            ("due_on", E),
            ("completed_on", E),
        ],
    ),
    table("elections", &[("id", E), ("org_id", E), ("title", E), ("opens_at", E), ("closes_at", E), ("ballot", E)]),
    // Who took part, without what they chose (kept apart from the votes on purpose).
    table("election_participants", &[("id", E), ("org_id", E), ("election_id", E), ("user_id", E)]),
    Classes {
        table: "election_votes",
        columns: &[
            ("id", P(VOTE_ID)),
            ("org_id", E),
            ("election_id", E),
            ("voter_user_id", P(VOTER)),
            ("choice", E),
            ("cast_at", P(CAST_AT)),
        ],
        order: Some(VOTE_ORDER),
        join: Some(VOTE_JOIN),
    },
    table(
        "invoices",
        &[
            ("id", E),
            ("org_id", E),
            ("membership_id", E),
            ("number", E),
            ("issued_on", E),
            ("due_on", E),
            ("total_cents", E),
            ("currency", E),
            ("status", E),
        ],
    ),
    table(
        "invoice_lines",
        &[("id", E), ("org_id", E), ("invoice_id", E), ("description", E), ("quantity", E), ("unit_cents", E)],
    ),
    table(
        "payments",
        &[
            ("id", E),
            ("org_id", E),
            ("invoice_id", E),
            ("amount_cents", E),
            ("method", E),
            ("reference", E),
            ("paid_at", E),
        ],
    ),
    table("foundation_funds", &[("id", E), ("org_id", E), ("name", E), ("purpose", E), ("target_cents", E)]),
    // `anonymous` hides the donor from other members, not from the org: receipts
    // need the donor, so donor ids are exported (docs/snapshot-format.md).
    table(
        "donations",
        &[
            ("id", E),
            ("org_id", E),
            ("fund_id", E),
            ("donor_user_id", E),
            ("amount_cents", E),
            ("anonymous", E),
            ("donated_at", E),
        ],
    ),
    table("courses", &[("id", E), ("org_id", E), ("title", E), ("description", E), ("credits", E)]),
    table(
        "enrollments",
        &[
            ("id", E),
            ("org_id", E),
            ("course_id", E),
            ("user_id", E),
            ("status", E),
            ("enrolled_at", E),
            ("completed_at", E),
        ],
    ),
    table(
        "alumni_profiles",
        &[("id", E), ("org_id", E), ("user_id", E), ("graduation_year", E), ("employer", E), ("job_title", E)],
    ),
    table(
        "career_postings",
        &[
            ("id", E),
            ("org_id", E),
            ("posted_by", E),
            ("title", E),
            ("company", E),
            ("location", E),
            ("description", E),
            ("posted_at", E),
        ],
    ),
];

/// The classification of a section's table.
///
/// # Panics
/// When `table` is not in the registry: every section is (a unit test checks it).
pub fn of(table: &str) -> &'static Classes {
    REGISTRY.iter().find(|c| c.table == table).unwrap_or_else(|| panic!("table {table} is not in the column registry"))
}

/// (columns, tables, exported, secret, pseudonymised) over the registry.
pub fn figures() -> (usize, usize, usize, usize, usize) {
    let all = REGISTRY.iter().flat_map(|t| t.columns.iter().map(|(_, c)| *c));
    let (mut e, mut s, mut p) = (0, 0, 0);
    for c in all {
        match c {
            Class::Exported => e += 1,
            Class::Secret => s += 1,
            Class::Pseudonymised(_) => p += 1,
        }
    }
    (e + s + p, REGISTRY.len(), e, s, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orgs::sections::SECTIONS;

    #[test]
    fn every_section_and_only_written_tables_are_classified_once() {
        for s in SECTIONS {
            assert_eq!(REGISTRY.iter().filter(|c| c.table == s.table).count(), 1, "{}", s.table);
        }
        for c in REGISTRY {
            assert!(
                SECTIONS.iter().any(|s| s.table == c.table) || ALSO_WRITTEN.contains(&c.table),
                "{} is not a section",
                c.table
            );
            let mut names: Vec<&str> = c.columns.iter().map(|(n, _)| *n).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), c.columns.len(), "{}: a column is classified twice", c.table);
            assert_eq!(c.columns[0].0, "id", "{}: restore needs the id first", c.table);
        }
    }
}
