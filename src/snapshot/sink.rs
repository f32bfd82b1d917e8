//! Where a snapshot's compressed bytes go: an object in a bucket (a multipart upload
//! through [`Storage`]) or a local file. Either way, nothing is visible until
//! [`PendingUpload::complete`], and [`PendingUpload::abort`] leaves nothing behind.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::timeline::StageClock;
use crate::storage::{Multipart, Storage, UploadedPart};

/// Size of each multipart part (S3 wants at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once, while the next is being compressed.
pub const PARTS_IN_FLIGHT: usize = 2;
/// The content type of every snapshot object.
pub const CONTENT_TYPE: &str = "application/gzip";

/// What an object's metadata says about the file: its format (`format;version=1`)
/// and its id under a key of its own (`export-id`, `request-id`).
#[derive(Clone, Debug)]
pub struct Label {
    pub format: &'static str,
    pub id_key: &'static str,
    pub id: String,
}

impl Label {
    fn metadata(&self) -> Vec<(&str, &str)> {
        vec![(self.id_key, self.id.as_str()), ("format", self.format)]
    }
}

/// A destination.
pub enum Sink {
    /// A local file, written as `<path>.partial-<id>` and renamed when whole.
    File(PathBuf),
    /// An object in a bucket.
    Object { storage: Storage, bucket: String, key: String, label: Label },
}

impl Sink {
    /// Opens the destination (creates the multipart upload or the temp file).
    pub async fn start(self) -> anyhow::Result<SinkUpload> {
        match self {
            Sink::File(path) => {
                let tmp = PathBuf::from(format!("{}.partial-{}", path.display(), ulid::Ulid::generate()));
                let file =
                    tokio::fs::File::create(&tmp).await.with_context(|| format!("cannot create {}", tmp.display()))?;
                Ok(SinkUpload::File { tmp, path, file })
            }
            Sink::Object { storage, bucket, key, label } => {
                let upload_id = storage.create_multipart(&bucket, &key, CONTENT_TYPE, &label.metadata()).await?;
                Ok(SinkUpload::Object { storage, upload: Multipart { bucket, key, upload_id }, label })
            }
        }
    }
}

/// An opened destination taking parts.
pub enum SinkUpload {
    File { tmp: PathBuf, path: PathBuf, file: tokio::fs::File },
    Object { storage: Storage, upload: Multipart, label: Label },
}

impl SinkUpload {
    /// The multipart upload id, for S3.
    pub fn upload_id(&self) -> Option<&str> {
        match self {
            SinkUpload::Object { upload, .. } => Some(&upload.upload_id),
            SinkUpload::File { .. } => None,
        }
    }

    /// Takes parts until the channel closes. On error the upload is aborted here.
    /// `clock` counts the time it waited for a part.
    pub async fn consume(
        self,
        parts: mpsc::Receiver<Bytes>,
        mut clock: StageClock,
    ) -> (anyhow::Result<PendingUpload>, StageClock) {
        let result = self.consume_timed(parts, &mut clock).await;
        (result, clock)
    }

    async fn consume_timed(
        self,
        mut parts: mpsc::Receiver<Bytes>,
        clock: &mut StageClock,
    ) -> anyhow::Result<PendingUpload> {
        match self {
            SinkUpload::File { tmp, path, mut file } => {
                let result: anyhow::Result<()> = async {
                    while let Some(part) = std::future::poll_fn(|cx| clock.observe_input(parts.poll_recv(cx))).await {
                        file.write_all(&part).await?;
                    }
                    file.sync_all().await?;
                    Ok(())
                }
                .await;
                let pending = PendingUpload::File { tmp, path };
                match result {
                    Ok(()) => Ok(pending),
                    Err(e) => {
                        pending.abort().await;
                        Err(e.context("writing the snapshot file"))
                    }
                }
            }
            SinkUpload::Object { storage, upload, label } => {
                // Waiting on input: the uploader had room for another part and none
                // was ready (an earlier part may still have been uploading).
                let stream = futures::stream::poll_fn(|cx| clock.observe_input(parts.poll_recv(cx)));
                let uploads = stream.enumerate().map(|(i, body)| {
                    let (storage, upload) = (&storage, &upload);
                    async move { storage.upload_part(upload, i as i32 + 1, body).await }
                });
                // In-flight uploads are dropped (cancelled) at the end of this block,
                // before any abort.
                let (done, failure) = {
                    let mut uploads = std::pin::pin!(uploads.buffered(PARTS_IN_FLIGHT));
                    let mut done = Vec::new();
                    let mut failure = None;
                    while let Some(r) = uploads.next().await {
                        match r {
                            Ok(p) => done.push(p),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    (done, failure)
                };
                let pending = PendingUpload::Object { storage, upload, label, parts: done };
                match failure {
                    None => Ok(pending),
                    Some(e) => {
                        pending.abort().await;
                        Err(e)
                    }
                }
            }
        }
    }
}

/// All parts are in; nothing is published yet.
pub enum PendingUpload {
    File { tmp: PathBuf, path: PathBuf },
    Object { storage: Storage, upload: Multipart, label: Label, parts: Vec<UploadedPart> },
}

impl PendingUpload {
    /// Publishes the object (or file), then records size and SHA-256 in its metadata.
    pub async fn complete(self, size: u64, sha256: &str) -> anyhow::Result<()> {
        match self {
            PendingUpload::File { tmp, path } => {
                tokio::fs::rename(&tmp, &path).await.with_context(|| format!("cannot write {}", path.display()))?;
                Ok(())
            }
            PendingUpload::Object { storage, upload, label, parts } => {
                storage.complete_multipart(&upload, parts).await?;
                // The hash is known only now: copy the object onto itself with it in the
                // metadata. The run row holds the same figures, so a failure here is
                // logged, not fatal (the object itself is whole).
                let size = size.to_string();
                let mut metadata = label.metadata();
                metadata.extend([("sha256", sha256), ("size-bytes", size.as_str())]);
                let (bucket, key) = (&upload.bucket, &upload.key);
                if let Err(e) = storage.replace_metadata(bucket, key, CONTENT_TYPE, &metadata).await {
                    tracing::warn!(
                        bucket,
                        key,
                        error = format!("{e:#}"),
                        "could not write the SHA-256 into the object's metadata"
                    );
                }
                Ok(())
            }
        }
    }

    /// Removes everything written so far. Best effort: failures are logged.
    pub async fn abort(self) {
        match self {
            PendingUpload::File { tmp, .. } => {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            PendingUpload::Object { storage, upload, .. } => storage.abort_multipart(&upload).await,
        }
    }
}
