//! Object storage through aws-sdk-s3: one code path for the embedded endpoint and
//! any external S3-compatible service. Buckets, presigned URLs, the verification
//! probe, multipart uploads, reads and server-side copies. This is the only module
//! that talks to the S3 client.

pub mod embedded;

use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation},
    presigning::PresigningConfig,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart, MetadataDirective},
};

use crate::config::S3Settings;

pub use embedded::EmbeddedS3;

/// An open multipart upload.
#[derive(Clone, Debug)]
pub struct Multipart {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// A part that was uploaded, for [`Storage::complete_multipart`].
#[derive(Clone, Debug)]
pub struct UploadedPart(CompletedPart);

/// How long a download link lives.
pub const PRESIGN_TTL: Duration = Duration::from_secs(900);

/// The context every failed call to the storage endpoint carries (what was being
/// done, with the bucket and key), so that callers can tell a storage failure from
/// others with `error.downcast_ref::<storage::Failed>()` while the chain keeps the
/// endpoint's own error for the log.
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The storage client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    /// Signs URLs for the endpoint browsers reach (`S3_PUBLIC_ENDPOINT`), which may differ.
    presign_client: Client,
    /// Its names, shared by every clone.
    names: std::sync::Arc<Names>,
    /// The account that must own every bucket (`S3_EXPECTED_BUCKET_OWNER`), sent
    /// with each bucket and object call when set.
    owner: Option<String>,
}

/// What a [`Storage`] is called and calls things.
#[derive(Clone, Debug)]
struct Names {
    endpoint: String,
    identity: String,
    privacy_bucket: String,
    /// What every org bucket's name starts with (`BUCKET_PREFIX`, default `org-`).
    bucket_prefix: String,
}

impl Storage {
    /// A client for `settings`. `identity` names the storage for "verified against
    /// what": the endpoint URL for an external service, or the data directory for
    /// the embedded one (whose port changes at every start).
    pub fn new(settings: &S3Settings, privacy_bucket: &str, identity: String) -> Self {
        let client = Client::from_conf(client_config(settings, &settings.endpoint));
        let presign_client = match &settings.public_endpoint {
            Some(public) => Client::from_conf(client_config(settings, public)),
            None => client.clone(),
        };
        let names = Names {
            endpoint: settings.endpoint.clone(),
            identity,
            privacy_bucket: privacy_bucket.to_string(),
            bucket_prefix: crate::config::DEFAULT_BUCKET_PREFIX.to_string(),
        };
        Self {
            client,
            presign_client,
            names: std::sync::Arc::new(names),
            owner: settings.expected_bucket_owner.clone(),
        }
    }

    /// The same storage, naming org buckets `prefix` + slug.
    pub fn with_bucket_prefix(mut self, prefix: &str) -> Self {
        std::sync::Arc::make_mut(&mut self.names).bucket_prefix = prefix.to_string();
        self
    }

    /// What every org bucket's name starts with.
    pub fn bucket_prefix(&self) -> &str {
        &self.names.bucket_prefix
    }

    /// The endpoint in use (shown to platform admins; holds no secret).
    pub fn endpoint(&self) -> &str {
        &self.names.endpoint
    }

    /// What the backup configuration is verified against.
    pub fn identity(&self) -> &str {
        &self.names.identity
    }

    /// The platform's privacy bucket (GDPR exports).
    pub fn privacy_bucket(&self) -> &str {
        &self.names.privacy_bucket
    }

