//! Conformance of the write-once store, against the local store and LocalStack.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use wormvault::store::s3::{S3Settings, S3Store};
use wormvault::store::{LockMode, PutRequest, StoreError, WormStore, put_or_confirm};
use wormvault::timestamp::Timestamp;

use crate::both;
use crate::proxy::Proxy;
use crate::util::{Backend, BucketKind, Target, admin_client, create_bucket, s3_endpoint, unique};

fn retain_until() -> Timestamp {
    Timestamp::parse_rfc3339("2033-01-01T00:00:00Z").unwrap()
}

fn request(key: &str, body: &'static [u8]) -> PutRequest {
    PutRequest::new(
        key.into(),
        Bytes::from_static(body),
        retain_until(),
        "application/octet-stream",
    )
}

fn a_second_put_of_a_key_is_refused(backend: Backend) {
    let t = Target::new(backend);
    let store = t.store();
    t.rt.block_on(async {
        let first = store
            .put_sealed(&request("segments/dt=2026-11-20/k", b"first"))
            .await
            .unwrap();
        assert!(!first.already_existed);
        let second = store
            .put_sealed(&request("segments/dt=2026-11-20/k", b"second"))
            .await;
        assert!(
            matches!(second, Err(StoreError::AlreadyExists { .. })),
            "{second:?}"
        );
        assert_eq!(
            store.get("segments/dt=2026-11-20/k", None).await.unwrap(),
            Bytes::from_static(b"first")
        );
        let versions = store.versions_of("segments/dt=2026-11-20/k").await.unwrap();
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert_eq!(versions[0].version_id, first.version_id);
    });
}
both!(a_second_put_of_a_key_is_refused);

fn every_object_is_compliance_locked_with_one_version(backend: Backend) {
    let t = Target::new(backend);
    let store = t.store();
    t.rt.block_on(async {
        for (i, body) in [&b"a"[..], b"bb", b"ccc"].iter().enumerate() {
            let key = format!("manifests/dt=2026-11-20/w-{i:012}.json");
            let req = PutRequest::new(
                key.clone(),
                Bytes::copy_from_slice(body),
                retain_until(),
                "application/json",
            );
            let receipt = store.put_sealed(&req).await.unwrap();
            let head = store.head(&key, None).await.unwrap();
            assert_eq!(head.lock_mode, Some(LockMode::Compliance));
            assert_eq!(head.retain_until, Some(retain_until()));
            assert_eq!(head.size, body.len() as u64);
            assert_eq!(
                head.version_id.as_deref(),
                Some(receipt.version_id.as_str())
            );
            let versions = store.versions_of(&key).await.unwrap();
            assert_eq!(versions.len(), 1);
            assert!(!versions[0].is_delete_marker);
        }
        let listed = store.list("manifests/").await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.windows(2).all(|w| w[0].key < w[1].key));
    });
}
both!(every_object_is_compliance_locked_with_one_version);

fn retries_are_idempotent_and_changes_are_conflicts(backend: Backend) {
    let t = Target::new(backend);
    let store = t.store();
    t.rt.block_on(async {
        let req = request("segments/dt=2026-11-20/idem", b"payload");
        let a = put_or_confirm(store.as_ref(), &req, false).await.unwrap();
        let b = put_or_confirm(store.as_ref(), &req, false).await.unwrap();
        let c = put_or_confirm(store.as_ref(), &req, true).await.unwrap();
        assert!(!a.already_existed && b.already_existed && c.already_existed);
        assert_eq!(a.version_id, b.version_id);
        assert_eq!(a.version_id, c.version_id);
        let changed = request("segments/dt=2026-11-20/idem", b"PAYLOAD");
        let r = put_or_confirm(store.as_ref(), &changed, false).await;
        assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
        assert_eq!(
            store
                .versions_of("segments/dt=2026-11-20/idem")
                .await
                .unwrap()
                .len(),
            1
        );
    });
}
both!(retries_are_idempotent_and_changes_are_conflicts);

