//! Sweeps: proving that the archive is exactly what the pipeline wrote, and naming precisely
//! what is wrong when it is not.
//!
//! A sweep walks the archive one UTC day (`dt=`) at a time, so memory does not grow with the
//! archive. For each day it lists every version under `manifests/dt=D/` and `segments/dt=D/`
//! (one listing each, which also reveals extra versions, delete markers and objects nobody
//! wrote), reads each manifest, and checks the segment it names:
//!
//! - **quick**: each object is present; its archived version is locked in COMPLIANCE until at
//!   least what its manifest requires (and what the retention rule requires); legal holds are
//!   recorded; the key has exactly that one version; the current bytes have the manifest's size
//!   and SHA-256 (the store's own checksum when it keeps one, otherwise read and hashed);
//! - **full**: additionally every segment is decoded, every leaf recomputed from the stored
//!   canonical bytes, every row's typed columns re-serialized and compared with them, and the
//!   Merkle root and the footer compared with the manifest.
//!
//! Both check every writer's chain (a link, a gap or a fork) and every lane's numbering. The
//! chain is checked by a streaming join — each manifest contributes "batch n has hash h" and
//! "batch n−1 should have hash p" — so only links not yet matched are held in memory.
//!
//! Findings are data, not errors: an `Err` means the sweep itself could not run (the store
//! was unreachable, say).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::layout::{KeyKind, Layout};
use crate::manifest::Manifest;
use crate::merkle::{self, Hash};
use crate::retention::RetentionPolicy;
use crate::store::{LockMode, ObjectInfo, PutRequest, StoreError, VersionEntry, WormStore};
use crate::timestamp::{Day, Timestamp};

/// How deep a sweep goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Quick,
    Full,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Quick => "quick",
            Level::Full => "full",
        }
    }
}

/// What kind of problem a finding is. The codes are stable.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FindingClass {
    /// A manifest names an object (or a version of it) that is not in the store.
    ObjectMissing,
    /// The current version of an archived key is a delete marker: the record is hidden.
    DeleteMarker,
    /// An archived key has more than one version.
    ExtraVersion,
    /// The current version of a segment is not the one its manifest names.
    VersionMismatch,
    /// An archived object has no COMPLIANCE lock (none, or GOVERNANCE).
    NotLocked,
    /// An archived object is locked for less time than required.
    RetentionTooShort,
    SizeMismatch,
    /// The bytes' SHA-256 is not the manifest's.
    ChecksumMismatch,
    /// A segment cannot be decoded as a segment.
    SegmentUnreadable,
    /// A row's `leaf_hash` is not SHA-256(0x00 ‖ its canonical bytes).
    LeafMismatch,
    /// A row's typed columns do not match its canonical bytes.
    ColumnMismatch,
    /// A row's `seq` is not its position.
    SequenceMismatch,
    /// The Merkle root recomputed from the rows is not the manifest's.
    RootMismatch,
    /// The segment's footer does not say what its manifest says.
    FooterMismatch,
    /// A manifest that cannot be read, is not canonical, or does not match its key.
    ManifestInvalid,
    /// A manifest's `prev_manifest_sha256` is not the hash of the writer's previous manifest.
    ChainBroken,
    /// A writer's chain is missing a batch.
    ChainGap,
    /// Two manifests claim the same place in a writer's chain.
    ChainFork,
    /// A lane's sequence numbers have a hole or an overlap.
    LaneGap,
    /// An object under the archive prefix that no manifest names, or not a key the pipeline
    /// writes.
    UnknownObject,
    /// A day since the first anchor has no anchor (or a day with manifests before it).
    AnchorMissing,
    /// An anchor is not a valid signed note of a daily root, or a signature does not verify.
    AnchorInvalid,
    /// An anchor is signed by no accepted key.
    AnchorUnknownKey,
    /// An anchor's tree size or root is not that of its day's manifests.
    AnchorRootMismatch,
    /// An anchor does not link to the previous day's anchor.
    AnchorChainBroken,
    /// The mirror's copy of an anchor is missing or differs.
    AnchorMirrorMismatch,
    /// An anchor's RFC 3161 token is missing (after the first token) or does not verify.
    AnchorTimestampInvalid,
    /// An anchored day has no record index.
    IndexMissing,
    /// A record index is not what rebuilding it from the day's segments gives (full).
    IndexMismatch,
    /// A legal hold is on (recorded, not a problem).
    LegalHold,
}

impl FindingClass {
    pub const ALL: [FindingClass; 30] = [
        FindingClass::ObjectMissing,
        FindingClass::DeleteMarker,
        FindingClass::ExtraVersion,
        FindingClass::VersionMismatch,
        FindingClass::NotLocked,
        FindingClass::RetentionTooShort,
        FindingClass::SizeMismatch,
        FindingClass::ChecksumMismatch,
        FindingClass::SegmentUnreadable,
        FindingClass::LeafMismatch,
        FindingClass::ColumnMismatch,
        FindingClass::SequenceMismatch,
        FindingClass::RootMismatch,
        FindingClass::FooterMismatch,
        FindingClass::ManifestInvalid,
        FindingClass::ChainBroken,
        FindingClass::ChainGap,
        FindingClass::ChainFork,
        FindingClass::LaneGap,
        FindingClass::UnknownObject,
        FindingClass::AnchorMissing,
        FindingClass::AnchorInvalid,
        FindingClass::AnchorUnknownKey,
        FindingClass::AnchorRootMismatch,
        FindingClass::AnchorChainBroken,
        FindingClass::AnchorMirrorMismatch,
        FindingClass::AnchorTimestampInvalid,
        FindingClass::IndexMissing,
        FindingClass::IndexMismatch,
        FindingClass::LegalHold,
    ];

    pub fn code(self) -> &'static str {
        match self {
            FindingClass::ObjectMissing => "object_missing",
            FindingClass::DeleteMarker => "delete_marker",
            FindingClass::ExtraVersion => "extra_version",
            FindingClass::VersionMismatch => "version_mismatch",
            FindingClass::NotLocked => "not_locked",
            FindingClass::RetentionTooShort => "retention_too_short",
            FindingClass::SizeMismatch => "size_mismatch",
            FindingClass::ChecksumMismatch => "checksum_mismatch",
            FindingClass::SegmentUnreadable => "segment_unreadable",
            FindingClass::LeafMismatch => "leaf_mismatch",
            FindingClass::ColumnMismatch => "column_mismatch",
            FindingClass::SequenceMismatch => "sequence_mismatch",
            FindingClass::RootMismatch => "root_mismatch",
            FindingClass::FooterMismatch => "footer_mismatch",
            FindingClass::ManifestInvalid => "manifest_invalid",
            FindingClass::ChainBroken => "chain_broken",
            FindingClass::ChainGap => "chain_gap",
            FindingClass::ChainFork => "chain_fork",
            FindingClass::LaneGap => "lane_gap",
            FindingClass::UnknownObject => "unknown_object",
            FindingClass::AnchorMissing => "anchor_missing",
            FindingClass::AnchorInvalid => "anchor_invalid",
            FindingClass::AnchorUnknownKey => "anchor_unknown_key",
            FindingClass::AnchorRootMismatch => "anchor_root_mismatch",
            FindingClass::AnchorChainBroken => "anchor_chain_broken",
            FindingClass::AnchorMirrorMismatch => "anchor_mirror_mismatch",
            FindingClass::AnchorTimestampInvalid => "anchor_timestamp_invalid",
            FindingClass::IndexMissing => "index_missing",
            FindingClass::IndexMismatch => "index_mismatch",
            FindingClass::LegalHold => "legal_hold",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            FindingClass::LegalHold => Severity::Info,
            _ => Severity::Error,
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Error,
}

/// One problem, with what was expected and what was found, and a sentence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub class: FindingClass,
    pub severity: Severity,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    pub message: String,
}

