//! Sweeps against tampering through side doors (the S3 API directly, or the file system for
//! the local store): one test per finding class, each reported with the right class and key.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use wormvault::archive::Archive;
use wormvault::event::Record;
use wormvault::manifest::Manifest;
use wormvault::segment::{SegmentHeader, read_segment, write_segment};
use wormvault::store::{
    BucketLock, ListEntry, ObjectInfo, PutReceipt, PutRequest, StoreError, VersionEntry, WormStore,
};
use wormvault::sweep::{FindingClass, Level, SweepOptions, SweepReport, Sweeper};

use crate::both;
use crate::util::{Backend, Target, event};

/// Archives three days of events from two writers, in batches of 30.
fn fixture(t: &Target) -> Vec<(String, Manifest)> {
    for (writer, tag) in [("writer-a", "a"), ("writer-b", "b")] {
        let settings = t.settings_in(
            &format!("state-{tag}"),
            &format!("writer_id = \"{writer}\"\n[batch]\nmax_events = 30\n"),
        );
        let archive = t.open(settings);
        import_events(t, &archive, tag, 150);
    }
    manifests(t)
}

fn import_events(t: &Target, archive: &Archive, tag: &str, n: usize) {
    let days = ["2026-11-18", "2026-11-19", "2026-11-20"];
    let text: String = (0..n)
        .map(|i| {
            event(
                &format!("{tag}-{i:04}"),
                &format!("{}T10:{:02}:00Z", days[i % 3], i % 60),
                "trade.new",
                &format!("T-{i}"),
            ) + "\n"
        })
        .collect();
    crate::util::import_all(t, archive, text);
}

fn manifests(t: &Target) -> Vec<(String, Manifest)> {
    let store = t.store();
    t.rt.block_on(async {
        let mut out = Vec::new();
        for e in store.list("manifests/").await.unwrap() {
            let bytes = store.get(&e.key, None).await.unwrap();
            out.push((e.key, Manifest::from_bytes(&bytes).unwrap()));
        }
        out.sort_by_key(|(_, m)| (m.info.writer.to_string(), m.info.batch_idx));
        out
    })
}

fn sweep(t: &Target, level: Level) -> SweepReport {
    sweep_with(t, t.store(), level)
}

fn sweep_with(t: &Target, store: Arc<dyn WormStore>, level: Level) -> SweepReport {
    let settings = t.settings();
    let sweeper = Sweeper {
        anchors: None,
        store,
        layout: settings.layout.clone(),
        retention: settings.retention.clone(),
    };
    let opts = SweepOptions {
        level,
        from: None,
        to: None,
        days: None,
        parallelism: 3,
    };
    t.rt.block_on(sweeper.run(&opts)).unwrap()
}

fn has(report: &SweepReport, class: FindingClass, key: &str) -> bool {
    report
        .findings
        .iter()
        .any(|f| f.class == class && f.key == key)
}

fn assert_has(report: &SweepReport, class: FindingClass, key: &str) {
    assert!(
        has(report, class, key),
        "expected {} on {key}; the sweep found:\n{}",
        class.code(),
        report.summary()
    );
}

/// Replaces an object's bytes through the side door: a new version on S3 (no
/// `If-None-Match`), the file itself on the local store.
pub(crate) fn overwrite(t: &Target, key: &str, body: Vec<u8>) {
    match t.backend {
        Backend::LocalStack => {
            let admin = crate::util::admin_client(&t.endpoint);
            t.rt.block_on(
                admin
                    .put_object()
                    .bucket(&t.bucket)
                    .key(key)
                    .body(body.into())
                    .send(),
            )
            .unwrap();
        }
        Backend::Local => {
            let path = t.archive_dir().join(key);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
        }
    }
}

fn a_clean_archive_of_several_days_and_writers_has_no_findings(backend: Backend) {
    let t = Target::new(backend);
    let ms = fixture(&t);
    assert!(ms.len() >= 10);
    for level in [Level::Quick, Level::Full] {
        let r = sweep(&t, level);
        assert_eq!(r.errors(), 0, "{}", r.summary());
        assert!(r.complete);
        assert_eq!(r.counts.days, 3);
        assert_eq!(r.counts.manifests, ms.len() as u64);
        assert_eq!(r.counts.events, 300);
        assert_eq!(r.writers.len(), 2);
    }
}
both!(a_clean_archive_of_several_days_and_writers_has_no_findings);

