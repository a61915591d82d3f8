//! `wormvault bucket check` against LocalStack buckets set up right and wrong, and the daemon's
//! refusal to start on a bucket that fails it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{
    BucketVersioningStatus, DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled,
    ObjectLockRetentionMode, ObjectLockRule, VersioningConfiguration,
};

use crate::util::{
    BucketKind, admin_client, create_bucket, runtime, s3_endpoint, unique, wormvault,
};

/// How a test bucket is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// What terraform/modules/aws-archive provisions: lock, versioning, COMPLIANCE six years.
    AsTheModuleIntends,
    /// Versioning, but created without Object Lock.
    NoObjectLock,
    /// A GOVERNANCE default retention.
    Governance,
    /// A COMPLIANCE default of 30 days, below the configured minimum.
    ShortDefault,
}

const MIN_DAYS: u32 = 1095;

fn bucket(setup: Setup) -> String {
    let name = unique("wv-check");
    let client = admin_client(&s3_endpoint());
    runtime().block_on(async {
        if setup == Setup::NoObjectLock {
            create_bucket(&client, &name, BucketKind::Plain).await;
            client
                .put_bucket_versioning()
                .bucket(&name)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .unwrap();
            return;
        }
        create_bucket(&client, &name, BucketKind::Lock).await;
        let (mode, days) = match setup {
            Setup::Governance => (ObjectLockRetentionMode::Governance, 2192),
            Setup::ShortDefault => (ObjectLockRetentionMode::Compliance, 30),
            _ => (ObjectLockRetentionMode::Compliance, 2192),
        };
        let conf = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(
                ObjectLockRule::builder()
                    .default_retention(DefaultRetention::builder().mode(mode).days(days).build())
                    .build(),
            )
            .build();
        client
            .put_object_lock_configuration()
            .bucket(&name)
            .object_lock_configuration(conf)
            .send()
            .await
            .unwrap();
    });
    name
}