impl Finding {
    fn new(class: FindingClass, key: &str, message: impl Into<String>) -> Finding {
        Finding {
            class,
            severity: class.severity(),
            key: key.to_owned(),
            version: None,
            expected: None,
            found: None,
            message: message.into(),
        }
    }

    fn version(mut self, v: Option<&str>) -> Finding {
        self.version = v.map(str::to_owned);
        self
    }

    fn expected_found(mut self, expected: impl ToString, found: impl ToString) -> Finding {
        self.expected = Some(expected.to_string());
        self.found = Some(found.to_string());
        self
    }
}

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub level: Level,
    pub from: Option<Day>,
    pub to: Option<Day>,
    /// Sweep exactly these days (incremental sweeps); otherwise every day in range.
    pub days: Option<BTreeSet<Day>>,
    /// Objects checked at once.
    pub parallelism: usize,
}

/// Counts of a sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub days: u64,
    pub manifests: u64,
    pub segments: u64,
    pub events: u64,
    /// Bytes read and hashed or decoded.
    pub bytes_verified: u64,
    /// Segments not yet named by a manifest but young enough to be uploads in flight.
    #[serde(default)]
    pub in_flight: u64,
}

/// The report of one sweep: stored sealed in the archive, printed by `wormvault verify`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SweepReport {
    pub format: String,
    pub id: String,
    pub level: Level,
    pub store: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub from: Option<Day>,
    pub to: Option<Day>,
    /// True when the chain could be checked end to end (the sweep covered every day).
    pub complete: bool,
    pub counts: Counts,
    /// Per writer: the number of manifests seen and the highest batch index.
    pub writers: BTreeMap<String, (u64, u64)>,
    pub findings: Vec<Finding>,
}

impl SweepReport {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    /// Findings per class.
    pub fn by_class(&self) -> BTreeMap<FindingClass, usize> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry(f.class).or_insert(0) += 1;
        }
        m
    }

    /// A summary for people.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "wormvault sweep {} ({} level) of {}",
            self.id,
            self.level.as_str(),
            self.store
        );
        let _ = writeln!(s, "ran {} to {}", self.started_at, self.finished_at);
        let range = match (self.from, self.to) {
            (None, None) => "every day".to_owned(),
            (f, t) => format!(
                "days {} to {}",
                f.map_or("the first".into(), |d| d.to_string()),
                t.map_or("the last".into(), |d| d.to_string())
            ),
        };
        let c = &self.counts;
        let _ = writeln!(
            s,
            "covered {range}: {} days, {} manifests, {} segments, {} events, {} bytes verified",
            c.days, c.manifests, c.segments, c.events, c.bytes_verified
        );
        if c.in_flight > 0 {
            let _ = writeln!(
                s,
                "{} segments were still being uploaded (stored, their manifests not yet) and are checked next time",
                c.in_flight
            );
        }
        for (w, (n, last)) in &self.writers {
            let _ = writeln!(s, "writer {w}: {n} manifests, up to batch {last}");
        }
        if self.errors() == 0 {
            let _ = writeln!(
                s,
                "RESULT: no integrity findings. The archive is what the pipeline wrote."
            );
        } else {
            let _ = writeln!(s, "RESULT: {} integrity findings:", self.errors());
        }
        for f in &self.findings {
            let _ = write!(
                s,
                "  [{}] {} {}: {}",
                f.severity_text(),
                f.class.code(),
                f.key,
                f.message
            );
            if let (Some(e), Some(fd)) = (&f.expected, &f.found) {
                let _ = write!(s, " (expected {e}, found {fd})");
            }
            let _ = writeln!(s);
        }
        s
    }
}

impl Finding {
    fn severity_text(&self) -> &'static str {
        match self.severity {
            Severity::Info => "info",
            Severity::Error => "ERROR",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("the sweep could not read the store: {0}")]
    Store(#[from] StoreError),
}

/// The chain join: what each (writer, batch) says and is told.
#[derive(Default)]
struct Link {
    /// SHA-256 of this manifest, and its key.
    hash: Option<(Hash, String)>,
    /// What the next manifest says this one's hash is, and the next manifest's key.
    expected: Option<(Option<Hash>, String)>,
}

#[derive(Default)]
struct Chain {
    links: HashMap<(String, u64), Link>,
    max: HashMap<String, u64>,
    seen: BTreeMap<String, (u64, u64)>,
    findings: Vec<Finding>,
}

impl Chain {
    fn feed(&mut self, writer: &str, idx: u64, hash: Hash, prev: Option<Hash>, key: &str) {
        let w = self.seen.entry(writer.to_owned()).or_insert((0, 0));
        w.0 += 1;
        w.1 = w.1.max(idx);
        let m = self.max.entry(writer.to_owned()).or_insert(0);
        *m = (*m).max(idx);
        let link = self.links.entry((writer.to_owned(), idx)).or_default();
        if let Some((_, other)) = &link.hash {
            self.findings.push(Finding::new(
                FindingClass::ChainFork,
                key,
                format!("writer {writer} has two manifests for batch {idx}: {other} and {key}"),
            ));
        } else {
            link.hash = Some((hash, key.to_owned()));
        }
        self.settle(writer, idx);
        if idx == 0 {
            if prev.is_some() {
                self.findings.push(Finding::new(
                    FindingClass::ChainBroken,
                    key,
                    format!("writer {writer}'s first manifest links to a previous one"),
                ));
            }
        } else {
            let link = self.links.entry((writer.to_owned(), idx - 1)).or_default();
            link.expected = Some((prev, key.to_owned()));
            self.settle(writer, idx - 1);
        }
    }

