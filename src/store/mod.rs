//! The write-once store: one narrow trait for what a WORM archive needs.
//!
//! [`WormStore`] has a sealed put, HEAD with lock information, GET, LIST and the versions of a
//! key. **Architecture invariant: there is no delete, no overwrite and no retention-shortening
//! operation anywhere in this trait or its implementations.**
//!
//! Two backends:
//!
//! - [`s3::S3Store`] on aws-sdk-s3, for AWS S3, MinIO, Ceph RGW and LocalStack;
//! - [`local::LocalStore`], the embedded development store: a directory that enforces the same
//!   rules in software (create-only, no delete, retention recorded, files read-only). It is not
//!   a compliance store, and says so whenever it is opened.
//!
//! Every sealed put is verified after the fact by [`check_sealed`] (HEAD: COMPLIANCE lock,
//! retain-until, size and stored checksum; versions: exactly one), because some S3 servers
//! silently ignore lock, checksum or conditional headers.

pub mod canary;
pub mod local;
pub mod s3;

use bytes::Bytes;

use crate::merkle::{self, Hash};
use crate::timestamp::Timestamp;

/// Object Lock retention mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LockMode {
    Compliance,
    Governance,
}

/// A create-only, locked write.
#[derive(Clone, Debug)]
pub struct PutRequest {
    pub key: String,
    pub body: Bytes,
    /// COMPLIANCE retain-until for this object.
    pub retain_until: Timestamp,
    pub sha256: Hash,
    pub md5: [u8; 16],
    pub content_type: &'static str,
}

impl PutRequest {
    pub fn new(
        key: String,
        body: Bytes,
        retain_until: Timestamp,
        content_type: &'static str,
    ) -> PutRequest {
        let sha256 = merkle::sha256(&body);
        let md5 = crate::segment::md5_digest(&body);
        PutRequest::with_digests(key, body, sha256, md5, retain_until, content_type)
    }

    /// A request for bytes whose digests are already known (and were checked by the caller).
    pub fn with_digests(
        key: String,
        body: Bytes,
        sha256: Hash,
        md5: [u8; 16],
        retain_until: Timestamp,
        content_type: &'static str,
    ) -> PutRequest {
        PutRequest {
            key,
            body,
            retain_until,
            sha256,
            md5,
            content_type,
        }
    }
}

/// What the store confirmed about a sealed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReceipt {
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub retain_until: Timestamp,
    /// True when the object already existed with identical content (an idempotent retry).
    pub already_existed: bool,
}

/// HEAD of one object version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub version_id: Option<String>,
    pub size: u64,
    pub lock_mode: Option<LockMode>,
    pub retain_until: Option<Timestamp>,
    pub legal_hold: bool,
    /// The SHA-256 the store computed and keeps for the object, when it reports one (S3
    /// flexible checksums). `None` means the bytes must be read to be verified.
    pub sha256: Option<Hash>,
}

/// One entry of a key's version list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    pub is_delete_marker: bool,
    pub is_latest: bool,
    pub size: u64,
    /// When this version was written, if the store says.
    pub last_modified: Option<Timestamp>,
}

impl VersionEntry {
    /// The version id, marked when the version is a delete marker (for messages and findings).
    pub fn label(&self) -> String {
        if self.is_delete_marker {
            format!("{} (delete marker)", self.version_id)
        } else {
            self.version_id.clone()
        }
    }
}

/// The bucket's versioning and Object Lock configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BucketLock {
    /// `Enabled`, `Suspended`, or `None` if versioning was never enabled.
    pub versioning: Option<String>,
    pub lock_enabled: bool,
    pub default_mode: Option<LockMode>,
    /// Default retention, in days (years are counted as 365 days).
    pub default_days: Option<u32>,
}

/// One entry of a listing (current versions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
}

/// Errors of the store, by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{key} already exists; archived objects are never overwritten")]
    AlreadyExists { key: String },
    #[error("{key} does not exist")]
    NotFound { key: String },
    #[error("{key} exists with different content than this write; the archive is not changed")]
    Conflict { key: String },
    #[error("permission denied on {key}: {message}")]
    PermissionDenied { key: String, message: String },
    /// The store accepted the write but did not seal it as required.
    #[error("{key} was written but is not sealed as required: {problem}")]
    NotSealed { key: String, problem: String },
    /// A transient failure (network, 5xx, timeout): retry later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("store error on {key}: {message}")]
    Other { key: String, message: String },
}

