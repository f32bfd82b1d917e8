//! An export's tables for analysis (CSV or Parquet zips, `crate::tables`) as the
//! Export History and the API offer them: asking for a conversion, its state, and
//! its download, for the org admins who may download the export itself.

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};

use crate::{
    auth::OrgCtx,
    error::{ApiError, AppError},
    tables::{
        FORMAT_HELP, Format,
        job::{self, Refused},
        records::{self, Tables},
    },
    web::path::RecordId,
};

/// The `{format}` of the path: `csv` or `parquet` (any other is no page: 404).
pub struct FormatParam(pub Format);

impl<S: Send + Sync> FromRequestParts<S> for FormatParam {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(params) =
            Path::<Vec<(String, String)>>::from_request_parts(parts, state).await.map_err(|_| AppError::NotFound)?;
        params
            .iter()
            .find(|(k, _)| k == "format")
            .and_then(|(_, v)| Format::parse(v))
            .map(Self)
            .ok_or(AppError::NotFound)
    }
}

/// [`FormatParam`] for the JSON API: another format is a 400 that names the two.
pub struct ApiFormatParam(pub Format);

impl<S: Send + Sync> FromRequestParts<S> for ApiFormatParam {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError(AppError::NotFound))?;
        let raw = params.iter().find(|(k, _)| k == "format").map_or("", |(_, v)| v.as_str());
        Format::parse(raw)
            .map(Self)
            .ok_or_else(|| ApiError(AppError::BadRequest(format!("Unknown format {raw:?}: {FORMAT_HELP}."))))
    }
}

/// Queues the conversion of the org's export `id` into `format`, unless one is
/// queued, running or completed (a failed one is queued again). Returns it and
/// whether this call queued it. 404 for no such export of the org; 409 while the
/// export is not completed.
pub async fn request(
    state: &crate::state::AppState,
    ctx: &OrgCtx,
    id: &RecordId,
    format: Format,
    via: &str,
) -> Result<(Tables, bool), AppError> {
    match job::request(state, ctx.org.id, id.as_str(), format, ctx.user.id, via).await? {
        Ok(done) => Ok(done),
        Err(Refused::NotFound) => Err(AppError::NotFound),
        Err(Refused::NotCompleted(status)) => Err(AppError::InConflict(format!(
            "Only a completed export can be converted into tables; this one is {status}."
        ))),
    }
}

/// Refuses (404) an id that is no export of the org.
pub async fn check_export(state: &crate::state::AppState, ctx: &OrgCtx, id: &RecordId) -> Result<(), AppError> {
    super::runs::get(&state.pool, ctx.org.id, id).await?.map(|_| ()).ok_or(AppError::NotFound)
}

/// The conversion of the org's export `id` into `format`: 404 for no such export,
/// or none asked for.
pub async fn status(
    state: &crate::state::AppState,
    ctx: &OrgCtx,
    id: &RecordId,
    format: Format,
) -> Result<Tables, AppError> {
    check_export(state, ctx, id).await?;
    records::get(&state.pool, ctx.org.id, id.as_str(), format)
        .await?
        .ok_or_else(|| AppError::NoSuch(format!("No {} tables were asked for for this export yet.", format.as_str())))
}

/// A presigned URL of the completed zip (audited); 404 for no such export, 409
/// while there is no completed zip.
pub async fn download_url(
    state: &crate::state::AppState,
    ctx: &OrgCtx,
    id: &RecordId,
    format: Format,
    via: &str,
) -> Result<String, AppError> {
    check_export(state, ctx, id).await?;
    let tables = records::get(&state.pool, ctx.org.id, id.as_str(), format).await?;
    let not_ready = |what: String| {
        AppError::InConflict(format!("The {} tables of this export are not ready: {what}.", format.as_str()))
    };
    let Some(tables) = tables else { return Err(not_ready("none were asked for yet".into())) };
    let org = (ctx.org.id, ctx.org.slug.as_str(), ctx.org.bucket.as_str());
    match job::download_url(state, org, ctx.user.id, &tables, via).await? {
        Some(url) => Ok(url),
        None => Err(not_ready(format!("the conversion is {}", tables.status))),
    }
}
