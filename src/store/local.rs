//! The embedded development store: a directory that enforces write-once rules in software.
//!
//! ```text
//! {root}/{key}                          object bytes, mode 0444 (Hive layout, DuckDB-readable)
//! {root}/.wormvault/meta/{key}.json     {"version_id","size","sha256","md5","lock_mode",
//!                                        "retain_until","legal_hold","created_at"}
//! {root}/.wormvault/tmp/                staging for atomic creation
//! ```
//!
//! A put stages the bytes and the metadata in `tmp/`, fsyncs both, then publishes the
//! metadata and finally the object with `link(2)`, which fails if the target exists: creation
//! is atomic and create-only. An object is *present* once its file is linked; metadata
//! without an object is the trace of an interrupted put and is replaced by the next put of
//! that key. Publishing holds an exclusive lock on `tmp/put.lock` (`flock(2)`), so puts of the
//! same key from several threads or processes cannot take each other's metadata for such a
//! trace. There is no delete and no overwrite. HEAD reports no stored checksum, because a
//! file system keeps none: verifiers must read and hash the bytes, which is what catches a
//! file changed behind the store's back.
//!
//! This store is **not** a compliance store: anyone with write access to the directory can
//! change it. It is for development, demos and tests of the pipeline.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{
    BucketLock, ListEntry, LockMode, ObjectInfo, PutReceipt, PutRequest, StoreError, VersionEntry,
    WormStore, check_sealed,
};
use crate::timestamp::Timestamp;

const META_DIR: &str = ".wormvault/meta";
const TMP_DIR: &str = ".wormvault/tmp";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version_id: String,
    size: u64,
    sha256: String,
    md5: String,
    lock_mode: LockMode,
    retain_until: Timestamp,
    legal_hold: bool,
    created_at: Timestamp,
}

