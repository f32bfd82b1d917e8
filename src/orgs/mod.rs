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

/// A user's place in one org: the org, their role and the keys of its modules that are on.
pub type Membership = (Org, String, Vec<String>);

/// The user `user_id` and, if they belong to the org `slug`, their [`Membership`]
/// there, in one round trip: every org-scoped page needs both, and a running
/// export's row is polled every 2 s. `None` when there is no such user.
pub async fn user_with_membership(
    pool: &PgPool,
    user_id: i64,
    slug: &OrgSlug,
) -> sqlx::Result<Option<(crate::auth::User, Option<Membership>)>> {
    type Row = (
        i64,
        String,
        String,
        bool,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Vec<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "select u.id, u.email, u.display_name,
                exists (select 1 from platform_admins p where p.user_id = u.id),
                o.id, o.slug, o.name, o.bucket, m.role,
                array(select om.module from org_modules om where om.org_id = o.id and om.enabled order by om.module)
         from users u
         left join (organizations o join memberships m on m.org_id = o.id and m.status = 'active')
                on o.slug = $2 and m.user_id = u.id
         where u.id = $1",
    )
    .bind(user_id)
    .bind(slug.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(uid, email, display_name, is_platform_admin, id, oslug, name, bucket, role, modules)| {
        let user = crate::auth::User { id: uid, email, display_name, is_platform_admin };
        let membership = match (id, oslug, name, bucket, role) {
            (Some(id), Some(slug), Some(name), Some(bucket), Some(role)) => {
                Some((Org { id, slug, name, bucket }, role, modules))
            }
            _ => None,
        };
        (user, membership)
    }))
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
