//! Organizations: slugs, roles, modules, provisioning (with the org's bucket).

pub mod modules;

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

/// The org with `slug`, the role of `user_id` in it and the keys of its modules that
/// are on, if the user belongs to it.
pub async fn find_with_role(
    pool: &PgPool,
    slug: &OrgSlug,
    user_id: i64,
) -> sqlx::Result<Option<(Org, String, Vec<String>)>> {
    // The modules that are on come in the same round trip: every org-scoped page
    // checks one, and the history is polled every 2 s while an export runs.
    let row: Option<(i64, String, String, String, String, Vec<String>)> = sqlx::query_as(
        "select o.id, o.slug, o.name, o.bucket, m.role,
                array(select om.module from org_modules om where om.org_id = o.id and om.enabled order by om.module)
         from organizations o join memberships m on m.org_id = o.id
         where o.slug = $1 and m.user_id = $2 and m.status = 'active'",
    )
    .bind(slug.as_str())
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, slug, name, bucket, role, modules)| (Org { id, slug, name, bucket }, role, modules)))
}

/// The orgs a user belongs to, for navigation: (slug, name, role).
pub async fn memberships_of(pool: &PgPool, user_id: i64) -> sqlx::Result<Vec<(String, String, String)>> {
    sqlx::query_as(
        "select o.slug, o.name, m.role from memberships m join organizations o on o.id = m.org_id
         where m.user_id = $1 and m.status = 'active' order by o.name",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
}

/// The bucket name for an org slug.
pub fn bucket_for(slug: &OrgSlug) -> String {
    format!("org-{}", slug.as_str())
}

/// Creates an org (or returns the existing one with that slug) and its bucket.
pub async fn provision(pool: &PgPool, storage: &Storage, slug: &OrgSlug, name: &str) -> anyhow::Result<Org> {
    let bucket = bucket_for(slug);
    let org: Org = sqlx::query_as(
        "insert into organizations (slug, name, bucket) values ($1, $2, $3)
         on conflict (slug) do update set name = excluded.name
         returning id, slug, name, bucket",
    )
    .bind(slug.as_str())
    .bind(name)
    .bind(&bucket)
    .fetch_one(pool)
    .await?;
    storage.ensure_bucket(&org.bucket).await?;
    Ok(org)
}

/// Writes an audit entry.
pub async fn audit<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    org_id: Option<i64>,
    actor: Option<i64>,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("insert into audit_log (org_id, actor_user_id, action, target, details) values ($1, $2, $3, $4, $5)")
        .bind(org_id)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(details)
        .execute(db)
        .await?;
    Ok(())
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
