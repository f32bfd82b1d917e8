//! Who is asking: sessions, passwords, API tokens, CSRF, and the role extractors.
//! No HTML pages live here (the sign-in page is in `pages`).

pub mod client_ip;
pub mod csrf;
pub mod membership;
pub mod password;
pub mod rate_limit;
pub mod session_cache;
pub mod session_store;
pub mod tokens;

use axum::{extract::FromRequestParts, http::request::Parts};
use sqlx::PgPool;
use tower_sessions::Session;

use crate::{
    error::{ApiError, AppError},
    orgs::{Org, OrgSlug, Role},
    state::AppState,
};

/// The session cookie's name on plain http (development).
pub const SESSION_COOKIE: &str = "dx_session";
/// Its name when the site is https: the `__Host-` prefix makes browsers accept it
/// only with `Secure`, `Path=/` and no `Domain`, so no other host (a sibling
/// subdomain included) can set or overwrite it. Browsers still send it to every
/// port of the host, the job board's included.
pub const SESSION_COOKIE_HTTPS: &str = "__Host-dx_session";

/// The session cookie's name for this configuration.
pub fn session_cookie_name(config: &crate::config::Config) -> &'static str {
    if config.cookies_secure() { SESSION_COOKIE_HTTPS } else { SESSION_COOKIE }
}

/// The session layer (also used by the job board's listener, which shares the cookie).
/// Path `/` and no domain are tower-sessions' defaults, as `__Host-` requires.
pub fn session_layer(state: &AppState) -> tower_sessions::SessionManagerLayer<session_store::PgSessionStore> {
    tower_sessions::SessionManagerLayer::new(session_store::PgSessionStore::new(state.pool.clone()))
        .with_name(session_cookie_name(&state.config))
        .with_http_only(true)
        .with_same_site(tower_sessions::cookie::SameSite::Lax)
        .with_secure(state.config.cookies_secure())
        .with_expiry(tower_sessions::Expiry::OnInactivity(time::Duration::hours(12)))
}

/// Session keys, in one place.
pub const SESSION_USER_ID: &str = "user_id";

/// A signed-in person.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub display_name: String,
    pub is_platform_admin: bool,
}

/// Loads a user by id.
pub async fn load_user(pool: &PgPool, id: i64) -> sqlx::Result<Option<User>> {
    sqlx::query_as(
        "select u.id, u.email, u.display_name,
                exists (select 1 from platform_admins p where p.user_id = u.id) as is_platform_admin
         from users u where u.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The session's user as loaded for this request: a page's context and its role
/// check both ask, and the second asks the request, not the database.
#[derive(Clone)]
struct LoadedUser(Option<User>);

/// The id the session holds, if signed in.
async fn session_user_id(parts: &mut Parts, state: &AppState) -> Result<Option<i64>, AppError> {
    let session = Session::from_request_parts(parts, state)
        .await
        .map_err(|(_, msg)| AppError::Internal(anyhow::anyhow!("session layer missing: {msg}")))?;
    Ok(session.get::<i64>(SESSION_USER_ID).await?)
}

/// The id of the request's session, read from its cookie when the cookie is
/// well-formed (no cookie, or a malformed one, is anonymous), without loading the
/// session's record: a request reads the record with its user (and their
/// membership of the org in the path) in one query ([`membership::Caller::Session`]).
/// When that query finds no live session with a user, the caller asks
/// tower-sessions after all ([`stored_session_user`], [`session_user_id`]): the
/// answer is the same, and tower-sessions then sees that the record is gone and
/// drops the cookie, as it did when every request loaded its session.
fn session_id(parts: &Parts) -> Result<Option<String>, AppError> {
    let session = parts
        .extensions
        .get::<Session>()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("session layer missing")))?;
    Ok(session.id().map(|id| id.to_string()))
}

/// Keeps what the one query found for the rest of the request: its user (so that a
/// page's context asks the request, not the database) and the session's CSRF token
/// (so that a fragment's forms do not load the session for it).
fn remember(parts: &mut Parts, found: membership::Found) -> (User, Option<membership::Membership>) {
    parts.extensions.insert(LoadedUser(Some(found.user.clone())));
    if let Some(token) = found.csrf_token
        && parts.extensions.get::<csrf::CsrfToken>().is_none()
    {
        parts.extensions.insert(csrf::CsrfToken(token));
    }
    (found.user, found.membership)
}