fn a_new_version_written_over_a_segment(backend: Backend) {
    let t = Target::new(backend);
    let ms = fixture(&t);
    let key = ms[2].1.segment.key.clone();
    overwrite(&t, &key, b"PAR1 not what was archived".to_vec());
    let r = sweep(&t, Level::Quick);
    match backend {
        // S3 keeps the archived version; the new one shadows it.
        Backend::LocalStack => {
            assert_has(&r, FindingClass::ExtraVersion, &key);
            assert_has(&r, FindingClass::VersionMismatch, &key);
        }
        // A directory keeps no history: the file itself changed.
        Backend::Local => {}
    }
    assert_has(&r, FindingClass::ChecksumMismatch, &key);
}
both!(a_new_version_written_over_a_segment);

fn a_manifest_hidden_by_a_delete_marker(backend: Backend) {
    let t = Target::new(backend);
    let ms = fixture(&t);
    let key = ms[1].0.clone();
    match backend {
        Backend::LocalStack => {
            let admin = crate::util::admin_client(&t.endpoint);
            t.rt.block_on(admin.delete_object().bucket(&t.bucket).key(&key).send())
                .unwrap();
            let r = sweep(&t, Level::Quick);
            assert_has(&r, FindingClass::DeleteMarker, &key);
        }
        Backend::Local => {
            // The file system's equivalent of hiding: removing the file.
            let path = t.archive_dir().join(&key);
            std::fs::remove_file(path).unwrap();
            // Older than an upload in flight could be.
            let seg = t.archive_dir().join(&ms[1].1.segment.key);
            let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            std::fs::File::options()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_modified(old)
                .unwrap();
            let r = sweep(&t, Level::Quick);
            assert_has(&r, FindingClass::ChainGap, &ms[2].0);
            assert_has(&r, FindingClass::UnknownObject, &ms[1].1.segment.key);
        }
    }
}
both!(a_manifest_hidden_by_a_delete_marker);

fn an_object_written_outside_the_pipeline(backend: Backend) {
    let t = Target::new(backend);
    fixture(&t);
    let rogue = "segments/dt=2026-11-19/extra.parquet";
    let stray = "manifests/dt=2026-11-19/notes.txt";
    // Shaped like a pipeline segment, but with no manifest: in flight while young, then reported.
    let orphan = "segments/dt=2026-11-19/writer-a-000000000999.parquet";
    for key in [rogue, stray, orphan] {
        overwrite(&t, key, b"PAR1".to_vec());
    }
    let r = sweep(&t, Level::Quick);
    assert_has(&r, FindingClass::UnknownObject, rogue);
    assert_has(&r, FindingClass::UnknownObject, stray);
    assert!(!has(&r, FindingClass::UnknownObject, orphan));
    assert_eq!(r.counts.in_flight, 1);
    if backend == Backend::Local {
        // Age the orphan past the grace period (the local store's time is the file's).
        let path = t.archive_dir().join(orphan);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let r = sweep(&t, Level::Quick);
        assert_has(&r, FindingClass::UnknownObject, orphan);
    }
}
both!(an_object_written_outside_the_pipeline);

/// A store that writes one segment locked in GOVERNANCE mode for only a day: what a lenient or
/// tampered-with store leaves behind. Everything else goes through the real S3 store.
struct GovernanceForOne {
    inner: Arc<dyn WormStore>,
    admin: aws_sdk_s3::Client,
    bucket: String,
    target: String,
}

