//! The type of every column a version-1 snapshot may hold, section by section, in
//! the order of the table's columns in the catalog: what the tables of a converted
//! snapshot are typed by. A snapshot carries its rows as JSON, which cannot tell a
//! `bigint` from a `numeric` nor a `timestamptz` from a `text`; the types are part of
//! format version 1 and listed here once. A test (`tables::the_types_are_the_catalogs`
//! in tests/api/tables.rs) compares this list with the migrated schema and the column
//! registry (`orgs::columns::REGISTRY`) both ways, so a migration that adds, drops or
//! retypes a written column fails the suite until it is listed here too.

/// A column's type as PostgreSQL has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    Int2,
    Int4,
    Int8,
    Bool,
    Text,
    Jsonb,
    Date,
    TimestampTz,
    /// `numeric`: written as its exact decimal text (a Parquet string), since an
    /// unconstrained numeric has no fixed precision and scale.
    Numeric,
}

impl ColType {
    /// The PostgreSQL name (`format_type`), as the manifest and the docs say it.
    pub fn pg_name(self) -> &'static str {
        match self {
            Self::Int2 => "smallint",
            Self::Int4 => "integer",
            Self::Int8 => "bigint",
            Self::Bool => "boolean",
            Self::Text => "text",
            Self::Jsonb => "jsonb",
            Self::Date => "date",
            Self::TimestampTz => "timestamp with time zone",
            Self::Numeric => "numeric",
        }
    }

    /// The Parquet type a column of this type is written as (physical, then logical).
    pub fn parquet_name(self) -> &'static str {
        match self {
            Self::Int2 => "INT32 (INTEGER(16, signed))",
            Self::Int4 => "INT32",
            Self::Int8 => "INT64",
            Self::Bool => "BOOLEAN",
            Self::Text | Self::Numeric => "BYTE_ARRAY (STRING)",
            Self::Jsonb => "BYTE_ARRAY (JSON)",
            Self::Date => "INT32 (DATE)",
            Self::TimestampTz => "INT64 (TIMESTAMP(MICROS, UTC))",
        }
    }
}

/// One section's columns, in catalog order.
#[derive(Debug)]
pub struct Table {
    pub section: &'static str,
    pub columns: &'static [(&'static str, ColType)],
}

const fn table(section: &'static str, columns: &'static [(&'static str, ColType)]) -> Table {
    Table { section, columns }
}

/// The table of `section`, or `None` for a name the format does not have.
pub fn of(section: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.section == section)
}

use ColType::*;

/// Every section of format version 1 (`organization` first, then snapshot order), with
/// the columns a snapshot writes (classified `exported` or `pseudonymised`).
pub const TABLES: &[Table] = &[
    table(
        "organization",
        &[("id", Int8), ("slug", Text), ("name", Text), ("bucket", Text), ("created_at", TimestampTz)],
    ),
    table("regions", &[("id", Int8), ("org_id", Int8), ("code", Text), ("name", Text), ("created_at", TimestampTz)]),
    table(
        "chapters",
        &[("id", Int8), ("org_id", Int8), ("region_id", Int8), ("name", Text), ("city", Text), ("founded_on", Date)],
    ),
    table(
        "memberships",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("user_id", Int8),
            ("role", Text),
            ("status", Text),
            ("chapter_id", Int8),
            ("member_no", Text),
            ("joined_on", Date),
            ("renews_on", Date),
        ],
    ),
    table(
        "user_profiles",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("user_id", Int8),
            ("first_name", Text),
            ("last_name", Text),
            ("email", Text),
            ("phone", Text),
            ("city", Text),
            ("country", Text),
            ("bio", Text),
            ("updated_at", TimestampTz),
        ],
    ),
    table(
        "custom_fields",
        &[("id", Int8), ("org_id", Int8), ("key", Text), ("label", Text), ("field_type", Text), ("required", Bool)],
    ),
    table(
        "custom_field_values",
        &[("id", Int8), ("org_id", Int8), ("field_id", Int8), ("membership_id", Int8), ("value", Text)],
    ),
    table(
        "saved_views",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("owner_user_id", Int8),
            ("name", Text),
            ("filters", Jsonb),
            ("created_at", TimestampTz),
        ],
    ),
    table(
        "member_enrichment",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("membership_id", Int8),
            ("source", Text),
            ("data", Jsonb),
            ("enriched_at", TimestampTz),
        ],
    ),
    table(
        "documents",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("uploaded_by", Int8),
            ("title", Text),
            ("content_type", Text),
            ("size_bytes", Int8),
            ("object_key", Text),
            ("created_at", TimestampTz),
        ],
    ),
    table(
        "audit_log",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("actor_user_id", Int8),
            ("action", Text),
            ("target", Text),
            ("details", Jsonb),
            ("created_at", TimestampTz),
        ],
    ),
    table(
        "forum_posts",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("author_user_id", Int8),
            ("title", Text),
            ("body", Text),
            ("pinned", Bool),
            ("created_at", TimestampTz),
        ],
    ),
    table(
        "forum_comments",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("post_id", Int8),
            ("author_user_id", Int8),
            ("body", Text),
            ("created_at", TimestampTz),
        ],
    ),
    table(
        "compliance_records",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("membership_id", Int8),
            ("kind", Text),
            ("status", Text),
            ("due_on", Date),
            ("completed_on", Date),
        ],
    ),
    table(
        "elections",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("title", Text),
            ("opens_at", TimestampTz),
            ("closes_at", TimestampTz),
            ("ballot", Text),
        ],
    ),
    table("election_participants", &[("id", Int8), ("org_id", Int8), ("election_id", Int8), ("user_id", Int8)]),
    table(
        "election_votes",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("election_id", Int8),
            ("voter_user_id", Int8),
            ("choice", Text),
            ("cast_at", TimestampTz),
        ],
    ),
    table(
        "invoices",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("membership_id", Int8),
            ("number", Text),
            ("issued_on", Date),
            ("due_on", Date),
            ("total_cents", Int8),
            ("currency", Text),
            ("status", Text),
        ],
    ),
    table(
        "invoice_lines",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("invoice_id", Int8),
            ("description", Text),
            ("quantity", Int4),
            ("unit_cents", Int8),
        ],
    ),
    table(
        "payments",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("invoice_id", Int8),
            ("amount_cents", Int8),
            ("method", Text),
            ("reference", Text),
            ("paid_at", TimestampTz),
        ],
    ),
    table(
        "foundation_funds",
        &[("id", Int8), ("org_id", Int8), ("name", Text), ("purpose", Text), ("target_cents", Int8)],
    ),
    table(
        "donations",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("fund_id", Int8),
            ("donor_user_id", Int8),
            ("amount_cents", Int8),
            ("anonymous", Bool),
            ("donated_at", TimestampTz),
        ],
    ),
    table("courses", &[("id", Int8), ("org_id", Int8), ("title", Text), ("description", Text), ("credits", Int4)]),
    table(
        "enrollments",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("course_id", Int8),
            ("user_id", Int8),
            ("status", Text),
            ("enrolled_at", TimestampTz),
            ("completed_at", TimestampTz),
        ],
    ),
    table(
        "alumni_profiles",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("user_id", Int8),
            ("graduation_year", Int4),
            ("employer", Text),
            ("job_title", Text),
        ],
    ),
    table(
        "career_postings",
        &[
            ("id", Int8),
            ("org_id", Int8),
            ("posted_by", Int8),
            ("title", Text),
            ("company", Text),
            ("location", Text),
            ("description", Text),
            ("posted_at", TimestampTz),
        ],
    ),
];
