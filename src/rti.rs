//! Response-to-Inquiry packages: the records an examiner asked for, in a zipped BagIt bag
//! (RFC 8493) that proves itself (docs/FORMAT.md §14).
//!
//! ```text
//! CASE-ID/bagit.txt, bag-info.txt, manifest-sha256.txt, tagmanifest-sha256.txt
//! CASE-ID/package.note                 the firm's signature over the bag (a signed note)
//! CASE-ID/data/README.txt              what is here and how to check it, in plain language
//! CASE-ID/data/query.json              case, filter, requester, time, counts
//! CASE-ID/data/records.csv             for people
//! CASE-ID/data/records.jsonl           the archived events, byte for byte (canonical JSON)
//! CASE-ID/data/records.parquet         for machines (DuckDB, pandas, Athena)
//! CASE-ID/data/proofs.jsonl            one proof bundle per record (docs/FORMAT.md §12)
//! CASE-ID/data/archive/...             the manifests, anchors and time-stamp tokens involved
//! CASE-ID/data/keys.txt                the public keys that signed them
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;

use crate::layout::Layout;
use crate::merkle;
use crate::note::{SignerKey, VerifierKey};
use crate::proof::{DayProofs, ProofBundle};
use crate::retrieve::{Entry, Filter, Found};
use crate::store::WormStore;
use crate::timestamp::{Day, Timestamp};

/// The columns of `records.csv` and `records.parquet`, in order.
const RECORD_COLUMNS: [&str; 18] = [
    "event_id",
    "occurred_at",
    "ingested_at",
    "actor_type",
    "actor_id",
    "actor_role",
    "action",
    "subject_type",
    "subject_id",
    "origin_ip",
    "origin_device",
    "source",
    "retention_class",
    "correlation_id",
    "payload",
    "archived_day",
    "segment",
    "row",
];

/// Who asked, for what.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub case_id: String,
    pub requester: String,
    pub filter: Filter,
}