fn config(dir: &Path, store: &str) -> PathBuf {
    let path = dir.join("wormvault.toml");
    let text = format!(
        "state_dir = {:?}\nwriter_id = \"check-a\"\n\n[upload]\nmin_default_retention_days = {MIN_DAYS}\n\n\
         [server]\nlisten = \"127.0.0.1:0\"\n\n[[auth.tokens]]\nname = \"t\"\nsha256 = \"{}\"\nroles = [\"ingest\"]\n\n{store}",
        dir.join("state").display().to_string(),
        "0".repeat(64),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn s3_config(dir: &Path, bucket: &str, endpoint: &str) -> PathBuf {
    config(
        dir,
        &format!(
            "[store]\nkind = \"s3\"\n[store.s3]\nbucket = {bucket:?}\nendpoint = {endpoint:?}\nconnect_timeout = \"1s\"\noperation_timeout = \"5s\"\n"
        ),
    )
}

/// Runs `bucket check --json`: the exit code and the report.
fn check_json(config: &Path) -> (i32, serde_json::Value) {
    let out = wormvault(config, &["bucket", "check", "--json"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// A new bucket set up as `setup`, checked: its name, the exit code and the report.
fn checked(setup: Setup) -> (String, i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let name = bucket(setup);
    let (code, report) = check_json(&s3_config(dir.path(), &name, &s3_endpoint()));
    (name, code, report)
}

/// The names of the failing properties.
fn failing(report: &serde_json::Value) -> Vec<String> {
    report["properties"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["ok"] == false)
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

fn property<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no property {name} in {report:#}"))
}

#[test]
fn a_bucket_set_up_as_the_module_intends_passes_and_keeps_its_canary() {
    let (name, code, report) = checked(Setup::AsTheModuleIntends);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["passed"], true);
    assert!(failing(&report).is_empty(), "{report:#}");
    for p in [
        "versioning",
        "object_lock",
        "default_mode",
        "default_retention",
        "locked_delete",
    ] {
        assert_eq!(property(&report, p)["ok"], true, "{p}");
    }
    assert_eq!(property(&report, "default_retention")["found"], "2192 days");
    let refused = property(&report, "locked_delete")["found"]
        .as_str()
        .unwrap();
    assert!(refused.starts_with("refused:"), "{refused}");

    // Independently: the canary is there, one version, locked in COMPLIANCE for about a day,
    // and not even the admin credentials can delete it.
    let client = admin_client(&s3_endpoint());
    runtime().block_on(async {
        let versions = client
            .list_object_versions()
            .bucket(&name)
            .prefix("preflight/check-a/")
            .send()
            .await
            .unwrap();
        let v = versions.versions();
        assert_eq!(v.len(), 1, "{versions:?}");
        assert!(versions.delete_markers().is_empty());
        let key = v[0].key().unwrap();
        let version = v[0].version_id().unwrap();
        let head = client
            .head_object()
            .bucket(&name)
            .key(key)
            .version_id(version)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode(),
            Some(&aws_sdk_s3::types::ObjectLockMode::Compliance)
        );
        let until = head.object_lock_retain_until_date().unwrap().secs();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now + 86_000..=now + 86_500).contains(&until),
            "{until} vs {now}"
        );
        let body = client
            .get_object()
            .bucket(&name)
            .key(key)
            .send()
            .await
            .unwrap();
        let text = body.body.collect().await.unwrap().into_bytes();
        assert!(String::from_utf8_lossy(&text).contains("Not a record"));
        let delete = client
            .delete_object()
            .bucket(&name)
            .key(key)
            .version_id(version)
            .bypass_governance_retention(true)
            .send()
            .await;
        assert!(
            delete.is_err(),
            "the admin deleted a COMPLIANCE-locked canary"
        );
    });
}

#[test]
fn a_bucket_without_object_lock_fails_with_the_reason() {
    let (_, code, report) = checked(Setup::NoObjectLock);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["passed"], false);
    assert_eq!(property(&report, "versioning")["ok"], true);
    let lock = property(&report, "object_lock");
    assert_eq!(lock["ok"], false);
    assert!(
        lock["sentence"]
            .as_str()
            .unwrap()
            .contains("can only be enabled when a bucket is created"),
        "{lock}"
    );
    // Nothing can be locked there, so the delete probe is not proved either.
    assert_eq!(property(&report, "locked_delete")["found"], "not tried");
    assert!(failing(&report).contains(&"default_mode".to_owned()));
}

#[test]
fn a_governance_default_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let name = bucket(Setup::Governance);
    let config = s3_config(dir.path(), &name, &s3_endpoint());
    let (code, report) = check_json(&config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(failing(&report), ["default_mode"], "{report:#}");
    let mode = property(&report, "default_mode");
    assert_eq!(mode["expected"], "COMPLIANCE");
    assert_eq!(mode["found"], "GOVERNANCE");
    // The text report names the property, what was expected and what was found.
    let out = wormvault(&config, &["bucket", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL default_mode"), "{text}");
    assert!(
        text.contains("expected COMPLIANCE; found GOVERNANCE"),
        "{text}"
    );
    assert!(text.contains("NOT fit"), "{text}");
}

#[test]
fn a_default_retention_below_the_minimum_fails_with_the_reason() {
    let (_, code, report) = checked(Setup::ShortDefault);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(failing(&report), ["default_retention"], "{report:#}");
    let p = property(&report, "default_retention");
    assert_eq!(p["found"], "30 days");
    assert_eq!(p["expected"], format!("at least {MIN_DAYS} days"));
    assert!(
        p["sentence"]
            .as_str()
            .unwrap()
            .contains("min_default_retention_days")
    );
}

/// The anchors' mirror is WORM storage too: the check covers it, and names it.
#[test]
fn the_anchor_mirror_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("anchor.key");
    let signer = wormvault::note::SignerKey::generate("archive.example/test").unwrap();
    std::fs::write(&key, signer.to_secret_string()).unwrap();
    let (main, mirror) = (bucket(Setup::AsTheModuleIntends), bucket(Setup::Governance));
    let config = s3_config(dir.path(), &main, &s3_endpoint());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[anchor]\nsigning_key = {:?}\n[anchor.mirror]\nkind = \"s3\"\n[anchor.mirror.s3]\nbucket = {mirror:?}\nendpoint = {:?}\n",
        key.display().to_string(),
        s3_endpoint()
    ));
    std::fs::write(&config, text).unwrap();
    let (code, report) = check_json(&config);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["passed"], false);
    assert!(
        failing(&report).is_empty(),
        "the archive bucket itself is fit: {report:#}"
    );
    let m = &report["mirror"];
    assert_eq!(m["passed"], false);
    assert!(m["store"].as_str().unwrap().contains(&mirror), "{m:#}");
    assert_eq!(failing(m), ["default_mode"], "{m:#}");
    let out = wormvault(&config, &["bucket", "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("anchor mirror: bucket check of"), "{text}");
    assert!(text.contains("1 property failing"), "{text}");
}

#[test]
fn an_unreachable_store_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let out = wormvault(
        &s3_config(dir.path(), "nowhere", &endpoint),
        &["bucket", "check"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not be checked"), "{err}");
}

#[test]
fn the_local_store_passes_without_a_canary() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!(
            "[store]\nkind = \"local\"\n[store.local]\npath = {:?}\n",
            dir.path().join("archive").display().to_string()
        ),
    );
    let (code, report) = check_json(&config);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        property(&report, "locked_delete")["found"],
        "not applicable"
    );
    assert!(!dir.path().join("archive/preflight").exists());
}