    fn settle(&mut self, writer: &str, idx: u64) {
        let k = (writer.to_owned(), idx);
        let Some(link) = self.links.get(&k) else {
            return;
        };
        if let (Some((hash, key)), Some((prev, next_key))) = (&link.hash, &link.expected) {
            if *prev != Some(*hash) {
                self.findings.push(
                    Finding::new(
                        FindingClass::ChainBroken,
                        key,
                        format!("the next manifest ({next_key}) links to different bytes: this manifest was changed, or the chain was forged"),
                    )
                    .expected_found(hex::encode(hash), prev.map_or("null".into(), hex::encode)),
                );
            }
            self.links.remove(&k);
        }
    }

    /// After every day: links left unmatched are gaps (when the sweep saw every day).
    fn finish(mut self, complete: bool) -> (Vec<Finding>, BTreeMap<String, (u64, u64)>) {
        if complete {
            let mut left: Vec<((String, u64), Link)> = self.links.drain().collect();
            left.sort_by(|a, b| a.0.cmp(&b.0));
            for ((writer, idx), link) in left {
                match (link.hash, link.expected) {
                    (None, Some((_, next_key))) => self.findings.push(Finding::new(
                        FindingClass::ChainGap,
                        &next_key,
                        format!("writer {writer}'s batch {idx} is missing: its manifest is not in the archive, yet the next one links to it"),
                    )),
                    (Some((_, key)), None) if self.max.get(&writer).is_some_and(|m| *m > idx) => self.findings.push(Finding::new(
                        FindingClass::ChainGap,
                        &key,
                        format!("writer {writer}'s batch {} is missing: nothing links to batch {idx}, which is not the writer's last", idx + 1),
                    )),
                    _ => {}
                }
            }
        }
        (self.findings, self.seen)
    }
}

/// One batch of a lane as its manifest states it: (batch_idx, first_seq, last_seq,
/// n_events, manifest key).
type LaneBatch = (u64, u64, u64, u64, String);

/// The archived versions of one key, from a listing.
fn group(versions: Vec<VersionEntry>) -> BTreeMap<String, Vec<VersionEntry>> {
    let mut m: BTreeMap<String, Vec<VersionEntry>> = BTreeMap::new();
    for v in versions {
        m.entry(v.key.clone()).or_default().push(v);
    }
    m
}

/// Findings about a key's versions (and which version to read: the newest that is not a
/// delete marker, or the named one when given).
fn version_findings(
    key: &str,
    versions: &[VersionEntry],
    named: Option<&str>,
    out: &mut Vec<Finding>,
) {
    let latest = versions.iter().find(|v| v.is_latest);
    if latest.is_some_and(|v| v.is_delete_marker) {
        out.push(
            Finding::new(FindingClass::DeleteMarker, key, "the current version is a delete marker: the archived object is hidden from readers")
                .version(latest.map(|v| v.version_id.as_str())),
        );
    }
    if versions.len() > 1 {
        let ids: Vec<String> = versions.iter().map(VersionEntry::label).collect();
        out.push(
            Finding::new(
                FindingClass::ExtraVersion,
                key,
                format!(
                    "the key has {} versions: {}",
                    versions.len(),
                    ids.join(", ")
                ),
            )
            .expected_found(1, versions.len()),
        );
    }
    if let (Some(named), Some(latest)) = (named, latest)
        && !latest.is_delete_marker
        && latest.version_id != named
    {
        out.push(
            Finding::new(FindingClass::VersionMismatch, key, "a newer version shadows the archived one: readers see bytes the manifest does not describe")
                .version(Some(&latest.version_id))
                .expected_found(named, &latest.version_id),
        );
    }
}

/// Lock findings for an archived object version.
fn lock_findings(key: &str, head: &ObjectInfo, required: Timestamp, out: &mut Vec<Finding>) {
    let v = head.version_id.as_deref();
    match head.lock_mode {
        Some(LockMode::Compliance) => {}
        Some(LockMode::Governance) => out.push(
            Finding::new(FindingClass::NotLocked, key, "locked in GOVERNANCE mode, which privileged users can bypass; COMPLIANCE is required")
                .version(v)
                .expected_found("COMPLIANCE", "GOVERNANCE"),
        ),
        None => out.push(Finding::new(FindingClass::NotLocked, key, "not locked at all").version(v).expected_found("COMPLIANCE", "none")),
    }
    match head.retain_until {
        Some(t) if t >= required => {}
        Some(t) => out.push(
            Finding::new(
                FindingClass::RetentionTooShort,
                key,
                "locked for less time than its records must be kept",
            )
            .version(v)
            .expected_found(required, t),
        ),
        None => {}
    }
    if head.legal_hold {
        out.push(Finding::new(FindingClass::LegalHold, key, "a legal hold is on").version(v));
    }
}

/// What checking one segment found: findings, bytes read and verified, events verified.
type SegmentOutcome = Result<(Vec<Finding>, u64, u64), StoreError>;

/// Checks one manifest's segment.
async fn check_segment(
    store: Arc<dyn WormStore>,
    m: Manifest,
    versions: Option<Vec<VersionEntry>>,
    level: Level,
) -> SegmentOutcome {
    let key = m.segment.key.clone();
    let mut out = Vec::new();
    let Some(versions) = versions else {
        out.push(
            Finding::new(
                FindingClass::ObjectMissing,
                &key,
                format!(
                    "the segment named by batch {} of writer {} is not in the store",
                    m.info.batch_idx, m.info.writer
                ),
            )
            .version(Some(&m.segment.version_id)),
        );
        return Ok((out, 0, 0));
    };
    version_findings(&key, &versions, Some(&m.segment.version_id), &mut out);
    if !versions
        .iter()
        .any(|v| v.version_id == m.segment.version_id && !v.is_delete_marker)
    {
        out.push(
            Finding::new(
                FindingClass::ObjectMissing,
                &key,
                "the version the manifest names is not in the store",
            )
            .version(Some(&m.segment.version_id)),
        );
    } else {
        let named = store.head(&key, Some(&m.segment.version_id)).await?;
        lock_findings(&key, &named, m.info.retain_until, &mut out);
    }
    // The current bytes are what readers (DuckDB, Athena) see.
    let current = match store.head(&key, None).await {
        Ok(h) => h,
        Err(StoreError::NotFound { .. }) => return Ok((out, 0, 0)),
        Err(e) => return Err(e),
    };
    let v = current.version_id.clone();
    let m_sha256 = m.segment.sha256;
    if current.size != m.segment.size {
        out.push(
            Finding::new(
                FindingClass::SizeMismatch,
                &key,
                "the segment's size is not the manifest's",
            )
            .version(v.as_deref())
            .expected_found(m.segment.size, current.size),
        );
    }
    // Full: hash and decode in one blocking task (both are CPU work on the same bytes).
    let (sha, verified, decoded) = match (level, current.sha256) {
        (Level::Quick, Some(stored)) => (stored, 0, None),
        (Level::Quick, None) => {
            let (sha, len) = store.digest(&key, v.as_deref()).await?;
            (sha, len, None)
        }
        (Level::Full, _) => {
            let bytes = store.get(&key, v.as_deref()).await?;
            let len = bytes.len() as u64;
            let (sha, decoded) = tokio::task::spawn_blocking(move || {
                let sha = merkle::sha256(&bytes);
                (sha, full_check(&m, bytes))
            })
            .await
            .expect("segment check task");
            (sha, len, Some(decoded))
        }
    };
    if sha != m_sha256 {
        out.push(
            Finding::new(
                FindingClass::ChecksumMismatch,
                &key,
                "the segment's SHA-256 is not the manifest's: its bytes changed",
            )
            .version(v.as_deref())
            .expected_found(hex::encode(m_sha256), hex::encode(sha)),
        );
    }
    let mut events = 0;
    if let Some((found, n)) = decoded {
        events = n;
        out.extend(found.into_iter().map(|f| f.version(v.as_deref())));
    }
    Ok((out, verified, events))
}

/// Decodes a segment and checks every row, the root and the footer against the manifest.
fn full_check(m: &Manifest, bytes: Bytes) -> (Vec<Finding>, u64) {
    let key = &m.segment.key;
    let mut out = Vec::new();
    let (footer, check) = match crate::segment::check_segment(bytes) {
        Ok(x) => x,
        Err(e) => {
            out.push(Finding::new(
                FindingClass::SegmentUnreadable,
                key,
                format!("the segment cannot be read as a segment: {e}"),
            ));
            return (out, 0);
        }
    };
    if check.leaf_mismatch_count > 0 {
        out.push(Finding::new(
            FindingClass::LeafMismatch,
            key,
            format!(
                "{} rows have a leaf_hash that is not SHA-256(0x00 || canonical), e.g. rows {:?}",
                check.leaf_mismatch_count, check.leaf_mismatches
            ),
        ));
    }
    if check.column_mismatch_count > 0 {
        out.push(Finding::new(
            FindingClass::ColumnMismatch,
            key,
            format!("{} rows have typed columns that disagree with their canonical bytes, e.g. rows {:?}", check.column_mismatch_count, check.column_mismatches),
        ));
    }
    if check.seq_mismatch_count > 0 {
        out.push(Finding::new(
            FindingClass::SequenceMismatch,
            key,
            format!(
                "{} rows have a seq that is not first_seq + row, e.g. {:?}",
                check.seq_mismatch_count, check.seq_mismatches
            ),
        ));
    }
    if check.root != m.info.merkle_root || check.rows != m.info.n_events {
        out.push(
            Finding::new(
                FindingClass::RootMismatch,
                key,
                format!(
                    "the Merkle root of the {} rows is not the manifest's ({} events)",
                    check.rows, m.info.n_events
                ),
            )
            .expected_found(hex::encode(m.info.merkle_root), hex::encode(check.root)),
        );
    }
    if footer != m.info {
        out.push(
            Finding::new(
                FindingClass::FooterMismatch,
                key,
                "the segment's footer does not say what its manifest says",
            )
            .expected_found(
                serde_json::to_string(&m.info).unwrap_or_default(),
                serde_json::to_string(&footer).unwrap_or_default(),
            ),
        );
    }
    (out, check.rows)
}

/// A segment younger than this without a manifest is taken to be an upload in flight (its
/// manifest follows it within seconds); older, it is reported.
pub const IN_FLIGHT_GRACE_MICROS: i64 = 15 * 60 * 1_000_000;

/// Manifest reads in flight per segment slot: manifests are small, so their reads are
/// latency-bound rather than CPU-bound.
const MANIFEST_READS_PER_SLOT: usize = 8;

/// Reads manifests (bytes and HEAD of the given version), `width` at a time, returning them in
/// the order given; `None` for a version that is listed but cannot be read.
async fn read_manifests(
    store: &Arc<dyn WormStore>,
    reads: Vec<(String, String)>,
    width: usize,
) -> Result<Vec<(String, String, Option<(Bytes, ObjectInfo)>)>, StoreError> {
    let mut out: Vec<_> = reads.into_iter().map(|(k, v)| (k, v, None)).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < out.len() || !set.is_empty() {
        while next < out.len() && set.len() < width.max(1) {
            let (store, key, version) = (store.clone(), out[next].0.clone(), out[next].1.clone());
            let i = next;
            set.spawn(async move {
                let read = async {
                    let bytes = store.get(&key, Some(&version)).await?;
                    let head = store.head(&key, Some(&version)).await?;
                    Ok::<_, StoreError>((bytes, head))
                };
                (i, read.await)
            });
            next += 1;
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let (i, read) = done.expect("manifest read task");
        match read {
            Ok(x) => out[i].2 = Some(x),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Segment checks in flight across days: at most `limit` at once, so memory is bounded by
/// `limit` segments whatever the archive's size, and one day's checks overlap the next day's
/// manifest reads.
pub(crate) struct Pool {
    limit: usize,
    set: tokio::task::JoinSet<SegmentOutcome>,
}

impl Pool {
    fn new(limit: usize) -> Pool {
        Pool {
            limit: limit.max(1),
            set: tokio::task::JoinSet::new(),
        }
    }

    async fn push(
        &mut self,
        store: Arc<dyn WormStore>,
        m: Manifest,
        versions: Option<Vec<VersionEntry>>,
        level: Level,
        counts: &mut Counts,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        while self.set.len() >= self.limit {
            self.join_one(counts, findings).await?;
        }
        self.set
            .spawn(async move { check_segment(store, m, versions, level).await });
        Ok(())
    }

    async fn join_one(
        &mut self,
        counts: &mut Counts,
        findings: &mut Vec<Finding>,
    ) -> Result<bool, StoreError> {
        let Some(done) = self.set.join_next().await else {
            return Ok(false);
        };
        let (found, bytes, events) = done.expect("segment task")?;
        counts.bytes_verified += bytes;
        counts.events += events;
        findings.extend(found);
        Ok(true)
    }

    async fn drain(
        &mut self,
        counts: &mut Counts,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        while self.join_one(counts, findings).await? {}
        Ok(())
    }
}

/// Runs sweeps over one archive.
pub struct Sweeper {
    pub store: Arc<dyn WormStore>,
    pub layout: Layout,
    pub retention: Arc<RetentionPolicy>,
    /// Checks of the daily anchors, when anchoring is configured.
    pub anchors: Option<AnchorCheck>,
}

/// What checking one day's anchor saw, for the next steps of the walk.
#[derive(Default)]
struct AnchorSeen {
    /// SHA-256 of the stored anchor; `None` when there is none.
    sha256: Option<Hash>,
    /// The day's manifests, when they were read to check the root.
    manifests: Option<crate::anchor::DayManifests>,
}

impl AnchorSeen {
    fn present(bytes: &[u8]) -> AnchorSeen {
        AnchorSeen {
            sha256: Some(merkle::sha256(bytes)),
            manifests: None,
        }
    }
}

/// What a sweep needs to check anchors: the accepted keys, and the mirror if there is one.
#[derive(Clone)]
pub struct AnchorCheck {
    pub keys: Vec<crate::note::VerifierKey>,
    pub mirror: Option<crate::anchor::Mirror>,
    /// The TSA certificate (DER) that time-stamp tokens are checked against.
    pub tsa_certificate: Option<Vec<u8>>,
}

impl Sweeper {
    /// The sweeper the settings describe, on `store`.
    pub async fn from_settings(
        settings: &crate::config::Settings,
        store: Arc<dyn WormStore>,
    ) -> Result<Sweeper, String> {
        let anchors = match &settings.anchor {
            None => None,
            Some(a) => Some(AnchorCheck {
                keys: a.accepted_keys(),
                tsa_certificate: a.tsa.as_ref().map(|(_, cert)| cert.clone()),
                mirror: match &a.mirror {
                    None => None,
                    Some((s, layout)) => Some(crate::anchor::Mirror {
                        store: crate::archive::open_store_at(s)
                            .await
                            .map_err(|e| format!("anchor.mirror: {e}"))?,
                        layout: layout.clone(),
                    }),
                },
            }),
        };
        Ok(Sweeper {
            store,
            layout: settings.layout.clone(),
            retention: settings.retention.clone(),
            anchors,
        })
    }

    /// Checks the anchor chain over the days the sweep covers: one anchor per day from the
    /// first (through the day before yesterday, when the daemon's has surely run), each a
    /// valid note signed by an accepted key, over exactly its day's manifests, linked to the
    /// day before, and identical on the mirror.
    async fn check_anchors(
        &self,
        opts: &SweepOptions,
        swept: &BTreeSet<Day>,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        let Some(check) = &self.anchors else {
            return Ok(());
        };
        let anchored = crate::anchor::anchored_days(&self.store, &self.layout).await?;
        let Some(&first) = anchored.first() else {
            return Ok(());
        };
        for d in swept.iter().filter(|d| **d < first) {
            findings.push(Finding::new(
                FindingClass::AnchorMissing,
                &self.layout.anchor(*d),
                format!("{d} has manifests but comes before the first anchor ({first}): no anchor covers it"),
            ));
        }
        let due = Timestamp::now().day().prev().prev();
        let last = anchored.last().copied().unwrap_or(first).max(due);
        let wanted = |d: Day| match &opts.days {
            Some(days) => days.contains(&d),
            None => opts.from.is_none_or(|f| d >= f) && opts.to.is_none_or(|t| d <= t),
        };
        let mut d = first;
        let mut stamped = false;
        // The previous day's anchor hash, when the walk just checked that day.
        let mut prev_known = None;
        while d <= last {
            if wanted(d) {
                let seen = self
                    .check_anchor(d, first, check, &mut stamped, prev_known, findings)
                    .await?;
                if seen.sha256.is_some() {
                    self.check_index(d, opts.level, seen.manifests.as_ref(), findings)
                        .await?;
                }
                prev_known = Some(seen.sha256);
            } else {
                prev_known = None;
            }
            d = d.next();
        }
        Ok(())
    }

    /// Lock and version findings for an object kept as long as any record of `day` (anchors,
    /// tokens, record indexes): the longest class from the day's end.
    async fn day_object_sealed(
        &self,
        key: &str,
        head: &ObjectInfo,
        day: Day,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        let required = self
            .retention
            .longest_from(day.next().start())
            .ceil_to_second();
        lock_findings(key, head, required, findings);
        let versions = self.store.versions_of(key).await?;
        version_findings(key, &versions, head.version_id.as_deref(), findings);
        Ok(())
    }

    /// The record index of an anchored day (`manifests`: the day's, if already read):
    /// present and sealed; at the full level, exactly
    /// what rebuilding it from the day's segments gives.
    async fn check_index(
        &self,
        day: Day,
        level: Level,
        manifests: Option<&crate::anchor::DayManifests>,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        let key = self.layout.record_index(day);
        let head = match self.store.head(&key, None).await {
            Ok(h) => h,
            Err(StoreError::NotFound { .. }) => {
                findings.push(Finding::new(
                    FindingClass::IndexMissing,
                    &key,
                    format!("{day} is anchored but has no record index (`wormvault index rebuild --day {day}` makes it)"),
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.day_object_sealed(&key, &head, day, findings).await?;
        if level == Level::Full {
            let rebuilt = match manifests {
                Some(m) => crate::retrieve::build_index_of(&self.store, m).await,
                None => crate::retrieve::build_index(&self.store, &self.layout, day).await,
            };
            // Unreadable segments (an `Err` here) are reported by the segment checks.
            if let Ok(built) = rebuilt {
                // Compared by hash, the stored index streamed: holding it whole while the
                // day's index is rebuilt added its size to the sweep's peak memory.
                let expected = merkle::sha256(&built.bytes);
                drop(built);
                let (found, _) = self.store.digest(&key, None).await?;
                if found != expected {
                    findings.push(
                        Finding::new(
                            FindingClass::IndexMismatch,
                            &key,
                            "the stored record index differs from the one rebuilt from the day's segments",
                        )
                        .expected_found(hex::encode(expected), hex::encode(found)),
                    );
                }
            }
        }
        Ok(())
    }

    async fn check_anchor(
        &self,
        day: Day,
        first: Day,
        check: &AnchorCheck,
        stamped: &mut bool,
        prev_known: Option<Option<Hash>>,
        findings: &mut Vec<Finding>,
    ) -> Result<AnchorSeen, StoreError> {
        let key = self.layout.anchor(day);
        let bytes = match self.store.get(&key, None).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                findings.push(Finding::new(
                    FindingClass::AnchorMissing,
                    &key,
                    format!("{day} has no anchor, though every day since {first} must"),
                ));
                return Ok(AnchorSeen::default());
            }
            Err(e) => return Err(e),
        };
        // Sealed like every archived object.
        let head = self.store.head(&key, None).await?;
        self.day_object_sealed(&key, &head, day, findings).await?;
        let anchor = match crate::anchor::open_anchor(&key, bytes.clone(), &check.keys) {
            Ok(a) if a.body.day == day => a,
            Ok(a) => {
                findings.push(
                    Finding::new(
                        FindingClass::AnchorInvalid,
                        &key,
                        "the anchor names another day",
                    )
                    .expected_found(day, a.body.day),
                );
                return Ok(AnchorSeen::present(&bytes));
            }
            Err(crate::anchor::AnchorProblem::Note(crate::note::NoteError::UnknownKey(by))) => {
                findings.push(Finding::new(
                    FindingClass::AnchorUnknownKey,
                    &key,
                    format!("signed by {by}, which is not among the accepted keys (anchor.verification_keys)"),
                ));
                return Ok(AnchorSeen::present(&bytes));
            }
            Err(e) => {
                findings.push(Finding::new(
                    FindingClass::AnchorInvalid,
                    &key,
                    format!("not a valid anchor: {e}"),
                ));
                return Ok(AnchorSeen::present(&bytes));
            }
        };
        let manifests = crate::anchor::DayManifests::read(&self.store, &self.layout, day).await?;
        let (size, root) = (manifests.manifests.len() as u64, manifests.root());
        if anchor.body.size != size || anchor.body.root != root {
            findings.push(
                Finding::new(
                    FindingClass::AnchorRootMismatch,
                    &key,
                    "the anchored daily root is not the root of the day's manifests: a manifest was added, removed or changed after the day was anchored",
                )
                .expected_found(
                    format!("{size} manifests, root {}", hex::encode(root)),
                    format!("{} manifests, root {}", anchor.body.size, hex::encode(anchor.body.root)),
                ),
            );
        }
        let expected_prev = if day == first {
            None
        } else {
            // The previous day's anchor, as the previous step of the walk saw it, or read now.
            let prev = match prev_known {
                Some(p) => p,
                None => match self.store.get(&self.layout.anchor(day.prev()), None).await {
                    Ok(b) => Some(merkle::sha256(&b)),
                    Err(StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                },
            };
            // A missing previous anchor is reported as missing for that day.
            prev.or(anchor.body.prev)
        };
        if anchor.body.prev != expected_prev {
            let show = |h: Option<Hash>| h.map_or("none".to_owned(), hex::encode);
            findings.push(
                Finding::new(
                    FindingClass::AnchorChainBroken,
                    &key,
                    "the anchor does not link to the previous day's anchor",
                )
                .expected_found(show(expected_prev), show(anchor.body.prev)),
            );
        }
        if let Some(cert) = &check.tsa_certificate {
            let tkey = self.layout.anchor_timestamp(day);
            match self.store.get(&tkey, None).await {
                Ok(token) => {
                    *stamped = true;
                    if let Err(e) = crate::tsa::verify(&token, &merkle::sha256(&bytes), None, cert)
                    {
                        findings.push(Finding::new(
                            FindingClass::AnchorTimestampInvalid,
                            &tkey,
                            format!("the time-stamp token does not hold for the anchor: {e}"),
                        ));
                    }
                }
                // Days anchored before time-stamping was configured have no token.
                Err(StoreError::NotFound { .. }) if !*stamped => {}
                Err(StoreError::NotFound { .. }) => findings.push(Finding::new(
                    FindingClass::AnchorTimestampInvalid,
                    &tkey,
                    "the anchor has no time-stamp token, though earlier anchors have",
                )),
                Err(e) => return Err(e),
            }
        }
        if let Some(m) = &check.mirror {
            let mkey = m.layout.anchor(day);
            match m.store.get(&mkey, None).await {
                Ok(copy) if copy == bytes => {}
                Ok(copy) => findings.push(
                    Finding::new(
                        FindingClass::AnchorMirrorMismatch,
                        &key,
                        format!("the mirror's {mkey} differs from the archive's anchor"),
                    )
                    .expected_found(
                        hex::encode(merkle::sha256(&bytes)),
                        hex::encode(merkle::sha256(&copy)),
                    ),
                ),
                Err(StoreError::NotFound { .. }) => findings.push(Finding::new(
                    FindingClass::AnchorMirrorMismatch,
                    &key,
                    format!("the mirror has no {mkey}"),
                )),
                Err(e) => return Err(e),
            }
        }
        Ok(AnchorSeen {
            sha256: Some(merkle::sha256(&bytes)),
            manifests: Some(manifests),
        })
    }

    /// Every day that has manifests or segments, in order.
    pub async fn days(&self) -> Result<(BTreeSet<Day>, Vec<Finding>), StoreError> {
        let mut days = BTreeSet::new();
        let mut odd = Vec::new();
        for prefix in [
            self.layout.manifests_prefix(),
            self.layout.segments_prefix(),
        ] {
            for dir in self.store.list_dirs(&prefix).await? {
                match Layout::day_of_dir(&dir) {
                    Some(d) => {
                        days.insert(d);
                    }
                    None => odd.push(Finding::new(
                        FindingClass::UnknownObject,
                        &dir,
                        "a directory the pipeline does not write",
                    )),
                }
            }
        }
        Ok((days, odd))
    }

    pub async fn run(&self, opts: &SweepOptions) -> Result<SweepReport, SweepError> {
        let started_at = Timestamp::now();
        let (all_days, mut findings) = self.days().await?;
        let days: BTreeSet<Day> = match &opts.days {
            Some(d) => d.clone(),
            None => all_days
                .iter()
                .copied()
                .filter(|d| opts.from.is_none_or(|f| *d >= f) && opts.to.is_none_or(|t| *d <= t))
                .collect(),
        };
        let complete = opts.days.is_none() && opts.from.is_none() && opts.to.is_none();
        let mut counts = Counts::default();
        let mut chain = Chain::default();
        let mut pool = Pool::new(opts.parallelism);
        // The anchor walk (with a full sweep's index rebuilds) runs alongside the segment
        // checks: each alone leaves one of the cores idle at times.
        let mut anchor_findings = Vec::new();
        let segments = async {
            for day in &days {
                counts.days += 1;
                self.sweep_day(
                    *day,
                    opts,
                    &mut counts,
                    &mut chain,
                    &mut pool,
                    &mut findings,
                )
                .await?;
            }
            pool.drain(&mut counts, &mut findings).await
        };
        let anchors = self.check_anchors(opts, &days, &mut anchor_findings);
        let (segments, anchors) = tokio::join!(segments, anchors);
        segments?;
        anchors?;
        findings.extend(anchor_findings);
        let (chain_findings, writers) = chain.finish(complete);
        findings.extend(chain_findings);
        findings.sort_by(|a, b| (a.key.as_str(), a.class).cmp(&(b.key.as_str(), b.class)));
        let id = format!(
            "{}-{}-{:06x}",
            started_at
                .to_string()
                .replace([':', '-', '.'], "")
                .trim_end_matches('Z'),
            opts.level.as_str(),
            std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                started_at.as_micros()
            ) & 0xff_ffff
        );
        Ok(SweepReport {
            format: "wormvault.sweep.v1".into(),
            id,
            level: opts.level,
            store: self.store.describe(),
            started_at,
            finished_at: Timestamp::now(),
            from: opts.from,
            to: opts.to,
            complete,
            counts,
            writers,
            findings,
        })
    }

    async fn sweep_day(
        &self,
        day: Day,
        opts: &SweepOptions,
        counts: &mut Counts,
        chain: &mut Chain,
        pool: &mut Pool,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        let (mprefix, sprefix) = (
            self.layout.manifests_of_day(day),
            self.layout.segments_of_day(day),
        );
        let (mgroup, sgroup) =
            tokio::join!(self.store.versions(&mprefix), self.store.versions(&sprefix));
        let (mgroup, mut sgroup) = (group(mgroup?), group(sgroup?));
        // Manifests are small and many: read them many at a time, then check them in key order.
        let mut reads = Vec::with_capacity(mgroup.len());
        for (key, versions) in &mgroup {
            match self.layout.parse(key) {
                Some(KeyKind::Manifest { day: d, .. }) if d == day => {}
                _ => {
                    findings.push(Finding::new(
                        FindingClass::UnknownObject,
                        key,
                        "an object under manifests/ that is not a manifest key the pipeline writes",
                    ));
                    continue;
                }
            }
            version_findings(key, versions, None, findings);
            // Read the newest version that is not a delete marker.
            if let Some(readable) = versions
                .iter()
                .filter(|v| !v.is_delete_marker)
                .find(|v| v.is_latest)
                .or_else(|| versions.iter().find(|v| !v.is_delete_marker))
            {
                reads.push((key.clone(), readable.version_id.clone()));
            }
        }
        let fetched =
            read_manifests(&self.store, reads, pool.limit * MANIFEST_READS_PER_SLOT).await?;
        let mut lanes: BTreeMap<(String, String), Vec<LaneBatch>> = BTreeMap::new();
        let mut named: BTreeSet<String> = BTreeSet::new();
        for (key, version_id, read) in fetched {
            let key = &key;
            let Some((bytes, head)) = read else {
                findings.push(
                    Finding::new(
                        FindingClass::ObjectMissing,
                        key,
                        "a listed manifest version cannot be read",
                    )
                    .version(Some(&version_id)),
                );
                continue;
            };
            counts.manifests += 1;
            let m = match Manifest::from_bytes(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    findings.push(
                        Finding::new(FindingClass::ManifestInvalid, key, e)
                            .version(Some(&version_id)),
                    );
                    continue;
                }
            };
            if m.to_bytes() != bytes.as_ref() {
                findings.push(
                    Finding::new(
                        FindingClass::ManifestInvalid,
                        key,
                        "the manifest's bytes are not its canonical (RFC 8785) form",
                    )
                    .version(Some(&version_id)),
                );
            }
            let info = &m.info;
            if self.layout.manifest(info.day, &info.writer, info.batch_idx) != *key
                || info.day != day
            {
                findings.push(Finding::new(FindingClass::ManifestInvalid, key, format!("the manifest describes writer {} batch {} of {}, which is not what its key says", info.writer, info.batch_idx, info.day)));
                continue;
            }
            let prev = match m.prev_manifest_sha256.as_deref().map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).map(|()| out)
            }) {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(_)) => {
                    findings.push(Finding::new(
                        FindingClass::ManifestInvalid,
                        key,
                        "prev_manifest_sha256 is not hex",
                    ));
                    None
                }
            };
            chain.feed(
                info.writer.as_str(),
                info.batch_idx,
                merkle::sha256(&bytes),
                prev,
                key,
            );
            lanes
                .entry((info.writer.to_string(), info.retention_class.clone()))
                .or_default()
                .push((
                    info.batch_idx,
                    info.first_seq,
                    info.last_seq,
                    info.n_events,
                    key.clone(),
                ));
            // The manifest object's own lock.
            lock_findings(key, &head, m.retain_until, findings);
            if m.retain_until < info.retain_until {
                findings.push(
                    Finding::new(
                        FindingClass::RetentionTooShort,
                        key,
                        "the manifest is to be kept for less time than its segment",
                    )
                    .expected_found(info.retain_until, m.retain_until),
                );
            }
            // The retention rule, independently of what the manifest claims.
            if let Some(class) = self.retention.class(&info.retention_class) {
                let rule = class.period.add_to(info.day.next().start());
                if info.retain_until < rule {
                    findings.push(
                        Finding::new(
                            FindingClass::RetentionTooShort,
                            &m.segment.key,
                            format!(
                                "class {} requires keeping day {} until at least {rule}",
                                info.retention_class, info.day
                            ),
                        )
                        .expected_found(rule, info.retain_until),
                    );
                }
            }
            if m.segment.key != self.layout.segment(info.day, &info.writer, info.batch_idx) {
                findings.push(Finding::new(
                    FindingClass::ManifestInvalid,
                    key,
                    format!(
                        "the manifest names segment {} where the layout puts it elsewhere",
                        m.segment.key
                    ),
                ));
            }
            named.insert(m.segment.key.clone());
            counts.segments += 1;
            if opts.level == Level::Quick {
                counts.events += info.n_events;
            }
            let versions = sgroup.remove(&m.segment.key);
            pool.push(
                self.store.clone(),
                m,
                versions,
                opts.level,
                counts,
                findings,
            )
            .await?;
        }
        for (key, versions) in &sgroup {
            let what = match self.layout.parse(key) {
                Some(KeyKind::Segment { .. }) => {
                    // A segment is stored before its manifest: a young one may be in flight.
                    let now = Timestamp::now();
                    let young = versions.iter().all(|v| {
                        v.last_modified
                            .is_some_and(|t| t.plus_micros(IN_FLIGHT_GRACE_MICROS) > now)
                    });
                    if young {
                        counts.in_flight += 1;
                        continue;
                    }
                    "a segment that no manifest names (written outside the pipeline, or its manifest is missing)"
                }
                _ => "an object under segments/ that is not a key the pipeline writes",
            };
            findings.push(Finding::new(FindingClass::UnknownObject, key, what));
        }
        // Lanes: numbered from 1, without holes or overlaps, in batch order.
        for ((writer, class), mut batches) in lanes {
            batches.sort();
            let mut next = 1;
            for (idx, first, last, n, key) in batches {
                if first != next || last + 1 != first + n {
                    findings.push(
                        Finding::new(FindingClass::LaneGap, &key, format!("lane {day}/{class} of writer {writer}: batch {idx} covers {first}-{last} ({n} events)"))
                            .expected_found(format!("from {next}"), first),
                    );
                }
                next = last + 1;
            }
        }
        Ok(())
    }

    /// Stores a report sealed (JSON and the summary), kept as long as the longest class.
    pub async fn store_report(&self, report: &SweepReport) -> Result<Vec<String>, StoreError> {
        let until = self
            .retention
            .longest_from(report.finished_at)
            .ceil_to_second();
        let day = report.finished_at.day();
        let json = crate::canonical::to_canonical_vec(report);
        let mut keys = Vec::new();
        for (ext, body, ct) in [
            ("json", json, "application/json"),
            (
                "txt",
                report.summary().into_bytes(),
                "text/plain; charset=utf-8",
            ),
        ] {
            let key = self.layout.sweep_report(day, &report.id, ext);
            self.store
                .put_sealed(&PutRequest::new(key.clone(), Bytes::from(body), until, ct))
                .await?;
            keys.push(key);
        }
        Ok(keys)
    }
}

/// Logs every finding of a report: integrity findings at ERROR (an operator must act).
pub fn log_findings(report: &SweepReport) {
    for f in &report.findings {
        match f.severity {
            Severity::Error => tracing::error!(
                sweep = %report.id,
                class = f.class.code(),
                key = %f.key,
                version = f.version.as_deref(),
                expected = f.expected.as_deref(),
                found = f.found.as_deref(),
                "Integrity finding: {}",
                f.message
            ),
            Severity::Info => {
                tracing::info!(sweep = %report.id, class = f.class.code(), key = %f.key, "{}", f.message)
            }
        }
    }
}

/// The daemon's scheduled sweeps: quick ones incremental (the days since the checkpoint, plus
/// a random sample of older days), full ones over everything. Runs until `stop` is cancelled.
pub async fn run_scheduled(
    sweeper: Sweeper,
    state: Arc<crate::state::State>,
    settings: crate::config::SweepSettings,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::telemetry::metrics as m;
    loop {
        let now = chrono::Utc::now();
        let next = |s: &Option<cron::Schedule>| s.as_ref().and_then(|s| s.after(&now).next());
        let (when, level) = match (next(&settings.quick), next(&settings.full)) {
            (None, None) => return,
            (Some(q), None) => (q, Level::Quick),
            (None, Some(f)) => (f, Level::Full),
            (Some(q), Some(f)) if f <= q => (f, Level::Full),
            (Some(q), Some(_)) => (q, Level::Quick),
        };
        let wait = (when - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let started = std::time::Instant::now();
        match run_once(&sweeper, &state, &settings, level).await {
            Ok(report) => {
                m::sweep_completed(level.as_str(), &report, started.elapsed());
                log_findings(&report);
                match sweeper.store_report(&report).await {
                    Ok(keys) => {
                        tracing::info!(sweep = %report.id, level = level.as_str(), errors = report.errors(), reports = ?keys, "Sweep finished.")
                    }
                    Err(e) => {
                        tracing::error!(sweep = %report.id, error = %e, "Sweep finished, but its report could not be stored.")
                    }
                }
                if report.errors() > 0
                    && let Some(url) = &settings.webhook
                {
                    let body = serde_json::json!({
                        "sweep": report.id,
                        "level": level.as_str(),
                        "store": report.store,
                        "errors": report.errors(),
                        "findings": report.findings.iter().take(100).collect::<Vec<_>>(),
                        "summary": report.summary(),
                    });
                    match crate::notify::post_json(url, &body).await {
                        Ok(s) if (200..300).contains(&s) => {}
                        Ok(s) => {
                            tracing::warn!(webhook = %url, status = s, "The findings webhook refused the notification.")
                        }
                        Err(e) => {
                            tracing::warn!(webhook = %url, error = %e, "The findings webhook could not be reached.")
                        }
                    }
                }
                if let Err(e) = state.set_sweep_checkpoint(report.started_at.day()) {
                    tracing::error!(error = %e, "Could not record the sweep checkpoint.");
                }
            }
            Err(e) => {
                m::sweep_failed(level.as_str());
                tracing::error!(level = level.as_str(), error = %e, "A scheduled sweep could not run.");
            }
        }
    }
}

/// One scheduled sweep: which days it covers follows the level and the checkpoint.
pub async fn run_once(
    sweeper: &Sweeper,
    state: &crate::state::State,
    settings: &crate::config::SweepSettings,
    level: Level,
) -> Result<SweepReport, SweepError> {
    let mut opts = SweepOptions {
        level,
        from: None,
        to: None,
        days: None,
        parallelism: settings.parallelism,
    };
    if level == Level::Quick
        && let Ok(Some(checkpoint)) = state.sweep_checkpoint()
    {
        let (all, _) = sweeper.days().await?;
        opts.days = Some(incremental_days(
            &all,
            checkpoint,
            settings.sample_percent,
            Timestamp::now().as_micros() as u64,
        ));
    }
    sweeper.run(&opts).await
}

/// The days a quick sweep checks: every day from the day before the checkpoint on (new
/// batches land there), and about `sample_percent` of the older days, chosen at random.
pub fn incremental_days(
    all: &BTreeSet<Day>,
    checkpoint: Day,
    sample_percent: u8,
    seed: u64,
) -> BTreeSet<Day> {
    use std::hash::{BuildHasher, Hasher};
    let older: Vec<Day> = all
        .iter()
        .copied()
        .filter(|d| *d < checkpoint.prev())
        .collect();
    let mut out: BTreeSet<Day> = all
        .iter()
        .copied()
        .filter(|d| *d >= checkpoint.prev())
        .collect();
    let want = (older.len() * usize::from(sample_percent)).div_ceil(100);
    let state = std::collections::hash_map::RandomState::new();
    let mut keyed: Vec<(u64, Day)> = older
        .into_iter()
        .map(|d| {
            let mut h = state.build_hasher();
            h.write_u64(seed);
            h.write_i32(d.days_since_epoch());
            (h.finish(), d)
        })
        .collect();
    keyed.sort_unstable();
    out.extend(keyed.into_iter().take(want).map(|(_, d)| d));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_sweeps_cover_recent_days_and_sample_older_ones() {
        let all: BTreeSet<Day> = (0..200)
            .map(|d| Day::from_days_since_epoch(20_000 + d))
            .collect();
        let checkpoint = Day::from_days_since_epoch(20_190);
        let days = incremental_days(&all, checkpoint, 5, 1);
        let recent = days.iter().filter(|d| **d >= checkpoint.prev()).count();
        assert_eq!(recent, 11, "from the day before the checkpoint on");
        let older = days.len() - recent;
        assert_eq!(older, (189usize * 5).div_ceil(100));
        // Different runs sample different older days.
        let other = incremental_days(&all, checkpoint, 5, 2);
        assert_ne!(days, other);
        assert_eq!(incremental_days(&all, checkpoint, 0, 1).len(), 11);
    }

    #[test]
    fn the_chain_join_reports_gaps_forks_and_breaks() {
        let h = |n: u8| [n; 32];
        let mut c = Chain::default();
        c.feed("w", 0, h(0), None, "m0");
        c.feed("w", 1, h(1), Some(h(0)), "m1");
        c.feed("w", 3, h(3), Some(h(2)), "m3"); // batch 2 is missing
        c.feed("w", 4, h(4), Some(h(9)), "m4"); // does not link to batch 3
        c.feed("w", 4, h(5), Some(h(3)), "m4bis"); // a second batch 4
        let (f, seen) = c.finish(true);
        let got: Vec<(FindingClass, &str)> = f.iter().map(|f| (f.class, f.key.as_str())).collect();
        assert!(got.contains(&(FindingClass::ChainGap, "m3")), "{got:?}");
        assert!(got.contains(&(FindingClass::ChainBroken, "m3")), "{got:?}");
        assert!(got.contains(&(FindingClass::ChainFork, "m4bis")), "{got:?}");
        assert_eq!(seen["w"], (5, 4));
    }
}
