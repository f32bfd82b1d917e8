//! Where a snapshot's compressed bytes go: an S3 multipart upload or a local file.
//! Either way, nothing is visible until [`PendingUpload::complete`], and
//! [`PendingUpload::abort`] leaves nothing behind.

use std::path::PathBuf;

use anyhow::Context;
use aws_sdk_s3::{
    Client,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, MetadataDirective},
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::{io::AsyncWriteExt, sync::mpsc};

/// Size of each multipart part (S3 wants at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once, while the next is being compressed.
pub const PARTS_IN_FLIGHT: usize = 2;

/// A destination.
pub enum Sink {
    /// A local file, written as `<path>.partial-<id>` and renamed when whole.
    File(PathBuf),
    /// An object in a bucket.
    S3 { client: Client, bucket: String, key: String, export_id: String },
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
            Sink::S3 { client, bucket, key, export_id } => {
                let created = client
                    .create_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .content_type("application/gzip")
                    .metadata("export-id", &export_id)
                    .metadata("format", "data-export/snapshot;version=1")
                    .send()
                    .await
                    .map_err(|e| anyhow::Error::new(e.into_service_error()))
                    .with_context(|| format!("cannot start the upload to bucket {bucket}"))?;
                let upload_id = created.upload_id.context("the storage endpoint returned no upload id")?;
                Ok(SinkUpload::S3 { client, bucket, key, upload_id, export_id })
            }
        }
    }
}

/// An opened destination taking parts.
pub enum SinkUpload {
    File { tmp: PathBuf, path: PathBuf, file: tokio::fs::File },
    S3 { client: Client, bucket: String, key: String, upload_id: String, export_id: String },
}

impl SinkUpload {
    /// The multipart upload id, for S3.
    pub fn upload_id(&self) -> Option<&str> {
        match self {
            SinkUpload::S3 { upload_id, .. } => Some(upload_id),
            SinkUpload::File { .. } => None,
        }
    }

    /// Takes parts until the channel closes. On error the upload is aborted here.
    pub async fn consume(self, mut parts: mpsc::Receiver<Bytes>) -> anyhow::Result<PendingUpload> {
        match self {
            SinkUpload::File { tmp, path, mut file } => {
                let result: anyhow::Result<()> = async {
                    while let Some(part) = parts.recv().await {
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
            SinkUpload::S3 { client, bucket, key, upload_id, export_id } => {
                let stream = futures::stream::poll_fn(|cx| parts.poll_recv(cx));
                let target = (client.clone(), bucket.clone(), key.clone(), upload_id.clone());
                let uploads = stream.enumerate().map(move |(i, body)| {
                    let (client, bucket, key, upload_id) = target.clone();
                    async move {
                        let number = i as i32 + 1;
                        let out = client
                            .upload_part()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(upload_id)
                            .part_number(number)
                            .body(ByteStream::from(body))
                            .send()
                            .await
                            .map_err(|e| anyhow::Error::new(e.into_service_error()))
                            .with_context(|| format!("cannot upload part {number}"))?;
                        anyhow::Ok(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build())
                    }
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
                let pending = PendingUpload::S3 { client, bucket, key, upload_id, export_id, parts: done };
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
    S3 { client: Client, bucket: String, key: String, upload_id: String, export_id: String, parts: Vec<CompletedPart> },
}

impl PendingUpload {
    /// Publishes the object (or file), then records size and SHA-256 in its metadata.
    pub async fn complete(self, size: u64, sha256: &str) -> anyhow::Result<()> {
        match self {
            PendingUpload::File { tmp, path } => {
                tokio::fs::rename(&tmp, &path).await.with_context(|| format!("cannot write {}", path.display()))?;
                Ok(())
            }
            PendingUpload::S3 { client, bucket, key, upload_id, export_id, parts } => {
                let completed = client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await;
                if let Err(e) = completed {
                    abort_upload(&client, &bucket, &key, &upload_id).await;
                    return Err(anyhow::Error::new(e.into_service_error()).context("cannot complete the upload"));
                }
                // The hash is known only now: copy the object onto itself with it in the
                // metadata. The run row holds the same figures, so a failure here is
                // logged, not fatal (the object itself is whole).
                let copied = client
                    .copy_object()
                    .bucket(&bucket)
                    .key(&key)
                    .copy_source(format!("{bucket}/{key}"))
                    .metadata_directive(MetadataDirective::Replace)
                    .content_type("application/gzip")
                    .metadata("export-id", export_id)
                    .metadata("sha256", sha256)
                    .metadata("size-bytes", size.to_string())
                    .metadata("format", "data-export/snapshot;version=1")
                    .send()
                    .await;
                if let Err(e) = copied {
                    tracing::warn!(bucket, key, error = %anyhow::Error::new(e.into_service_error()), "could not write the SHA-256 into the object's metadata");
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
            PendingUpload::S3 { client, bucket, key, upload_id, .. } => {
                abort_upload(&client, &bucket, &key, &upload_id).await
            }
        }
    }
}

/// Aborts a multipart upload, retrying for about half a minute while the endpoint is
/// unreachable (the usual reason an upload failed). An upload that is already gone
/// counts as aborted.
pub async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let mut wait = std::time::Duration::from_millis(250);
    for attempt in 1..=10 {
        match client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await {
            Ok(_) => return,
            Err(e) => {
                let e = e.into_service_error();
                if e.is_no_such_upload() {
                    return;
                }
                if attempt == 10 {
                    tracing::error!(bucket, key, upload_id, error = %anyhow::Error::new(e), "could not abort the multipart upload; it stays open until a later retry or the bucket's lifecycle rule removes it");
                    return;
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
}
