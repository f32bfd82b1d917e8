//! Personal API tokens: shown once, stored as a SHA-256 hash. Each expires (90 days
//! unless told otherwise), may be limited to one org, and can be revoked; a revoked
//! or expired token is refused on its next request, since every request looks it up.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::orgs::OrgSlug;

/// Token prefix, so leaked tokens are easy to recognise and scan for.
pub const PREFIX: &str = "dex_";
/// Days a token lives unless told otherwise.
pub const DEFAULT_DAYS: u32 = 90;
/// The longest life a token can be given: ten years.
pub const MAX_DAYS: u32 = 365;
/// The longest token name, in characters.
pub const MAX_NAME: usize = 100;

/// A token's life in days, from 1 to [`MAX_DAYS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryDays(u32);

impl ExpiryDays {
    /// `raw` (a whole number of days), or why not.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw.trim().parse::<u32>() {
            Ok(d) if (1..=MAX_DAYS).contains(&d) => Ok(Self(d)),
            _ => Err(format!("the expiry must be a whole number of days from 1 to {MAX_DAYS} (got {raw:?})")),
        }
    }

    pub fn days(self) -> u32 {
        self.0
    }
}

impl Default for ExpiryDays {
    fn default() -> Self {
        Self(DEFAULT_DAYS)
    }
}

/// A checked token name: 1 to [`MAX_NAME`] characters, no control characters.
pub fn parse_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!("the name must be 1 to {MAX_NAME} characters, without control characters"));
    }
    Ok(name.to_string())
}

/// What a new token is to be.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Checked by [`parse_name`].
    pub name: String,
    /// The org it is limited to; `None`: every org of its user.
    pub org: Option<OrgSlug>,
    pub expires_in: ExpiryDays,
}

/// Why a token was not created (nothing was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoSuchUser(String),
    NoSuchOrg(String),
    NotAMember(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSuchUser(e) => write!(f, "no user with email {e:?}"),
            Self::NoSuchOrg(s) => write!(f, "no organization {s:?}"),
            Self::NotAMember(s) => write!(f, "the user is not an active member of {s:?}"),
        }
    }
}

/// A new token's secret and its row.
pub struct NewToken {
    pub id: i64,
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Creates a token for the user with `email` with the defaults (90 days, every org).
/// `None` when there is no such user.
pub async fn create(pool: &PgPool, email: &str, name: &str) -> anyhow::Result<Option<NewToken>> {
    let spec = Spec { name: name.to_string(), org: None, expires_in: ExpiryDays::default() };
    match create_for_email(pool, email, &spec, "cli").await? {
        Ok(t) => Ok(Some(t)),
        Err(Refusal::NoSuchUser(_)) => Ok(None),
        Err(other) => anyhow::bail!("{other}"),
    }
}

/// Creates a token for the user with `email` (the command line's way).
pub async fn create_for_email(
    pool: &PgPool,
    email: &str,
    spec: &Spec,
    via: &str,
) -> anyhow::Result<Result<NewToken, Refusal>> {
    let email = email.trim().to_lowercase();
    let user: Option<(i64,)> =
        sqlx::query_as("select id from users where email = $1").bind(&email).fetch_optional(pool).await?;
    match user {
        Some((user_id,)) => issue(pool, user_id, spec, via).await,
        None => Ok(Err(Refusal::NoSuchUser(email))),
    }
}

/// Creates a token for `user_id`, with its audit entry, in one transaction. A scope
/// needs the user to be an active member of that org now; using the token later
/// still needs the membership then.
pub async fn issue(pool: &PgPool, user_id: i64, spec: &Spec, via: &str) -> anyhow::Result<Result<NewToken, Refusal>> {
    let mut tx = pool.begin().await?;
    let scope_org_id = match &spec.org {
        None => None,
        Some(slug) => {
            let found: Option<(i64, bool)> = sqlx::query_as(
                "select o.id, exists (select 1 from memberships m
                                      where m.org_id = o.id and m.user_id = $2 and m.status = 'active')
                 from organizations o where o.slug = $1",
            )
            .bind(slug.as_str())
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            match found {
                None => return Ok(Err(Refusal::NoSuchOrg(slug.as_str().to_string()))),
                Some((_, false)) => return Ok(Err(Refusal::NotAMember(slug.as_str().to_string()))),
                Some((id, true)) => Some(id),
            }
        }
    };
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
    let (id, expires_at): (i64, DateTime<Utc>) = sqlx::query_as(
        "insert into api_tokens (user_id, name, token_prefix, token_hash, scope_org_id, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(days => $6)) returning id, expires_at",
    )
    .bind(user_id)
    .bind(&spec.name)
    .bind(&token[..PREFIX.len() + 6])
    .bind(hash(&token))
    .bind(scope_org_id)
    .bind(spec.expires_in.days() as i32)
    .fetch_one(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "name": spec.name, "org": spec.org.as_ref().map(OrgSlug::as_str), "expires_at": expires_at, "via": via,
    });
    crate::audit::write(&mut *tx, None, Some(user_id), "api_token.created", &format!("api_token:{id}"), details)
        .await?;
    tx.commit().await?;
    Ok(Ok(NewToken { id, token, expires_at }))
}

