//! Shared test helpers: targets (local store or LocalStack), buckets, the Python checkers.
//!
//! Tests that need S3 use `WORMVAULT_TEST_S3_ENDPOINT` (set by `scripts/test`, default
//! `http://127.0.0.1:4566`). Without a server they fail: they never skip.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::config::{Credentials, Region};
use wormvault::archive::Archive;
use wormvault::config::Settings;
use wormvault::store::WormStore;

pub fn s3_endpoint() -> String {
    std::env::var("WORMVAULT_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A unique, valid bucket name.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{prefix}-{:012x}", r & 0xffff_ffff_ffff)
}

/// An S3 client for the test server with full rights (for set-up and side-door tampering).
pub fn admin_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// What kind of bucket to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketKind {
    /// Versioning and Object Lock, as wormvault requires.
    Lock,
    /// Versioning, Object Lock and a COMPLIANCE default retention of one day (what the
    /// Terraform modules provision, and what `/readyz` checks).
    LockWithDefault,
    /// No versioning, no lock.
    Plain,
}

pub async fn create_bucket(client: &aws_sdk_s3::Client, name: &str, kind: BucketKind) {
    let mut req = client.create_bucket().bucket(name);
    if kind != BucketKind::Plain {
        req = req.object_lock_enabled_for_bucket(true);
    }
    req.send().await.unwrap_or_else(|e| {
        panic!(
            "cannot create bucket {name} at {}: {}. Is LocalStack running? Run the suite with scripts/test.",
            s3_endpoint(),
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
        )
    });
    if kind == BucketKind::LockWithDefault {
        use aws_sdk_s3::types::{
            DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
            ObjectLockRule,
        };
        let rule = ObjectLockRule::builder()
            .default_retention(
                DefaultRetention::builder()
                    .mode(ObjectLockRetentionMode::Compliance)
                    .days(1)
                    .build(),
            )
            .build();
        let conf = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(rule)
            .build();
        client
            .put_object_lock_configuration()
            .bucket(name)
            .object_lock_configuration(conf)
            .send()
            .await
            .unwrap();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Local,
    LocalStack,
}

/// A fresh archive target: a temporary directory, and for LocalStack a fresh lock bucket with
/// a COMPLIANCE default retention (one the bucket check passes).
pub struct Target {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub bucket: String,
    pub endpoint: String,
    pub rt: tokio::runtime::Runtime,
}

impl Target {
    pub fn new(backend: Backend) -> Target {
        let rt = runtime();
        let endpoint = s3_endpoint();
        let bucket = unique("wv");
        if backend == Backend::LocalStack {
            rt.block_on(create_bucket(
                &admin_client(&endpoint),
                &bucket,
                BucketKind::LockWithDefault,
            ));
        }
        Target {
            backend,
            dir: tempfile::tempdir().unwrap(),
            bucket,
            endpoint,
            rt,
        }
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// A configuration for a writer whose state lives in `state` (a subdirectory): `extra`
    /// TOML, then this target's `[store]`.
    pub fn config_text(&self, state: &str, extra: &str) -> String {
        let store = match self.backend {
            Backend::Local => format!(
                "[store]\nkind = \"local\"\n[store.local]\npath = {:?}\n",
                self.archive_dir().display().to_string()
            ),
            Backend::LocalStack => format!(
                "[store]\nkind = \"s3\"\n[store.s3]\nbucket = {:?}\nendpoint = {:?}\nconnect_timeout = \"2s\"\noperation_timeout = \"20s\"\n",
                self.bucket, self.endpoint
            ),
        };
        format!(
            "state_dir = {:?}\n{extra}\n{store}",
            self.dir.path().join(state).display().to_string()
        )
    }

    /// [`Target::config_text`] written to a new file, for the command line.
    pub fn config_file(&self, state: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{}.toml", unique("cfg")));
        std::fs::write(&path, self.config_text(state, extra)).unwrap();
        path
    }

    /// Settings for a writer whose state lives in `state` (a subdirectory), plus `extra` TOML.
    pub fn settings_in(&self, state: &str, extra: &str) -> Settings {
        let env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        Settings::from_toml("test", &self.config_text(state, extra), env).unwrap()
    }

    pub fn settings(&self) -> Settings {
        self.settings_in("state", "")
    }

    pub fn open(&self, settings: Settings) -> Archive {
        self.rt.block_on(Archive::open(settings)).unwrap()
    }

    pub fn store(&self) -> Arc<dyn WormStore> {
        self.rt
            .block_on(wormvault::archive::open_store(&self.settings()))
            .unwrap()
    }

    /// A directory holding every object of the archive as a file named by its key: the local
    /// store's own directory, or a download of the bucket.
    pub fn materialize(&self) -> PathBuf {
        match self.backend {
            Backend::Local => self.archive_dir(),
            Backend::LocalStack => {
                let out = self.dir.path().join("download");
                let store = self.store();
                self.rt.block_on(async {
                    for e in store.list("").await.unwrap() {
                        let bytes = store.get(&e.key, None).await.unwrap();
                        let path = out.join(&e.key);
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::fs::write(path, bytes).unwrap();
                    }
                });
                out
            }
        }
    }
}

/// `wormvault --config CONFIG ARGS`, with the test server's credentials and quiet logs.
pub fn wormvault(config: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wormvault"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("WORMVAULT_LOG", "error")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// The anchorer `settings` describe, on the target's store.
pub fn anchorer(t: &Target, settings: &Settings) -> wormvault::anchor::Anchorer {
    t.rt.block_on(wormvault::anchor::Anchorer::from_settings(
        settings,
        t.store(),
    ))
    .unwrap()
    .unwrap()
}

/// Anchors (and so indexes) every day of the archive up to yesterday.
pub fn anchor_up_to_yesterday(t: &Target, settings: &Settings) {
    let yesterday = wormvault::timestamp::Timestamp::now().day().prev();
    t.rt.block_on(anchorer(t, settings).anchor_through(yesterday))
        .unwrap();
}

/// Runs a test body against the local store and against LocalStack, as two tests.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn local_store() {
                super::$name($crate::util::Backend::Local)
            }
            #[test]
            fn localstack() {
                super::$name($crate::util::Backend::LocalStack)
            }
        }
    };
}