impl StoreError {
    /// Whether retrying the same call later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The storage a WORM archive needs, and nothing more.
#[async_trait::async_trait]
pub trait WormStore: Send + Sync + 'static {
    /// A one-line description for logs (`s3://bucket/prefix at endpoint`, ...).
    fn describe(&self) -> String;

    /// True for the local development store.
    fn is_development(&self) -> bool {
        false
    }

    /// Writes a new object, create-only (`If-None-Match: *`), locked in COMPLIANCE mode until
    /// `req.retain_until`, with `Content-MD5` and `x-amz-checksum-sha256`; then verifies with
    /// [`check_sealed`]. `AlreadyExists` if the key exists.
    async fn put_sealed(&self, req: &PutRequest) -> Result<PutReceipt, StoreError>;

    /// HEAD of the current (or a given) version, with lock information.
    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError>;

    /// The bytes of the current (or a given) version.
    async fn get(&self, key: &str, version_id: Option<&str>) -> Result<Bytes, StoreError>;

    /// Bytes `range` of the current (or a given) version (for reading parts of a Parquet file).
    async fn get_range(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError>;

    /// The SHA-256 and length of the current (or a given) version, read as a stream: memory
    /// does not grow with the object's size.
    async fn digest(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(crate::merkle::Hash, u64), StoreError>;

    /// Current objects under `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>, StoreError>;

    /// The "directories" directly under `prefix` (which ends in `/`): the distinct key
    /// segments up to the next `/`, each returned with its trailing `/`, in order.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Every version and delete marker of every key starting with `prefix`, in key order.
    async fn versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError>;

    /// Every version and delete marker of exactly `key`.
    async fn versions_of(&self, key: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let mut all = self.versions(key).await?;
        all.retain(|v| v.key == key);
        Ok(all)
    }

    /// The bucket's versioning and Object Lock configuration (read only).
    async fn bucket_lock(&self) -> Result<BucketLock, StoreError>;

    /// Writes `canary` sealed and tries to delete that version ([`canary`]): the one request
    /// that may delete, and only a canary key.
    async fn probe_canary(
        &self,
        layout: &crate::layout::Layout,
        canary: &canary::Canary,
    ) -> Result<canary::CanaryOutcome, StoreError>;
}

/// Checks that a just-written object is what a sealed put promises. Shared by every backend,
/// so a server that ignores a header is caught the same way everywhere.
pub fn check_sealed(
    req: &PutRequest,
    version_id: &str,
    head: &ObjectInfo,
    versions: &[VersionEntry],
) -> Result<(), StoreError> {
    let fail = |problem: String| {
        Err(StoreError::NotSealed {
            key: req.key.clone(),
            problem,
        })
    };
    match head.lock_mode {
        Some(LockMode::Compliance) => {}
        Some(LockMode::Governance) => {
            return fail("it is locked in GOVERNANCE mode, not COMPLIANCE".into());
        }
        None => {
            return fail(
                "it has no object lock; the bucket may not have Object Lock enabled".into(),
            );
        }
    }
    match head.retain_until {
        Some(t) if t >= req.retain_until => {}
        Some(t) => {
            return fail(format!(
                "its retain-until is {t}, earlier than the required {}",
                req.retain_until
            ));
        }
        None => return fail("it has no retain-until date".into()),
    }
    if head.size != req.body.len() as u64 {
        return fail(format!(
            "its size is {} bytes, not {}",
            head.size,
            req.body.len()
        ));
    }
    if let Some(sha) = head.sha256
        && sha != req.sha256
    {
        return fail(format!(
            "its stored SHA-256 is {}, not {}",
            hex::encode(sha),
            hex::encode(req.sha256)
        ));
    }
    if head.version_id.as_deref().is_some_and(|v| v != version_id) {
        return fail(format!(
            "HEAD shows version {:?} but the write created {version_id:?}",
            head.version_id.as_deref().unwrap_or_default()
        ));
    }
    let live: Vec<&VersionEntry> = versions.iter().filter(|v| v.key == req.key).collect();
    if live.len() != 1 || live[0].is_delete_marker || live[0].version_id != version_id {
        let list: Vec<String> = live.iter().map(|v| v.label()).collect();
        return fail(format!(
            "the key has {} versions [{}]; exactly one ({version_id}) was expected. The server may ignore If-None-Match",
            live.len(),
            list.join(", ")
        ));
    }
    Ok(())
}

/// A sealed put that is idempotent: if the key already exists with identical bytes and a
/// sufficient COMPLIANCE lock, that object is accepted as this write (a retry after a crash);
/// anything else is an error. With `maybe_exists`, HEAD first, so that servers which ignore
/// `If-None-Match` on versioned buckets (Ceph RGW) do not get a second version on a retry.
pub async fn put_or_confirm(
    store: &dyn WormStore,
    req: &PutRequest,
    maybe_exists: bool,
) -> Result<PutReceipt, StoreError> {
    if maybe_exists {
        match store.head(&req.key, None).await {
            Ok(_) => return confirm_identical(store, req).await,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match store.put_sealed(req).await {
        Err(StoreError::AlreadyExists { .. }) => confirm_identical(store, req).await,
        other => other,
    }
}

async fn confirm_identical(
    store: &dyn WormStore,
    req: &PutRequest,
) -> Result<PutReceipt, StoreError> {
    let head = store.head(&req.key, None).await?;
    // The stored checksum where the store keeps one, else the object hashed as it streams
    // in (not read whole: a day's record index can be tens of megabytes).
    let sha = match head.sha256 {
        Some(sha) => sha,
        None => store.digest(&req.key, head.version_id.as_deref()).await?.0,
    };
    if sha != req.sha256 || head.size != req.body.len() as u64 {
        return Err(StoreError::Conflict {
            key: req.key.clone(),
        });
    }
    let version_id = head.version_id.clone().unwrap_or_else(|| "null".into());
    let versions = store.versions_of(&req.key).await?;
    check_sealed(req, &version_id, &head, &versions)?;
    Ok(PutReceipt {
        key: req.key.clone(),
        version_id,
        size: head.size,
        retain_until: head.retain_until.unwrap_or(req.retain_until),
        already_existed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PutRequest {
        PutRequest::new(
            "k".into(),
            Bytes::from_static(b"abc"),
            Timestamp::from_micros(1_000_000),
            "x",
        )
    }

    fn head() -> ObjectInfo {
        ObjectInfo {
            key: "k".into(),
            version_id: Some("v1".into()),
            size: 3,
            lock_mode: Some(LockMode::Compliance),
            retain_until: Some(Timestamp::from_micros(1_000_000)),
            legal_hold: false,
            sha256: Some(merkle::sha256(b"abc")),
        }
    }

    fn version(id: &str, marker: bool) -> VersionEntry {
        VersionEntry {
            key: "k".into(),
            version_id: id.into(),
            is_delete_marker: marker,
            is_latest: true,
            size: 3,
            last_modified: None,
        }
    }

    #[test]
    fn check_sealed_catches_what_servers_ignore() {
        let ok = [version("v1", false)];
        assert!(check_sealed(&req(), "v1", &head(), &ok).is_ok());
        let problem = |h: ObjectInfo, v: &[VersionEntry]| match check_sealed(&req(), "v1", &h, v) {
            Err(StoreError::NotSealed { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        assert!(
            problem(
                ObjectInfo {
                    lock_mode: None,
                    ..head()
                },
                &ok
            )
            .contains("no object lock")
        );
        assert!(
            problem(
                ObjectInfo {
                    lock_mode: Some(LockMode::Governance),
                    ..head()
                },
                &ok
            )
            .contains("GOVERNANCE")
        );
        assert!(
            problem(
                ObjectInfo {
                    retain_until: Some(Timestamp::from_micros(999_999)),
                    ..head()
                },
                &ok
            )
            .contains("earlier")
        );
        assert!(
            problem(
                ObjectInfo {
                    sha256: Some([0; 32]),
                    ..head()
                },
                &ok
            )
            .contains("SHA-256")
        );
        assert!(
            problem(head(), &[version("v0", false), version("v1", false)]).contains("2 versions")
        );
        assert!(problem(head(), &[version("v1", true)]).contains("delete marker"));
        // Other keys that share the prefix are not this key's versions.
        let other = VersionEntry {
            key: "k2".into(),
            ..version("x", false)
        };
        assert!(check_sealed(&req(), "v1", &head(), &[version("v1", false), other]).is_ok());
    }
}
