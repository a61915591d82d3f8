//! The archive pipeline end to end, against the local store and LocalStack, checked by an
//! independent reader (pyarrow, hashlib, DuckDB: tests/py/verify_archive.py).

use std::collections::{BTreeMap, BTreeSet};

use wormvault::archive::Archive;
use wormvault::event::RejectKind;
use wormvault::import::{ImportSummary, Outcome, Rejection, UploadPatience, import};
use wormvault::manifest::Manifest;
use wormvault::store::LockMode;

use crate::both;
use crate::util::{Backend, Target, event, verify_independently};

const RULES: &str = r#"
[batch]
max_events = 40

[[retention.rules]]
actions = ["comm.*"]
class = "sec-17a-4-b"

[[retention.rules]]
actions = ["swap.*"]
class = "cftc-1-31"
"#;

/// Imports `text`, collecting outcomes.
fn run(t: &Target, archive: &Archive, text: String) -> (ImportSummary, Vec<Outcome>) {
    let mut outcomes = Vec::new();
    let patience = UploadPatience {
        attempts: 1,
        first_backoff: std::time::Duration::from_millis(10),
    };
    let summary = import(
        archive,
        wormvault::import::Input::bytes(text.into_bytes()),
        t.rt.handle(),
        patience,
        &mut |o| outcomes.push(o),
    )
    .unwrap();
    assert_eq!(summary.pending_uploads, 0, "{:?}", summary.upload_error);
    (summary, outcomes)
}

fn mixed_events(n: usize, tag: &str) -> Vec<(String, String)> {
    let actions = [
        "trade.new",
        "trade.amend",
        "comm.chat",
        "swap.confirm",
        "login",
    ];
    let days = ["2026-11-18", "2026-11-19", "2026-11-20"];
    (0..n)
        .map(|i| {
            let id = format!("{tag}-{i:05}");
            let ts = format!(
                "{}T{:02}:{:02}:{:02}.{:06}Z",
                days[i % 3],
                i % 24,
                (i * 7) % 60,
                (i * 13) % 60,
                i * 37 % 1_000_000
            );
            (
                id.clone(),
                event(
                    &id,
                    &ts,
                    actions[i % actions.len()],
                    &format!("T-{}", i % 17),
                ),
            )
        })
        .collect()
}

fn ndjson(events: &[(String, String)]) -> String {
    events.iter().map(|(_, e)| format!("{e}\n")).collect()
}