/// The session's user: asked of the request when it loaded them already, else the
/// session and its user in one query ([`membership::user`]), else as tower-sessions
/// has it ([`stored_session_user`]).
async fn session_user(parts: &mut Parts, state: &AppState) -> Result<Option<User>, AppError> {
    if let Some(LoadedUser(user)) = parts.extensions.get::<LoadedUser>() {
        return Ok(user.clone());
    }
    if let Some(id) = session_id(parts)?
        && let Some(found) = membership::user(&state.pool, membership::Caller::Session(&id)).await?
    {
        return Ok(Some(remember(parts, found).0));
    }
    stored_session_user(parts, state).await
}

/// The session's user as tower-sessions loads the session (then the user by id):
/// what answers when the one query found no live session with a user (see
/// [`session_id`]).
async fn stored_session_user(parts: &mut Parts, state: &AppState) -> Result<Option<User>, AppError> {
    let user = match session_user_id(parts, state).await? {
        Some(id) => load_user(&state.pool, id).await?,
        None => None,
    };
    parts.extensions.insert(LoadedUser(user.clone()));
    Ok(user)
}

/// The signed-in user of an HTML request; anonymous requests are sent to sign in.
#[derive(Clone, Debug)]
pub struct CurrentUser(pub User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        session_user(parts, state).await?.map(CurrentUser).ok_or(AppError::Unauthorized)
    }
}

/// The signed-in user, if any.
#[derive(Clone, Debug)]
pub struct MaybeUser(pub Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Ok(MaybeUser(session_user(parts, state).await?))
    }
}

/// A platform admin (HTML); others get 403.
#[derive(Clone, Debug)]
pub struct PlatformAdmin(pub User);

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        if !user.is_platform_admin {
            return Err(AppError::Forbidden("Only platform admins can open this page.".into()));
        }
        Ok(PlatformAdmin(user))
    }
}

/// The user behind an `Authorization: Bearer` token (JSON API only; the API never
/// accepts the session cookie, so it needs no CSRF token). A revoked, expired or
/// unknown token answers 401; a token limited to one org answers 403 anywhere but
/// under `/api/v1/orgs/{that org}/`, before the org in the path is looked up, so it
/// tells nothing about other orgs.
#[derive(Clone, Debug)]
pub struct ApiUser(pub User);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(ApiError(AppError::Unauthorized));
        };
        let path_org = api_org_param(parts);
        let Some(bearer) = tokens::authenticate(&state.pool, token, path_org.as_deref()).await? else {
            return Err(ApiError(AppError::Unauthorized));
        };
        if let Some(scope) = &bearer.scope
            && path_org.as_deref() != Some(scope.as_str())
        {
            return Err(ApiError(AppError::Forbidden(format!(
                "This token is limited to the organization {scope:?}; it cannot be used for this request."
            ))));
        }
        let user = load_user(&state.pool, bearer.user_id).await?.ok_or(AppError::Unauthorized)?;
        Ok(ApiUser(user))
    }
}

/// The user behind a platform admin's bearer token (JSON API); any other token
/// gets 403.
#[derive(Clone, Debug)]
pub struct ApiPlatformAdmin(pub User);

impl FromRequestParts<AppState> for ApiPlatformAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ApiUser(user) = ApiUser::from_request_parts(parts, state).await?;
        if !user.is_platform_admin {
            return Err(AppError::Forbidden("Only platform admins can do this.".into()).into());
        }
        Ok(Self(user))
    }
}

/// The `{org}` of an org route of the JSON API (`/api/v1/orgs/{org}/...`), exactly
/// as the path spells it; `None` for every other path (the platform's routes).
fn api_org_param(parts: &Parts) -> Option<String> {
    let original = parts.extensions.get::<axum::extract::OriginalUri>().map(|u| u.0.path().to_string());
    let path = original.unwrap_or_else(|| parts.uri.path().to_string());
    let rest = path.strip_prefix(crate::routes::API_PREFIX)?.strip_prefix("/orgs/")?;
    rest.split('/').next().filter(|s| !s.is_empty()).map(str::to_string)
}