/// Several writers putting the same key at once with different bytes (two daemons anchoring
/// the same day sign different notes): exactly one creates it, every other one is told it
/// exists with other content, and what is stored is the winner's object, sealed as such.
fn concurrent_puts_of_one_key_create_it_once(backend: Backend) {
    let t = Target::new(backend);
    let store = t.store();
    let rounds = if backend == Backend::Local { 200 } else { 10 };
    t.rt.block_on(async {
        for round in 0..rounds {
            let key = format!("anchors/dt=2026-11-20/race-{round}");
            let tasks: Vec<_> = (0..8u8)
                .map(|w| {
                    let body = Bytes::from(format!("writer {w} of {key}"));
                    let req = PutRequest::new(key.clone(), body, retain_until(), "text/plain");
                    let store = store.clone();
                    tokio::spawn(async move {
                        (
                            req.body.clone(),
                            put_or_confirm(store.as_ref(), &req, false).await,
                        )
                    })
                })
                .collect();
            let mut winner = None;
            for task in tasks {
                match task.await.unwrap() {
                    (body, Ok(receipt)) => {
                        assert!(!receipt.already_existed, "{key}");
                        assert!(
                            winner.replace((body, receipt)).is_none(),
                            "two writers created {key}"
                        );
                    }
                    (_, Err(StoreError::Conflict { .. })) => {}
                    (_, Err(e)) => panic!("{key}: {e}"),
                }
            }
            let (body, receipt) = winner.unwrap_or_else(|| panic!("nobody created {key}"));
            assert_eq!(store.get(&key, None).await.unwrap(), body);
            let head = store.head(&key, None).await.unwrap();
            assert_eq!(
                head.version_id.as_deref(),
                Some(receipt.version_id.as_str())
            );
            assert_eq!(store.versions_of(&key).await.unwrap().len(), 1);
        }
    });
}
both!(concurrent_puts_of_one_key_create_it_once);

/// There is no delete in the store API (see `tidy`); here the lock itself is shown to hold:
/// the server refuses to delete a sealed version, and the local store's files are read-only.
fn sealed_objects_cannot_be_deleted(backend: Backend) {
    let t = Target::new(backend);
    let store = t.store();
    let receipt =
        t.rt.block_on(store.put_sealed(&request("segments/dt=2026-11-20/keep", b"keep")))
            .unwrap();
    match backend {
        Backend::LocalStack => t.rt.block_on(async {
            let admin = admin_client(&t.endpoint);
            let r = admin
                .delete_object()
                .bucket(&t.bucket)
                .key("segments/dt=2026-11-20/keep")
                .version_id(&receipt.version_id)
                .bypass_governance_retention(true)
                .send()
                .await;
            assert!(r.is_err(), "a COMPLIANCE-locked version was deleted");
            assert_eq!(
                store
                    .get("segments/dt=2026-11-20/keep", Some(&receipt.version_id))
                    .await
                    .unwrap(),
                Bytes::from_static(b"keep")
            );
        }),
        Backend::Local => {
            use std::os::unix::fs::PermissionsExt;
            let path = t.archive_dir().join("segments/dt=2026-11-20/keep");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o222, 0, "sealed files are read-only, mode {mode:o}");
        }
    }
}
both!(sealed_objects_cannot_be_deleted);

fn upstream() -> SocketAddr {
    s3_endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("WORMVAULT_TEST_S3_ENDPOINT is http://host:port")
}

async fn store_via(proxy: &Proxy, bucket: &str) -> S3Store {
    S3Store::connect(&S3Settings {
        bucket: bucket.into(),
        region: "us-east-1".into(),
        endpoint: Some(proxy.url()),
        force_path_style: true,
        connect_timeout: std::time::Duration::from_secs(2),
        operation_timeout: std::time::Duration::from_secs(20),
    })
    .await
}

/// LocalStack would accept a PUT without Content-MD5; AWS would not. So the requests are
/// observed on the wire through a recording proxy.
#[test]
fn checksums_lock_headers_and_if_none_match_are_on_the_wire() {
    let rt = crate::util::runtime();
    rt.block_on(async {
        let bucket = unique("wire");
        create_bucket(&admin_client(&s3_endpoint()), &bucket, BucketKind::Lock).await;
        let proxy = Proxy::start(upstream()).await;
        let store = store_via(&proxy, &bucket).await;
        let req = request("segments/dt=2026-11-20/wire.parquet", b"on the wire");
        store.put_sealed(&req).await.unwrap();
        let seen = proxy.take();
        let puts: Vec<_> = seen.iter().filter(|r| r.method == "PUT").collect();
        assert_eq!(puts.len(), 1, "{seen:#?}");
        let put = puts[0];
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            put.header("content-md5"),
            Some(b64.encode(req.md5).as_str())
        );
        assert_eq!(
            put.header("x-amz-checksum-sha256"),
            Some(b64.encode(req.sha256).as_str())
        );
        assert_eq!(put.header("if-none-match"), Some("*"));
        assert_eq!(put.header("x-amz-object-lock-mode"), Some("COMPLIANCE"));
        assert_eq!(
            put.header("x-amz-object-lock-retain-until-date"),
            Some("2033-01-01T00:00:00Z")
        );
        assert_eq!(put.header("content-length"), Some("11"));
        assert!(
            put.header("x-amz-trailer").is_none(),
            "no aws-chunked trailing checksum"
        );
        assert!(
            put.header("content-encoding")
                .is_none_or(|v| !v.contains("aws-chunked"))
        );
        // The write is verified after the fact: a HEAD and a version listing follow the PUT.
        let after: Vec<String> = seen
            .iter()
            .skip_while(|r| r.method != "PUT")
            .skip(1)
            .map(|r| r.method.clone())
            .collect();
        assert!(after.contains(&"HEAD".to_string()), "{after:?}");
        assert!(
            seen.iter()
                .any(|r| r.method == "GET" && r.target.contains("versions")),
            "{seen:#?}"
        );
    });
}

