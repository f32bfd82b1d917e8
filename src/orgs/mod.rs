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

// The user and their membership: `$1` the user id, `$2` the org slug. The column
// names start with `m_` so that a row of the org can be selected beside them.
macro_rules! membership_columns {
    () => {
        "select u.id as m_user_id, u.email as m_email, u.display_name as m_display_name,
        exists (select 1 from platform_admins p where p.user_id = u.id) as m_is_platform_admin,
        o.id as m_org_id, o.slug as m_slug, o.name as m_name, o.bucket as m_bucket, m.role as m_role,
        array(select om.module from org_modules om where om.org_id = o.id and om.enabled order by om.module) as m_modules"
    };
}

macro_rules! membership_from {
    () => {
        "from users u
         left join (organizations o join memberships m on m.org_id = o.id and m.status = 'active')
                on o.slug = $2 and m.user_id = u.id"
    };
}

const MEMBERSHIP: &str = concat!(membership_columns!(), "\n", membership_from!(), "\nwhere u.id = $1");

/// The user `user_id` and, if they belong to the org `slug`, their [`Membership`]
/// there, in one round trip: every org-scoped page needs both. `None` when there is
/// no such user.
pub async fn user_with_membership(
    pool: &PgPool,
    user_id: i64,
    slug: &OrgSlug,
) -> sqlx::Result<Option<(crate::auth::User, Option<Membership>)>> {
    let row = sqlx::query(MEMBERSHIP).bind(user_id).bind(slug.as_str()).fetch_optional(pool).await?;
    row.map(|row| membership_from_row(&row)).transpose()
}

/// A row of the org that a request needs along with the user and their membership.
pub struct OrgRow<'a> {
    /// A select over the org's rows, where `$3` is `key` and `o.id` the org's id.
    /// Its row is kept only when the user is an active member of the org, and it
    /// must filter on `o.id` to see only that org's rows. Its column names must not
    /// start with `m_`.
    pub select: &'a str,
    /// Bound as text: the caller validates it (a NUL byte is an error in PostgreSQL).
    pub key: &'a str,
}

/// [`user_with_membership`] and one row of the org (see [`OrgRow`]), still in one
/// round trip: a running export's row is polled every 2 s by each open page, and
/// this makes that poll two queries (the session, then this) instead of three.
pub async fn user_with_membership_and<T>(
    pool: &PgPool,
    user_id: i64,
    slug: &OrgSlug,
    also: OrgRow<'_>,
) -> sqlx::Result<Option<(crate::auth::User, Option<Membership>, Option<T>)>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    // `m_found` tells a missing row from a row of NULLs.
    let sql = format!(
        "{}, x.*\n{}\nleft join lateral (select true as m_found, a.* from ({}) a) x on o.id is not null\nwhere u.id = $1",
        membership_columns!(),
        membership_from!(),
        also.select
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(slug.as_str())
        .bind(also.key)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (user, membership) = membership_from_row(&row)?;
    let found: Option<bool> = sqlx::Row::try_get(&row, "m_found")?;
    let also = if found == Some(true) { Some(T::from_row(&row)?) } else { None };
    Ok(Some((user, membership, also)))
}

fn membership_from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<(crate::auth::User, Option<Membership>)> {
    use sqlx::Row;
    let user = crate::auth::User {
        id: row.try_get("m_user_id")?,
        email: row.try_get("m_email")?,
        display_name: row.try_get("m_display_name")?,
        is_platform_admin: row.try_get("m_is_platform_admin")?,
    };
    let org = (
        row.try_get::<Option<i64>, _>("m_org_id")?,
        row.try_get::<Option<String>, _>("m_slug")?,
        row.try_get::<Option<String>, _>("m_name")?,
        row.try_get::<Option<String>, _>("m_bucket")?,
        row.try_get::<Option<String>, _>("m_role")?,
    );
    let membership = match org {
        (Some(id), Some(slug), Some(name), Some(bucket), Some(role)) => {
            Some((Org { id, slug, name, bucket }, role, row.try_get("m_modules")?))
        }
        _ => None,
    };
    Ok((user, membership))
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
