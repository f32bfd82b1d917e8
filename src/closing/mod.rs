//! Closing an org for good (docs/runbooks/offboarding.md): the request (the slug
//! typed as confirmation, a final export started in the same transaction), the
//! closing itself (members refused by `auth::closing_gate`; admins may download and
//! cancel), and the erasure after the grace period (`erase`), which leaves the org's
//! row as a tombstone with its receipt. The pages are in `web`, the JSON API in `api`.

pub mod api;
pub mod erase;
pub mod tables;
pub mod web;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{error::AppError, exports::start, orgs::modules::Module, state::AppState};

/// Where a closing was asked for (stored in `organizations.close_via`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// An org admin, on the org's Close page.
    Settings,
    /// A platform admin, from the org list.
    Platform,
    /// The JSON API.
    Api,
    /// `data-export org close`.
    Cli,
}

impl Via {
    pub fn key(self) -> &'static str {
        match self {
            Via::Settings => "settings",
            Via::Platform => "platform",
            Via::Api => "api",
            Via::Cli => "cli",
        }
    }
}

/// Who asks: a person (their id and email as it is now), or the command line.
#[derive(Clone, Debug)]
pub struct Requester {
    pub user_id: Option<i64>,
    pub email: Option<String>,
    pub via: Via,
}

/// An org's row as the closing sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrgClosing {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub bucket: String,
    /// `active`, `closing`, `erased_db` (rows gone, bucket not yet) or `closed`.
    pub lifecycle: String,
    pub close_requested_at: Option<DateTime<Utc>>,
    pub close_requested_by: Option<i64>,
    pub close_requested_by_email: Option<String>,
    pub close_via: Option<String>,
    pub close_grace_days: Option<i32>,
    pub final_export_id: Option<String>,
    pub close_after: Option<DateTime<Utc>>,
    pub close_error: Option<String>,
    pub erased_at: Option<DateTime<Utc>>,
    pub close_receipt: Option<serde_json::Value>,
    pub bucket_removed_at: Option<DateTime<Utc>>,
}

const SELECT: &str = "select id, slug, name, bucket, lifecycle, close_requested_at, close_requested_by,
    close_requested_by_email, close_via, close_grace_days, final_export_id, close_after, close_error, erased_at,
    close_receipt, bucket_removed_at from organizations";

impl OrgClosing {
    /// The JSON the API answers with (and the CLI prints).
    pub fn api_json(&self) -> serde_json::Value {
        serde_json::json!({
            "slug": self.slug,
            "state": self.lifecycle,
            "requested_at": self.close_requested_at,
            "requested_by": self.close_requested_by_email,
            "via": self.close_via,
            "grace_days": self.close_grace_days,
            "final_export_id": self.final_export_id,
            "erase_after": self.close_after,
            "error": self.close_error,
            "erased_at": self.erased_at,
        })
    }
}

/// The org with `slug`, whatever its state.
pub async fn find(pool: &PgPool, slug: &str) -> sqlx::Result<Option<OrgClosing>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where slug = $1"))).bind(slug).fetch_optional(pool).await
}

/// The org with `id`, whatever its state.
pub async fn find_by_id(pool: &PgPool, id: i64) -> sqlx::Result<Option<OrgClosing>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} where id = $1"))).bind(id).fetch_optional(pool).await
}

/// Reads a grace period as typed (the CLI's `--grace-days`): a whole number of days
/// from 0 to 3650.
pub fn parse_grace_days(raw: &str) -> Result<i32, AppError> {
    raw.trim().parse::<i32>().ok().filter(|n| (0..=3650).contains(n)).ok_or_else(|| {
        AppError::BadRequest(format!("The grace period must be a whole number of days from 0 to 3650 (got {raw:?})."))
    })
}

