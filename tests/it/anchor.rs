//! Daily roots, signed anchors, mirrors, late events and offline proofs.

use std::path::PathBuf;
use std::sync::Arc;

use wormvault::anchor::Anchored;
use wormvault::archive::Archive;
use wormvault::config::Settings;
use wormvault::merkle;
use wormvault::note::SignerKey;
use wormvault::proof::{ProofBundle, verify};
use wormvault::store::WormStore;
use wormvault::sweep::{FindingClass, Level, SweepOptions, SweepReport, Sweeper};
use wormvault::timestamp::{Day, Timestamp};

use crate::both;
use crate::util::{
    Backend, BucketKind, Flaky, Target, admin_client, anchorer, create_bucket, event, python,
    unique, wormvault,
};

fn day(s: &str) -> Day {
    Day::parse(s).unwrap()
}

/// Writes a new signing key into the target's directory; returns its path and the key.
fn keyfile(t: &Target, name: &str) -> (PathBuf, SignerKey) {
    let key = SignerKey::generate(name).unwrap();
    let path = t.dir.path().join(format!("{name}.key"));
    std::fs::write(&path, key.to_secret_string()).unwrap();
    (path, key)
}

/// `[anchor]` settings. Past days stay open (a very long `close_after`) so that the tests can
/// archive into the days they choose; only anchors close them.
fn anchor_toml(
    signing_key: &std::path::Path,
    verification_keys: &[String],
    mirror: &str,
) -> String {
    format!(
        "[anchor]\nsigning_key = {:?}\nverification_keys = {verification_keys:?}\norigin = \"test.example/wormvault\"\nclose_after = \"100000d\"\ndelay = \"100001d\"\n{mirror}",
        signing_key.display().to_string()
    )
}

fn import_events(t: &Target, archive: &Archive, events: &[(String, String)]) {
    let text: String = events
        .iter()
        .map(|(id, at)| event(id, at, "trade.new", &format!("T-{id}")) + "\n")
        .collect();
    crate::util::import_all(t, archive, text);
}

fn events_on(prefix: &str, d: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-{i:03}"),
                format!("{d}T09:{:02}:00Z", i % 60),
            )
        })
        .collect()
}

fn yesterday() -> Day {
    Timestamp::now().day().prev()
}

fn sweep(t: &Target, settings: &Settings) -> SweepReport {
    let sweeper =
        t.rt.block_on(Sweeper::from_settings(settings, t.store()))
            .unwrap();
    let opts = SweepOptions {
        level: Level::Quick,
        from: None,
        to: None,
        days: None,
        parallelism: 3,
    };
    t.rt.block_on(sweeper.run(&opts)).unwrap()
}

fn assert_has(report: &SweepReport, class: FindingClass, key: &str) {
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.class == class && f.key == key),
        "expected {} on {key}; the sweep found:\n{}",
        class.code(),
        report.summary()
    );
}