/// A token as its owner sees it: never the token, never its hash.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// The token's first characters, to tell tokens apart.
    pub prefix: String,
    /// The slug of the org it is limited to.
    pub org: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Where a token stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    Expired,
    Revoked,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl TokenInfo {
    /// Revoked wins over expired: it is what someone did.
    pub fn status(&self, now: DateTime<Utc>) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if self.expires_at <= now {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }
}

/// A user's tokens, newest first.
pub async fn list_for_user(pool: &PgPool, user_id: i64) -> sqlx::Result<Vec<TokenInfo>> {
    sqlx::query_as(
        "select t.id, t.name, t.token_prefix as prefix, o.slug as org, t.created_at, t.last_used_at,
                t.expires_at, t.revoked_at
         from api_tokens t left join organizations o on o.id = t.scope_org_id
         where t.user_id = $1 order by t.id desc",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
}

/// The tokens of the user with `email`; `None` when there is no such user.
pub async fn list_for_email(pool: &PgPool, email: &str) -> sqlx::Result<Option<Vec<TokenInfo>>> {
    let email = email.trim().to_lowercase();
    let user: Option<(i64,)> =
        sqlx::query_as("select id from users where email = $1").bind(&email).fetch_optional(pool).await?;
    match user {
        Some((id,)) => Ok(Some(list_for_user(pool, id).await?)),
        None => Ok(None),
    }
}

/// What a revocation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    /// It was revoked already, at this time; nothing changed.
    Already(DateTime<Utc>),
    /// No such token (or, with an owner given, not theirs); nothing changed.
    NotFound,
}

/// Revokes token `id`, with its audit entry. With `owner`, only that user's token
/// (another's answers [`Revocation::NotFound`], as a missing one does).
pub async fn revoke(
    pool: &PgPool,
    id: i64,
    owner: Option<i64>,
    actor: Option<i64>,
    via: &str,
) -> anyhow::Result<Revocation> {
    let mut tx = pool.begin().await?;
    let row: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select user_id, revoked_at from api_tokens where id = $1 and ($2::bigint is null or user_id = $2) for update",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    let user_id = match row {
        None => return Ok(Revocation::NotFound),
        Some((_, Some(at))) => return Ok(Revocation::Already(at)),
        Some((user_id, None)) => user_id,
    };
    sqlx::query("update api_tokens set revoked_at = now() where id = $1").bind(id).execute(&mut *tx).await?;
    let details = serde_json::json!({ "user_id": user_id, "via": via });
    crate::audit::write(&mut *tx, None, actor, "api_token.revoked", &format!("api_token:{id}"), details).await?;
    tx.commit().await?;
    Ok(Revocation::Revoked)
}

/// A live token's owner and the org it is limited to.
#[derive(Clone, Debug)]
pub struct Bearer {
    pub user_id: i64,
    /// The slug of the org the token is limited to, if it is.
    pub scope: Option<String>,
}

/// The owner of a presented token, if it is live (not revoked, not expired). `org`
/// is the org of the path (`None` off the org routes): a use is recorded
/// (`last_used_at`) only when the token's scope allows it, in the same round trip.
pub async fn authenticate(pool: &PgPool, token: &str, org: Option<&str>) -> sqlx::Result<Option<Bearer>> {
    if !token.starts_with(PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "with live as (
             select t.id, t.user_id, t.scope_org_id, o.slug as scope
             from api_tokens t left join organizations o on o.id = t.scope_org_id
             where t.token_hash = $1 and t.revoked_at is null and t.expires_at > now()
         ), used as (
             update api_tokens t set last_used_at = now() from live
             where t.id = live.id and (live.scope_org_id is null or live.scope = $2)
         )
         select user_id, scope from live",
    )
    .bind(hash(token))
    .bind(org)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(user_id, scope)| Bearer { user_id, scope }))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_days_are_whole_days_from_one_to_ten_years() {
        assert_eq!(ExpiryDays::parse("1").unwrap().days(), 1);
        assert_eq!(ExpiryDays::parse(" 365 ").unwrap().days(), 365);
        assert_eq!(ExpiryDays::default().days(), 90);
        for bad in ["0", "366", "3650", "-1", "1.5", "", "ninety", "99999999999"] {
            assert!(ExpiryDays::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_short_and_printable() {
        assert_eq!(parse_name("  ci  ").unwrap(), "ci");
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_NAME + 1)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }
}
