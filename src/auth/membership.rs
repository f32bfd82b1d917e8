//! The query behind every org-scoped request: the signed-in user and their
//! membership of the org in the path (role, the org's modules that are on), in one
//! round trip, optionally with one row of that org.

use sqlx::PgPool;

use crate::orgs::OrgSlug;

/// A user's place in one org: the org, their role and the keys of its modules that are on.
pub type Membership = (crate::orgs::Org, String, Vec<String>);

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
pub async fn user_and_membership(
    pool: &PgPool,
    user_id: i64,
    slug: &OrgSlug,
) -> sqlx::Result<Option<(super::User, Option<Membership>)>> {
    let row = sqlx::query(MEMBERSHIP).bind(user_id).bind(slug.as_str()).fetch_optional(pool).await?;
    row.map(|row| membership_from_row(&row)).transpose()
}

/// A row of the org that a request needs along with the user and their membership.
pub struct OrgRowQuery<'a> {
    /// A select over the org's rows, where `$3` is `param` and `o.id` the org's id.
    /// Its row is kept only when the user is an active member of the org, and it
    /// must filter on `o.id` to see only that org's rows. Its column names must not
    /// start with `m_`.
    pub sql: &'a str,
    /// Bound as text: the caller validates it (a NUL byte is an error in PostgreSQL).
    pub param: &'a str,
}

/// [`user_and_membership`] and one row of the org (see [`OrgRowQuery`]), still in one
/// round trip: a running export's row is polled every 2 s by each open page, and
/// this makes that poll two queries (the session, then this) instead of three.
pub async fn user_membership_and_row<T>(
    pool: &PgPool,
    user_id: i64,
    slug: &OrgSlug,
    also: OrgRowQuery<'_>,
) -> sqlx::Result<Option<(super::User, Option<Membership>, Option<T>)>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    // `m_found` tells a missing row from a row of NULLs.
    let sql = format!(
        "{}, x.*\n{}\nleft join lateral (select true as m_found, a.* from ({}) a) x on o.id is not null\nwhere u.id = $1",
        membership_columns!(),
        membership_from!(),
        also.sql
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(slug.as_str())
        .bind(also.param)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (user, membership) = membership_from_row(&row)?;
    let found: Option<bool> = sqlx::Row::try_get(&row, "m_found")?;
    let also = if found == Some(true) { Some(T::from_row(&row)?) } else { None };
    Ok(Some((user, membership, also)))
}

fn membership_from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<(super::User, Option<Membership>)> {
    use sqlx::Row;
    let user = super::User {
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
            Some((crate::orgs::Org { id, slug, name, bucket }, role, row.try_get("m_modules")?))
        }
        _ => None,
    };
    Ok((user, membership))
}