fn anchors_cover_every_day_including_empty_days_and_late_events(backend: Backend) {
    let t = Target::new(backend);
    let (key_path, key) = keyfile(&t, "wv-test-1");
    let settings = t.settings_in("state", &anchor_toml(&key_path, &[], ""));
    // Three past days, the last of them the latest a sweep expects anchored (the day before
    // yesterday), so that the test means the same on any date.
    let d2 = Timestamp::now().day().prev().prev();
    let d1 = d2.prev();
    let d0 = d1.prev();
    let (s0, s1, s2) = (d0.to_string(), d1.to_string(), d2.to_string());
    {
        let archive = t.open(settings.clone());
        let mut events = events_on("a", &s0, 40);
        events.extend(events_on("c", &s2, 25));
        import_events(&t, &archive, &events);
    }
    let anchorer = anchorer(&t, &settings);
    let done = t.rt.block_on(anchorer.anchor_through(d2)).unwrap();
    let days: Vec<(Day, u64, bool)> = done.iter().map(|a| (a.day, a.size, a.created)).collect();
    assert_eq!(
        days,
        vec![
            (d0, 1, true),
            (d1, 0, true), // no events: still anchored, so absence is provable
            (d2, 1, true),
        ]
    );
    // The empty day's root is the empty tree's; every anchor links to the one before.
    assert_eq!(done[1].root, merkle::sha256(b""));
    let read = |d: Day| t.rt.block_on(anchorer.read(d)).unwrap().unwrap();
    assert_eq!(read(d0).body.prev, None);
    assert_eq!(read(d1).body.prev, Some(done[0].sha256));
    assert_eq!(read(d2).body.prev, Some(done[1].sha256));
    assert!(read(d2).bytes.starts_with(b"test.example/wormvault\n1\n"));
    // Anchoring again changes nothing.
    let again = t.rt.block_on(anchorer.anchor_through(d2)).unwrap();
    assert_eq!(again.len(), 1);
    assert!(!again[0].created);
    assert_eq!(again[0].sha256, done[2].sha256);
    // A day that is not over cannot be anchored.
    assert!(
        t.rt.block_on(anchorer.anchor_through(Timestamp::now().day()))
            .is_err()
    );

    // Late events: their day is anchored, so its new events go to today's segments, with
    // their occurred_at kept; nothing is added under the anchored day.
    let today = Timestamp::now().day();
    {
        let archive = t.open(settings.clone());
        import_events(&t, &archive, &events_on("late", &s1, 5));
    }
    let store = t.store();
    let listed = |p: &str| t.rt.block_on(store.list(p)).unwrap();
    assert!(listed(&format!("manifests/dt={s1}/")).is_empty());
    assert_eq!(listed(&format!("manifests/dt={today}/")).len(), 1);

    // The sweep checks the anchors, and finds nothing wrong.
    let report = sweep(&t, &settings);
    assert_eq!(report.errors(), 0, "{}", report.summary());
    crate::util::verify_independently(&t);

    // A late event is found and proven; the proof verifies offline, here and independently.
    let bundle_path = t.dir.path().join("late-002.json");
    let config = t.config_file("cli-state", &anchor_toml(&key_path, &[], ""));
    let out = wormvault(&config, &["prove", "late-002", "--out"])
        .arg(&bundle_path)
        .output()
        .unwrap();
    // Today is not anchored yet: the proof must wait for it.
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not anchored yet"), "{stderr}");
    assert!(
        stderr.contains(&format!("segments/dt={today}/")),
        "found in today's segment: {stderr}"
    );

    // A manifest changed through a side door after its day was anchored is an anchor finding.
    let m18 = listed(&format!("manifests/dt={s0}/"))[0].key.clone();
    let mut bytes = t.rt.block_on(store.get(&m18, None)).unwrap().to_vec();
    bytes.extend_from_slice(b" ");
    crate::sweep::overwrite(&t, &m18, bytes);
    let report = sweep(&t, &settings);
    assert_has(
        &report,
        FindingClass::AnchorRootMismatch,
        &format!("anchors/dt={s0}/anchor.note"),
    );
    let _ = key;
}
both!(anchors_cover_every_day_including_empty_days_and_late_events);