/// A case id: 1-64 characters of letters, digits, `-`, `_`, `.` (it names the bag's folder).
pub fn check_case_id(case: &str) -> Result<(), String> {
    if case.is_empty()
        || case.len() > 64
        || !case
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || case.starts_with('.')
    {
        return Err(format!(
            "case id {case:?} must be 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// The member of a canonical event as text (strings as themselves, objects as JSON).
fn member(event: &serde_json::Value, path: &[&str]) -> String {
    let mut v = event;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return String::new(),
        }
    }
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The row of one record, in [`RECORD_COLUMNS`] order.
fn record_row(event: &serde_json::Value, day: &str, segment: &str, row: u64) -> Vec<String> {
    vec![
        member(event, &["event_id"]),
        member(event, &["occurred_at"]),
        member(event, &["ingested_at"]),
        member(event, &["actor", "type"]),
        member(event, &["actor", "id"]),
        member(event, &["actor", "role"]),
        member(event, &["action"]),
        member(event, &["subject", "type"]),
        member(event, &["subject", "id"]),
        member(event, &["origin", "ip"]),
        member(event, &["origin", "device"]),
        member(event, &["source"]),
        member(event, &["retention_class"]),
        member(event, &["correlation_id"]),
        member(event, &["payload"]),
        day.to_owned(),
        segment.to_owned(),
        row.to_string(),
    ]
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn csv(rows: &[Vec<String>]) -> Vec<u8> {
    let mut out = RECORD_COLUMNS.join(",") + "\r\n";
    for r in rows {
        out += &r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
        out += "\r\n";
    }
    out.into_bytes()
}

fn parquet(rows: &[Vec<String>]) -> Result<Vec<u8>, String> {
    let schema = Arc::new(Schema::new(
        RECORD_COLUMNS
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = (0..RECORD_COLUMNS.len())
        .map(|c| {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_value(&r[c]);
            }
            Arc::new(b.finish()) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(1).expect("valid level"),
        ))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(out)
}

const README: &str = "\
RESPONSE TO INQUIRY -- {CASE}

This package holds the records archived by wormvault that match the request described in
query.json ({COUNT} records), and the evidence that they are authentic and complete.

WHAT IS HERE
  records.csv      the records as a table, for reading (one row per record)
  records.parquet  the same table, for analysis tools (DuckDB, pandas, Athena)
  records.jsonl    each record exactly as it was archived, one per line
  proofs.jsonl     for each record (same line), the proof that it is in the archive
  archive/         the manifests and the signed daily anchors the proofs refer to
  keys.txt         the public keys of the firm that signed the anchors and this package
  query.json       the case, who asked, what was asked, when the package was made

HOW TO CHECK IT, WITHOUT ACCESS TO THE FIRM'S SYSTEMS
  1. The package: every file is listed with its SHA-256 in manifest-sha256.txt (BagIt,
     RFC 8493); any BagIt validator checks them. package.note is the firm's Ed25519
     signature over that list and over bag-info.txt: nothing can be added, removed or
     changed without breaking it. Obtain the firm's public key from the firm, not from
     this package, and compare it with keys.txt.
  2. Each record: line N of proofs.jsonl proves line N of records.jsonl. The record's
     SHA-256 leads, through the listed hashes, to the root of its segment, which its
     manifest names; the manifest leads to the root of its day, which the day's anchor
     signs. The procedure is in the wormvault archive format, section 12; the command
     `wormvault rti verify` performs all of it.
  3. Each record matches the request in query.json.

A record whose event time falls before the day it was archived on arrived late; it was
archived on the day it arrived, unchanged.
";

/// A package built in memory: the zip's bytes and what it holds.
pub struct Package {
    pub zip: Vec<u8>,
    pub records: usize,
}

/// Builds the package of `request` from the archive, signed with `signer`. Every matching
/// record must be on an anchored day.
pub async fn export(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    keys: &[VerifierKey],
    signer: &SignerKey,
    request: &Request,
) -> Result<Package, String> {
    check_case_id(&request.case_id)?;
    if request.filter.is_unbounded() {
        return Err("the filter names nothing: a package holds the records of a subject, actor, event, action or source".into());
    }
    let found = crate::retrieve::query(store, layout, &request.filter).await?;
    let mut days: BTreeMap<Day, DayProofs> = BTreeMap::new();
    // Per segment: its manifest's position in the day, and the tree over its rows.
    let mut segments: HashMap<String, (usize, merkle::Tree)> = HashMap::new();
    let read = Arc::new(AtomicU64::new(0));
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut rows = Vec::new();
    let (mut jsonl, mut proofs) = (Vec::new(), Vec::new());
    for Found {
        day,
        segment,
        row,
        canonical,
        ..
    } in &found.records
    {
        if !days.contains_key(day) {
            let p = DayProofs::load(store, layout, keys, *day).await?;
            let a = p.anchor();
            files.insert(format!("data/archive/{}", a.key), a.bytes.to_vec());
            if let Ok(tsr) = store.get(&layout.anchor_timestamp(*day), None).await {
                files.insert(
                    format!("data/archive/{}", layout.anchor_timestamp(*day)),
                    tsr.to_vec(),
                );
            }
            days.insert(*day, p);
        }
        let p = &days[day];
        if !segments.contains_key(segment) {
            let (index, _) = p
                .manifest_of(segment)
                .ok_or_else(|| format!("{segment} has no manifest on {day}"))?;
            let (mkey, mbytes) = &p.manifests.manifests[index];
            files.insert(format!("data/archive/{mkey}"), mbytes.to_vec());
            let leaves = crate::retrieve::read_leaves(store, segment, &read).await?;
            segments.insert(
                segment.clone(),
                (index, merkle::Tree::from_leaf_hashes(&leaves)),
            );
        }
        let (index, tree) = &segments[segment];
        let bundle = p.bundle(*index, tree, *row as usize, canonical)?;
        let event: serde_json::Value =
            serde_json::from_slice(canonical).map_err(|e| e.to_string())?;
        rows.push(record_row(&event, &day.to_string(), segment, *row));
        jsonl.extend_from_slice(canonical);
        jsonl.push(b'\n');
        proofs.extend_from_slice(
            serde_json::to_string(&bundle)
                .expect("serializable")
                .as_bytes(),
        );
        proofs.push(b'\n');
    }
    let created = Timestamp::now();
    let key_lines: BTreeSet<String> = days
        .values()
        .map(|p| p.public_key().to_owned())
        .chain([signer.verifier().to_string()])
        .collect();
    let query = serde_json::json!({
        "format": "wormvault.rti.v1",
        "case_id": request.case_id,
        "requester": request.requester,
        "filter": request.filter,
        "created_at": created,
        "records": found.records.len(),
        "days": days.keys().map(|d| d.to_string()).collect::<Vec<_>>(),
    });
    files.insert(
        "data/query.json".into(),
        (serde_json::to_string_pretty(&query).expect("json") + "\n").into_bytes(),
    );
    files.insert("data/records.csv".into(), csv(&rows));
    files.insert("data/records.parquet".into(), parquet(&rows)?);
    files.insert("data/records.jsonl".into(), jsonl);
    files.insert("data/proofs.jsonl".into(), proofs);
    files.insert(
        "data/keys.txt".into(),
        key_lines
            .into_iter()
            .map(|k| k + "\n")
            .collect::<String>()
            .into_bytes(),
    );
    files.insert(
        "data/README.txt".into(),
        README
            .replace("{CASE}", &request.case_id)
            .replace("{COUNT}", &found.records.len().to_string())
            .into_bytes(),
    );
    let zip = bag(
        &request.case_id,
        &files,
        request,
        created,
        found.records.len(),
        signer,
    )?;
    Ok(Package {
        zip,
        records: found.records.len(),
    })
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(merkle::sha256(b))
}

/// The signed text of `package.note`.
fn package_text(case: &str, manifest: &[u8], bag_info: &[u8]) -> String {
    format!(
        "wormvault-package\n{case}\nmanifest-sha256 {}\nbag-info {}\n",
        sha_hex(manifest),
        sha_hex(bag_info)
    )
}

/// Wraps payload `files` (paths under `data/`) in a BagIt bag and zips it.
fn bag(
    case: &str,
    files: &BTreeMap<String, Vec<u8>>,
    request: &Request,
    created: Timestamp,
    records: usize,
    signer: &SignerKey,
) -> Result<Vec<u8>, String> {
    let manifest: String = files
        .iter()
        .map(|(p, b)| format!("{}  {p}\n", sha_hex(b)))
        .collect();
    let oxum = format!(
        "{}.{}",
        files.values().map(|b| b.len()).sum::<usize>(),
        files.len()
    );
    let bag_info = format!(
        "Bag-Software-Agent: wormvault {}\nBagging-Date: {}\nExternal-Identifier: {case}\nPayload-Oxum: {oxum}\nWormvault-Case: {case}\nWormvault-Requester: {}\nWormvault-Filter: {}\nWormvault-Created: {created}\nWormvault-Records: {records}\n",
        env!("CARGO_PKG_VERSION"),
        created.day(),
        request.requester.replace(['\n', '\r'], " "),
        serde_json::to_string(&request.filter).expect("json"),
    );
    let bagit = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n".to_string();
    let note = signer.sign(&package_text(
        case,
        manifest.as_bytes(),
        bag_info.as_bytes(),
    ));
    let tags: BTreeMap<&str, &[u8]> = BTreeMap::from([
        ("bagit.txt", bagit.as_bytes()),
        ("bag-info.txt", bag_info.as_bytes()),
        ("manifest-sha256.txt", manifest.as_bytes()),
        ("package.note", note.as_bytes()),
    ]);
    let tagmanifest: String = tags
        .iter()
        .map(|(p, b)| format!("{}  {p}\n", sha_hex(b)))
        .collect();
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut out);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default());
        let mut add = |name: &str, body: &[u8]| -> Result<(), String> {
            z.start_file(format!("{case}/{name}"), opts)
                .map_err(|e| e.to_string())?;
            z.write_all(body).map_err(|e| e.to_string())
        };
        for (p, b) in &tags {
            add(p, b)?;
        }
        add("tagmanifest-sha256.txt", tagmanifest.as_bytes())?;
        for (p, b) in files {
            add(p, b)?;
        }
        z.finish().map_err(|e| e.to_string())?;
    }
    Ok(out.into_inner())
}

/// What a package check found.
#[derive(Debug, Default)]
pub struct PackageCheck {
    pub case_id: String,
    pub records: usize,
    pub signed_by: String,
    pub problems: Vec<String>,
}

/// Reads a zip into (path under the bag's folder → bytes); the folder name too.
fn unzip(zip_bytes: &[u8]) -> Result<(String, BTreeMap<String, Vec<u8>>), String> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes))
        .map_err(|e| format!("not a zip file: {e}"))?;
    let mut root: Option<String> = None;
    let mut files = BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).map_err(|e| e.to_string())?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().map_err(|e| e.to_string())?.into_owned();
        let (top, rest) = name
            .split_once('/')
            .ok_or_else(|| format!("{name} is not inside the bag's folder"))?;
        match &root {
            None => root = Some(top.to_owned()),
            Some(r) if r != top => return Err(format!("{name} is outside the bag's folder {r}")),
            _ => {}
        }
        let mut body = Vec::new();
        f.read_to_end(&mut body).map_err(|e| e.to_string())?;
        if files.insert(rest.to_owned(), body).is_some() {
            return Err(format!("{name} appears twice"));
        }
    }
    Ok((root.ok_or("the zip is empty")?, files))
}