#[test]
fn local_store_records_the_checksums_of_what_it_stored() {
    let t = Target::new(Backend::Local);
    let store = t.store();
    let req = request("segments/dt=2026-11-20/sum", b"checksummed");
    t.rt.block_on(store.put_sealed(&req)).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            t.archive_dir()
                .join(".wormvault/meta/segments/dt=2026-11-20/sum.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["sha256"], hex::encode(req.sha256));
    assert_eq!(meta["md5"], hex::encode(req.md5));
    assert_eq!(meta["lock_mode"], "COMPLIANCE");
    assert_eq!(meta["retain_until"], "2033-01-01T00:00:00.000000Z");
}

/// A server that ignores `If-None-Match` (Ceph RGW on versioned buckets) silently adds a
/// version; the verification after the write must catch it and stop.
#[test]
fn a_server_that_ignores_if_none_match_is_caught() {
    let rt = crate::util::runtime();
    rt.block_on(async {
        let bucket = unique("inm");
        create_bucket(&admin_client(&s3_endpoint()), &bucket, BucketKind::Lock).await;
        let proxy = Proxy::start_stripping(upstream(), &["if-none-match"]).await;
        let store = store_via(&proxy, &bucket).await;
        store
            .put_sealed(&request("segments/dt=2026-11-20/twice", b"one"))
            .await
            .unwrap();
        let second = store
            .put_sealed(&request("segments/dt=2026-11-20/twice", b"two"))
            .await;
        match second {
            Err(StoreError::NotSealed { problem, .. }) => {
                assert!(problem.contains("2 versions"), "{problem}")
            }
            other => panic!("expected NotSealed, got {other:?}"),
        }
        // put_or_confirm on a retry HEADs first and never creates a second version.
        let before = store
            .versions_of("segments/dt=2026-11-20/again")
            .await
            .unwrap()
            .len();
        assert_eq!(before, 0);
        let req = request("segments/dt=2026-11-20/again", b"x");
        put_or_confirm(&store, &req, true).await.unwrap();
        put_or_confirm(&store, &req, true).await.unwrap();
        assert_eq!(
            store
                .versions_of("segments/dt=2026-11-20/again")
                .await
                .unwrap()
                .len(),
            1
        );
    });
}

/// A server that ignores the lock headers leaves the object unlocked; that is caught too.
#[test]
fn a_server_that_ignores_lock_headers_is_caught() {
    let rt = crate::util::runtime();
    rt.block_on(async {
        let bucket = unique("nolock");
        create_bucket(&admin_client(&s3_endpoint()), &bucket, BucketKind::Lock).await;
        let proxy = Proxy::start_stripping(
            upstream(),
            &[
                "x-amz-object-lock-mode",
                "x-amz-object-lock-retain-until-date",
            ],
        )
        .await;
        let store = store_via(&proxy, &bucket).await;
        match store
            .put_sealed(&request("segments/dt=2026-11-20/unlocked", b"x"))
            .await
        {
            Err(StoreError::NotSealed { problem, .. }) => {
                assert!(problem.contains("no object lock"), "{problem}")
            }
            other => panic!("expected NotSealed, got {other:?}"),
        }
    });
}

#[test]
fn a_bucket_without_versioning_and_lock_is_refused() {
    let rt = crate::util::runtime();
    rt.block_on(async {
        let bucket = unique("plain");
        create_bucket(&admin_client(&s3_endpoint()), &bucket, BucketKind::Plain).await;
        let store: Arc<dyn WormStore> = Arc::new(
            S3Store::connect(&S3Settings {
                bucket: bucket.clone(),
                region: "us-east-1".into(),
                endpoint: Some(s3_endpoint()),
                force_path_style: true,
                connect_timeout: std::time::Duration::from_secs(2),
                operation_timeout: std::time::Duration::from_secs(20),
            })
            .await,
        );
        let r = store
            .put_sealed(&request("segments/dt=2026-11-20/plain", b"x"))
            .await;
        assert!(matches!(r, Err(StoreError::NotSealed { .. })), "{r:?}");
    });
}

#[test]
fn an_unreachable_store_is_a_transient_error() {
    let rt = crate::util::runtime();
    rt.block_on(async {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let store = S3Store::connect(&S3Settings {
            bucket: "nowhere".into(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://{addr}")),
            force_path_style: true,
            connect_timeout: std::time::Duration::from_millis(500),
            operation_timeout: std::time::Duration::from_secs(2),
        })
        .await;
        let err = store.put_sealed(&request("k", b"x")).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    });
}