fn a_proof_verifies_offline_and_fails_on_any_changed_byte(backend: Backend) {
    let t = Target::new(backend);
    let (key_path, key) = keyfile(&t, "wv-proof");
    // Small batches: several manifests a day, so both proofs have several steps.
    let toml = format!(
        "[batch]\nmax_events = 10\n{}",
        anchor_toml(&key_path, &[], "")
    );
    let settings = t.settings_in("state", &toml);
    {
        let archive = t.open(settings.clone());
        let mut events = events_on("p", "2026-11-18", 37);
        events.extend(events_on("q", "2026-11-19", 11));
        import_events(&t, &archive, &events);
    }
    let config = t.config_file("cli-state", &toml);
    let run = |args: &[&str]| wormvault(&config, args).output().unwrap();
    let out = run(&["anchor", "--day", "2026-11-19"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(" anchored ").count(), 2, "{stdout}");
    assert!(
        stdout.contains("2026-11-18 anchored anchors/dt=2026-11-18/anchor.note: 4 manifests"),
        "{stdout}"
    );

    let bundle_path = t.dir.path().join("p-017.json");
    let out = run(&[
        "prove",
        "p-017",
        "--day",
        "2026-11-18",
        "--out",
        bundle_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle: ProofBundle =
        serde_json::from_slice(&std::fs::read(&bundle_path).unwrap()).unwrap();
    let proven = verify(&bundle, &[key.verifier()]).unwrap();
    assert_eq!(proven.day, day("2026-11-18"));
    assert!(!proven.late);

    // The CLI checks it with no configuration and no store at all; pinned to the right key.
    let offline = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wormvault"))
            .arg("verify-proof")
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };
    let vkey = key.verifier().to_string();
    let out = offline(&[bundle_path.to_str().unwrap(), "--key", &vkey]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let other = SignerKey::generate("someone-else")
        .unwrap()
        .verifier()
        .to_string();
    let out = offline(&[bundle_path.to_str().unwrap(), "--key", &other]);
    assert_eq!(out.status.code(), Some(1));

    // An independent verifier (Python: hashlib and the cryptography package's Ed25519).
    let report = python("verify_proof.py", &[bundle_path.to_str().unwrap(), &vkey]);
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["day"], "2026-11-18");

    // Any single changed byte of the event, a proof hash, the manifest or the anchor fails.
    let mut checked = 0;
    let mutants = |s: &str| -> Vec<String> {
        (0..s.len())
            .filter_map(|i| {
                let mut b = s.as_bytes().to_vec();
                b[i] ^= 0x01;
                String::from_utf8(b).ok()
            })
            .collect()
    };
    for m in mutants(&bundle.event) {
        assert!(
            verify(
                &ProofBundle {
                    event: m,
                    ..bundle.clone()
                },
                &[]
            )
            .is_err()
        );
        checked += 1;
    }
    for m in mutants(&bundle.manifest) {
        assert!(
            verify(
                &ProofBundle {
                    manifest: m,
                    ..bundle.clone()
                },
                &[]
            )
            .is_err()
        );
        checked += 1;
    }
    for m in mutants(&bundle.anchor) {
        assert!(
            verify(
                &ProofBundle {
                    anchor: m.clone(),
                    ..bundle.clone()
                },
                &[]
            )
            .is_err(),
            "{m}"
        );
        checked += 1;
    }
    for (which, list) in [
        ("segment", &bundle.segment_proof),
        ("day", &bundle.day_proof),
    ] {
        for (i, h) in list.iter().enumerate() {
            for m in mutants(h) {
                let mut b = bundle.clone();
                if which == "segment" {
                    b.segment_proof[i] = m;
                } else {
                    b.day_proof[i] = m;
                }
                assert!(verify(&b, &[]).is_err());
                checked += 1;
            }
        }
    }
    assert!(!bundle.segment_proof.is_empty() && !bundle.day_proof.is_empty());
    assert!(checked > 1000, "{checked}");
    // Moving the event to another leaf index fails too.
    let moved = ProofBundle {
        leaf_index: bundle.leaf_index + 1,
        ..bundle.clone()
    };
    assert!(verify(&moved, &[]).is_err());
}
both!(a_proof_verifies_offline_and_fails_on_any_changed_byte);

fn a_race_of_two_writers_anchoring_the_same_day_yields_one_anchor(backend: Backend) {
    let t = Target::new(backend);
    let (path_a, key_a) = keyfile(&t, "writer-a-key");
    let (path_b, key_b) = keyfile(&t, "writer-b-key");
    let both_keys = [key_a.verifier().to_string(), key_b.verifier().to_string()];
    let sa = t.settings_in("state-a", &anchor_toml(&path_a, &both_keys, ""));
    let sb = t.settings_in("state-b", &anchor_toml(&path_b, &both_keys, ""));
    {
        let archive = t.open(sa.clone());
        import_events(&t, &archive, &events_on("r", "2026-11-18", 10));
    }
    let (a, b) = (anchorer(&t, &sa), anchorer(&t, &sb));
    let target = day("2026-11-18");
    let (ra, rb): (Vec<Anchored>, Vec<Anchored>) = t.rt.block_on(async {
        let (ra, rb) = tokio::join!(
            tokio::spawn(async move { a.anchor_through(target).await }),
            tokio::spawn(async move { b.anchor_through(target).await })
        );
        (ra.unwrap().unwrap(), rb.unwrap().unwrap())
    });
    assert_eq!(ra.len(), 1);
    assert_eq!(rb.len(), 1);
    assert_eq!(ra[0].sha256, rb[0].sha256, "both see the one stored anchor");
    assert_eq!(
        [ra[0].created, rb[0].created]
            .iter()
            .filter(|c| **c)
            .count(),
        1,
        "exactly one write won"
    );
    let store = t.store();
    let versions =
        t.rt.block_on(store.versions_of("anchors/dt=2026-11-18/anchor.note"))
            .unwrap();
    assert_eq!(versions.len(), 1);
    t.rt.block_on(anchorer(&t, &sa).anchor_through(yesterday()))
        .unwrap();
    let report = sweep(&t, &sa);
    assert_eq!(report.errors(), 0, "{}", report.summary());
}
both!(a_race_of_two_writers_anchoring_the_same_day_yields_one_anchor);

fn rotated_keys_keep_old_anchors_valid_and_unknown_keys_are_findings(backend: Backend) {
    let t = Target::new(backend);
    let (old_path, old) = keyfile(&t, "wv-2025");
    let (new_path, new) = keyfile(&t, "wv-2026");
    {
        let archive = t.open(t.settings_in("state", &anchor_toml(&old_path, &[], "")));
        import_events(&t, &archive, &events_on("k", "2026-11-18", 6));
        import_events(&t, &archive, &events_on("l", "2026-11-19", 6));
    }
    let with_old = t.settings_in("state", &anchor_toml(&old_path, &[], ""));
    t.rt.block_on(anchorer(&t, &with_old).anchor_through(day("2026-11-18")))
        .unwrap();
    // Rotation: the new key signs, the old one stays accepted.
    let rotated = t.settings_in(
        "state",
        &anchor_toml(&new_path, &[old.verifier().to_string()], ""),
    );
    let done =
        t.rt.block_on(anchorer(&t, &rotated).anchor_through(yesterday()))
            .unwrap();
    assert_eq!(done[0].day, day("2026-11-19"));
    let report = sweep(&t, &rotated);
    assert_eq!(report.errors(), 0, "{}", report.summary());
    // Anyone who accepts only the new key sees the old anchor as signed by an unknown key.
    let only_new = t.settings_in(
        "state",
        &anchor_toml(&new_path, &[new.verifier().to_string()], ""),
    );
    let report = sweep(&t, &only_new);
    assert_has(
        &report,
        FindingClass::AnchorUnknownKey,
        "anchors/dt=2026-11-18/anchor.note",
    );
    assert_eq!(report.errors(), 1, "{}", report.summary());
}
both!(rotated_keys_keep_old_anchors_valid_and_unknown_keys_are_findings);

fn a_mirror_receives_identical_anchors_and_a_divergent_copy_is_a_finding(backend: Backend) {
    let t = Target::new(backend);
    let (key_path, _) = keyfile(&t, "wv-mirror");
    let mirror_dir = t.dir.path().join("mirror");
    let mirror_bucket = unique("wvmirror");
    let mirror = match backend {
        Backend::Local => format!(
            "[anchor.mirror]\nkind = \"local\"\nprefix = \"copy/\"\n[anchor.mirror.local]\npath = {:?}\n",
            mirror_dir.display().to_string()
        ),
        Backend::LocalStack => {
            t.rt.block_on(create_bucket(
                &admin_client(&t.endpoint),
                &mirror_bucket,
                BucketKind::LockWithDefault,
            ));
            format!(
                "[anchor.mirror]\nkind = \"s3\"\nprefix = \"copy/\"\n[anchor.mirror.s3]\nbucket = {mirror_bucket:?}\nendpoint = {:?}\n",
                t.endpoint
            )
        }
    };
    let settings = t.settings_in("state", &anchor_toml(&key_path, &[], &mirror));
    {
        let archive = t.open(settings.clone());
        import_events(&t, &archive, &events_on("m", "2026-11-18", 8));
    }
    let a = anchorer(&t, &settings);
    t.rt.block_on(a.anchor_through(yesterday())).unwrap();
    let m = a.mirror.clone().unwrap();
    for d in ["2026-11-18", "2026-11-19"] {
        let here =
            t.rt.block_on(t.store().get(&format!("anchors/dt={d}/anchor.note"), None))
                .unwrap();
        let there =
            t.rt.block_on(
                m.store
                    .get(&format!("copy/anchors/dt={d}/anchor.note"), None),
            )
            .unwrap();
        assert_eq!(here, there);
    }
    let report = sweep(&t, &settings);
    assert_eq!(report.errors(), 0, "{}", report.summary());
    // The mirror's copy is replaced through a side door.
    let key = "copy/anchors/dt=2026-11-19/anchor.note";
    match backend {
        Backend::Local => {
            use std::os::unix::fs::PermissionsExt;
            let path = mirror_dir.join(key);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&path, b"forged\n").unwrap();
        }
        Backend::LocalStack => {
            t.rt.block_on(
                admin_client(&t.endpoint)
                    .put_object()
                    .bucket(&mirror_bucket)
                    .key(key)
                    .body(b"forged\n".to_vec().into())
                    .send(),
            )
            .unwrap();
        }
    }
    let report = sweep(&t, &settings);
    assert_has(
        &report,
        FindingClass::AnchorMirrorMismatch,
        "anchors/dt=2026-11-19/anchor.note",
    );
    let _: Arc<dyn WormStore> = m.store;
}
both!(a_mirror_receives_identical_anchors_and_a_divergent_copy_is_a_finding);

/// The local time-stamp authority of `tests/py/tsa.py`, killed when dropped.
struct LocalTsa {
    child: std::process::Child,
    url: String,
    certificate: PathBuf,
}

impl LocalTsa {
    fn start(dir: &std::path::Path) -> LocalTsa {
        use std::io::BufRead;
        let py = std::env::var("WORMVAULT_TEST_PYTHON")
            .expect("WORMVAULT_TEST_PYTHON is not set: run the suite with scripts/test");
        let mut child = std::process::Command::new(py)
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/tsa.py"))
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the local TSA did not start ({e}): {line:?}"));
        LocalTsa {
            child,
            url: v["url"].as_str().unwrap().into(),
            certificate: v["certificate"].as_str().unwrap().into(),
        }
    }
}

impl Drop for LocalTsa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn anchors_are_time_stamped_by_a_tsa_and_the_tokens_verify(backend: Backend) {
    let t = Target::new(backend);
    let tsa = LocalTsa::start(&t.dir.path().join("tsa"));
    let (key_path, _) = keyfile(&t, "wv-tsa");
    let tsa_toml = format!(
        "tsa_url = {:?}\ntsa_certificate = {:?}\n",
        tsa.url,
        tsa.certificate.display().to_string()
    );
    let settings = t.settings_in(
        "state",
        &format!("{}{tsa_toml}", anchor_toml(&key_path, &[], "")),
    );
    {
        let archive = t.open(settings.clone());
        import_events(&t, &archive, &events_on("s", "2026-11-18", 12));
    }
    let a = anchorer(&t, &settings);
    t.rt.block_on(a.anchor_through(yesterday())).unwrap();
    let store = t.store();
    let get = |k: &str| t.rt.block_on(store.get(k, None)).unwrap();
    let note = get("anchors/dt=2026-11-18/anchor.note");
    let token = get("anchors/dt=2026-11-18/anchor.tsr");
    let cert = wormvault::tsa::pem_certificate(&std::fs::read_to_string(&tsa.certificate).unwrap())
        .unwrap();
    let stamp = wormvault::tsa::verify(&token, &merkle::sha256(&note), None, &cert).unwrap();
    assert!(stamp.gen_time.ends_with('Z'), "{stamp:?}");
    // A token for other bytes does not hold.
    assert!(wormvault::tsa::verify(&token, &merkle::sha256(b"other"), None, &cert).is_err());
    // Independently: OpenSSL verifies the stored token over the stored anchor.
    std::fs::write(t.dir.path().join("anchor.note"), &note).unwrap();
    std::fs::write(t.dir.path().join("anchor.tsr"), &token).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["ts", "-verify", "-data"])
        .arg(t.dir.path().join("anchor.note"))
        .arg("-in")
        .arg(t.dir.path().join("anchor.tsr"))
        .arg("-CAfile")
        .arg(&tsa.certificate)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Verification: OK"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = sweep(&t, &settings);
    assert_eq!(report.errors(), 0, "{}", report.summary());
    // A token swapped through a side door (the next day's, validly signed but for other
    // bytes) is a finding.
    let other = get("anchors/dt=2026-11-19/anchor.tsr");
    crate::sweep::overwrite(&t, "anchors/dt=2026-11-18/anchor.tsr", other.to_vec());
    let report = sweep(&t, &settings);
    assert_has(
        &report,
        FindingClass::AnchorTimestampInvalid,
        "anchors/dt=2026-11-18/anchor.tsr",
    );
}
both!(anchors_are_time_stamped_by_a_tsa_and_the_tokens_verify);