/// Parses a BagIt manifest (`hash  path` lines).
fn manifest_entries(text: &[u8], what: &str) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(text).map_err(|_| format!("{what} is not UTF-8"))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (h, p) = line
            .split_once(' ')
            .ok_or_else(|| format!("{what}: bad line {line:?}"))?;
        out.insert(p.trim_start().to_owned(), h.to_owned());
    }
    Ok(out)
}

/// Checks a package with no access to the store. With `pinned` keys, the package and the
/// anchors must be signed by them; otherwise by the keys in `keys.txt` (which are reported).
pub fn verify(zip_bytes: &[u8], pinned: &[VerifierKey]) -> PackageCheck {
    let mut check = PackageCheck::default();
    if let Err(e) = verify_into(zip_bytes, pinned, &mut check) {
        check.problems.push(e);
    }
    check
}

fn verify_into(
    zip_bytes: &[u8],
    pinned: &[VerifierKey],
    c: &mut PackageCheck,
) -> Result<(), String> {
    let (root, files) = unzip(zip_bytes)?;
    let get = |p: &str| files.get(p).ok_or_else(|| format!("{p} is missing"));
    // 1. BagIt: declaration, payload manifest (no file missing, changed or extra), tags.
    if get("bagit.txt")?.as_slice() != b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n" {
        c.problems
            .push("bagit.txt is not a BagIt 1.0 declaration".into());
    }
    let manifest = manifest_entries(get("manifest-sha256.txt")?, "manifest-sha256.txt")?;
    let payload: BTreeSet<&String> = files.keys().filter(|p| p.starts_with("data/")).collect();
    for p in &payload {
        match manifest.get(*p) {
            None => c
                .problems
                .push(format!("{p} is not in the manifest (added)")),
            Some(h) if *h != sha_hex(&files[*p]) => c
                .problems
                .push(format!("{p} does not match its checksum (changed)")),
            Some(_) => {}
        }
    }
    for p in manifest.keys() {
        if !payload.contains(p) {
            c.problems.push(format!(
                "{p} is in the manifest but not in the package (removed)"
            ));
        }
    }
    let tagmanifest = manifest_entries(get("tagmanifest-sha256.txt")?, "tagmanifest-sha256.txt")?;
    for (p, h) in &tagmanifest {
        match files.get(p) {
            Some(b) if sha_hex(b) == *h => {}
            _ => c
                .problems
                .push(format!("tag file {p} is missing or changed")),
        }
    }
    for p in files
        .keys()
        .filter(|p| !p.starts_with("data/") && *p != "tagmanifest-sha256.txt")
    {
        if !tagmanifest.contains_key(p) {
            c.problems
                .push(format!("{p} is not in the tag manifest (added)"));
        }
    }
    let bag_info =
        std::str::from_utf8(get("bag-info.txt")?).map_err(|_| "bag-info.txt is not UTF-8")?;
    let info: BTreeMap<&str, &str> = bag_info
        .lines()
        .filter_map(|l| l.split_once(": "))
        .collect();
    let oxum = format!(
        "{}.{}",
        payload.iter().map(|p| files[*p].len()).sum::<usize>(),
        payload.len()
    );
    if info.get("Payload-Oxum") != Some(&oxum.as_str()) {
        c.problems
            .push("Payload-Oxum does not match the payload".into());
    }
    c.case_id = info.get("Wormvault-Case").unwrap_or(&"").to_string();
    if c.case_id != root {
        c.problems.push(format!(
            "the bag's folder {root} is not its case {}",
            c.case_id
        ));
    }
    // 2. The firm's signature over the manifest and bag-info.
    let keys: Vec<VerifierKey> = if pinned.is_empty() {
        std::str::from_utf8(get("data/keys.txt")?)
            .map_err(|_| "keys.txt is not UTF-8")?
            .lines()
            .map(VerifierKey::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("keys.txt: {e}"))?
    } else {
        pinned.to_vec()
    };
    let note =
        std::str::from_utf8(get("package.note")?).map_err(|_| "package.note is not UTF-8")?;
    match crate::note::open(note, &keys) {
        Ok(v) => {
            c.signed_by = format!("{}+{}", v.signed_by.0, hex::encode(v.signed_by.1));
            if v.text
                != package_text(
                    &c.case_id,
                    get("manifest-sha256.txt")?,
                    get("bag-info.txt")?,
                )
            {
                c.problems
                    .push("package.note does not sign this bag's manifest and bag-info".into());
            }
        }
        Err(e) => c.problems.push(format!("package.note: {e}")),
    }
    // 3. Every record: its proof, and the request's filter.
    let query: serde_json::Value =
        serde_json::from_slice(get("data/query.json")?).map_err(|e| format!("query.json: {e}"))?;
    let filter: Filter = serde_json::from_value(query["filter"].clone())
        .map_err(|e| format!("query.json filter: {e}"))?;
    let records: Vec<&[u8]> = get("data/records.jsonl")?
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let proofs: Vec<&[u8]> = get("data/proofs.jsonl")?
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    c.records = records.len();
    if proofs.len() != records.len() {
        c.problems.push(format!(
            "{} records but {} proofs",
            records.len(),
            proofs.len()
        ));
    }
    if query["records"].as_u64() != Some(records.len() as u64)
        || info.get("Wormvault-Records") != Some(&records.len().to_string().as_str())
    {
        c.problems
            .push("the record count is not the one stated in query.json and bag-info.txt".into());
    }
    let csv_rows = std::str::from_utf8(get("data/records.csv")?)
        .map_err(|_| "records.csv is not UTF-8")?
        .lines()
        .count();
    if csv_rows != records.len() + 1 {
        c.problems.push(format!(
            "records.csv has {} rows for {} records",
            csv_rows.saturating_sub(1),
            records.len()
        ));
    }
    for (i, (rec, proof)) in records.iter().zip(&proofs).enumerate() {
        let bundle: ProofBundle = match serde_json::from_slice(proof) {
            Ok(b) => b,
            Err(e) => {
                c.problems.push(format!("proof {}: {e}", i + 1));
                continue;
            }
        };
        if bundle.event.as_bytes() != *rec {
            c.problems
                .push(format!("record {}: its proof is for other bytes", i + 1));
            continue;
        }
        let bundle_keys: Vec<VerifierKey> = if pinned.is_empty() {
            keys.clone()
        } else {
            pinned.to_vec()
        };
        if let Err(e) = crate::proof::verify(&bundle, &bundle_keys) {
            c.problems
                .push(format!("record {} ({}): {e}", i + 1, bundle.event_id));
            continue;
        }
        let event: serde_json::Value = serde_json::from_slice(rec).map_err(|e| e.to_string())?;
        let entry = Entry {
            subject_type: member(&event, &["subject", "type"]),
            subject_id: member(&event, &["subject", "id"]),
            actor_id: member(&event, &["actor", "id"]),
            event_id: member(&event, &["event_id"]),
            action: member(&event, &["action"]),
            source: member(&event, &["source"]),
            occurred_at: Timestamp::parse_rfc3339(&member(&event, &["occurred_at"]))
                .map_err(|e| format!("record {}: {e}", i + 1))?,
            segment: bundle.segment_key.clone(),
            row: bundle.leaf_index,
        };
        if !filter.matches(&entry) {
            c.problems.push(format!(
                "record {} ({}) does not match the request",
                i + 1,
                entry.event_id
            ));
        }
    }
    Ok(())
}

/// Reads a package file and checks it (for `wormvault rti verify`).
pub fn verify_file(path: &std::path::Path, pinned: &[VerifierKey]) -> Result<PackageCheck, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(verify(&Bytes::from(bytes), pinned))
}
