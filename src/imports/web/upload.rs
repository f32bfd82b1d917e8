//! The upload of a snapshot file to restore: a `multipart/form-data` body read as
//! a stream (multer on the raw body, so neither the router's body limit nor a
//! buffer of the whole file applies) and written to the platform bucket under
//! `imports/{import-id}.json.gz` as a multipart upload in parts of 8 MiB. At most
//! one part is in memory; nothing touches the disk. The file may be at most
//! `IMPORT_MAX_BYTES`; past that, or on any other refusal, the upload is aborted
//! and nothing is left. The import and its job are created only once the object
//! is complete.

use axum::{
    extract::Request,
    http::{HeaderMap, header},
};
use bytes::{Bytes, BytesMut};
use ulid::Ulid;

use super::super::{
    job,
    records::{self, Import, Source, Via},
    views::{Typed, limit_text},
};
use crate::{
    auth::csrf,
    error::AppError,
    state::AppState,
    storage::{Multipart, Storage, UploadedPart},
};

/// Size of each part of the upload (S3 wants at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// What the form's other fields and boundaries may add to the file's size before a
/// request's `Content-Length` alone is enough to refuse it.
const FORM_OVERHEAD: u64 = 1024 * 1024;
/// The largest value of a text field (the slug, the name).
const TEXT_FIELD_BYTES: u64 = 8 * 1024;
/// The content type of the stored file.
const CONTENT_TYPE: &str = "application/gzip";

/// The key of an import's uploaded file in the platform bucket.
pub fn object_key(id: Ulid) -> String {
    format!("imports/{id}.json.gz")
}

/// Reads the form, streams its file to storage and creates the import with its
/// job; returns what was typed (for the page shown on a refusal) and the import.
pub async fn receive(state: &AppState, requested_by: i64, request: Request) -> (Typed, Result<Import, AppError>) {
    let mut typed = Typed { form: "upload", ..Typed::default() };
    let received = receive_into(state, requested_by, request, &mut typed).await;
    (typed, received)
}

async fn receive_into(
    state: &AppState,
    requested_by: i64,
    request: Request,
    typed: &mut Typed,
) -> Result<Import, AppError> {
    let max = state.config.import_max_bytes;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| AppError::BadRequest("Send the file as multipart/form-data, as the upload form does.".into()))?;
    if content_length(request.headers()).is_some_and(|n| n > max.saturating_add(FORM_OVERHEAD)) {
        return Err(too_large(max));
    }
    let limits = multer::SizeLimit::new().per_field(TEXT_FIELD_BYTES).for_field("file", u64::MAX);
    let constraints = multer::Constraints::new().size_limit(limits);
    let mut form = multer::Multipart::with_constraints(request.into_body().into_data_stream(), boundary, constraints);
    let (mut slug, mut name) = (None, None);
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        match field.name().unwrap_or("") {
            // The form may carry the token as a field too; it was checked from the URL.
            csrf::FIELD => drop(field.text().await.map_err(unreadable)?),
            "slug" if slug.is_none() => slug = Some(field.text().await.map_err(unreadable)?),
            "name" if name.is_none() => name = Some(field.text().await.map_err(unreadable)?),
            "file" => {
                typed.slug = slug.clone().unwrap_or_default();
                typed.name = name.clone().unwrap_or_default();
                let (Some(slug), Some(name)) = (&slug, &name) else {
                    return Err(AppError::BadRequest(
                        "The form's slug and name must come before its file; nothing was uploaded.".into(),
                    ));
                };
                job::sweep_abandoned(state).await;
                // Checked before a byte of the file is stored.
                let target = records::check_target(&state.pool, slug, name).await?;
                let id = Ulid::generate();
                let key = object_key(id);
                let bytes = store(&state.storage, &key, &id, field, max).await?;
                let source = Source::Upload { key: key.clone(), bytes: i64::try_from(bytes).unwrap_or(i64::MAX) };
                let created = match form.next_field().await {
                    Ok(None) => records::create(&state.pool, id, &target, &source, requested_by, Via::Ui).await,
                    Ok(Some(_)) => Err(AppError::BadRequest("The file must be the form's last field.".into())),
                    Err(e) => Err(unreadable(e)),
                };
                if created.is_err()
                    && let Err(e) = state.storage.delete(state.storage.privacy_bucket(), &key).await
                {
                    tracing::error!(key, error = format!("{e:#}"), "could not delete the upload of a refused import");
                }
                return created;
            }
            other => {
                return Err(AppError::BadRequest(format!(
                    "Unexpected or repeated form field {other:?}; nothing was uploaded."
                )));
            }
        }
    }
    typed.slug = slug.unwrap_or_default();
    typed.name = name.unwrap_or_default();
    Err(AppError::BadRequest("The form has no file: choose a snapshot file (.json.gz).".into()))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn too_large(max: u64) -> AppError {
    AppError::TooLarge(format!(
        "The file is larger than the upload limit of {} ({max} bytes, IMPORT_MAX_BYTES); nothing was kept. \
         Restore a larger file on the server with: data-export import FILE --org SLUG",
        limit_text(max)
    ))
}

