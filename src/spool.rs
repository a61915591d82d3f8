//! The spool: the daemon's durable log of acknowledged events not yet confirmed in the store.
//!
//! An event is acknowledged only after its spool record is written and fsynced. Concurrent
//! requests share one fsync (group commit: the sequencer appends everything that arrived
//! while the previous fsync ran, then syncs once).
//!
//! ```text
//! {state_dir}/spool/{file_no:012}.log      files of frames, the highest is the active one
//!
//! frame    = len: u32 LE | crc: u32 LE (CRC-32/ISO-HDLC of payload) | payload (len bytes)
//! payload  = version: u8 (1) | day: i32 LE | seq: u64 LE | class_len: u16 LE | class (UTF-8)
//!            | digest [32] (content digest) | canonical record (the rest)
//! ```
//!
//! On start every file is read back. In the *active* (last) file, a frame that is cut short,
//! longer than any valid frame, or fails its CRC is a torn tail — the write that was under way
//! when the process died, never acknowledged — and the file is truncated there. Anywhere else
//! it is corruption, and opening fails: nothing is skipped silently.
//!
//! Space is reclaimed file by file: a file that is no longer active goes once every event in
//! it belongs to a batch confirmed in the store (for each lane, the confirmed high-water
//! sequence number has reached the file's highest sequence number in that lane).

use crate::retention::ClassName;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::event::Record;
use crate::merkle::Hash;
use crate::state::{Lane, LaneMap};
use crate::timestamp::Day;

const VERSION: u8 = 1;
/// No valid frame is larger than this (an event is at most a few MiB).
const MAX_FRAME: u32 = 64 << 20;

/// One event read back from the spool.
pub struct Spooled {
    pub lane: Lane,
    pub seq: u64,
    pub digest: Hash,
    pub canonical: Vec<u8>,
}

#[derive(Default)]
struct FileInfo {
    bytes: u64,
    /// Highest sequence number per lane in this file.
    lanes: LaneMap<u64>,
}

/// The spool, owned by the sequencer.
pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    active: File,
    active_no: u64,
    files: BTreeMap<u64, FileInfo>,
    total: u64,
    scratch: Vec<u8>,
}

fn file_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:012}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(path: &Path, at: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "spool file {} is corrupt at byte {at} ({what}); it is not the active file, so this is not a torn write",
            path.display()
        ),
    )
}

/// Decodes one payload.
fn decode(payload: &[u8]) -> Option<Spooled> {
    let (&version, rest) = payload.split_first()?;
    if version != VERSION || rest.len() < 4 + 8 + 2 {
        return None;
    }
    let day = Day::from_days_since_epoch(i32::from_le_bytes(rest[..4].try_into().ok()?));
    let seq = u64::from_le_bytes(rest[4..12].try_into().ok()?);
    let class_len = u16::from_le_bytes(rest[12..14].try_into().ok()?) as usize;
    let rest = &rest[14..];
    if rest.len() < class_len + 32 {
        return None;
    }
    let class = ClassName::new(std::str::from_utf8(&rest[..class_len]).ok()?);
    let digest: Hash = rest[class_len..class_len + 32].try_into().ok()?;
    Some(Spooled {
        lane: Lane { day, class },
        seq,
        digest,
        canonical: rest[class_len + 32..].to_vec(),
    })
}