/// Starts `wormvault serve` with `config` on a free port: the process and a client of it.
fn serve(config: &Path) -> (std::process::Child, wormvault::loadgen::Client) {
    let port = wormvault::loadgen::free_port();
    let text = std::fs::read_to_string(config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(config, text).unwrap();
    let child = wormvault(config, &["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = wormvault::loadgen::Client::new(&format!("http://127.0.0.1:{port}"));
    (child, client)
}

/// `/readyz` keeps checking: a bucket whose default retention is switched to GOVERNANCE while
/// the daemon runs turns it not ready, naming the property; switching back makes it ready.
#[test]
fn readyz_follows_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let name = bucket(Setup::AsTheModuleIntends);
    let config = s3_config(dir.path(), &name, &s3_endpoint());
    let (mut child, client) = serve(&config);
    let rt = runtime();
    let wait_for = |status: u16, within: Duration| -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = rt.block_on(client.get("/readyz"))
                && r.status == status
            {
                return r.text();
            }
            assert!(Instant::now() < deadline, "/readyz never answered {status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let set_mode = |mode: ObjectLockRetentionMode| {
        let conf = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(
                ObjectLockRule::builder()
                    .default_retention(DefaultRetention::builder().mode(mode).days(2192).build())
                    .build(),
            )
            .build();
        rt.block_on(
            admin_client(&s3_endpoint())
                .put_object_lock_configuration()
                .bucket(&name)
                .object_lock_configuration(conf)
                .send(),
        )
        .unwrap();
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(200, Duration::from_secs(60));
        set_mode(ObjectLockRetentionMode::Governance);
        let body = wait_for(503, Duration::from_secs(20));
        assert!(body.contains("default_mode"), "{body}");
        set_mode(ObjectLockRetentionMode::Compliance);
        wait_for(200, Duration::from_secs(20));
    }));
    child.kill().unwrap();
    child.wait().unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A store that accepts connections and never answers does not hold the daemon's start up,
/// with anchoring on (a start lists the anchors) as without: it serves (into its spool) within
/// seconds, not ready.
#[test]
fn the_daemon_starts_promptly_when_the_store_hangs() {
    let dir = tempfile::tempdir().unwrap();
    // Connections complete in the kernel's backlog; nothing ever reads or answers them.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let key = dir.path().join("anchor.key");
    let signer = wormvault::note::SignerKey::generate("wv-hung").unwrap();
    std::fs::write(&key, signer.to_secret_string()).unwrap();
    let config = config(
        dir.path(),
        &format!(
            "[store]\nkind = \"s3\"\n[store.s3]\nbucket = \"hung\"\nendpoint = \"http://{}\"\n\n[anchor]\nsigning_key = {:?}\n",
            hung.local_addr().unwrap(),
            key.display().to_string()
        ),
    );
    // No configured writer id: a first start with one asks the store whether it is taken.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("writer_id = \"check-a\"\n", "")).unwrap();
    let (mut child, client) = serve(&config);
    let rt = runtime();
    // A deadline, not a measurement: waiting on the hung store would take minutes (each
    // request's 60 s operation timeout, retried).
    let healthy = rt.block_on(client.wait_healthy(Duration::from_secs(30)));
    let ready = rt.block_on(client.get("/readyz")).map(|r| r.status);
    child.kill().unwrap();
    child.wait().unwrap();
    healthy.unwrap();
    assert_eq!(ready, Ok(503));
}

/// The daemon does not start on a bucket that fails the check, and says why.
#[test]
fn the_daemon_refuses_an_unfit_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let name = bucket(Setup::Governance);
    let mut child = wormvault(&s3_config(dir.path(), &name, &s3_endpoint()), &["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the daemon kept running on a GOVERNANCE bucket");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("not fit for a WORM archive"), "{err}");
    assert!(err.contains("default_mode"), "{err}");
}
