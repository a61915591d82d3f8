//! The S3 backend (AWS S3, MinIO, Ceph RGW, LocalStack) on aws-sdk-s3.
//!
//! Every sealed PUT is a single PUT (never multipart, so the stored SHA-256 is the whole
//! object's) carrying:
//!
//! - `x-amz-object-lock-mode: COMPLIANCE` and `x-amz-object-lock-retain-until-date`;
//! - `Content-MD5` and `x-amz-checksum-sha256`, computed by us (AWS refuses lock headers
//!   without one of them; Ceph RGW checks only the MD5);
//! - `If-None-Match: *`, so an existing key is never replaced.
//!
//! The client uses `RequestChecksumCalculation::WhenRequired`, so the SDK does not switch to
//! aws-chunked streaming uploads with trailing checksums (Ceph RGW Pacific rejects those).
//! After the PUT, HEAD (with checksum mode) and ListObjectVersions confirm the lock, the
//! retain-until, the checksum and that the key has exactly one version
//! ([`super::check_sealed`]). Nothing here deletes or shortens anything; the one delete
//! request, the `bucket check` probe on a canary, is in [`super::canary`].

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, ObjectLockLegalHoldStatus, ObjectLockMode};
use base64::Engine as _;
use bytes::Bytes;

use super::{
    BucketLock, ListEntry, LockMode, ObjectInfo, PutReceipt, PutRequest, StoreError, VersionEntry,
    WormStore, check_sealed,
};
use crate::timestamp::Timestamp;

/// Resolved S3 connection settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// A custom endpoint (MinIO, Ceph RGW, LocalStack); `None` for AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub force_path_style: bool,
    pub connect_timeout: Duration,
    pub operation_timeout: Duration,
}

/// An S3 bucket with Object Lock, used as a WORM store.
#[derive(Clone, Debug)]
pub struct S3Store {
    pub(super) client: Client,
    pub(super) bucket: String,
    description: String,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl S3Store {
    /// Sends GetObject for a version (or the current one), whole or an HTTP `Range`.
    async fn send_get(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Option<String>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .set_range(range)
            .send()
            .await
            .map_err(|e| map_err(key, e))
    }

    /// GetObject, read to the end.
    async fn get_object(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: Option<String>,
    ) -> Result<Bytes, StoreError> {
        Ok(self
            .send_get(key, version_id, range)
            .await?
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Unavailable(format!("reading {key}: {e}")))?
            .into_bytes())
    }

    /// Pages through ListObjectsV2 under `prefix` (grouped at `delimiter` when given),
    /// handing each page to `each`.
    async fn list_pages(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        mut each: impl FnMut(&aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output),
    ) -> Result<(), StoreError> {
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_owned))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| map_err(prefix, e))?;
            each(&page);
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(()),
            }
        }
    }

    /// Builds a client from the standard AWS credential chain (environment, profile, web
    /// identity, container and instance metadata) and the settings.
    pub async fn connect(settings: &S3Settings) -> S3Store {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .load()
            .await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_attempt_timeout(settings.operation_timeout)
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            b = b.endpoint_url(endpoint);
        }
        let client = Client::from_conf(b.build());
        let description = format!(
            "s3://{} at {}",
            settings.bucket,
            settings
                .endpoint
                .as_deref()
                .unwrap_or(&format!("AWS {}", settings.region))
        );
        S3Store {
            client,
            bucket: settings.bucket.clone(),
            description,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn to_smithy(t: Timestamp) -> aws_smithy_types::DateTime {
    let micros = t.as_micros();
    aws_smithy_types::DateTime::from_secs_and_nanos(
        micros.div_euclid(1_000_000),
        (micros.rem_euclid(1_000_000) * 1000) as u32,
    )
}

fn from_smithy(t: &aws_smithy_types::DateTime) -> Timestamp {
    Timestamp::from_micros(t.secs() * 1_000_000 + i64::from(t.subsec_nanos() / 1000))
}

/// Maps an SDK error to what the caller should do about it.
pub(super) fn map_err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    let key = key.to_owned();
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let message = se.err().message().unwrap_or("").to_owned();
            match (status, code) {
                (412, _) | (_, "PreconditionFailed") => StoreError::AlreadyExists { key },
                (404, _) | (_, "NoSuchKey" | "NotFound" | "NoSuchVersion") => {
                    StoreError::NotFound { key }
                }
                (_, "NoSuchBucket") => StoreError::Other {
                    key,
                    message: format!("the bucket does not exist: {message}"),
                },
                (403, _) => StoreError::PermissionDenied {
                    key,
                    message: format!("{code}: {message}"),
                },
                (409, "ConditionalRequestConflict") | (429, _) | (500..=599, _) => {
                    StoreError::Unavailable(format!("{status} {code}: {message}"))
                }
                _ => StoreError::Other {
                    key,
                    message: format!("HTTP {status} {code}: {message}"),
                },
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            ))
        }
        _ => StoreError::Other {
            key,
            message: format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(&err)
            ),
        },
    }
}

fn lock_mode(m: &ObjectLockMode) -> Option<LockMode> {
    match m {
        ObjectLockMode::Compliance => Some(LockMode::Compliance),
        ObjectLockMode::Governance => Some(LockMode::Governance),
        _ => None,
    }
}