impl Spool {
    /// Opens the spool, handing every spooled event to `replay` in the order it was
    /// acknowledged, and cutting a torn tail off the active file.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut replay: impl FnMut(Spooled) -> io::Result<()>,
    ) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut nos: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        nos.sort_unstable();
        let mut files = BTreeMap::new();
        let last = nos.last().copied();
        for &no in &nos {
            let path = file_path(dir, no);
            let is_active = Some(no) == last;
            let mut info = FileInfo::default();
            let mut r = BufReader::with_capacity(1 << 20, File::open(&path)?);
            let mut at = 0u64;
            let len_on_disk = fs::metadata(&path)?.len();
            let mut head = [0u8; 8];
            loop {
                match r.read_exact(&mut head) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        if at == len_on_disk {
                            break;
                        }
                        if !is_active {
                            return Err(corrupt(&path, at, "a frame header is cut short"));
                        }
                        break;
                    }
                    Err(e) => return Err(e),
                }
                let len = u32::from_le_bytes(head[..4].try_into().expect("4"));
                let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
                let fits = len <= MAX_FRAME && at + 8 + u64::from(len) <= len_on_disk;
                let mut payload = vec![0u8; if fits { len as usize } else { 0 }];
                let ok =
                    fits && r.read_exact(&mut payload).is_ok() && crc32fast::hash(&payload) == crc;
                let spooled = if ok { decode(&payload) } else { None };
                let Some(spooled) = spooled else {
                    if !is_active {
                        return Err(corrupt(&path, at, "a frame fails its length or checksum"));
                    }
                    break;
                };
                at += 8 + u64::from(len);
                let lane_max = info.lanes.entry(spooled.lane).or_insert(0);
                *lane_max = (*lane_max).max(spooled.seq);
                replay(spooled)?;
            }
            if at < len_on_disk {
                tracing::warn!(
                    file = %path.display(),
                    kept = at,
                    cut = len_on_disk - at,
                    "Cutting a torn write off the end of the spool (it was never acknowledged)."
                );
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(at)?;
                f.sync_all()?;
            }
            info.bytes = at;
            files.insert(no, info);
        }
        let active_no = last.unwrap_or(0);
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(file_path(dir, active_no))?;
        files.entry(active_no).or_default();
        sync_dir(dir)?;
        let total = files.values().map(|f| f.bytes).sum();
        Ok(Spool {
            dir: dir.to_owned(),
            segment_bytes,
            active,
            active_no,
            files,
            total,
            scratch: Vec::new(),
        })
    }

    /// Bytes held by the spool.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Bytes an append of `records` will add.
    pub fn frame_bytes(records: &[(Lane, u64, &Record)]) -> u64 {
        records
            .iter()
            .map(|(l, _, r)| (8 + 1 + 4 + 8 + 2 + l.class.len() + 32 + r.canonical().len()) as u64)
            .sum()
    }

    /// Appends records (not yet durable: call [`Spool::sync`]). Rotates to a new file first
    /// when the active one is full, so that a group never spans files.
    pub fn append(&mut self, records: &[(Lane, u64, &Record)]) -> io::Result<()> {
        if self
            .files
            .get(&self.active_no)
            .is_some_and(|f| f.bytes >= self.segment_bytes)
        {
            self.rotate()?;
        }
        self.scratch.clear();
        let info = self.files.entry(self.active_no).or_default();
        for (lane, seq, record) in records {
            let start = self.scratch.len();
            self.scratch.extend_from_slice(&[0; 8]);
            self.scratch.push(VERSION);
            self.scratch
                .extend_from_slice(&lane.day.days_since_epoch().to_le_bytes());
            self.scratch.extend_from_slice(&seq.to_le_bytes());
            self.scratch
                .extend_from_slice(&(lane.class.len() as u16).to_le_bytes());
            self.scratch.extend_from_slice(lane.class.as_bytes());
            self.scratch.extend_from_slice(&record.digest);
            self.scratch.extend_from_slice(record.canonical());
            let len = (self.scratch.len() - start - 8) as u32;
            let crc = crc32fast::hash(&self.scratch[start + 8..]);
            self.scratch[start..start + 4].copy_from_slice(&len.to_le_bytes());
            self.scratch[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            let max = info.lanes.entry(*lane).or_insert(0);
            *max = (*max).max(*seq);
        }
        self.active.write_all(&self.scratch)?;
        info.bytes += self.scratch.len() as u64;
        self.total += self.scratch.len() as u64;
        Ok(())
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        self.active_no += 1;
        self.active = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(file_path(&self.dir, self.active_no))?;
        sync_dir(&self.dir)?;
        self.files.entry(self.active_no).or_default();
        Ok(())
    }

    /// Deletes every inactive file all of whose events are confirmed in the store;
    /// `confirmed(lane)` is the lane's highest sequence number confirmed. A fully confirmed
    /// active file is rotated away too once it holds a quarter of `file_bytes`, or always with
    /// `force` (at start-up). Returns bytes freed.
    pub fn reclaim(&mut self, confirmed: impl FnMut(&Lane) -> u64) -> io::Result<u64> {
        self.reclaim_inner(confirmed, false)
    }

    /// [`Spool::reclaim`], rotating a fully confirmed active file whatever its size.
    pub fn reclaim_all(&mut self, confirmed: impl FnMut(&Lane) -> u64) -> io::Result<u64> {
        self.reclaim_inner(confirmed, true)
    }

    fn reclaim_inner(
        &mut self,
        mut confirmed: impl FnMut(&Lane) -> u64,
        force: bool,
    ) -> io::Result<u64> {
        let done: Vec<u64> = self
            .files
            .iter()
            .filter(|(no, f)| {
                **no != self.active_no && f.lanes.iter().all(|(lane, max)| confirmed(lane) >= *max)
            })
            .map(|(no, _)| *no)
            .collect();
        let mut freed = 0;
        for no in done {
            fs::remove_file(file_path(&self.dir, no))?;
            let info = self.files.remove(&no).expect("listed");
            freed += info.bytes;
            self.total -= info.bytes;
        }
        if freed > 0 {
            sync_dir(&self.dir)?;
        }
        // An active file whose events are all confirmed can be emptied by rotating past it.
        let active_done = self.files.get(&self.active_no).is_some_and(|f| {
            f.bytes > 0 && f.lanes.iter().all(|(lane, max)| confirmed(lane) >= *max)
        });
        if active_done
            && (force
                || self
                    .files
                    .get(&self.active_no)
                    .is_some_and(|f| f.bytes >= self.segment_bytes / 4))
        {
            self.rotate()?;
            freed += self.reclaim_inner(confirmed, false)?;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Limits, parse_event};
    use crate::timestamp::Timestamp;

    fn record(i: u64) -> Record {
        let limits = Limits {
            max_event_bytes: 1 << 20,
            latest_occurred_at: Timestamp::now(),
        };
        let json = format!(
            r#"{{"event_id":"s-{i}","occurred_at":"2026-11-20T10:00:00Z","actor":{{"type":"SYSTEM","id":"x"}},"action":"a","subject":{{"type":"t","id":"{i}"}},"source":"API","payload":{{"i":{i}}}}}"#
        );
        Record::new(
            parse_event(json.as_bytes(), &limits).unwrap(),
            Timestamp::now(),
            "c".into(),
        )
    }

    fn lane() -> Lane {
        Lane {
            day: Day::parse("2026-11-20").unwrap(),
            class: "c".into(),
        }
    }

    fn replayed(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        Spool::open(dir, 1 << 20, |s| {
            out.push((s.seq, s.canonical));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn what_was_synced_comes_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = (1..=50).map(record).collect();
        let mut spool = Spool::open(dir.path(), 1 << 20, |_| Ok(())).unwrap();
        let group: Vec<(Lane, u64, &Record)> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| (lane(), i as u64 + 1, r))
            .collect();
        spool.append(&group).unwrap();
        spool.sync().unwrap();
        drop(spool);
        let back = replayed(dir.path());
        assert_eq!(back.len(), 50);
        assert!(
            back.iter()
                .zip(&recs)
                .all(|((seq, c), r)| *c == r.canonical() && *seq > 0)
        );
        // Tear the last frame at every possible length: only that frame is lost, and the file
        // is cut back to the last whole frame.
        let path = file_path(dir.path(), 0);
        let full = fs::read(&path).unwrap();
        let last_frame = full.len() - (8 + 1 + 4 + 8 + 2 + 1 + 32 + recs[49].canonical().len());
        for cut in [
            last_frame + 1,
            last_frame + 7,
            last_frame + 9,
            full.len() - 1,
        ] {
            fs::write(&path, &full[..cut]).unwrap();
            assert_eq!(replayed(dir.path()).len(), 49, "cut at {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len() as usize, last_frame);
        }
        // A flipped bit in the last frame is a torn write too; the rest is kept.
        let mut bad = full.clone();
        bad[last_frame + 20] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert_eq!(replayed(dir.path()).len(), 49);
    }

    #[test]
    fn corruption_before_the_active_file_is_an_error_and_files_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Record> = (1..=40).map(record).collect();
        let mut spool = Spool::open(dir.path(), 1000, |_| Ok(())).unwrap();
        for (i, r) in recs.iter().enumerate() {
            spool.append(&[(lane(), i as u64 + 1, r)]).unwrap();
            spool.sync().unwrap();
        }
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(files > 3, "rotated into {files} files");
        // Reclaim what lane seqs up to 20 cover; later files stay.
        let before = spool.bytes();
        let freed = spool.reclaim(|_| 20).unwrap();
        assert!(freed > 0 && spool.bytes() == before - freed);
        drop(spool);
        let back = replayed(dir.path());
        assert!(
            back.iter().all(|(seq, _)| *seq > 15),
            "reclaimed files are gone"
        );
        assert_eq!(back.last().unwrap().0, 40);
        // Corrupt the first remaining (inactive) file: opening fails loudly.
        let mut nos: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        nos.sort();
        let mut bytes = fs::read(&nos[0]).unwrap();
        bytes[12] ^= 0xff;
        fs::write(&nos[0], bytes).unwrap();
        let err = Spool::open(dir.path(), 1000, |_| Ok(())).err().unwrap();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
