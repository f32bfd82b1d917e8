//! The query behind every org-scoped request: who is asking (the user of the
//! request's session, or a user by id) and their membership of the org in the path
//! (role, the org's modules that are on), in one round trip, optionally with one
//! row of that org.

use sqlx::PgPool;

use crate::orgs::OrgSlug;

/// A user's place in one org: the org, their role, the keys of its modules that are
/// on, and whether the org is closing (see `auth::closing_gate`). An erased org has
/// no memberships left, so it is never found.
pub type Membership = (crate::orgs::Org, String, Vec<String>, bool);

/// Whom a membership query is for. (No `Debug`: a session id is a credential.)
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// The user of a live session, by the session's id (the cookie's value): the
    /// session's record is read in the same query, so an org-scoped request costs one
    /// round trip, not one for the session and one for the rest. A session that is
    /// unknown, expired or holds no user finds nothing.
    Session(&'a str),
    /// A user by id (a bearer token's, or the one the request has loaded already).
    User(i64),
}

/// What a membership query found.
#[derive(Clone, Debug)]
pub struct Found {
    pub user: super::User,
    /// Their membership of the org, if they are an active member.
    pub membership: Option<Membership>,
    /// The session's CSRF token for [`Caller::Session`] (empty when the session has
    /// none); `None` for [`Caller::User`].
    pub csrf_token: Option<String>,
    /// When the session expires, for [`Caller::Session`]; `None` for [`Caller::User`].
    pub session_expiry: Option<chrono::DateTime<chrono::Utc>>,
}

/// A membership query for `caller`: its select list, its joins and its condition,
/// `$1` being the session's id or the user's, and `$2` the org slug. The column
/// names start with `m_` so that a row of the org can be selected beside them.
struct MembershipSql {
    select: String,
    from: String,
    filter: &'static str,
}

fn membership_sql(caller: Caller<'_>) -> MembershipSql {
    let (csrf, expiry, from, filter) = match caller {
        // The record's data is tower-sessions' map of keys to JSON values, stored as
        // one jsonb object (see `session_store`); the user id is a JSON number. The
        // expiry is checked here exactly as the store's `load` checks it.
        Caller::Session(_) => (
            format!("coalesce(s.data->>'{}', '')", super::csrf::SESSION_KEY),
            "s.expiry_date",
            format!("sessions s\n         join users u on u.id = (s.data->>'{}')::bigint", super::SESSION_USER_ID),
            "s.id = $1 and s.expiry_date > now()",
        ),
        Caller::User(_) => ("null::text".to_string(), "null::timestamptz", "users u".to_string(), "u.id = $1"),
    };
    let select = format!(
        "select u.id as m_user_id, u.email as m_email, u.display_name as m_display_name,
        exists (select 1 from platform_admins p where p.user_id = u.id) as m_is_platform_admin,
        o.id as m_org_id, o.slug as m_slug, o.name as m_name, o.bucket as m_bucket, m.role as m_role,
        array(select om.module from org_modules om where om.org_id = o.id and om.enabled order by om.module) as m_modules,
        o.lifecycle <> 'active' as m_closing,
        {csrf} as m_csrf, {expiry} as m_session_expiry"
    );
    let from = format!(
        "from {from}
         left join (organizations o join memberships m on m.org_id = o.id and m.status = 'active')
                on o.slug = $2 and m.user_id = u.id"
    );
    MembershipSql { select, from, filter }
}

fn bind_caller<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    caller: Caller<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match caller {
        Caller::Session(id) => query.bind(id),
        Caller::User(id) => query.bind(id),
    }
}

/// The caller and, if they belong to the org `slug`, their [`Membership`] there, in
/// one round trip: every org-scoped page needs both. `None` when there is no such
/// user (or, for a session, no live session with a user).
pub async fn user_and_membership(pool: &PgPool, caller: Caller<'_>, slug: &OrgSlug) -> sqlx::Result<Option<Found>> {
    find(pool, caller, Some(slug.as_str())).await
}

/// The caller alone, for a request that is no org's (the same query with no slug:
/// no org matches a NULL one), in one round trip. `None` as for
/// [`user_and_membership`].
pub async fn user(pool: &PgPool, caller: Caller<'_>) -> sqlx::Result<Option<Found>> {
    find(pool, caller, None).await
}

async fn find(pool: &PgPool, caller: Caller<'_>, slug: Option<&str>) -> sqlx::Result<Option<Found>> {
    let MembershipSql { select, from, filter } = membership_sql(caller);
    let sql = format!("{select}\n{from}\nwhere {filter}");
    let row = bind_caller(sqlx::query(sqlx::AssertSqlSafe(sql)), caller).bind(slug).fetch_optional(pool).await?;
    row.map(|row| found_in_row(&row)).transpose()
}

/// A row of the org that a request needs along with the user and their membership.
#[derive(Clone, Copy)]
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
/// with [`Caller::Session`] this makes that poll one query (the session, the user,
/// their membership and the row) instead of three.
pub async fn user_membership_and_row<T>(
    pool: &PgPool,
    caller: Caller<'_>,
    slug: &OrgSlug,
    also: OrgRowQuery<'_>,
) -> sqlx::Result<Option<(Found, Option<T>)>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let MembershipSql { select, from, filter } = membership_sql(caller);
    // `m_found` tells a missing row from a row of NULLs.
    let sql = format!(
        "{select}, x.*\n{from}\nleft join lateral (select true as m_found, a.* from ({}) a) x on o.id is not null\nwhere {filter}",
        also.sql
    );
    let row = bind_caller(sqlx::query(sqlx::AssertSqlSafe(sql)), caller)
        .bind(slug.as_str())
        .bind(also.param)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let found = found_in_row(&row)?;
    let m_found: Option<bool> = sqlx::Row::try_get(&row, "m_found")?;
    let also = if m_found == Some(true) { Some(T::from_row(&row)?) } else { None };
    Ok(Some((found, also)))
}

/// The row of [`OrgRowQuery`] alone, for the org `org_id`: when the caller and their
/// membership are known already (a poll answered from `auth::session_cache`).
pub async fn org_row<T>(pool: &PgPool, org_id: i64, also: OrgRowQuery<'_>) -> sqlx::Result<Option<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    // `$2` is the membership query's slug, unused here but typed.
    let sql =
        format!("select a.* from (select $1::bigint as id, $2::text as slug) o cross join lateral ({}) a", also.sql);
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(None::<String>)
        .bind(also.param)
        .fetch_optional(pool)
        .await?;
    row.map(|row| T::from_row(&row)).transpose()
}

fn found_in_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<Found> {
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
            let closing: Option<bool> = row.try_get("m_closing")?;
            Some((crate::orgs::Org { id, slug, name, bucket }, role, row.try_get("m_modules")?, closing == Some(true)))
        }
        _ => None,
    };
    Ok(Found { user, membership, csrf_token: row.try_get("m_csrf")?, session_expiry: row.try_get("m_session_expiry")? })
}