fn archived_events_read_back_independently(backend: Backend) {
    let t = Target::new(backend);
    let archive = t.open(t.settings_in("state", RULES));
    let events = mixed_events(300, "rb");
    let (summary, outcomes) = run(&t, &archive, ndjson(&events));
    assert_eq!(
        (summary.accepted, summary.duplicates, summary.rejected),
        (300, 0, 0),
        "{outcomes:?}"
    );
    assert!(
        summary.uploaded.len() >= 10,
        "several segments: {}",
        summary.uploaded.len()
    );
    let report = verify_independently(&t);
    let ids: BTreeSet<String> = events.iter().map(|(id, _)| id.clone()).collect();
    let archived: BTreeSet<String> = report["event_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(archived, ids);
    assert_eq!(report["events"], 300);
    assert_eq!(report["duckdb"]["rows"], 300);
    assert_eq!(report["duckdb"]["distinct_event_ids"], 300);
    assert_eq!(report["duckdb"]["days"], 3);
}
both!(archived_events_read_back_independently);

fn manifest_chain_links_across_segments_and_runs(backend: Backend) {
    let t = Target::new(backend);
    let mut total = 0;
    for run_no in 0..3 {
        let archive = t.open(t.settings_in("state", RULES));
        let (summary, _) = run(
            &t,
            &archive,
            ndjson(&mixed_events(90, &format!("run{run_no}"))),
        );
        assert_eq!(summary.accepted, 90);
        total += summary.uploaded.len();
        drop(archive);
    }
    // Read the chain back through the store, in the writer's batch order.
    let store = t.store();
    let manifests: Vec<(Manifest, Vec<u8>)> = t.rt.block_on(async {
        let mut out = Vec::new();
        for e in store.list("manifests/").await.unwrap() {
            let bytes = store.get(&e.key, None).await.unwrap().to_vec();
            out.push((Manifest::from_bytes(&bytes).unwrap(), bytes));
        }
        out
    });
    assert_eq!(manifests.len(), total);
    let mut by_idx: BTreeMap<u64, &(Manifest, Vec<u8>)> = BTreeMap::new();
    for m in &manifests {
        by_idx.insert(m.0.info.batch_idx, m);
    }
    assert_eq!(
        by_idx.keys().copied().collect::<Vec<_>>(),
        (0..total as u64).collect::<Vec<_>>(),
        "no gaps in batch_idx"
    );
    let mut prev: Option<&Vec<u8>> = None;
    for (m, bytes) in by_idx.values() {
        let expect = prev.map(|p| hex::encode(Manifest::chain_hash(p)));
        assert_eq!(m.prev_manifest_sha256, expect, "batch {}", m.info.batch_idx);
        prev = Some(bytes);
    }
    // Lanes are numbered from 1 with no gaps across the three runs.
    let mut lanes: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for (m, _) in by_idx.values() {
        lanes
            .entry((m.info.day.to_string(), m.info.retention_class.clone()))
            .or_default()
            .push((m.info.first_seq, m.info.last_seq));
    }
    for (lane, ranges) in lanes {
        let mut next = 1;
        for (first, last) in ranges {
            assert_eq!(first, next, "lane {lane:?}");
            next = last + 1;
        }
    }
    let report = verify_independently(&t);
    assert_eq!(report["events"], 270);
}
both!(manifest_chain_links_across_segments_and_runs);

fn retain_until_covers_every_event(backend: Backend) {
    let t = Target::new(backend);
    let archive = t.open(t.settings_in("state", RULES));
    let (summary, _) = run(&t, &archive, ndjson(&mixed_events(120, "ret")));
    assert_eq!(summary.accepted, 120);
    let classes: BTreeSet<String> = summary
        .uploaded
        .iter()
        .map(|u| u.entry.info.retention_class.clone())
        .collect();
    assert_eq!(classes.len(), 3, "three classes in use: {classes:?}");
    // The store holds every object in COMPLIANCE mode at least as long as its manifest says.
    let store = t.store();
    t.rt.block_on(async {
        for u in &summary.uploaded {
            let seg = store.head(&u.segment_key, None).await.unwrap();
            assert_eq!(seg.lock_mode, Some(LockMode::Compliance));
            assert!(seg.retain_until.unwrap() >= u.entry.info.retain_until);
            let bytes = store.get(&u.manifest_key, None).await.unwrap();
            let m = Manifest::from_bytes(&bytes).unwrap();
            let head = store.head(&u.manifest_key, None).await.unwrap();
            assert_eq!(head.lock_mode, Some(LockMode::Compliance));
            assert!(head.retain_until.unwrap() >= m.retain_until);
            assert!(m.retain_until >= m.info.retain_until);
        }
    });
    // Every row's occurred_at + its class period is covered (checked independently).
    verify_independently(&t);
}
both!(retain_until_covers_every_event);

/// One invalid event of each kind the contract refuses, with the field it must name.
fn invalid_events() -> Vec<(Vec<u8>, RejectKind, Option<&'static str>)> {
    let good: serde_json::Value =
        serde_json::from_str(&event("x", "2026-11-20T10:00:00Z", "trade.new", "T-1")).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut v = good.clone();
        f(v.as_object_mut().unwrap());
        v.to_string().into_bytes()
    };
    use RejectKind::*;
    let mut out: Vec<(Vec<u8>, RejectKind, Option<&'static str>)> = vec![];
    for field in [
        "event_id",
        "occurred_at",
        "actor",
        "action",
        "subject",
        "source",
        "payload",
    ] {
        out.push((
            with(&|m| {
                m.remove(field);
            }),
            MissingField,
            Some(field),
        ));
    }
    out.push((
        with(&|m| {
            m["actor"].as_object_mut().unwrap().remove("id");
        }),
        MissingField,
        Some("actor.id"),
    ));
    out.push((
        with(&|m| {
            m["subject"].as_object_mut().unwrap().remove("type");
        }),
        MissingField,
        Some("subject.type"),
    ));
    out.push((
        with(&|m| {
            m.remove("origin");
        }),
        MissingField,
        Some("origin"),
    ));
    out.push((
        with(&|m| {
            m.insert("priority".into(), 1.into());
        }),
        UnknownField,
        Some("priority"),
    ));
    out.push((
        with(&|m| {
            m["origin"]["mac"] = "x".into();
        }),
        UnknownField,
        Some("origin.mac"),
    ));
    out.push((
        with(&|m| {
            m["action"] = 7.into();
        }),
        WrongType,
        Some("action"),
    ));
    out.push((
        with(&|m| {
            m["actor"] = "jdoe".into();
        }),
        WrongType,
        Some("actor"),
    ));
    out.push((
        with(&|m| {
            m["subject"]["id"] = serde_json::json!(["T"]);
        }),
        WrongType,
        Some("subject.id"),
    ));
    out.push((
        with(&|m| {
            m["actor"]["type"] = "ROBOT".into();
        }),
        InvalidValue,
        Some("actor.type"),
    ));
    out.push((
        with(&|m| {
            m["source"] = "EMAIL".into();
        }),
        InvalidValue,
        Some("source"),
    ));
    out.push((
        with(&|m| {
            m["origin"]["ip"] = "999.1.1.1".into();
        }),
        InvalidValue,
        Some("origin.ip"),
    ));
    out.push((
        with(&|m| {
            m.insert("retention_class".into(), "forever".into());
        }),
        InvalidValue,
        Some("retention_class"),
    ));
    out.push((
        with(&|m| {
            m["payload"]["n"] = serde_json::Value::Number(u64::MAX.into());
        }),
        InvalidValue,
        Some("payload.n"),
    ));
    out.push((
        with(&|m| {
            m["occurred_at"] = "2026-11-20T10:00:00".into();
        }),
        InvalidTimestamp,
        Some("occurred_at"),
    ));
    out.push((
        with(&|m| {
            m["occurred_at"] = "2026-11-20 10:00:00Z".into();
        }),
        InvalidTimestamp,
        Some("occurred_at"),
    ));
    out.push((
        with(&|m| {
            m["occurred_at"] = "2026-02-30T10:00:00Z".into();
        }),
        InvalidTimestamp,
        Some("occurred_at"),
    ));
    out.push((
        with(&|m| {
            m["occurred_at"] = "2199-01-01T00:00:00Z".into();
        }),
        InvalidTimestamp,
        Some("occurred_at"),
    ));
    out.push((
        with(&|m| {
            m["occurred_at"] = "1969-12-31T23:59:59Z".into();
        }),
        InvalidTimestamp,
        Some("occurred_at"),
    ));
    out.push((
        with(&|m| {
            m["event_id"] = "".into();
        }),
        InvalidEventId,
        Some("event_id"),
    ));
    out.push((
        with(&|m| {
            m["event_id"] = "x".repeat(129).into();
        }),
        InvalidEventId,
        Some("event_id"),
    ));
    out.push((
        with(&|m| {
            m["event_id"] = "has space".into();
        }),
        InvalidEventId,
        Some("event_id"),
    ));
    out.push((
        with(&|m| {
            m["event_id"] = "caf\u{e9}".into();
        }),
        InvalidEventId,
        Some("event_id"),
    ));
    out.push((
        with(&|m| {
            m["payload"] = serde_json::json!([1, 2]);
        }),
        PayloadNotObject,
        Some("payload"),
    ));
    out.push((
        with(&|m| {
            m["payload"] = "text".into();
        }),
        PayloadNotObject,
        Some("payload"),
    ));
    out.push((
        with(&|m| {
            m["payload"]["blob"] = "x".repeat(1 << 20).into();
        }),
        TooLarge,
        None,
    ));
    let mut bad_utf8 = good.to_string().into_bytes();
    let at = bad_utf8.len() - 10;
    bad_utf8[at] = 0xff;
    out.push((bad_utf8, InvalidUtf8, None));
    out.push((
        b"{\"event_id\":\"trunc\",\"occurred_at\":".to_vec(),
        Malformed,
        None,
    ));
    out.push((b"\x00\x01binary garbage".to_vec(), Malformed, None));
    out
}

fn a_thousand_good_and_a_hundred_bad_events(backend: Backend) {
    let t = Target::new(backend);
    let archive = t.open(t.settings_in("state", RULES));
    let good = mixed_events(1000, "good");
    let kinds = invalid_events();
    // 100 invalid lines, cycling through every kind, interleaved with the good ones.
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut expected: BTreeMap<u64, (RejectKind, Option<&'static str>)> = BTreeMap::new();
    let mut g = good.iter();
    for i in 0..1100 {
        if i % 11 == 5 {
            let (bytes, kind, field) = &kinds[expected.len() % kinds.len()];
            let mut bytes = bytes.clone();
            // Make each invalid line's event_id unique where it has one.
            if let Ok(text) = String::from_utf8(bytes.clone()) {
                bytes = text
                    .replacen(
                        "\"event_id\":\"x\"",
                        &format!("\"event_id\":\"bad-{i}\""),
                        1,
                    )
                    .into_bytes();
            }
            expected.insert(i as u64 + 1, (*kind, *field));
            lines.push(bytes);
        } else {
            lines.push(g.next().unwrap().1.clone().into_bytes());
        }
    }
    assert_eq!(expected.len(), 100);
    let mut text = Vec::new();
    for l in &lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    let mut outcomes = Vec::new();
    let patience = UploadPatience {
        attempts: 1,
        first_backoff: std::time::Duration::from_millis(10),
    };
    let summary = import(
        &archive,
        wormvault::import::Input::bytes(text.clone()),
        t.rt.handle(),
        patience,
        &mut |o| outcomes.push(o),
    )
    .unwrap();
    assert_eq!(
        (
            summary.events,
            summary.accepted,
            summary.rejected,
            summary.duplicates
        ),
        (1100, 1000, 100, 0)
    );
    let rejections: Vec<&Rejection> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Rejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rejections.len(), 100);
    for r in &rejections {
        let (kind, field) = expected
            .get(&r.line)
            .unwrap_or_else(|| panic!("unexpected rejection {r}"));
        assert_eq!(
            (r.kind, r.field.as_deref()),
            (*kind, *field),
            "line {}: {r}",
            r.line
        );
        assert!(r.reason.len() > 10, "a reason in words: {r}");
        if *kind != RejectKind::TooLarge
            && *kind != RejectKind::Malformed
            && *kind != RejectKind::InvalidUtf8
            && field != &Some("event_id")
        {
            assert!(
                r.event_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("bad-")),
                "names its event: {r}"
            );
        }
    }
    let report = verify_independently(&t);
    assert_eq!(report["events"], 1000);

    // Re-importing the same file archives nothing twice.
    let (again, outcomes) = run(&t, &archive, String::from_utf8_lossy(&text).into_owned());
    assert_eq!(
        (again.accepted, again.duplicates, again.rejected),
        (0, 1000, 100)
    );
    assert!(again.uploaded.is_empty());
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Duplicate { .. }))
            .count(),
        1000
    );

    // A changed event under a known event_id is refused as a conflict.
    let changed = event(
        "good-00007",
        "2026-11-19T07:49:31.000259Z",
        "trade.amend",
        "T-CHANGED",
    );
    let (conflict, outcomes) = run(&t, &archive, format!("{changed}\n"));
    assert_eq!((conflict.accepted, conflict.rejected), (0, 1));
    assert!(
        matches!(&outcomes[..], [Outcome::Rejected(r)] if r.kind == RejectKind::Conflict && r.event_id.as_deref() == Some("good-00007"))
    );
    let report = verify_independently(&t);
    assert_eq!(report["events"], 1000);
}
both!(a_thousand_good_and_a_hundred_bad_events);