#[async_trait::async_trait]
impl WormStore for S3Store {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn put_sealed(&self, req: &PutRequest) -> Result<PutReceipt, StoreError> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&req.key)
            .body(ByteStream::from(req.body.clone()))
            .content_length(req.body.len() as i64)
            .content_type(req.content_type)
            .content_md5(B64.encode(req.md5))
            .checksum_sha256(B64.encode(req.sha256))
            .if_none_match("*")
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(to_smithy(req.retain_until))
            .send()
            .await
            .map_err(|e| map_err(&req.key, e))?;
        let Some(version_id) = out.version_id().map(str::to_owned) else {
            return Err(StoreError::NotSealed {
                key: req.key.clone(),
                problem: "the PUT returned no version id: the bucket does not have versioning (and so no Object Lock)".into(),
            });
        };
        let head = self.head(&req.key, Some(&version_id)).await?;
        let versions = self.versions_of(&req.key).await?;
        check_sealed(req, &version_id, &head, &versions)?;
        Ok(PutReceipt {
            key: req.key.clone(),
            version_id,
            size: head.size,
            retain_until: head.retain_until.unwrap_or(req.retain_until),
            already_existed: false,
        })
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_owned))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        let sha256 = out.checksum_sha256().and_then(|b| {
            let raw = B64.decode(b).ok()?;
            <[u8; 32]>::try_from(raw.as_slice()).ok()
        });
        Ok(ObjectInfo {
            key: key.to_owned(),
            version_id: out.version_id().map(str::to_owned),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            lock_mode: out.object_lock_mode().and_then(lock_mode),
            retain_until: out.object_lock_retain_until_date().map(from_smithy),
            legal_hold: out.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
            sha256,
        })
    }

    async fn get(&self, key: &str, version_id: Option<&str>) -> Result<Bytes, StoreError> {
        self.get_object(key, version_id, None).await
    }

    async fn get_range(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let body = self
            .get_object(
                key,
                version_id,
                Some(format!("bytes={}-{}", range.start, range.end - 1)),
            )
            .await?;
        if body.len() as u64 != range.end - range.start {
            return Err(StoreError::Other {
                key: key.to_owned(),
                message: format!("asked for {range:?}, got {} bytes", body.len()),
            });
        }
        Ok(body)
    }

    async fn digest(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(crate::merkle::Hash, u64), StoreError> {
        use sha2::Digest;
        let mut out = self.send_get(key, version_id, None).await?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = out.body.next().await {
            let chunk =
                chunk.map_err(|e| StoreError::Unavailable(format!("reading {key}: {e}")))?;
            hasher.update(&chunk);
            len += chunk.len() as u64;
        }
        Ok((hasher.finalize().into(), len))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>, StoreError> {
        let mut out = Vec::new();
        self.list_pages(prefix, None, |page| {
            out.extend(page.contents().iter().filter_map(|o| {
                Some(ListEntry {
                    key: o.key()?.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                })
            }))
        })
        .await?;
        Ok(out)
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        self.list_pages(prefix, Some("/"), |page| {
            out.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            )
        })
        .await?;
        out.sort();
        Ok(out)
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| map_err(prefix, e))?;
            for v in page.versions() {
                if let Some(k) = v.key() {
                    out.push(VersionEntry {
                        key: k.to_owned(),
                        version_id: v.version_id().unwrap_or("null").to_owned(),
                        is_delete_marker: false,
                        is_latest: v.is_latest().unwrap_or(false),
                        size: v.size().unwrap_or(0).max(0) as u64,
                        last_modified: v.last_modified().map(from_smithy),
                    });
                }
            }
            for m in page.delete_markers() {
                if let Some(k) = m.key() {
                    out.push(VersionEntry {
                        key: k.to_owned(),
                        version_id: m.version_id().unwrap_or("null").to_owned(),
                        is_delete_marker: true,
                        is_latest: m.is_latest().unwrap_or(false),
                        size: 0,
                        last_modified: m.last_modified().map(from_smithy),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn probe_canary(
        &self,
        layout: &crate::layout::Layout,
        canary: &super::canary::Canary,
    ) -> Result<super::canary::CanaryOutcome, StoreError> {
        super::canary::probe_s3(self, layout, canary).await
    }

    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        let bucket = format!("(bucket {})", self.bucket);
        let versioning = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| map_err(&bucket, e))?
            .status()
            .map(|s| s.as_str().to_owned());
        let lock = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out.object_lock_configuration().cloned(),
            Err(e) => match map_err(&bucket, e) {
                // No lock configuration at all answers 404 ObjectLockConfigurationNotFoundError.
                StoreError::NotFound { .. } => None,
                StoreError::Other { message, .. }
                    if message.contains("ObjectLockConfigurationNotFound") =>
                {
                    None
                }
                other => return Err(other),
            },
        };
        let enabled = lock
            .as_ref()
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|e| e == &aws_sdk_s3::types::ObjectLockEnabled::Enabled);
        let default = lock
            .as_ref()
            .and_then(|c| c.rule())
            .and_then(|r| r.default_retention());
        Ok(BucketLock {
            versioning,
            lock_enabled: enabled,
            default_mode: default.and_then(|d| d.mode()).and_then(|m| match m {
                aws_sdk_s3::types::ObjectLockRetentionMode::Compliance => {
                    Some(LockMode::Compliance)
                }
                aws_sdk_s3::types::ObjectLockRetentionMode::Governance => {
                    Some(LockMode::Governance)
                }
                _ => None,
            }),
            default_days: default.and_then(|d| {
                d.days()
                    .map(|x| x.max(0) as u32)
                    .or_else(|| d.years().map(|y| (y.max(0) as u32).saturating_mul(365)))
            }),
        })
    }
}