    /// Creates `bucket` unless it exists and is ours. A bucket that exists but
    /// belongs to another account (`BucketAlreadyExists`, or a `HeadBucket` refused
    /// with 403 followed by that) is an error, never success: our files must not go
    /// into someone else's bucket.
    pub async fn ensure_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        if self.client.head_bucket().set_expected_bucket_owner(self.owner.clone()).bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_bucket_already_owned_by_you()) {
                    Ok(())
                } else if service.is_some_and(|s| s.is_bucket_already_exists()) {
                    Err(anyhow::Error::new(e.into_service_error()).context(Failed(format!(
                        "the bucket {bucket} exists but belongs to another account (BucketAlreadyExists); \
                         choose another BUCKET_PREFIX or free the name"
                    ))))
                } else {
                    Err(anyhow::Error::new(e.into_service_error())
                        .context(Failed(format!("cannot create bucket {bucket}"))))
                }
            }
        }
    }

    /// Whether `bucket` exists.
    pub async fn bucket_exists(&self, bucket: &str) -> anyhow::Result<bool> {
        match self.client.head_bucket().set_expected_bucket_owner(self.owner.clone()).bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => {
                Err(anyhow::Error::new(e.into_service_error()).context(Failed(format!("cannot read bucket {bucket}"))))
            }
        }
    }

    /// Up to `max` keys of `bucket`, from its start.
    async fn first_keys(&self, bucket: &str, max: i32) -> anyhow::Result<Vec<String>> {
        let listed = self
            .client
            .list_objects_v2()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .max_keys(max)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot list bucket {bucket}")))?;
        Ok(listed.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect())
    }

    /// Whether `bucket` holds no object.
    pub async fn bucket_is_empty(&self, bucket: &str) -> anyhow::Result<bool> {
        Ok(self.first_keys(bucket, 1).await?.is_empty())
    }

    /// Deletes every object in `bucket`, a page at a time.
    pub async fn empty_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        loop {
            let keys = self.first_keys(bucket, 1000).await?;
            if keys.is_empty() {
                return Ok(());
            }
            for key in keys {
                self.delete(bucket, &key).await?;
            }
        }
    }

    /// Deletes an empty `bucket`.
    pub async fn delete_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.client
            .delete_bucket()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot delete bucket {bucket}")))?;
        Ok(())
    }

    /// Writes a small object whole (a receipt, say) in one request; writing it
    /// again replaces it.
    pub async fn put_small(&self, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> anyhow::Result<()> {
        self.client
            .put_object()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot write {bucket}/{key}")))?;
        Ok(())
    }

    /// A GET URL for `bucket/key` valid for [`PRESIGN_TTL`].
    pub async fn presign_get(&self, bucket: &str, key: &str, filename: &str) -> anyhow::Result<String> {
        let config = PresigningConfig::expires_in(PRESIGN_TTL)?;
        let req = self
            .presign_client
            .get_object()
            .bucket(bucket)
            .key(key)
            .response_content_disposition(format!("attachment; filename=\"{filename}\""))
            .presigned(config)
            .await
            .context("cannot sign the download URL")?;
        Ok(req.uri().to_string())
    }

    /// Deletes `bucket/key`; a missing object is not an error (deletes repeat safely).
    pub async fn delete(&self, bucket: &str, key: &str) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot delete {bucket}/{key}")))?;
        Ok(())
    }

    /// Checks the endpoint is reachable: any answer from it counts, even a refusal
    /// (credentials scoped to some buckets may not list them all); no answer fails.
    pub async fn ping(&self) -> anyhow::Result<()> {
        use aws_sdk_s3::error::SdkError;
        match self.client.list_buckets().send().await {
            Ok(_) | Err(SdkError::ServiceError(_)) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("no answer from the S3 endpoint {}: {}", self.names.endpoint, describe(&e))),
        }
    }

    /// Opens `bucket/key` for reading as a stream; `None` when there is no such
    /// object.
    pub async fn read(
        &self,
        bucket: &str,
        key: &str,
    ) -> anyhow::Result<Option<impl tokio::io::AsyncBufRead + Send + Unpin + 'static>> {
        match self
            .client
            .get_object()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o.body.into_async_read())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => {
                Err(anyhow::Error::new(e.into_service_error()).context(Failed(format!("cannot read {bucket}/{key}"))))
            }
        }
    }

    /// Starts a multipart upload of `bucket/key` with the object's metadata; returns
    /// its upload id. Nothing is visible at the key until [`Self::complete_multipart`].
    pub async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let created = self
            .client
            .create_multipart_upload()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata_map(metadata)))
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot start the upload to bucket {bucket}")))?;
        created.upload_id.context("the storage endpoint returned no upload id")
    }

    /// Uploads part `number` (from 1) of a multipart upload.
    pub async fn upload_part(
        &self,
        upload: &Multipart,
        number: i32,
        body: bytes::Bytes,
    ) -> anyhow::Result<UploadedPart> {
        let out = self
            .client
            .upload_part()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot upload part {number}")))?;
        Ok(UploadedPart(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build()))
    }

    /// Publishes a multipart upload from its parts, in order. On error the upload is
    /// aborted, so nothing is left behind.
    pub async fn complete_multipart(&self, upload: &Multipart, parts: Vec<UploadedPart>) -> anyhow::Result<()> {
        let parts = parts.into_iter().map(|p| p.0).collect();
        let completed = self
            .client
            .complete_multipart_upload()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await;
        if let Err(e) = completed {
            self.abort_multipart(upload).await;
            return Err(anyhow::Error::new(e.into_service_error()).context(Failed("cannot complete the upload".into())));
        }
        Ok(())
    }

    /// Aborts a multipart upload, retrying for about half a minute while the endpoint
    /// is unreachable (the usual reason an upload failed). An upload that is already
    /// gone counts as aborted. Best effort: a failure is logged.
    pub async fn abort_multipart(&self, upload: &Multipart) {
        let Multipart { bucket, key, upload_id } = upload;
        let mut wait = Duration::from_millis(250);
        for attempt in 1..=10 {
            match self
                .client
                .abort_multipart_upload()
                .set_expected_bucket_owner(self.owner.clone())
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
            {
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
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Replaces an object's metadata by a server-side copy onto itself (the bytes
    /// are not sent again).
    pub async fn replace_metadata(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.copy(bucket, key, bucket, key, Some((content_type, metadata))).await
    }

    /// Copies `from_bucket/from_key` to `to_bucket/to_key` server-side, with new
    /// metadata when given (else the source's).
    pub async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
        replace: Option<(&str, &[(&str, &str)])>,
    ) -> anyhow::Result<()> {
        let mut request = self
            .client
            .copy_object()
            .set_expected_bucket_owner(self.owner.clone())
            .set_expected_source_bucket_owner(self.owner.clone())
            .bucket(to_bucket)
            .key(to_key)
            .copy_source(copy_source(from_bucket, from_key));
        if let Some((content_type, metadata)) = replace {
            request = request
                .metadata_directive(MetadataDirective::Replace)
                .content_type(content_type)
                .set_metadata(Some(metadata_map(metadata)));
        }
        request
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot copy {from_bucket}/{from_key} to {to_bucket}/{to_key}")))?;
        Ok(())
    }

    /// Whether `bucket/key` exists.
    pub async fn exists(&self, bucket: &str, key: &str) -> anyhow::Result<bool> {
        match self
            .client
            .head_object()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => {
                Err(anyhow::Error::new(e.into_service_error()).context(Failed(format!("cannot read {bucket}/{key}"))))
            }
        }
    }

    /// Writes, reads back and deletes a probe object in each of `buckets` (created if
    /// missing). The error says which step failed where.
    pub async fn probe(&self, buckets: &[String]) -> anyhow::Result<()> {
        for bucket in buckets {
            self.probe_bucket(bucket).await?;
        }
        Ok(())
    }

    /// [`Self::probe`] of one bucket.
    pub async fn probe_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.ensure_bucket(bucket).await?;
        let key = format!("probes/{}.txt", ulid::Ulid::generate());
        let body = format!("data-export storage probe {key}");
        self.client
            .put_object()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(&key)
            .body(ByteStream::from(body.clone().into_bytes()))
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot write a probe object to bucket {bucket}")))?;
        let got = self
            .client
            .get_object()
            .set_expected_bucket_owner(self.owner.clone())
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| Failed(format!("cannot read the probe object back from bucket {bucket}")))?;
        let bytes = got.body.collect().await.context("reading the probe object")?.into_bytes();
        anyhow::ensure!(bytes.as_ref() == body.as_bytes(), "the probe object read back from {bucket} differs");
        self.delete(bucket, &key).await?;
        Ok(())
    }
}

