//! The writer's local state: one redb database in the state directory, plus the outbox of
//! sealed segments not yet confirmed in the store.
//!
//! ```text
//! {state_dir}/state.redb                       the database below
//! {state_dir}/outbox/{batch_idx:012}.parquet   sealed segment bytes awaiting upload
//! {state_dir}/index/                           the idempotency index (crate::index)
//! ```
//!
//! Tables:
//!
//! | table    | key                         | value                                         |
//! |----------|-----------------------------|-----------------------------------------------|
//! | `meta`   | name                        | JSON: `writer_id`, `next_batch_idx`, `chain_head` |
//! | `lanes`  | `YYYY-MM-DD/{class}`        | next sequence number of that lane (u64)       |
//! | `outbox` | batch_idx (u64)             | JSON [`OutboxEntry`]                          |
//!
//! Sealing a batch is one transaction: its lane's next sequence, the next batch index and
//! its outbox entry commit together, after the segment file and the batch's idempotency run
//! ([`crate::index`]) are fsynced. A crash before the commit leaves only files that no
//! committed batch references (removed at the next open); after it, the upload resumes from
//! the outbox.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::layout::WriterId;
use crate::merkle::Hash;
use crate::segment::SegmentInfo;
use crate::timestamp::{Day, Timestamp};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LANES: TableDefinition<&str, u64> = TableDefinition::new("lanes");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// A lane: the events of one UTC day and one retention class, numbered from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub day: Day,
    pub class: crate::retention::ClassName,
}

impl Lane {
    fn key(&self) -> String {
        format!("{}/{}", self.day, self.class)
    }
}

/// A map keyed by lane. The sequencer looks lanes up several times per event; a lane's key is
/// a day and a short class name, so a multiply-rotate hash serves instead of SipHash (about
/// 0.8 % of the daemon's CPU in `perf`). Lanes are few and their days are validated, so there
/// is nothing to flood.
pub type LaneMap<V> = std::collections::HashMap<Lane, V, std::hash::BuildHasherDefault<LaneHasher>>;

/// The hasher of [`LaneMap`]: eight bytes per multiply.
#[derive(Default)]
pub struct LaneHasher(u64);

impl LaneHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for LaneHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_i32(&mut self, n: i32) {
        self.add(n as u32 as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// The head of this writer's manifest chain in the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainHead {
    pub batch_idx: u64,
    pub manifest_key: String,
    /// SHA-256 (hex) of that manifest's bytes.
    pub manifest_sha256: String,
}

/// A sealed batch waiting in the outbox for upload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    pub info: SegmentInfo,
    #[serde(with = "crate::segment::hex_hash")]
    pub sha256: Hash,
    pub md5: String,
    pub size: u64,
    pub sealed_at: Timestamp,
    /// Set once the segment is confirmed in the store.
    pub segment_version_id: Option<String>,
    /// The manifest's bytes, once built (they name the segment's version id).
    pub manifest: Option<String>,
    /// Upload attempts so far; a non-zero count makes the next attempt check for an object
    /// left by an earlier one.
    pub attempts: u32,
}

/// Everything a seal commits at once.
pub struct SealCommit<'a> {
    pub entry: &'a OutboxEntry,
    pub lane: &'a Lane,
    pub lane_next_seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state directory {0} is in use by another wormvault process")]
    InUse(PathBuf),
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("state directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// The writer's local state. `Sync`: concurrent readers, one writer at a time.
pub struct State {
    db: Database,
    dir: PathBuf,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("dir", &self.dir).finish()
    }
}

