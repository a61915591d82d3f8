//! Retrieval: record indexes and queries, checked against a brute-force scan.

use wormvault::manifest::Manifest;
use wormvault::retrieve::{Entry, Filter, query};
use wormvault::timestamp::{Day, Timestamp};

use crate::both;
use crate::util::{Backend, Target, anchor_up_to_yesterday, wormvault};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const SUBJECTS: [&str; 6] = ["T-1", "T-2", "T-3", "A-7", "A-8", "T-10"];
const ACTORS: [&str; 4] = ["jdoe", "asmith", "svc-oms", "svc-fix"];
const ACTIONS: [&str; 3] = ["trade.new", "trade.amend", "order.cancel"];
const SOURCES: [&str; 2] = ["UI", "FIX"];
const DAYS: [&str; 4] = ["2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19"];

fn events(rng: &mut Rng, prefix: &str, days: &[&str], n: usize) -> String {
    (0..n)
        .map(|i| {
            let subject = rng.pick(&SUBJECTS);
            serde_json::json!({
                "event_id": format!("{prefix}-{i:04}"),
                "occurred_at": format!("{}T{:02}:{:02}:00Z", rng.pick(days), rng.next() % 24, rng.next() % 60),
                "actor": {"type": "USER", "id": rng.pick(&ACTORS)},
                "origin": {"ip": "10.1.2.3"},
                "action": rng.pick(&ACTIONS),
                "subject": {"type": if subject.starts_with('T') { "trade" } else { "account" }, "id": subject},
                "source": rng.pick(&SOURCES),
                "payload": {"n": i},
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// Settings with small batches and anchoring on (every past day stays open until anchored).
fn anchored_settings(t: &Target) -> wormvault::config::Settings {
    let key = wormvault::note::SignerKey::generate("rti-test").unwrap();
    let key_path = t.dir.path().join("rti.key");
    std::fs::write(&key_path, key.to_secret_string()).unwrap();
    t.settings_in(
        "state",
        &format!(
            "[batch]\nmax_events = 25\n[anchor]\nsigning_key = {:?}\nclose_after = \"100000d\"\ndelay = \"100001d\"\n",
            key_path.display().to_string()
        ),
    )
}

fn import_text(t: &Target, settings: &wormvault::config::Settings, text: String) {
    crate::util::import_all(t, &t.open(settings.clone()), text);
}

/// Every record of the archive, read whole from every segment.
fn brute_force(t: &Target) -> Vec<(Entry, Vec<u8>)> {
    let store = t.store();
    t.rt.block_on(async {
        let mut out = Vec::new();
        for e in store.list("manifests/").await.unwrap() {
            let m = Manifest::from_bytes(&store.get(&e.key, None).await.unwrap()).unwrap();
            let seg = store.get(&m.segment.key, None).await.unwrap();
            for (i, r) in wormvault::segment::read_segment(seg)
                .unwrap()
                .rows
                .into_iter()
                .enumerate()
            {
                out.push((Entry::of(&r, &m.segment.key, i), r.canonical));
            }
        }
        out
    })
}

fn queries_equal_a_brute_force_scan(backend: Backend) {
    let t = Target::new(backend);
    let settings = anchored_settings(&t);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    import_text(&t, &settings, events(&mut rng, "e", &DAYS, 400));
    // Anchoring indexes every day up to yesterday.
    anchor_up_to_yesterday(&t, &settings);
    // Late events: their days are anchored, so they land in today's (unindexed) segments.
    import_text(&t, &settings, events(&mut rng, "late", &DAYS[..2], 30));
    let store = t.store();
    for d in DAYS {
        assert!(
            t.rt.block_on(store.head(&format!("index/dt={d}/records.parquet"), None))
                .is_ok()
        );
    }
    let all = brute_force(&t);
    assert_eq!(all.len(), 430);
    let total_bytes: u64 =
        t.rt.block_on(store.list("segments/"))
            .unwrap()
            .iter()
            .map(|e| e.size)
            .sum();

    let pick_opt = |rng: &mut Rng, items: &[&str]| -> Option<String> {
        (rng.next().is_multiple_of(3)).then(|| rng.pick(items).to_owned())
    };
    let mut nonempty = 0;
    for round in 0..60 {
        let mut f = Filter {
            subject_type: pick_opt(&mut rng, &["trade", "account"]),
            subject_id: pick_opt(&mut rng, &SUBJECTS),
            actor_id: pick_opt(&mut rng, &ACTORS),
            event_id: None,
            action: pick_opt(&mut rng, &ACTIONS),
            source: pick_opt(&mut rng, &SOURCES),
            from: (rng.next().is_multiple_of(2)).then(|| {
                Day::parse(rng.pick(&DAYS))
                    .unwrap()
                    .start()
                    .plus_micros((rng.next() % 86_400) as i64 * 1_000_000)
            }),
            to: None,
        };
        if round % 7 == 0 {
            f.event_id = Some(
                all[(rng.next() % all.len() as u64) as usize]
                    .0
                    .event_id
                    .clone(),
            );
        }
        if let Some(from) = f.from
            && rng.next().is_multiple_of(2)
        {
            f.to = Some(from.plus_micros((rng.next() % (3 * 86_400)) as i64 * 1_000_000));
        }
        if f.is_unbounded() {
            f.subject_id = Some("T-1".into());
        }
        let mut want: Vec<(String, Vec<u8>)> = all
            .iter()
            .filter(|(e, _)| f.matches(e))
            .map(|(e, c)| (e.event_id.clone(), c.clone()))
            .collect();
        want.sort();
        let got = t.rt.block_on(query(&store, &settings.layout, &f)).unwrap();
        let mut got_pairs: Vec<(String, Vec<u8>)> = got
            .records
            .iter()
            .map(|r| (r.event_id.clone(), r.canonical.clone()))
            .collect();
        got_pairs.sort();
        assert_eq!(got_pairs, want, "filter {f:?}");
        if !want.is_empty() {
            nonempty += 1;
        }
        assert!(
            got.bytes_read < total_bytes * 2,
            "{f:?}: read {} of {total_bytes}",
            got.bytes_read
        );
    }
    assert!(nonempty > 20, "the filters must find things: {nonempty}");

    // One subject: answered from the indexes plus today's scan.
    let f = Filter {
        subject_id: Some("A-7".into()),
        ..Filter::default()
    };
    let got = t.rt.block_on(query(&store, &settings.layout, &f)).unwrap();
    assert_eq!(got.indexed_days, 4);
    assert_eq!(got.scanned_days, 1);
    assert!(
        got.records
            .iter()
            .all(|r| r.canonical.windows(5).any(|w| w == b"\"A-7\""))
    );
    // A late event is found in the day it was archived, not the day it occurred.
    assert!(
        got.records
            .iter()
            .any(|r| r.event_id.starts_with("late") && r.day == Timestamp::now().day())
            || !all
                .iter()
                .any(|(e, _)| e.event_id.starts_with("late") && e.subject_id == "A-7")
    );
}
both!(queries_equal_a_brute_force_scan);

fn a_rebuilt_index_is_byte_for_byte_the_stored_one(backend: Backend) {
    let t = Target::new(backend);
    let settings = anchored_settings(&t);
    let mut rng = Rng(77);
    import_text(&t, &settings, events(&mut rng, "r", &DAYS[2..], 120));
    anchor_up_to_yesterday(&t, &settings);
    let store = t.store();
    let d = Day::parse("2026-11-18").unwrap();
    let until = settings
        .retention
        .longest_from(d.next().start())
        .ceil_to_second();
    let (built, written) =
        t.rt.block_on(wormvault::retrieve::rebuild_index(
            &store,
            &settings.layout,
            until,
            d,
        ))
        .unwrap();
    assert!(!written, "already stored at anchoring");
    let stored =
        t.rt.block_on(store.get("index/dt=2026-11-18/records.parquet", None))
            .unwrap();
    assert_eq!(built.bytes, stored);
    // DuckDB reads the index in place, sorted by subject.
    let dir = t.materialize();
    let report = crate::util::python(
        "query_index.py",
        &[dir
            .join("index/dt=2026-11-18/records.parquet")
            .to_str()
            .unwrap()],
    );
    assert_eq!(report["rows"], built.events);
    assert_eq!(report["sorted"], true);

    // A full sweep rebuilds every index and compares; one replaced through a side door (an
    // index of another day) is a finding.
    let sweep = |level| {
        let sweeper =
            t.rt.block_on(wormvault::sweep::Sweeper::from_settings(
                &settings,
                t.store(),
            ))
            .unwrap();
        let opts = wormvault::sweep::SweepOptions {
            level,
            from: None,
            to: None,
            days: None,
            parallelism: 2,
        };
        t.rt.block_on(sweeper.run(&opts)).unwrap()
    };
    let report = sweep(wormvault::sweep::Level::Full);
    assert_eq!(report.errors(), 0, "{}", report.summary());
    let other =
        t.rt.block_on(store.get("index/dt=2026-11-19/records.parquet", None))
            .unwrap();
    crate::sweep::overwrite(&t, "index/dt=2026-11-18/records.parquet", other.to_vec());
    let report = sweep(wormvault::sweep::Level::Full);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.class == wormvault::sweep::FindingClass::IndexMismatch
                && f.key == "index/dt=2026-11-18/records.parquet"),
        "{}",
        report.summary()
    );
}
both!(a_rebuilt_index_is_byte_for_byte_the_stored_one);

/// Rewrites a package zip: `edit` changes the map of (path in the bag → bytes).
fn rezip(
    zip_bytes: &[u8],
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, Vec<u8>>),
) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        files.insert(f.name().unwrap().into_owned(), b);
    }
    edit(&mut files);
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    for (name, body) in files {
        w.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&body).unwrap();
    }
    w.finish().unwrap();
    out.into_inner()
}