#[async_trait::async_trait]
impl WormStore for GovernanceForOne {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put_sealed(&self, req: &PutRequest) -> Result<PutReceipt, StoreError> {
        if req.key != self.target {
            return self.inner.put_sealed(req).await;
        }
        let until = req.retain_until.plus_micros(-5 * 365 * 86_400_000_000);
        let out = self
            .admin
            .put_object()
            .bucket(&self.bucket)
            .key(&req.key)
            .body(req.body.clone().into())
            .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Governance)
            .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(
                until.as_micros() / 1_000_000,
            ))
            .send()
            .await
            .unwrap();
        Ok(PutReceipt {
            key: req.key.clone(),
            version_id: out.version_id().unwrap().into(),
            size: req.body.len() as u64,
            retain_until: until,
            already_existed: false,
        })
    }
    async fn head(&self, key: &str, v: Option<&str>) -> Result<ObjectInfo, StoreError> {
        self.inner.head(key, v).await
    }
    async fn get(&self, key: &str, v: Option<&str>) -> Result<Bytes, StoreError> {
        self.inner.get(key, v).await
    }
    async fn get_range(
        &self,
        key: &str,
        v: Option<&str>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, v, range).await
    }
    async fn digest(&self, key: &str, v: Option<&str>) -> Result<([u8; 32], u64), StoreError> {
        self.inner.digest(key, v).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ListEntry>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_dirs(prefix).await
    }
    async fn versions(&self, prefix: &str) -> Result<Vec<VersionEntry>, StoreError> {
        self.inner.versions(prefix).await
    }
    async fn bucket_lock(&self) -> Result<BucketLock, StoreError> {
        self.inner.bucket_lock().await
    }
    async fn probe_canary(
        &self,
        layout: &wormvault::layout::Layout,
        canary: &wormvault::store::canary::Canary,
    ) -> Result<wormvault::store::canary::CanaryOutcome, StoreError> {
        self.inner.probe_canary(layout, canary).await
    }
}

fn a_segment_whose_retention_is_shorter_than_required(backend: Backend) {
    let t = Target::new(backend);
    let target = "segments/dt=2026-11-19/writer-a-000000000001.parquet".to_string();
    match backend {
        Backend::LocalStack => {
            let settings = t.settings_in(
                "state-g",
                "writer_id = \"writer-a\"\n[batch]\nmax_events = 30\n",
            );
            let inner = t.store();
            let store = Arc::new(GovernanceForOne {
                inner,
                admin: crate::util::admin_client(&t.endpoint),
                bucket: t.bucket.clone(),
                target: target.clone(),
            });
            let archive =
                t.rt.block_on(Archive::open_with_store(settings, store))
                    .unwrap();
            import_events(&t, &archive, "g", 90);
            let r = sweep(&t, Level::Quick);

            assert_has(&r, FindingClass::NotLocked, &target);
            assert_has(&r, FindingClass::RetentionTooShort, &target);
        }
        Backend::Local => {
            let settings = t.settings_in(
                "state-g",
                "writer_id = \"writer-a\"\n[batch]\nmax_events = 30\n",
            );
            import_events(&t, &t.open(settings), "g", 90);
            // Through the file system: the recorded lock says less than required.
            let meta = t
                .archive_dir()
                .join(".wormvault/meta")
                .join(format!("{target}.json"));
            let text = std::fs::read_to_string(&meta).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["retain_until"] = "2027-01-01T00:00:00.000000Z".into();
            std::fs::write(&meta, v.to_string()).unwrap();
            let r = sweep(&t, Level::Quick);
            assert_has(&r, FindingClass::RetentionTooShort, &target);
        }
    }
}
both!(a_segment_whose_retention_is_shorter_than_required);

fn a_segment_reuploaded_with_one_row_changed(backend: Backend) {
    let t = Target::new(backend);
    let ms = fixture(&t);
    let m = &ms[3].1;
    let key = m.segment.key.clone();
    // Decode the archived segment, change one row's payload, re-encode consistently.
    let bytes = t.rt.block_on(t.store().get(&key, None)).unwrap();
    let seg = read_segment(bytes).unwrap();
    let records: Vec<Record> = seg
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let canonical = if i == 4 {
                String::from_utf8(row.canonical.clone())
                    .unwrap()
                    .replacen("\"qty\":100", "\"qty\":900", 1)
                    .into_bytes()
            } else {
                row.canonical.clone()
            };
            Record::from_canonical(canonical, [0; 32]).unwrap()
        })
        .collect();
    let info = &seg.info;
    let header = SegmentHeader {
        writer: info.writer.clone(),
        batch_idx: info.batch_idx,
        day: info.day,
        retention_class: info.retention_class.clone(),
        retain_until: info.retain_until,
        first_seq: info.first_seq,
    };
    let forged = write_segment(&header, &records).unwrap();
    assert_ne!(forged.info.merkle_root, m.info.merkle_root);
    overwrite(&t, &key, forged.bytes.to_vec());
    let quick = sweep(&t, Level::Quick);
    assert_has(&quick, FindingClass::ChecksumMismatch, &key);
    let full = sweep(&t, Level::Full);
    assert_has(&full, FindingClass::RootMismatch, &key);
    assert_has(&full, FindingClass::FooterMismatch, &key);
}
both!(a_segment_reuploaded_with_one_row_changed);

