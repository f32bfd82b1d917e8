//! Object storage through aws-sdk-s3: one code path for the embedded endpoint and
//! any external S3-compatible service. Buckets, presigned URLs, the verification probe.

pub mod embedded;

use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation},
    presigning::PresigningConfig,
    primitives::ByteStream,
};

use crate::config::S3Settings;

pub use embedded::EmbeddedS3;

/// How long a download link lives.
pub const PRESIGN_TTL: Duration = Duration::from_secs(900);

/// The storage client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    client: Client,
    /// Signs URLs for the endpoint browsers reach (`S3_PUBLIC_ENDPOINT`), which may differ.
    presign_client: Client,
    endpoint: String,
    identity: String,
    privacy_bucket: String,
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
        Self {
            client,
            presign_client,
            endpoint: settings.endpoint.clone(),
            identity,
            privacy_bucket: privacy_bucket.to_string(),
        }
    }

    /// The raw client, for streaming uploads.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The endpoint in use (shown to platform admins; holds no secret).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What the backup configuration is verified against.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The platform's privacy bucket (GDPR exports).
    pub fn privacy_bucket(&self) -> &str {
        &self.privacy_bucket
    }

    /// Creates `bucket` unless it exists.
    pub async fn ensure_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        if self.client.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()) {
                    Ok(())
                } else {
                    Err(anyhow::Error::new(e.into_service_error()).context(format!("cannot create bucket {bucket}")))
                }
            }
        }
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
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.into_service_error()))
            .with_context(|| format!("cannot delete {bucket}/{key}"))?;
        Ok(())
    }

    /// Checks the endpoint is reachable: any answer from it counts, even a refusal
    /// (credentials scoped to some buckets may not list them all); no answer fails.
    pub async fn ping(&self) -> anyhow::Result<()> {
        use aws_sdk_s3::error::SdkError;
        match self.client.list_buckets().send().await {
            Ok(_) | Err(SdkError::ServiceError(_)) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("no answer from the S3 endpoint {}: {}", self.endpoint, describe(&e))),
        }
    }

    /// Streams `bucket/key` through [`crate::exports::verify::verify`] (on a blocking
    /// thread, one row in memory at a time). The outer error is the storage's; the
    /// inner one says what is wrong with the file.
    pub async fn verify_object(
        &self,
        bucket: &str,
        key: &str,
        expected_sha256: Option<&str>,
    ) -> anyhow::Result<Result<crate::exports::verify::Report, crate::exports::verify::Invalid>> {
        let object = match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => o,
            // Gone from the bucket (removed outside the product): the run's file is lost.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Ok(Err(crate::exports::verify::Invalid(format!(
                    "the object {key} is missing from bucket {bucket}"
                ))));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e.into_service_error()).context(format!("cannot read {bucket}/{key}")));
            }
        };
        let reader = tokio_util::io::SyncIoBridge::new(object.body.into_async_read());
        let expected = expected_sha256.map(str::to_string);
        Ok(tokio::task::spawn_blocking(move || crate::exports::verify::verify(reader, expected.as_deref())).await?)
    }

    /// Whether `bucket/key` exists.
    pub async fn exists(&self, bucket: &str, key: &str) -> anyhow::Result<bool> {
        match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e.into_service_error()).context(format!("cannot read {bucket}/{key}"))),
        }
    }

    /// Writes, reads back and deletes a probe object in each of `buckets` (created if
    /// missing). The error says which step failed where.
    pub async fn probe(&self, buckets: &[String]) -> anyhow::Result<()> {
        for bucket in buckets {
            self.ensure_bucket(bucket).await?;
            let key = format!("probes/{}.txt", ulid::Ulid::generate());
            let body = format!("data-export storage probe {key}");
            self.client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(body.clone().into_bytes()))
                .send()
                .await
                .map_err(|e| anyhow::Error::new(e.into_service_error()))
                .with_context(|| format!("cannot write a probe object to bucket {bucket}"))?;
            let got = self
                .client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| anyhow::Error::new(e.into_service_error()))
                .with_context(|| format!("cannot read the probe object back from bucket {bucket}"))?;
            let bytes = got.body.collect().await.context("reading the probe object")?.into_bytes();
            anyhow::ensure!(bytes.as_ref() == body.as_bytes(), "the probe object read back from {bucket} differs");
            self.delete(bucket, &key).await?;
        }
        Ok(())
    }
}

fn client_config(settings: &S3Settings, endpoint: &str) -> aws_sdk_s3::Config {
    use aws_sdk_s3::config::{retry::RetryConfig, timeout::TimeoutConfig};
    aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
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

/// The innermost cause of an SDK error, which is the readable part.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