fn sha(b: &[u8]) -> String {
    hex::encode(wormvault::merkle::sha256(b))
}

fn a_package_validates_independently_and_any_change_fails(backend: Backend) {
    let t = Target::new(backend);
    let settings = anchored_settings(&t);
    let mut rng = Rng(4242);
    import_text(&t, &settings, events(&mut rng, "p", &DAYS, 200));
    anchor_up_to_yesterday(&t, &settings);
    let a = settings.anchor.as_ref().unwrap();
    let signer = a.load_signer().unwrap();
    let request = wormvault::rti::Request {
        case_id: "FINRA-2026-0042".into(),
        requester: "examinations desk".into(),
        filter: Filter {
            subject_id: Some("T-2".into()),
            ..Filter::default()
        },
    };
    let store = t.store();
    let package =
        t.rt.block_on(wormvault::rti::export(
            &store,
            &settings.layout,
            &a.accepted_keys(),
            &signer,
            &request,
        ))
        .unwrap();
    let want = brute_force(&t)
        .iter()
        .filter(|(e, _)| e.subject_id == "T-2")
        .count();
    assert!(want > 5);
    assert_eq!(package.records, want);
    let firm = [signer.verifier()];
    let check = wormvault::rti::verify(&package.zip, &firm);
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.records, want);

    // Independently: the bagit validator, and DuckDB reading Parquet and CSV.
    let dir = t.dir.path().join("unzipped");
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&package.zip)).unwrap();
    z.extract(&dir).unwrap();
    let report = crate::util::python(
        "check_package.py",
        &[dir.join("FINRA-2026-0042").to_str().unwrap()],
    );
    assert_eq!(report["bagit_valid"], true, "{report}");
    assert_eq!(report["records"], want);
    assert_eq!(report["parquet_equals_csv"], true);
    assert_eq!(report["subjects"], serde_json::json!(["T-2"]));

    let fails = |zip: Vec<u8>, what: &str| {
        let c = wormvault::rti::verify(&zip, &firm);
        assert!(!c.problems.is_empty(), "{what} was not detected");
    };
    // Any one file changed (one byte), or removed.
    let names: Vec<String> = {
        let z = zip::ZipArchive::new(std::io::Cursor::new(&package.zip)).unwrap();
        z.file_names().map(|n| n.unwrap().into_owned()).collect()
    };
    assert!(names.len() >= 12, "{names:?}");
    for name in &names {
        fails(
            rezip(&package.zip, |f| {
                let b = f.get_mut(name).unwrap();
                let at = b.len() / 2;
                b[at] ^= 0x01;
            }),
            &format!("a changed byte in {name}"),
        );
        fails(
            rezip(&package.zip, |f| {
                f.remove(name);
            }),
            &format!("removing {name}"),
        );
    }
    // A file added.
    fails(
        rezip(&package.zip, |f| {
            f.insert("FINRA-2026-0042/data/extra.txt".into(), b"added".to_vec());
        }),
        "an added file",
    );
    // A record removed, with every checksum recomputed to match: only the signature is left
    // to catch it.
    let forged = rezip(&package.zip, |f| {
        let root = "FINRA-2026-0042/";
        for name in ["data/records.jsonl", "data/proofs.jsonl"] {
            let b = f.get_mut(&format!("{root}{name}")).unwrap();
            let keep = b[..b.len() - 1].iter().rposition(|c| *c == b'\n').unwrap() + 1;
            b.truncate(keep);
        }
        let manifest: String = f
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(root)
                    .filter(|p| p.starts_with("data/"))
                    .map(|p| format!("{}  {p}\n", sha(v)))
            })
            .collect();
        f.insert(format!("{root}manifest-sha256.txt"), manifest.into_bytes());
        let tags: String = [
            "bag-info.txt",
            "bagit.txt",
            "manifest-sha256.txt",
            "package.note",
        ]
        .iter()
        .map(|p| format!("{}  {p}\n", sha(&f[&format!("{root}{p}")])))
        .collect();
        f.insert(format!("{root}tagmanifest-sha256.txt"), tags.into_bytes());
    });
    fails(forged, "a removed record with recomputed checksums");
    // Re-signed by someone else: refused when the firm's key is pinned.
    let other = wormvault::note::SignerKey::generate("not-the-firm").unwrap();
    let resigned = rezip(&package.zip, |f| {
        let root = "FINRA-2026-0042/";
        let note = String::from_utf8(f[&format!("{root}package.note")].clone()).unwrap();
        let text = &note[..note.find("\n\n").unwrap() + 1];
        f.insert(format!("{root}package.note"), other.sign(text).into_bytes());
    });
    fails(resigned, "a package signed by another key");

    // A filter that names nothing is refused; so is a record on a day not yet anchored.
    let unbounded = wormvault::rti::Request {
        filter: Filter::default(),
        ..request.clone()
    };
    assert!(
        t.rt.block_on(wormvault::rti::export(
            &store,
            &settings.layout,
            &a.accepted_keys(),
            &signer,
            &unbounded
        ))
        .is_err()
    );
}
both!(a_package_validates_independently_and_any_change_fails);