/// A mirror that is down when a day is anchored gets its copy when the day is finished again.
#[test]
fn an_anchored_day_is_finished_once_the_mirror_is_back() {
    let t = Target::new(Backend::Local);
    let (key_path, _) = keyfile(&t, "wv-flaky");
    let settings = t.settings_in("state", &anchor_toml(&key_path, &[], ""));
    {
        let archive = t.open(settings.clone());
        import_events(&t, &archive, &events_on("f", "2026-11-18", 6));
    }
    let mut a = anchorer(&t, &settings);
    let mirror_store: Arc<dyn WormStore> =
        Arc::new(wormvault::store::local::LocalStore::open(t.dir.path().join("mirror")).unwrap());
    let flaky = Arc::new(Flaky::new(mirror_store.clone(), true));
    a.mirror = Some(wormvault::anchor::Mirror {
        store: flaky.clone(),
        layout: wormvault::layout::Layout::new(""),
    });
    let d = day("2026-11-18");
    assert!(
        t.rt.block_on(a.anchor_through(d)).is_err(),
        "the mirror is down"
    );
    let stored =
        t.rt.block_on(t.store().get("anchors/dt=2026-11-18/anchor.note", None))
            .unwrap();
    assert!(
        t.rt.block_on(mirror_store.get("anchors/dt=2026-11-18/anchor.note", None))
            .is_err()
    );
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    t.rt.block_on(a.finish_day(d, &stored, None)).unwrap();
    let copy =
        t.rt.block_on(mirror_store.get("anchors/dt=2026-11-18/anchor.note", None))
            .unwrap();
    assert_eq!(copy, stored);
    // Finishing is idempotent, and the record index was made too.
    t.rt.block_on(a.finish_day(d, &stored, None)).unwrap();
    assert!(
        t.rt.block_on(t.store().head("index/dt=2026-11-18/records.parquet", None))
            .is_ok()
    );
}