/// A user acting within one org, with their role there.
#[derive(Clone, Debug)]
pub struct OrgCtx {
    pub org: Org,
    pub user: User,
    pub role: Role,
    /// The org's modules that were on when the request was resolved.
    pub modules: Vec<crate::orgs::modules::Module>,
    /// Whether the org is closing (docs/runbooks/offboarding.md): what the request
    /// may do then is decided by [`closing_gate`].
    pub closing: bool,
}

impl OrgCtx {
    /// Resolves `{org}` of the path for the session's user. Unknown orgs and orgs the
    /// user does not belong to look the same (404), so org slugs cannot be probed.
    /// Unless the request loaded its user already, the session, its user and the org
    /// come in one query (see [`membership::Caller::Session`]).
    async fn of_session(parts: &mut Parts, state: &AppState, raw_slug: &str) -> Result<Self, AppError> {
        let slug = OrgSlug::parse(raw_slug).filter(|_| parts.extensions.get::<LoadedUser>().is_none());
        let user = match (slug, session_id(parts)?) {
            (Some(slug), Some(id)) => {
                let caller = membership::Caller::Session(&id);
                if let Some(found) = membership::user_and_membership(&state.pool, caller, &slug).await? {
                    let (user, membership) = remember(parts, found);
                    return Self::from_membership(user, membership);
                }
                // No live session with a user: as tower-sessions has it (see
                // [`session_id`] for why it is asked then).
                stored_session_user(parts, state).await?
            }
            // The request's user is loaded already, or the slug is malformed (404
            // once the caller is known), or there is no session.
            _ => session_user(parts, state).await?,
        };
        Self::resolve(&state.pool, user.ok_or(AppError::Unauthorized)?, raw_slug).await
    }

    /// [`Self::of_session`] for an org admin, with one row of the org fetched in the
    /// same query (see [`membership::OrgRowQuery`]): the session, the user, their
    /// membership and the row in one round trip. What a running export's row polls.
    /// For GET and HEAD, the session's answer for the org may come from
    /// [`session_cache`] instead, and then only the row is read.
    pub async fn admin_of_session_with_row<T>(
        parts: &mut Parts,
        state: &AppState,
        also: membership::OrgRowQuery<'_>,
    ) -> Result<(Self, Option<T>), AppError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let slug = org_param(parts).as_deref().and_then(OrgSlug::parse);
        let found = match (&slug, session_id(parts)?) {
            (Some(slug), Some(id)) if matches!(parts.method, http::Method::GET | http::Method::HEAD) => {
                let cache = &state.session_cache;
                let key = session_cache::key(&id, slug);
                if let Some(found) = cache.get::<membership::Found>(&key)
                    && found.membership.is_some()
                {
                    let (user, membership) = remember(parts, found);
                    let ctx = closing_gate(parts, Self::from_membership(user, membership)?)?.require_admin()?;
                    let row = membership::org_row(&state.pool, ctx.org.id, also).await?;
                    return Ok((ctx, row));
                }
                // Taken before the read: a change that arrives during it keeps the
                // answer out of the cache.
                let ticket = cache.ticket();
                let caller = membership::Caller::Session(&id);
                let found = membership::user_membership_and_row(&state.pool, caller, slug, also).await?;
                if let (Some(ticket), Some((f, _))) = (ticket, &found)
                    && f.membership.is_some()
                    && let Some(until) = f.session_expiry
                {
                    cache.put(ticket, key, f.clone(), until);
                }
                found
            }
            (Some(slug), Some(id)) => {
                let caller = membership::Caller::Session(&id);
                membership::user_membership_and_row(&state.pool, caller, slug, also).await?
            }
            _ => None,
        };
        let (found, row) = match found {
            Some(found) => found,
            // As in `of_session`: as before, from tower-sessions' record.
            None => {
                let user_id = session_user_id(parts, state).await?.ok_or(AppError::Unauthorized)?;
                let slug = slug.ok_or(AppError::NotFound)?;
                let caller = membership::Caller::User(user_id);
                membership::user_membership_and_row(&state.pool, caller, &slug, also)
                    .await?
                    .ok_or(AppError::Unauthorized)?
            }
        };
        let (user, membership) = remember(parts, found);
        Ok((closing_gate(parts, Self::from_membership(user, membership)?)?.require_admin()?, row))
    }

    /// Resolves `{org}` of the path for `user` (see [`Self::of_session`]).
    pub async fn resolve(pool: &PgPool, user: User, raw_slug: &str) -> Result<Self, AppError> {
        let slug = OrgSlug::parse(raw_slug).ok_or(AppError::NotFound)?;
        let found = membership::user_and_membership(pool, membership::Caller::User(user.id), &slug).await?;
        Self::from_membership(user, found.and_then(|f| f.membership))
    }

    fn from_membership(user: User, membership: Option<membership::Membership>) -> Result<Self, AppError> {
        let (org, role, modules, closing) = membership.ok_or(AppError::NotFound)?;
        let role = Role::parse(&role).ok_or(AppError::NotFound)?;
        let modules = modules.iter().filter_map(|k| crate::orgs::modules::Module::parse(k)).collect();
        Ok(Self { org, user, role, modules, closing })
    }

    /// Whether `module` is on for the org.
    pub fn has_module(&self, module: crate::orgs::modules::Module) -> bool {
        self.modules.contains(&module)
    }

    /// Refuses (403) unless the user is an admin of this org.
    pub fn require_admin(self) -> Result<Self, AppError> {
        if self.role != Role::Admin {
            return Err(AppError::Forbidden("Only admins of this organization can do this.".into()));
        }
        Ok(self)
    }
}