/// Runs one of the Python checkers in `tests/py` and parses its JSON output.
pub fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let py = std::env::var("WORMVAULT_TEST_PYTHON").expect(
        "WORMVAULT_TEST_PYTHON is not set: the independent checkers need pyarrow and duckdb; run the suite with scripts/test",
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = std::process::Command::new(py)
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Verifies the target's archive with the independent Python verifier; returns its report
/// after asserting it found no problems.
pub fn verify_independently(target: &Target) -> serde_json::Value {
    let dir = target.materialize();
    let report = python("verify_archive.py", &[dir.to_str().unwrap()]);
    assert_eq!(
        report["problems"],
        serde_json::json!([]),
        "independent verifier found problems"
    );
    report
}

/// Imports NDJSON `text` into `archive` (one upload attempt, no waiting) and asserts that
/// every line was accepted.
pub fn import_all(t: &Target, archive: &Archive, text: String) {
    let lines = text.lines().count() as u64;
    let patience = wormvault::import::UploadPatience {
        attempts: 1,
        first_backoff: std::time::Duration::from_millis(10),
    };
    let s = wormvault::import::import(
        archive,
        wormvault::import::Input::bytes(text.into_bytes()),
        t.rt.handle(),
        patience,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s.accepted, lines);
}

/// A valid event as JSON text.
pub fn event(id: &str, occurred_at: &str, action: &str, subject: &str) -> String {
    serde_json::json!({
        "event_id": id,
        "occurred_at": occurred_at,
        "actor": {"type": "USER", "id": "jdoe", "role": "trader"},
        "action": action,
        "subject": {"type": "trade", "id": subject},
        "origin": {"ip": "10.2.3.4", "device": "ws-114"},
        "source": "UI",
        "payload": {"qty": 100, "price": 101.25, "note": "tab\there é \u{1F600}", "legs": [{"n": 1}, {"n": 2}]}
    })
    .to_string()
}

/// A store that refuses writes and listings while `down` is set (unreachable), else delegates.
pub struct Flaky {
    inner: Arc<dyn WormStore>,
    pub down: std::sync::atomic::AtomicBool,
}

impl Flaky {
    pub fn new(inner: Arc<dyn WormStore>, down: bool) -> Flaky {
        Flaky {
            inner,
            down: std::sync::atomic::AtomicBool::new(down),
        }
    }

    fn up(&self) -> Result<(), wormvault::store::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(wormvault::store::StoreError::Unavailable(
                "store down".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl WormStore for Flaky {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put_sealed(
        &self,
        req: &wormvault::store::PutRequest,
    ) -> Result<wormvault::store::PutReceipt, wormvault::store::StoreError> {
        self.up()?;
        self.inner.put_sealed(req).await
    }
    async fn head(
        &self,
        k: &str,
        v: Option<&str>,
    ) -> Result<wormvault::store::ObjectInfo, wormvault::store::StoreError> {
        self.inner.head(k, v).await
    }
    async fn get(
        &self,
        k: &str,
        v: Option<&str>,
    ) -> Result<bytes::Bytes, wormvault::store::StoreError> {
        self.inner.get(k, v).await
    }
    async fn get_range(
        &self,
        k: &str,
        v: Option<&str>,
        r: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, wormvault::store::StoreError> {
        self.inner.get_range(k, v, r).await
    }
    async fn digest(
        &self,
        k: &str,
        v: Option<&str>,
    ) -> Result<([u8; 32], u64), wormvault::store::StoreError> {
        self.inner.digest(k, v).await
    }
    async fn list(
        &self,
        p: &str,
    ) -> Result<Vec<wormvault::store::ListEntry>, wormvault::store::StoreError> {
        self.up()?;
        self.inner.list(p).await
    }
    async fn list_dirs(&self, p: &str) -> Result<Vec<String>, wormvault::store::StoreError> {
        self.up()?;
        self.inner.list_dirs(p).await
    }
    async fn versions(
        &self,
        p: &str,
    ) -> Result<Vec<wormvault::store::VersionEntry>, wormvault::store::StoreError> {
        self.inner.versions(p).await
    }
    async fn bucket_lock(
        &self,
    ) -> Result<wormvault::store::BucketLock, wormvault::store::StoreError> {
        self.inner.bucket_lock().await
    }
    async fn probe_canary(
        &self,
        layout: &wormvault::layout::Layout,
        canary: &wormvault::store::canary::Canary,
    ) -> Result<wormvault::store::canary::CanaryOutcome, wormvault::store::StoreError> {
        self.inner.probe_canary(layout, canary).await
    }
}