fn idempotency_survives_restarts_and_holds_within_one_file(backend: Backend) {
    let t = Target::new(backend);
    let e = event("dup-1", "2026-11-20T10:00:00Z", "trade.new", "T-1");
    let e2 = event("dup-1", "2026-11-20T10:00:00Z", "trade.new", "T-2");
    {
        let archive = t.open(t.settings());
        // The same event twice and then changed, in one file.
        let (s, outcomes) = run(&t, &archive, format!("{e}\n{e}\n{e2}\n"));
        assert_eq!((s.accepted, s.duplicates, s.rejected), (1, 1, 1));
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Rejected(r) if r.kind == RejectKind::Conflict))
        );
    }
    // Reordered keys and whitespace are the same content; the index survives a restart.
    let reordered: serde_json::Value = serde_json::from_str(&e).unwrap();
    let pretty = serde_json::to_string(&reordered)
        .unwrap()
        .replace(",\"", ", \"");
    let archive = t.open(t.settings());
    let (s, _) = run(&t, &archive, format!("{pretty}\n"));
    assert_eq!((s.accepted, s.duplicates), (0, 1));
}
both!(idempotency_survives_restarts_and_holds_within_one_file);

/// Opens an archive expecting a refusal; returns its message.
fn refused(t: &Target, settings: wormvault::config::Settings) -> String {
    match t.rt.block_on(Archive::open(settings)) {
        Ok(a) => panic!("opened as writer {}", a.writer),
        Err(e) => e.to_string(),
    }
}