fn a_manifest_reuploaded_with_a_different_root(backend: Backend) {
    let t = Target::new(backend);
    let ms = fixture(&t);
    let (key, m) = &ms[2];
    let mut forged = m.clone();
    forged.info.merkle_root = [7; 32];
    overwrite(&t, key, forged.to_bytes());
    let r = sweep(&t, Level::Quick);
    assert_has(&r, FindingClass::ChainBroken, key);
    if backend == Backend::LocalStack {
        assert_has(&r, FindingClass::ExtraVersion, key);
    }
    let full = sweep(&t, Level::Full);
    assert_has(&full, FindingClass::RootMismatch, &m.segment.key);
}
both!(a_manifest_reuploaded_with_a_different_root);

fn a_gap_in_a_writers_chain(backend: Backend) {
    let t = Target::new(backend);
    let ms = fixture(&t);
    // A manifest three batches past the writer's last: batches in between are missing.
    let (_, last) = ms
        .iter()
        .rfind(|(_, m)| m.info.writer.as_str() == "writer-b")
        .unwrap()
        .clone();
    let mut forged = last.clone();
    forged.info.batch_idx += 3;
    let key = format!(
        "manifests/dt={}/writer-b-{:012}.json",
        forged.info.day, forged.info.batch_idx
    );
    forged.segment.key = format!(
        "segments/dt={}/writer-b-{:012}.parquet",
        forged.info.day, forged.info.batch_idx
    );
    overwrite(&t, &key, forged.to_bytes());
    let r = sweep(&t, Level::Quick);
    assert_has(&r, FindingClass::ChainGap, &key);
    assert_has(&r, FindingClass::ObjectMissing, &forged.segment.key);
}
both!(a_gap_in_a_writers_chain);

/// `wormvault verify`: 0 clean, 1 findings, 2 could not run; the report is stored sealed
/// unless `--no-report`.
#[test]
fn verify_exit_codes_and_stored_reports() {
    let t = Target::new(Backend::Local);
    let ms = fixture(&t);
    let config = t.dir.path().join("verify.toml");
    std::fs::write(
        &config,
        format!(
            "[store.local]\npath = {:?}\n",
            t.archive_dir().display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| crate::util::wormvault(&config, args).output().unwrap();
    let clean = run(&["verify", "--full"]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("no integrity findings"));
    let reports = t.rt.block_on(t.store().list("sweeps/")).unwrap();
    assert_eq!(reports.len(), 2, "a JSON and a text report");
    let head =
        t.rt.block_on(t.store().head(&reports[0].key, None))
            .unwrap();
    assert_eq!(head.lock_mode, Some(wormvault::store::LockMode::Compliance));

    overwrite(&t, &ms[0].1.segment.key, b"tampered".to_vec());
    let dirty = run(&["verify", "--json", "--no-report"]);
    assert_eq!(dirty.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&dirty.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["class"] == "checksum_mismatch")
    );
    assert_eq!(
        t.rt.block_on(t.store().list("sweeps/")).unwrap().len(),
        2,
        "--no-report stores nothing"
    );

    std::fs::write(&config, "[store]\nkind = \"s3\"\n[store.s3]\nbucket = \"none\"\nendpoint = \"http://127.0.0.1:9\"\nconnect_timeout = \"500ms\"\noperation_timeout = \"1s\"\n").unwrap();
    let broken = run(&["verify", "--no-report"]);
    assert_eq!(
        broken.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );
}