fn org_param(parts: &Parts) -> Option<String> {
    let raw = parts.extensions.get::<axum::extract::OriginalUri>().map(|u| u.0.path().to_string());
    let path = raw.unwrap_or_else(|| parts.uri.path().to_string());
    let mut segs = path.split('/').skip_while(|s| *s != "orgs");
    segs.next()?;
    segs.next().map(str::to_string)
}

/// An org admin of the org in the path (HTML): 404 when not a member, 403 when a member.
#[derive(Clone, Debug)]
pub struct OrgAdmin(pub OrgCtx);

impl FromRequestParts<AppState> for OrgAdmin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(slug) = org_param(parts) else {
            CurrentUser::from_request_parts(parts, state).await?;
            return Err(AppError::NotFound);
        };
        let ctx = OrgCtx::of_session(parts, state, &slug).await?;
        Ok(OrgAdmin(closing_gate(parts, ctx)?.require_admin()?))
    }
}

/// An org admin of the org in the path (JSON API, bearer token).
#[derive(Clone, Debug)]
pub struct ApiOrgAdmin(pub OrgCtx);

impl FromRequestParts<AppState> for ApiOrgAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ApiUser(user) = ApiUser::from_request_parts(parts, state).await?;
        let slug = org_param(parts).ok_or(AppError::NotFound)?;
        let ctx = OrgCtx::resolve(&state.pool, user, &slug).await?;
        Ok(ApiOrgAdmin(closing_gate(parts, ctx)?.require_admin()?))
    }
}

/// What a request may do in an org that is closing (docs/runbooks/offboarding.md):
/// its members nothing at all; its admins only read and download its exports (every
/// GET under the org's `exports`, in the pages and in the API, whatever is added
/// there, and the Backups & Export page that shows them), turn an export into tables (`POST .../exports/{id}/tables`), and see or
/// cancel the closing (and ask again, which answers 409). Everything else answers 403 saying why.
/// An org that is not closing passes unchanged.
pub fn closing_gate(parts: &Parts, ctx: OrgCtx) -> Result<OrgCtx, AppError> {
    if !ctx.closing {
        return Ok(ctx);
    }
    let original = parts.extensions.get::<axum::extract::OriginalUri>().map(|u| u.0.path().to_string());
    let path = original.unwrap_or_else(|| parts.uri.path().to_string());
    if ctx.role == Role::Admin && closing_allows(&parts.method, &path, &ctx.org.slug) {
        return Ok(ctx);
    }
    let what = if ctx.role == Role::Admin {
        format!(
            "While it is closing, its admins can only download its exports and cancel the closing ({}).",
            crate::routes::path(crate::routes::ORG_CLOSE, &ctx.org.slug, None)
        )
    } else {
        "Its members can no longer use it.".to_string()
    };
    Err(AppError::Forbidden(format!("The organization {:?} is closing. {what}", ctx.org.name)))
}