/// A writer id belongs to one state directory: a new state directory configured with a writer
/// id that already has manifests in the store is refused (it would fork that writer's chain),
/// and so is a state directory opened under another writer id; a new writer id in a new
/// state directory is accepted.
fn a_writer_id_belongs_to_one_state_directory(backend: Backend) {
    let t = Target::new(backend);
    {
        let archive = t.open(t.settings_in("state-a", "writer_id = \"w-one\""));
        let (summary, _) = run(&t, &archive, ndjson(&mixed_events(5, "wid")));
        assert_eq!(summary.accepted, 5);
    }
    let err = refused(&t, t.settings_in("state-b", "writer_id = \"w-one\""));
    assert!(err.contains("\"w-one\" already has manifests"), "{err}");
    let err = refused(&t, t.settings_in("state-a", "writer_id = \"w-two\""));
    assert!(err.contains("belongs to writer \"w-one\""), "{err}");
    drop(t.open(t.settings_in("state-c", "writer_id = \"w-two\"")));
}
both!(a_writer_id_belongs_to_one_state_directory);

/// The first start of a configured writer id needs the store (to make sure no other state
/// directory holds that writer's chain): while the store cannot be listed it is refused, and
/// says why; once the store is back it starts.
#[test]
fn a_first_start_of_a_configured_writer_waits_for_the_store() {
    let t = Target::new(Backend::Local);
    let settings = t.settings_in("state", "writer_id = \"w-new\"");
    let store = std::sync::Arc::new(crate::util::Flaky::new(t.store(), true));
    let open = |s: &wormvault::config::Settings| {
        t.rt.block_on(Archive::open_with_store(s.clone(), store.clone()))
    };
    let err = match open(&settings) {
        Ok(a) => panic!("opened as writer {}", a.writer),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("could not be listed"), "{err}");
    assert!(
        err.contains("start again when the store is reachable"),
        "{err}"
    );
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(open(&settings).unwrap().writer.as_str(), "w-new");
}
