//! The Data Export module: export runs, the export job, the org snapshot's header
//! and sections, the Backups & Export page, downloads, and the JSON API. Handlers
//! are thin shells over the service functions here.

pub mod api;
pub mod job;
pub mod notifications;
pub mod org_snapshot;
pub mod runs;
pub mod start;
pub mod stuck;
pub mod tables;
pub mod views;
pub mod web;

use axum::{extract::FromRequestParts, http::request::Parts};

use crate::{
    auth::{ApiOrgAdmin, OrgAdmin, OrgCtx},
    error::{ApiError, AppError},
    orgs::modules::Module,
    snapshot::verify,
    state::AppState,
    web::path::RecordId,
};

/// Refuses (404) when the org has the Data Export module off: the section and its
/// routes exist only while it is on.
fn require_module(ctx: OrgCtx) -> Result<OrgCtx, AppError> {
    if ctx.has_module(Module::DataExport) { Ok(ctx) } else { Err(AppError::NotFound) }
}

/// An org admin of the org in the path, with Data Export on (HTML): 404 when the
/// module is off, as for an org the user is not in.
pub struct ExportAdmin(pub OrgCtx);

impl FromRequestParts<AppState> for ExportAdmin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let OrgAdmin(org) = OrgAdmin::from_request_parts(parts, state).await?;
        Ok(Self(require_module(org)?))
    }
}

/// An org admin of the org in the path, whether Data Export is on or off (HTML):
/// what reads, downloads, deletes or cancels the org's existing exports needs, so
/// that switching the module off strands no file. Starting anything new needs
/// [`ExportAdmin`].
pub struct FilesAdmin(pub OrgCtx);

impl FromRequestParts<AppState> for FilesAdmin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let OrgAdmin(org) = OrgAdmin::from_request_parts(parts, state).await?;
        Ok(Self(org))
    }
}

/// [`FilesAdmin`] for the JSON API (bearer token).
pub struct ApiFilesAdmin(pub OrgCtx);

impl FromRequestParts<AppState> for ApiFilesAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ApiOrgAdmin(org) = ApiOrgAdmin::from_request_parts(parts, state).await?;
        Ok(Self(org))
    }
}

/// [`ExportAdmin`] for the JSON API (bearer token).
pub struct ApiExportAdmin(pub OrgCtx);

impl FromRequestParts<AppState> for ApiExportAdmin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ApiOrgAdmin(org) = ApiOrgAdmin::from_request_parts(parts, state).await?;
        Ok(Self(require_module(org)?))
    }
}

/// Starts a manual export for the org: refuses while the backup configuration is not
/// ready, and with a conflict while another export is active.
pub async fn trigger(state: &AppState, ctx: &OrgCtx) -> Result<runs::Run, AppError> {
    if !crate::settings::backup::is_ready(state).await? {
        return Err(AppError::BackupNotVerified);
    }
    if let Some(why) = crate::orgs::bucket_refusal(&state.pool, ctx.org.id).await? {
        return Err(AppError::BucketFailing(why));
    }
    let limit = state.config.manual_exports_per_day;
    if let Some(wait) = runs::manual_quota_wait(&state.pool, ctx.org.id, limit).await? {
        return Err(AppError::QuotaReached {
            message: format!(
                "This organization has started {limit} manual exports in the last 24 hours, the most allowed. \
                 The next one can start in {}.",
                human_wait(wait)
            ),
            retry_after_secs: wait,
        });
    }
    start::create_manual(&state.pool, ctx.org.id, ctx.user.id, state.config.export_max_attempts).await
}

/// `2 h 5 min` style waits.
fn human_wait(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} seconds"),
        s if s < 3600 => format!("{} minutes", s.div_ceil(60)),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The presigned URL for a completed run, with an audit entry for the download.
pub async fn download_url(state: &AppState, ctx: &OrgCtx, id: &RecordId, via: &str) -> Result<String, AppError> {
    let run = runs::get(&state.pool, ctx.org.id, id).await?.ok_or(AppError::NotFound)?;
    let key = run.completed_key().ok_or(AppError::NotFound)?;
    let filename = format!("{}-export-{}.json.gz", ctx.org.slug, run.id);
    let url = state.storage.presign_get(&ctx.org.bucket, key, &filename).await?;
    crate::audit::write(
        &state.pool,
        Some(ctx.org.id),
        Some(ctx.user.id),
        "export.downloaded",
        &format!("export:{}", run.id),
        serde_json::json!({ "via": via }),
    )
    .await?;
    Ok(url)
}