/// Whether `method path` is one that an org admin may use while the org `slug` is
/// closing (see [`closing_gate`]).
pub fn closing_allows(method: &http::Method, path: &str, slug: &str) -> bool {
    let path = path.strip_prefix(crate::routes::API_PREFIX).unwrap_or(path);
    let Some(rest) = path.strip_prefix("/orgs/").and_then(|p| p.strip_prefix(slug)).and_then(|p| p.strip_prefix('/'))
    else {
        return false;
    };
    let reads = matches!(*method, http::Method::GET | http::Method::HEAD);
    let closing_page = crate::routes::ORG_CLOSE.trim_start_matches("/orgs/{org}/");
    let reopen_html = crate::routes::ORG_REOPEN.trim_start_matches("/orgs/{org}/");
    let reopen_api = crate::routes::API_ORG_REOPEN.trim_start_matches("/orgs/{org}/");
    let close_api = crate::routes::API_ORG_CLOSE.trim_start_matches("/orgs/{org}/");
    // Closing again is let through to answer its 409 ("already closing").
    let closing_actions = [closing_page, reopen_html, reopen_api, close_api];
    // Turning an export into tables (`exports/{id}/tables`, CSV or Parquet) writes
    // only beside that export, so the final export's tables can still be had.
    let segments: Vec<&str> = rest.split('/').collect();
    let tables = matches!(segments.as_slice(), ["exports", _, "tables"] | ["exports", _, "tables", "csv" | "parquet"]);
    // The Backups & Export page is where the history's downloads and tables buttons
    // are; its other actions are POSTs, refused here.
    let backups_page = crate::routes::ORG_BACKUPS.trim_start_matches("/orgs/{org}/");
    (reads && (rest == "exports" || rest.starts_with("exports/") || rest == closing_page || rest == backups_page))
        || (*method == http::Method::POST && (closing_actions.contains(&rest) || tables))
}

#[cfg(test)]
mod closing_tests {
    use super::closing_allows;
    use http::Method;

    #[test]
    fn a_closing_org_lets_its_admins_read_exports_and_cancel_only() {
        let ok = [
            (Method::GET, "/orgs/acme/exports/01J/download"),
            (Method::HEAD, "/orgs/acme/exports/history"),
            (Method::GET, "/api/v1/orgs/acme/exports"),
            (Method::GET, "/api/v1/orgs/acme/exports/01J/tables/csv/download"),
            (Method::GET, "/orgs/acme/settings/close"),
            (Method::GET, "/orgs/acme/settings/backups"),
            (Method::POST, "/orgs/acme/settings/close"),
            (Method::POST, "/orgs/acme/settings/close/reopen"),
            (Method::POST, "/api/v1/orgs/acme/reopen"),
            (Method::POST, "/api/v1/orgs/acme/close"),
            (Method::POST, "/api/v1/orgs/acme/exports/01J/tables"),
            (Method::POST, "/orgs/acme/exports/01J/tables/csv"),
            (Method::POST, "/orgs/acme/exports/01J/tables/parquet"),
        ];
        for (m, p) in ok {
            assert!(closing_allows(&m, p, "acme"), "{m} {p}");
        }
        let refused = [
            (Method::POST, "/orgs/acme/exports"),
            (Method::POST, "/api/v1/orgs/acme/exports"),
            (Method::DELETE, "/api/v1/orgs/acme/exports/01J"),
            (Method::POST, "/orgs/acme/exports/01J/delete"),
            (Method::POST, "/orgs/acme/exports/01J/tables/xlsx"),
            (Method::POST, "/api/v1/orgs/acme/exports/01J/cancel"),
            (Method::POST, "/orgs/acme/settings/backups"),
            (Method::GET, "/orgs/acme/settings/modules"),
            (Method::GET, "/api/v1/orgs/acme/webhooks"),
            (Method::GET, "/orgs/acme2/exports/history"),
            (Method::GET, "/orgs/acme/exportsx"),
            (Method::GET, "/orgs/acme/settings/close/reopen"),
        ];
        for (m, p) in refused {
            assert!(!closing_allows(&m, p, "acme"), "{m} {p}");
        }
    }
}