impl State {
    /// Opens (creating) the state in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<State> {
        let io_err = |source| StateError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir.join("outbox")).map_err(io_err)?;
        let path = dir.join("state.redb");
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StateError::InUse(dir.to_owned()),
                other => StateError::Db {
                    path: path.clone(),
                    source: Box::new(other.into()),
                },
            })?;
        let state = State {
            db,
            dir: dir.to_owned(),
        };
        state.write(|txn| {
            txn.open_table(META)?;
            txn.open_table(LANES)?;
            txn.open_table(OUTBOX)?;
            Ok(())
        })?;
        state.remove_unreferenced_outbox_files()?;
        Ok(state)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StateError {
        StateError::Db {
            path: self.dir.join("state.redb"),
            source: Box::new(e.into()),
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let out = f(&txn).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        f(&txn).map_err(|e| self.db_err(e))
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let raw =
            self.read(|txn| Ok(txn.open_table(META)?.get(name)?.map(|v| v.value().to_vec())))?;
        raw.map(|r| {
            serde_json::from_slice(&r)
                .map_err(|e| StateError::Invalid(format!("state meta {name}: {e}")))
        })
        .transpose()
    }

    fn put_meta_in(
        txn: &redb::WriteTransaction,
        name: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), redb::Error> {
        let bytes = serde_json::to_vec(value).expect("serializable");
        txn.open_table(META)?.insert(name, bytes.as_slice())?;
        Ok(())
    }

    pub fn writer_id(&self) -> Result<Option<WriterId>> {
        let raw: Option<String> = self.meta("writer_id")?;
        raw.map(|s| WriterId::parse(&s).map_err(StateError::Invalid))
            .transpose()
    }

    pub fn set_writer_id(&self, id: &WriterId) -> Result<()> {
        self.write(|txn| Self::put_meta_in(txn, "writer_id", &id.as_str()))
    }

    pub fn next_batch_idx(&self) -> Result<u64> {
        Ok(self.meta("next_batch_idx")?.unwrap_or(0))
    }

    pub fn chain_head(&self) -> Result<Option<ChainHead>> {
        self.meta("chain_head")
    }

    /// The day through which scheduled quick sweeps have checked every day.
    pub fn sweep_checkpoint(&self) -> Result<Option<Day>> {
        self.meta("sweep_checkpoint")
    }

    pub fn set_sweep_checkpoint(&self, day: Day) -> Result<()> {
        self.write(|txn| Self::put_meta_in(txn, "sweep_checkpoint", &day))
    }

    /// The last day known to be anchored, by this writer or another: kept so that a start
    /// while the store cannot be listed still keeps those days closed.
    pub fn anchored_through(&self) -> Result<Option<Day>> {
        self.meta("anchored_through")
    }

    /// Records that every day up to `day` is anchored. The day kept only ever moves forward,
    /// whatever the caller passes: moving it back would reopen anchored days to late events.
    /// (Callers write only when they have news: the anchor scheduler when its day gate
    /// advances, an opening archive when the store lists a later anchor.)
    pub fn set_anchored_through(&self, day: Day) -> Result<()> {
        if self.anchored_through()?.is_some_and(|known| known >= day) {
            return Ok(());
        }
        self.write(|txn| Self::put_meta_in(txn, "anchored_through", &day))
    }

    pub fn lane_next_seq(&self, lane: &Lane) -> Result<u64> {
        let key = lane.key();
        self.read(|txn| {
            Ok(txn
                .open_table(LANES)?
                .get(key.as_str())?
                .map(|v| v.value())
                .unwrap_or(1))
        })
    }

    /// Where a sealed segment's bytes wait for upload.
    pub fn outbox_path(&self, batch_idx: u64) -> PathBuf {
        self.dir
            .join("outbox")
            .join(format!("{batch_idx:012}.parquet"))
    }

    /// Writes segment bytes to the outbox and fsyncs them (before [`State::commit_seal`]).
    pub fn write_outbox_file(&self, batch_idx: u64, bytes: &[u8]) -> Result<()> {
        let path = self.outbox_path(batch_idx);
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs::File::create(&path).map_err(io_err)?;
        f.write_all(bytes).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        fs::File::open(self.dir.join("outbox"))
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        Ok(())
    }

    pub fn read_outbox_file(&self, batch_idx: u64) -> Result<Vec<u8>> {
        let path = self.outbox_path(batch_idx);
        fs::read(&path).map_err(|source| StateError::Io { path, source })
    }

    /// Commits a sealed batch: the lane's next sequence, the next batch index and the outbox
    /// entry. Batches must commit in `batch_idx` order; anything else is a bug and is refused.
    pub fn commit_seal(&self, commit: SealCommit<'_>) -> Result<()> {
        let expected = self.next_batch_idx()?;
        let idx = commit.entry.info.batch_idx;
        if idx != expected {
            return Err(StateError::Invalid(format!(
                "batch {idx} committed out of order; expected {expected}"
            )));
        }
        let entry = serde_json::to_vec(commit.entry).expect("serializable");
        self.write(|txn| {
            txn.open_table(LANES)?
                .insert(commit.lane.key().as_str(), commit.lane_next_seq)?;
            txn.open_table(OUTBOX)?.insert(idx, entry.as_slice())?;
            Self::put_meta_in(txn, "next_batch_idx", &(idx + 1))
        })
    }

    /// Pending uploads, in batch order.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let raw: Vec<Vec<u8>> = self.read(|txn| {
            let t = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (_, v) = item?;
                out.push(v.value().to_vec());
            }
            Ok(out)
        })?;
        raw.iter()
            .map(|r| {
                serde_json::from_slice(r)
                    .map_err(|e| StateError::Invalid(format!("outbox entry: {e}")))
            })
            .collect()
    }

    pub fn update_outbox(&self, entry: &OutboxEntry) -> Result<()> {
        let bytes = serde_json::to_vec(entry).expect("serializable");
        self.write(|txn| {
            txn.open_table(OUTBOX)?
                .insert(entry.info.batch_idx, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Records that a batch's segment and manifest are confirmed in the store: the chain
    /// head advances, the outbox entry goes, and then its file.
    pub fn complete_upload(&self, batch_idx: u64, head: &ChainHead) -> Result<()> {
        self.write(|txn| {
            txn.open_table(OUTBOX)?.remove(batch_idx)?;
            Self::put_meta_in(txn, "chain_head", head)
        })?;
        let path = self.outbox_path(batch_idx);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn remove_unreferenced_outbox_files(&self) -> Result<()> {
        let referenced: std::collections::HashSet<u64> =
            self.outbox()?.iter().map(|e| e.info.batch_idx).collect();
        let dir = self.dir.join("outbox");
        let entries = fs::read_dir(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let idx = name
                .strip_suffix(".parquet")
                .and_then(|s| s.parse::<u64>().ok());
            if idx.is_none_or(|i| !referenced.contains(&i)) {
                tracing::info!(file = %entry.path().display(), "Removing an outbox file that no committed batch references (left by an interrupted seal).");
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::ClassName;

    #[test]
    fn lane_hashes_tell_days_and_classes_apart() {
        use std::hash::BuildHasher;
        let hasher = std::hash::BuildHasherDefault::<LaneHasher>::default();
        let classes = ["sec-17a-4-a", "sec-17a-4-b", "finra-4511", "cftc-1-31"].map(ClassName::new);
        let mut seen = std::collections::HashSet::new();
        let mut map = LaneMap::default();
        for days in 19_000..29_000 {
            for class in classes {
                let lane = Lane {
                    day: Day::from_days_since_epoch(days),
                    class,
                };
                assert!(seen.insert(hasher.hash_one(lane)), "{lane:?} collides");
                map.insert(lane, days);
            }
        }
        // Equal lanes hash equally, whichever copy of the name they were built from.
        let lane = Lane {
            day: Day::from_days_since_epoch(20_000),
            class: ClassName::new(&String::from("finra-4511")),
        };
        assert_eq!(map.get(&lane), Some(&20_000));
        assert_eq!(map.len(), 40_000);
    }

    #[test]
    fn the_last_anchored_day_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), 1 << 20).unwrap();
        let d = |s| Day::parse(s).unwrap();
        assert_eq!(state.anchored_through().unwrap(), None);
        state.set_anchored_through(d("2026-11-20")).unwrap();
        state.set_anchored_through(d("2026-11-10")).unwrap();
        assert_eq!(state.anchored_through().unwrap(), Some(d("2026-11-20")));
        state.set_anchored_through(d("2026-11-21")).unwrap();
        drop(state);
        let state = State::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(state.anchored_through().unwrap(), Some(d("2026-11-21")));
    }

    #[test]
    fn seals_commit_in_order_and_uploads_complete() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path(), 1 << 20).unwrap();
        let today = Day::parse("2026-11-22").unwrap();
        let lane = Lane {
            day: today,
            class: "c".into(),
        };
        let info = crate::segment::SegmentInfo {
            format_version: 1,
            writer: WriterId::parse("w").unwrap(),
            batch_idx: 0,
            day: today,
            retention_class: "c".into(),
            retain_until: Timestamp::from_micros(0),
            n_events: 2,
            first_seq: 1,
            last_seq: 2,
            first_occurred_at: Timestamp::from_micros(0),
            last_occurred_at: Timestamp::from_micros(0),
            merkle_root: [0; 32],
        };
        let entry = OutboxEntry {
            info,
            sha256: [1; 32],
            md5: String::new(),
            size: 3,
            sealed_at: Timestamp::from_micros(0),
            segment_version_id: None,
            manifest: None,
            attempts: 0,
        };
        state.write_outbox_file(0, b"abc").unwrap();
        state
            .commit_seal(SealCommit {
                entry: &entry,
                lane: &lane,
                lane_next_seq: 3,
            })
            .unwrap();
        assert!(
            state
                .commit_seal(SealCommit {
                    entry: &entry,
                    lane: &lane,
                    lane_next_seq: 3
                })
                .is_err(),
            "out of order"
        );
        assert_eq!(state.next_batch_idx().unwrap(), 1);
        assert_eq!(state.lane_next_seq(&lane).unwrap(), 3);
        assert_eq!(state.outbox().unwrap(), vec![entry]);
        // A second process cannot open the same state.
        assert!(matches!(
            State::open(dir.path(), 1 << 20),
            Err(StateError::InUse(_))
        ));
        let head = ChainHead {
            batch_idx: 0,
            manifest_key: "m".into(),
            manifest_sha256: "00".into(),
        };
        state.complete_upload(0, &head).unwrap();
        assert!(state.outbox().unwrap().is_empty());
        assert!(!state.outbox_path(0).exists());
        assert_eq!(state.chain_head().unwrap(), Some(head));
    }
}