fn command_line_retrievals_are_recorded_and_retrievable(backend: Backend) {
    let t = Target::new(backend);
    let mut rng = Rng(99);
    let settings = t.settings();
    import_text(&t, &settings, events(&mut rng, "c", &DAYS, 40));
    let config = t.config_file("cli-state", "");
    let query = |args: &[&str]| {
        let out = wormvault(&config, &["rti", "query", "--requester", "tester"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let t1 = query(&["--subject-id", "T-1", "--case", "CASE-9"]);
    assert!(t1.iter().all(|r| r["event"]["subject"]["id"] == "T-1"));
    // A filter that names nothing is refused, and records nothing.
    let out = wormvault(&config, &["rti", "query", "--from", "2026-11-16"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // This retrieval is recorded before it runs, so it finds itself too.
    let audits = query(&[
        "--subject-type",
        "rti-case",
        "--subject-id",
        "CASE-9",
        "--case",
        "CASE-9",
    ]);
    assert_eq!(
        audits.len(),
        2,
        "both retrievals are in the archive: {audits:?}"
    );
    assert!(
        audits
            .iter()
            .all(|a| a["event"]["actor"]["id"] == "cli:tester"
                && a["event"]["action"] == "rti.query")
    );
}
both!(command_line_retrievals_are_recorded_and_retrievable);