/// `x-amz-copy-source`: the bucket and the key, URL-encoded (a key may hold any
/// character; `/` stays as it is).
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A raw S3 client for `settings`, configured as [`Storage`]'s own, for tools and
/// tests that look into a bucket directly. The product itself goes through
/// [`Storage`].
pub fn raw_client(settings: &S3Settings) -> Client {
    Client::from_conf(client_config(settings, &settings.endpoint))
}

fn client_config(settings: &S3Settings, endpoint: &str) -> aws_sdk_s3::Config {
    use aws_sdk_s3::config::{retry::RetryConfig, timeout::TimeoutConfig};
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(https_client())
        .region(Region::new(settings.region.clone()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.clone(),
            None,
            None,
            "data-export-env",
        ))
        .force_path_style(settings.force_path_style)
        // Transient errors (5xx, throttling, timeouts) are retried with exponential backoff.
        .retry_config(RetryConfig::standard().with_max_attempts(4).with_initial_backoff(Duration::from_millis(200)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        // Many S3-compatible services reject the newer default CRC checksums.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build()
}

/// The SDK's HTTPS client on rustls with ring, the crypto provider every other TLS
/// user of the product (PostgreSQL, SMTP, webhooks) already has: the SDK's default
/// would compile aws-lc, a C library of several build minutes, for this one client.
/// Otherwise it is the SDK's default client: the connector settings and sleep of the
/// client it serves, and a proxy from `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`.
fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::{
        Builder, ConnectorBuilder,
        proxy::ProxyConfig,
        tls::{Provider, rustls_provider::CryptoMode},
    };
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// An object's metadata as the SDK takes it.
fn metadata_map(metadata: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The innermost cause of an SDK error, which is the readable part.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
