//! Organizations: slugs, roles, modules, the org's tables (the snapshot's sections)
//! and how each of their columns is written,
//! and provisioning (with the org's bucket).

pub mod columns;
pub mod modules;
pub mod sections;

use serde::Serialize;
use sqlx::PgPool;

use crate::storage::Storage;

/// An organization.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Org {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub bucket: String,
}

/// A validated org slug: 3 to 40 of `a-z 0-9 -`, not starting or ending with `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgSlug(String);

impl OrgSlug {
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
        let valid =
            (3..=40).contains(&b.len()) && b.iter().all(ok_char) && b.first() != Some(&b'-') && b.last() != Some(&b'-');
        valid.then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A member's role within an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Admin => "Org admin",
            Self::Member => "Member",
        }
    }
}

/// The org with `slug`.
pub async fn find_by_slug(pool: &PgPool, slug: &str) -> sqlx::Result<Option<Org>> {
    sqlx::query_as("select id, slug, name, bucket from organizations where slug = $1")
        .bind(slug)
        .fetch_optional(pool)
        .await
}

/// The org with `id`.
pub async fn find_by_id(pool: &PgPool, id: i64) -> sqlx::Result<Option<Org>> {
    sqlx::query_as("select id, slug, name, bucket from organizations where id = $1").bind(id).fetch_optional(pool).await
}

/// One of a user's orgs, as navigation shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrgLink {
    pub slug: String,
    pub name: String,
    pub role: String,
    /// Whether the org has Data Export on (its Backups & Export page exists only then).
    pub data_export: bool,
    /// Whether the org is closing: its admins see only its Close page, its
    /// members no longer see it (docs/runbooks/offboarding.md).
    pub closing: bool,
}

impl OrgLink {
    pub fn is_admin(&self) -> bool {
        Role::parse(&self.role) == Some(Role::Admin)
    }
}

/// The orgs a user belongs to, for navigation: the active ones, and those closing
/// (so the home page can say so).
pub async fn memberships_of(pool: &PgPool, user_id: i64) -> sqlx::Result<Vec<OrgLink>> {
    sqlx::query_as(
        "select o.slug, o.name, m.role,
                exists (select 1 from org_modules om where om.org_id = o.id and om.module = 'data_export' and om.enabled)
                  as data_export,
                o.lifecycle = 'closing' as closing
         from memberships m join organizations o on o.id = m.org_id
         where m.user_id = $1 and m.status = 'active' and o.lifecycle in ('active', 'closing') order by o.name",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
}

/// Why the org's exports are refused because of its bucket, if they are: its last
/// check failed (`bucket_state` = `failing`).
pub async fn bucket_refusal(pool: &PgPool, org_id: i64) -> sqlx::Result<Option<String>> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("select bucket_state, bucket_error from organizations where id = $1")
            .bind(org_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.filter(|(state, _)| state == "failing").map(|(_, error)| {
        // The reason in plain words; the error itself (which may name the endpoint)
        // is for platform admins, on the organization list.
        let why = if error.as_deref().is_some_and(|e| e.contains("belongs to another account")) {
            "its bucket's name is taken by another storage account"
        } else {
            "its bucket could not be written to and read back"
        };
        format!(
            "This organization's exports are paused: at its last check, {why}. It is checked again every 10 minutes; \
             a platform admin can see the details on the organization list."
        )
    }))
}

/// The bucket name for an org slug: `BUCKET_PREFIX` + the slug.
pub fn bucket_for(storage: &Storage, slug: &OrgSlug) -> String {
    format!("{}{}", storage.bucket_prefix(), slug.as_str())
}

/// Why `slug` cannot be given to a new org because an org that had it was closed
/// (its row stays as a tombstone, and its slug is never reused), if it was.
pub async fn closed_slug_refusal(pool: &PgPool, slug: &str) -> sqlx::Result<Option<String>> {
    let closed: Option<(String,)> =
        sqlx::query_as("select lifecycle from organizations where slug = $1 and lifecycle <> 'active'")
            .bind(slug)
            .fetch_optional(pool)
            .await?;
    Ok(closed.map(|(lifecycle,)| {
        format!(
            "the slug {slug:?} belonged to an organization that was {} (closing an organization is for good); \
             the slugs of closed organizations are never reused: choose another",
            if lifecycle == "closing" { "closed and is being erased" } else { "closed and erased" }
        )
    }))
}

/// Creates an org (or returns the existing one with that slug) and its bucket. The
/// slug of a closed org is refused ([`closed_slug_refusal`]).
pub async fn provision(pool: &PgPool, storage: &Storage, slug: &OrgSlug, name: &str) -> anyhow::Result<Org> {
    if let Some(why) = closed_slug_refusal(pool, slug.as_str()).await? {
        anyhow::bail!("{why}");
    }
    let bucket = bucket_for(storage, slug);
    let org: Option<Org> = sqlx::query_as(
        "insert into organizations (slug, name, bucket) values ($1, $2, $3)
         on conflict (slug) do update set name = excluded.name where organizations.lifecycle = 'active'
         returning id, slug, name, bucket",
    )
    .bind(slug.as_str())
    .bind(name)
    .bind(&bucket)
    .fetch_optional(pool)
    .await?;
    // Closed between the check and the insert.
    let Some(org) = org else {
        anyhow::bail!("the slug {:?} belongs to an organization that was closed; choose another", slug.as_str());
    };
    if let Err(e) = storage.ensure_bucket(&org.bucket).await {
        // The org exists, but its exports stay refused until its bucket is fixed
        // and checked again (never written to a bucket that is not ours).
        let error: String = format!("{e:#}").chars().take(2000).collect();
        sqlx::query(
            "update organizations set bucket_state = 'failing', bucket_error = $2, bucket_checked_at = now() where id = $1",
        )
        .bind(org.id)
        .bind(&error)
        .execute(pool)
        .await?;
        return Err(e);
    }
    Ok(org)
}

#[cfg(test)]
mod tests {
    use super::OrgSlug;

    #[test]
    fn slugs() {
        for ok in ["acme", "globex", "a-1", "abc", "x".repeat(40).as_str()] {
            assert!(OrgSlug::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "ab", "-abc", "abc-", "ABC", "a_b", "a b", "ä-org", "../x", &"x".repeat(41), "acme/"] {
            assert!(OrgSlug::parse(bad).is_none(), "{bad}");
        }
    }
}