/// A writer that starts while its store cannot list the anchors (an outage) starts anyway, to
/// spool events, and keeps closed the days it last knew anchored: it remembers them in its
/// state, so a late event still goes to the current day.
#[test]
fn a_start_during_an_outage_keeps_the_known_anchored_days_closed() {
    let t = Target::new(Backend::Local);
    let (key_path, _) = keyfile(&t, "wv-outage");
    let settings = t.settings_in("state", &anchor_toml(&key_path, &[], ""));
    let d = day("2026-11-18");
    {
        let archive = t.open(settings.clone());
        import_events(&t, &archive, &events_on("o", "2026-11-18", 3));
        assert_eq!(archive.gate.lane_day(d), d, "open until anchored");
    }
    t.rt.block_on(anchorer(&t, &settings).anchor_through(d))
        .unwrap();
    // A start with the store up lists the anchor, and the state keeps it.
    drop(t.open(settings.clone()));
    let flaky = Arc::new(Flaky::new(t.store(), true));
    let archive =
        t.rt.block_on(Archive::open_with_store(settings.clone(), flaky))
            .expect("a writer starts while its store is down");
    let today = Timestamp::now().day();
    assert_eq!(
        archive.gate.lane_day(d),
        today,
        "the anchored day stays closed"
    );
    assert_eq!(
        archive.gate.lane_day(day("2026-11-19")),
        day("2026-11-19"),
        "a day not anchored stays open"
    );
}