/// Re-reads a completed run's object and checks it ([`verify::verify`], with the
/// recorded SHA-256), records the outcome on the run and in the audit log, and
/// returns it. One verification runs at a time per process: it takes a core while it
/// decompresses and parses, so a second one gets [`AppError::RateLimited`]. The work
/// runs on a task of its own that holds the one permit until the parse has ended, so
/// a client that goes away neither frees the permit early nor loses the outcome; and
/// it stops after `VERIFY_TIMEOUT_SECS` ([`AppError::Unavailable`], the run unjudged).
pub async fn verify_run(
    state: &AppState,
    ctx: &OrgCtx,
    id: &RecordId,
    via: &str,
) -> Result<Result<verify::Report, verify::Invalid>, AppError> {
    let run = runs::get(&state.pool, ctx.org.id, id).await?.ok_or(AppError::NotFound)?;
    let Some(key) = run.completed_key().map(str::to_string) else {
        return Err(AppError::BadRequest(format!(
            "Only completed exports can be verified; this one is {}.",
            run.status
        )));
    };
    let Some(org_slot) = OrgVerifying::take(state, ctx.org.id) else {
        return Err(AppError::RateLimited(
            "Another export of this organization is being verified; try again when it has finished.".into(),
        ));
    };
    let Ok(permit) = state.verify_permits.clone().try_acquire_owned() else {
        return Err(AppError::RateLimited(
            "Every verification slot of the platform is busy; try again in a moment.".into(),
        ));
    };
    let limit = std::time::Duration::from_secs(state.config.verify_timeout_secs);
    let work = {
        let (state, ctx, via) = (state.clone(), ctx.clone(), via.to_string());
        async move {
            // Held by the work, as the permit is.
            let _org_slot = org_slot;
            let deadline = std::time::Instant::now() + limit;
            let bucket = &ctx.org.bucket;
            let read = verify::verify_object_bounded(
                &state.storage,
                bucket,
                &key,
                run.sha256.as_deref(),
                Some(deadline),
                permit,
            )
            .await;
            let outcome = match read {
                Ok(outcome) => outcome,
                Err(e) if e.is::<verify::TimedOut>() => {
                    tracing::warn!(run = run.id, seconds = limit.as_secs(), "verification stopped at its time limit");
                    return Err(AppError::Unavailable(format!(
                        "The verification did not finish within {} seconds and was stopped; the file was not judged. Try again later, or run `data-export verify` on a copy of the file.",
                        limit.as_secs()
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let outcome = outcome.and_then(|report| {
                if report.export_id != run.id {
                    Err(verify::Invalid(format!("the file is export {}, not {}", report.export_id, run.id)))
                } else {
                    Ok(report)
                }
            });
            let error = outcome.as_ref().err().map(|e| e.0.as_str());
            runs::set_verified(&state.pool, ctx.org.id, &run.id, error).await?;
            crate::audit::write(
                &state.pool,
                Some(ctx.org.id),
                Some(ctx.user.id),
                "export.verified",
                &format!("export:{}", run.id),
                serde_json::json!({ "via": via, "ok": error.is_none(), "error": error }),
            )
            .await?;
            Ok(outcome)
        }
    };
    tokio::spawn(work).await.map_err(|e| AppError::Internal(anyhow::anyhow!("the verification task ended: {e}")))?
}

/// Cancels the org's pending or running run in the admin's name (see
/// [`runs::cancel`]); an upload it left open is aborted, and an object a dying
/// attempt may have published is removed, in the background (its job, when it is
/// alive, also stops within a second and aborts its upload).
pub async fn cancel(state: &AppState, ctx: &OrgCtx, id: &RecordId) -> Result<runs::Run, AppError> {
    let run = runs::cancel(&state.pool, &state.config.public_url, ctx.org.id, id, &ctx.user)
        .await?
        .ok_or(AppError::NotFound)?;
    let (state2, bucket, id2, created, upload) =
        (state.clone(), ctx.org.bucket.clone(), run.id.clone(), run.created_at, run.upload_id.clone());
    tokio::spawn(async move { stuck::remove_files(&state2, &bucket, &id2, created, upload).await });
    Ok(run)
}

/// An org's one verification slot in this process, freed when dropped.
struct OrgVerifying {
    orgs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    org_id: i64,
}

impl OrgVerifying {
    /// The org's slot, unless a verification of the org is running already.
    fn take(state: &AppState, org_id: i64) -> Option<Self> {
        let mut orgs = state.verifying_orgs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        orgs.insert(org_id).then(|| Self { orgs: state.verifying_orgs.clone(), org_id })
    }
}

impl Drop for OrgVerifying {
    fn drop(&mut self) {
        self.orgs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.org_id);
    }
}

/// Deletes a completed run's object, then marks the run deleted, with an audit entry.
pub async fn delete(state: &AppState, ctx: &OrgCtx, id: &RecordId) -> Result<(), AppError> {
    let run = runs::get(&state.pool, ctx.org.id, id).await?.ok_or(AppError::NotFound)?;
    if run.status == runs::RunStatus::Deleted {
        // Again: its tables may have been left by a delete that stopped half-way.
        if let Some(key) = run.object_key.as_deref() {
            crate::tables::job::remove_of_export(state, &ctx.org.bucket, key, &run.id).await?;
        }
        return Ok(());
    }
    let Some(key) = run.completed_key() else {
        return Err(AppError::BadRequest(format!(
            "Only completed exports can be deleted; this one is {}.",
            run.status
        )));
    };
    state.storage.delete(&ctx.org.bucket, key).await?;
    runs::mark_deleted(&state.pool, ctx.org.id, &run.id).await?;
    // Its tables go with it (after the mark: a conversion asked for meanwhile finds
    // the export deleted, or is removed here).
    crate::tables::job::remove_of_export(state, &ctx.org.bucket, key, &run.id).await?;
    crate::audit::write(
        &state.pool,
        Some(ctx.org.id),
        Some(ctx.user.id),
        "export.deleted",
        &format!("export:{}", run.id),
        serde_json::json!({}),
    )
    .await?;
    Ok(())
}