/// A body that is not the form it claims to be, or that stopped.
fn unreadable(e: multer::Error) -> AppError {
    AppError::BadRequest(match e {
        multer::Error::FieldSizeExceeded { field_name, .. } => {
            format!("The form field {:?} is too long.", field_name.unwrap_or_default())
        }
        multer::Error::StreamReadFailed(_) => "The upload was interrupted; nothing was kept.".into(),
        other => format!("The form could not be read ({other}); nothing was kept."),
    })
}

/// Streams the file field into `key` of the platform bucket; returns its size. On
/// any error the upload is aborted before this returns.
async fn store(
    storage: &Storage,
    key: &str,
    id: &Ulid,
    mut file: multer::Field<'static>,
    max: u64,
) -> Result<u64, AppError> {
    let mut upload = OpenUpload::new(storage, key, id);
    let mut buffer = BytesMut::new();
    let mut parts = Vec::new();
    let mut size: u64 = 0;
    let written: Result<(), AppError> = async {
        while let Some(chunk) = file.chunk().await.map_err(unreadable)? {
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large(max));
            }
            buffer.extend_from_slice(&chunk);
            if parts.is_empty() && buffer.len() >= 2 && !is_gzip(&buffer) {
                return Err(not_gzip());
            }
            if buffer.len() >= PART_SIZE {
                parts.push(upload.put(parts.len() + 1, buffer.split().freeze()).await?);
            }
        }
        if size == 0 {
            return Err(AppError::BadRequest("The file is empty: choose a snapshot file (.json.gz).".into()));
        }
        if size < 2 {
            return Err(not_gzip());
        }
        if !buffer.is_empty() {
            parts.push(upload.put(parts.len() + 1, buffer.split().freeze()).await?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        upload.abort().await;
        if matches!(e, AppError::TooLarge(_)) {
            // What is left of a body its Content-Length let through is at most the
            // form's overhead: read it, so that a browser still sending gets the
            // answer rather than a reset connection.
            let mut left = 2 * FORM_OVERHEAD;
            while let Ok(Some(chunk)) = file.chunk().await {
                left = left.saturating_sub(chunk.len() as u64);
                if left == 0 {
                    break;
                }
            }
        }
        return Err(e);
    }
    upload.complete(parts).await?;
    Ok(size)
}

fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

fn not_gzip() -> AppError {
    AppError::BadRequest("The file is not gzip-compressed: a snapshot is a .json.gz file; nothing was kept.".into())
}

/// A multipart upload opened with its first part. Dropped while open (the request
/// was cancelled: the client went away), it is aborted on a task of its own.
struct OpenUpload {
    storage: Storage,
    bucket: String,
    key: String,
    id: String,
    open: Option<Multipart>,
}

impl OpenUpload {
    fn new(storage: &Storage, key: &str, id: &Ulid) -> Self {
        Self {
            storage: storage.clone(),
            bucket: storage.privacy_bucket().to_string(),
            key: key.to_string(),
            id: id.to_string(),
            open: None,
        }
    }

    async fn put(&mut self, number: usize, body: Bytes) -> anyhow::Result<UploadedPart> {
        if self.open.is_none() {
            let metadata = [("import-id", self.id.as_str()), ("format", "data-export/org-snapshot;version=1")];
            let upload_id = self.storage.create_multipart(&self.bucket, &self.key, CONTENT_TYPE, &metadata).await?;
            self.open = Some(Multipart { bucket: self.bucket.clone(), key: self.key.clone(), upload_id });
        }
        let open = self.open.as_ref().expect("opened above");
        self.storage.upload_part(open, i32::try_from(number)?, body).await
    }

    /// Publishes the object (an upload that cannot complete is aborted by storage).
    async fn complete(mut self, parts: Vec<UploadedPart>) -> anyhow::Result<()> {
        let open = self.open.take().ok_or_else(|| anyhow::anyhow!("no part was uploaded"))?;
        self.storage.complete_multipart(&open, parts).await
    }

    async fn abort(&mut self) {
        if let Some(open) = self.open.take() {
            self.storage.abort_multipart(&open).await;
        }
    }
}

impl Drop for OpenUpload {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let storage = self.storage.clone();
            tokio::spawn(async move { storage.abort_multipart(&open).await });
        }
    }
}