/// A directory enforcing WORM rules in software. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: Arc<PathBuf>,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<LocalStore> {
        let root: PathBuf = root.into();
        fs::create_dir_all(root.join(META_DIR))?;
        fs::create_dir_all(root.join(TMP_DIR))?;
        tracing::warn!(
            path = %root.display(),
            "The local directory store is a development store: it enforces write-once rules in software \
             but anyone with access to the directory can change it. It is not an SEC 17a-4(f) compliance store."
        );
        Ok(LocalStore {
            root: Arc::new(root),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding an object's bytes.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.root.join(META_DIR).join(format!("{key}.json"))
    }

    fn check_key(key: &str) -> Result<(), StoreError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key.starts_with(".wormvault")
            || key.ends_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if bad {
            Err(StoreError::Other {
                key: key.into(),
                message: "not a valid object key for the local store".into(),
            })
        } else {
            Ok(())
        }
    }

    fn put_blocking(&self, req: &PutRequest) -> Result<PutReceipt, StoreError> {
        let key = &req.key;
        Self::check_key(key)?;
        let io_err = |e: io::Error| StoreError::Other {
            key: key.clone(),
            message: e.to_string(),
        };
        let obj = self.object_path(key);
        if obj.exists() {
            return Err(StoreError::AlreadyExists { key: key.clone() });
        }
        let version_id = hex::encode(&req.sha256[..16]);
        let meta = Meta {
            version_id: version_id.clone(),
            size: req.body.len() as u64,
            sha256: hex::encode(req.sha256),
            md5: hex::encode(req.md5),
            lock_mode: LockMode::Compliance,
            retain_until: req.retain_until,
            legal_hold: false,
            created_at: Timestamp::now(),
        };
        let meta_bytes = serde_json::to_vec_pretty(&meta).expect("serializable");
        let tmp = self.root.join(TMP_DIR);
        static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stem = format!(
            "{}-{n}-{}",
            std::process::id(),
            hex::encode(&req.sha256[..8])
        );
        let tmp_obj = tmp.join(format!("{stem}.obj"));
        let tmp_meta = tmp.join(format!("{stem}.meta"));
        write_synced(&tmp_obj, &req.body, true).map_err(io_err)?;
        write_synced(&tmp_meta, &meta_bytes, false).map_err(io_err)?;
        let result = (|| {
            let meta_path = self.meta_path(key);
            fs::create_dir_all(meta_path.parent().expect("has parent")).map_err(io_err)?;
            fs::create_dir_all(obj.parent().expect("has parent")).map_err(io_err)?;
            // Linking the metadata, then the object, is one step for every writer of this
            // store, in any process: otherwise a second put of the same key could take the
            // first one's metadata, seen without its object yet, for an interrupted put's
            // leftover and replace it under the first one's feet.
            let lock = fs::File::create(tmp.join("put.lock")).map_err(io_err)?;
            lock.lock().map_err(io_err)?;
            match fs::hard_link(&tmp_meta, &meta_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if obj.exists() {
                        return Err(StoreError::AlreadyExists { key: key.clone() });
                    }
                    // Metadata left by an interrupted put of an object that never appeared.
                    fs::remove_file(&meta_path).map_err(io_err)?;
                    fs::hard_link(&tmp_meta, &meta_path).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
            match fs::hard_link(&tmp_obj, &obj) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::AlreadyExists { key: key.clone() });
                }
                Err(e) => return Err(io_err(e)),
            }
            drop(lock);
            sync_dir(obj.parent().expect("has parent")).map_err(io_err)?;
            sync_dir(meta_path.parent().expect("has parent")).map_err(io_err)?;
            Ok(())
        })();
        let _ = fs::remove_file(&tmp_obj);
        let _ = fs::remove_file(&tmp_meta);
        result?;
        let head = self.head_blocking(key)?;
        let versions = self
            .versions_blocking(key)?
            .into_iter()
            .filter(|v| v.key == *key)
            .collect::<Vec<_>>();
        check_sealed(req, &version_id, &head, &versions)?;
        Ok(PutReceipt {
            key: key.clone(),
            version_id,
            size: head.size,
            retain_until: req.retain_until,
            already_existed: false,
        })
    }

    fn read_meta(&self, key: &str) -> Option<Meta> {
        let bytes = fs::read(self.meta_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn head_blocking(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        Self::check_key(key)?;
        let stat = match fs::metadata(self.object_path(key)) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(StoreError::NotFound { key: key.into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { key: key.into() });
            }
            Err(e) => {
                return Err(StoreError::Other {
                    key: key.into(),
                    message: e.to_string(),
                });
            }
        };
        let meta = self.read_meta(key);
        Ok(ObjectInfo {
            key: key.to_owned(),
            version_id: Some(
                meta.as_ref()
                    .map_or_else(|| "null".to_owned(), |m| m.version_id.clone()),
            ),
            size: stat.len(),
            lock_mode: meta.as_ref().map(|m| m.lock_mode),
            retain_until: meta.as_ref().map(|m| m.retain_until),
            legal_hold: meta.as_ref().is_some_and(|m| m.legal_hold),
            sha256: None,
        })
    }

    /// One version per present object (a directory keeps no history).
    fn versions_blocking(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let mut out = Vec::new();
        for e in self.list_blocking(prefix)? {
            let h = self.head_blocking(&e.key)?;
            let modified = fs::metadata(self.object_path(&e.key))
                .and_then(|m| m.modified())
                .ok();
            out.push(VersionEntry {
                key: e.key,
                version_id: h.version_id.unwrap_or_default(),
                is_delete_marker: false,
                is_latest: true,
                size: h.size,
                last_modified: modified.map(|t| Timestamp::from_datetime(t.into())),
            });
        }
        Ok(out)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ListEntry>, StoreError> {
        // Start from the deepest directory the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::Other {
                        key: prefix.into(),
                        message: e.to_string(),
                    });
                }
            };
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::Other {
                    key: prefix.into(),
                    message: e.to_string(),
                })?;
                let path = entry.path();
                let rel = path.strip_prefix(&*self.root).expect("under root");
                let key: String = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if key.starts_with(".wormvault") {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| StoreError::Other {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || prefix.is_empty()
                    {
                        stack.push(path);
                    }
                } else if key.starts_with(prefix) {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(ListEntry { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

fn write_synced(path: &Path, bytes: &[u8], read_only: bool) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if read_only {
        f.set_permissions(fs::Permissions::from_mode(0o444))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Other {
            key: String::new(),
            message: format!("store task failed: {e}"),
        })
    })
}

#[async_trait::async_trait]
impl WormStore for LocalStore {
    fn describe(&self) -> String {
        format!("local development store at {}", self.root.display())
    }

    fn is_development(&self) -> bool {
        true
    }

    async fn put_sealed(&self, req: &PutRequest) -> Result<PutReceipt, StoreError> {
        let (this, req) = (self.clone(), req.clone());
        blocking(move || this.put_blocking(&req)).await
    }

    async fn head(&self, key: &str, version_id: Option<&str>) -> Result<ObjectInfo, StoreError> {
        let (this, key, version) = (self.clone(), key.to_owned(), version_id.map(str::to_owned));
        blocking(move || {
            let head = this.head_blocking(&key)?;
            match version {
                Some(v) if head.version_id.as_deref() != Some(v.as_str()) => {
                    Err(StoreError::NotFound { key })
                }
                _ => Ok(head),
            }
        })
        .await
    }

    async fn get(&self, key: &str, version_id: Option<&str>) -> Result<Bytes, StoreError> {
        let head = self.head(key, version_id).await?;
        let path = self.object_path(&head.key);
        let key = key.to_owned();
        blocking(move || {
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| StoreError::Other {
                    key,
                    message: e.to_string(),
                })
        })
        .await
    }

    async fn get_range(
        &self,
        key: &str,
        version_id: Option<&str>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        use std::io::{Read, Seek};
        let head = self.head(key, version_id).await?;
        let path = self.object_path(&head.key);
        let key = key.to_owned();
        blocking(move || {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            fs::File::open(&path)
                .and_then(|mut f| {
                    f.seek(std::io::SeekFrom::Start(range.start))?;
                    f.read_exact(&mut buf)
                })
                .map(|()| Bytes::from(buf))
                .map_err(|e| StoreError::Other {
                    key,
                    message: e.to_string(),
                })
        })
        .await
    }

    async fn digest(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(crate::merkle::Hash, u64), StoreError> {
        use sha2::Digest;
        use std::io::Read;
        let head = self.head(key, version_id).await?;
        let path = self.object_path(&head.key);
        let key = key.to_owned();
        blocking(move || {
            thread_local! {
                static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 1 << 20]);
            }
            let failed = |e: io::Error| StoreError::Other {
                key: key.clone(),
                message: e.to_string(),
            };
            let mut file = fs::File::open(&path).map_err(failed)?;
            let mut hasher = sha2::Sha256::new();
            let mut len = 0u64;
            BUF.with_borrow_mut(|buf| {
                loop {
                    match file.read(buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            hasher.update(&buf[..n]);
                            len += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(failed(e)),
                    }
                }
            })?;
            Ok((hasher.finalize().into(), len))
        })
        .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            match fs::read_dir(&dir) {
                Ok(entries) => {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            out.push(format!("{prefix}{}/", e.file_name().to_string_lossy()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Other {
                        key: prefix,
                        message: e.to_string(),
                    });
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>, StoreError> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || this.versions_blocking(&prefix)).await
    }

    /// Nothing to prove: the development store has no delete operation at all.
    async fn probe_canary(
        &self,
        _layout: &crate::layout::Layout,
        _canary: &super::canary::Canary,
    ) -> Result<super::canary::CanaryOutcome, StoreError> {
        Ok(super::canary::CanaryOutcome::NotApplicable(
            "the development store has no delete operation; its files are read-only".into(),
        ))
    }

    /// The development store behaves as a versioned, COMPLIANCE-locked bucket; it has no
    /// default retention because every object carries its own.
    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        Ok(BucketLock {
            versioning: Some("Enabled".into()),
            lock_enabled: true,
            default_mode: Some(LockMode::Compliance),
            default_days: Some(u32::MAX),
        })
    }
}