/// Closes the org `slug`: refuses unless `confirm` is its slug exactly (400), it is
/// active (409), exports can run (503: backup configuration, bucket) and Data
/// Export is on (the final export needs it); then, in one transaction, marks it
/// `closing`, starts its final export (409 while another export is active: nothing
/// changes) and writes the audit entry. The caller has checked who may close it.
pub async fn close(
    state: &AppState,
    slug: &str,
    confirm: &str,
    grace_days: Option<i32>,
    by: &Requester,
) -> Result<OrgClosing, AppError> {
    let org = find(&state.pool, slug).await?.ok_or(AppError::NotFound)?;
    if confirm != org.slug {
        return Err(AppError::BadRequest(format!(
            "To close the organization, type its slug {:?} exactly; nothing was changed.",
            org.slug
        )));
    }
    let grace = grace_days.unwrap_or(state.config.close_grace_days as i32);
    if !(0..=3650).contains(&grace) {
        return Err(AppError::BadRequest(format!(
            "The grace period must be a whole number of days from 0 to 3650 (got {grace})."
        )));
    }
    if org.lifecycle != "active" {
        return Err(already(&org));
    }
    if !crate::settings::backup::is_ready(state).await? {
        return Err(AppError::BackupNotVerified);
    }
    if let Some(why) = crate::orgs::bucket_refusal(&state.pool, org.id).await? {
        return Err(AppError::BucketFailing(why));
    }
    let modules = crate::orgs::modules::states(&state.pool, org.id).await?;
    if !modules.contains(&(Module::DataExport, true)) {
        return Err(AppError::InConflict(
            "Closing makes a final export first, and Data Export is switched off for this organization: \
             switch it on under Settings -> Modules, then close it."
                .into(),
        ));
    }
    let mut tx = state.pool.begin().await?;
    // The row is locked, so that two requests at once close it once.
    let now_active: Option<(String,)> = sqlx::query_as("select lifecycle from organizations where id = $1 for update")
        .bind(org.id)
        .fetch_optional(&mut *tx)
        .await?;
    if now_active.as_ref().map(|(l,)| l.as_str()) != Some("active") {
        drop(tx);
        let org = find(&state.pool, slug).await?.ok_or(AppError::NotFound)?;
        return Err(already(&org));
    }
    // The closing's audit entry is written first, so that the final export (its
    // read starts after this commits) holds it.
    let details = serde_json::json!({ "via": by.via.key(), "grace_days": grace, "requested_by": by.email });
    crate::audit::write(&mut *tx, Some(org.id), by.user_id, "org.closing", &format!("org:{}", org.slug), details)
        .await?;
    let run_id = match start::create_in(&mut tx, org.id, by.user_id, state.config.export_max_attempts).await {
        Ok(id) => id,
        Err(start::InsertError::Active) => {
            return Err(AppError::InConflict(
                "An export of this organization is pending or running; close it once that export has ended. \
                 Nothing was changed."
                    .into(),
            ));
        }
        Err(start::InsertError::Other(e)) => return Err(e),
    };
    sqlx::query(
        "update organizations set lifecycle = 'closing', close_requested_at = now(), close_requested_by = $2,
             close_requested_by_email = $3, close_via = $4, close_grace_days = $5, final_export_id = $6,
             close_after = null, close_error = null
         where id = $1",
    )
    .bind(org.id)
    .bind(by.user_id)
    .bind(&by.email)
    .bind(by.via.key())
    .bind(grace)
    .bind(&run_id)
    .execute(&mut *tx)
    .await?;
    // Nobody is left to find out by chance: every admin of the org and every
    // platform admin is told now, with the grace period and how to cancel (the
    // review of issue 32: members are shut out at once, and the erasure cannot be undone).
    let admins = crate::mail::org_admins(&mut tx, org.id).await?;
    let platform = crate::mail::platform_admins(&mut tx).await?;
    let message = requested_mail(&state.config.public_url, &org, grace, by.email.as_deref());
    let mut told = std::collections::BTreeSet::new();
    for user_id in admins.into_iter().chain(platform) {
        if told.insert(user_id) {
            crate::mail::enqueue(&mut tx, user_id, &message).await?;
        }
    }
    tx.commit().await?;
    tracing::info!(org = %org.slug, final_export = %run_id, grace_days = grace, "organization closing");
    find(&state.pool, slug).await?.ok_or(AppError::NotFound)
}

/// The mail that a closing was asked for: when the erasure comes and how to cancel it.
fn requested_mail(public_url: &str, org: &OrgClosing, grace: i32, by: Option<&str>) -> crate::mail::Message {
    let page = crate::routes::path(crate::routes::ORG_CLOSE, &org.slug, None);
    crate::mail::Message {
        kind: crate::mail::Kind::OrgClosed,
        subject: format!("{} is closing: its data will be erased", org.name),
        text: format!(
            "{who} asked to close the organization {name} ({slug}).\n\n\
             A final export is being made. Once it is verified, the organization's data is kept for \
             {grace} more days and then erased from this platform for good. Its members can no longer \
             use it; its admins can download the final export and its tables, or cancel the closing, at\n\
             {public_url}{page}\n",
            who = by.unwrap_or("Someone on the command line"),
            name = org.name,
            slug = org.slug,
        ),
    }
}

/// The 409 for an org that is not active.
fn already(org: &OrgClosing) -> AppError {
    match org.lifecycle.as_str() {
        "closing" => AppError::InConflict(format!("The organization {:?} is already closing.", org.slug)),
        _ => AppError::InConflict(format!("The organization {:?} was closed and erased.", org.slug)),
    }
}

/// Cancels the closing of `slug` while its grace period runs: the org is active
/// again, as it was (the final export stays in its history as a manual export).
/// 409 when it is not closing (active already, or erased: too late).
pub async fn reopen(state: &AppState, slug: &str, by: &Requester) -> Result<OrgClosing, AppError> {
    let org = find(&state.pool, slug).await?.ok_or(AppError::NotFound)?;
    let mut tx = state.pool.begin().await?;
    let reopened = sqlx::query(
        "update organizations set lifecycle = 'active', close_requested_at = null, close_requested_by = null,
             close_requested_by_email = null, close_via = null, close_grace_days = null, final_export_id = null,
             close_after = null, close_error = null
         where id = $1 and lifecycle = 'closing'",
    )
    .bind(org.id)
    .execute(&mut *tx)
    .await?;
    if reopened.rows_affected() == 0 {
        return Err(match org.lifecycle.as_str() {
            "active" => AppError::InConflict(format!("The organization {:?} is not closing.", org.slug)),
            _ => AppError::InConflict(format!(
                "The organization {:?} was erased already; it cannot be reopened.",
                org.slug
            )),
        });
    }
    let details = serde_json::json!({ "via": by.via.key(), "final_export_id": org.final_export_id });
    crate::audit::write(&mut *tx, Some(org.id), by.user_id, "org.reopened", &format!("org:{}", org.slug), details)
        .await?;
    tx.commit().await?;
    tracing::info!(org = %org.slug, "organization closing cancelled");
    find(&state.pool, slug).await?.ok_or(AppError::NotFound)
}

/// The receipt of an erased org (`None` while it is not erased).
pub async fn receipt(pool: &PgPool, slug: &str) -> sqlx::Result<Option<serde_json::Value>> {
    Ok(find(pool, slug).await?.and_then(|o| o.close_receipt))
}
