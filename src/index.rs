//! The idempotency index: which `event_id`s this writer has archived, and with what content.
//!
//! It must answer "seen before?" for every event at full ingest speed, hold at least the
//! configured window (7 days by default) however many events that is, and use bounded memory.
//! A B-tree costs microseconds per insert and lookup at this scale, so the index is built
//! from two simple parts:
//!
//! - **runs on disk**: each sealed batch writes one immutable file of its events' entries,
//!   sorted by fingerprint. All events of a batch share one UTC day, so runs are partitioned
//!   by day. Runs of a day are merged four at a time when four of a similar size exist
//!   (size-tiered), so a day has a few runs at most. A run is deleted as a whole once every
//!   entry in it has expired.
//! - **a filter in memory**: a blocked Bloom filter of fixed size over every indexed
//!   fingerprint. A new event (the common case) costs two cache misses; only when the filter
//!   says "maybe" are runs read — its own day's first (a duplicate has the same `occurred_at`),
//!   then the other days (a conflict may have changed it).
//!
//! ```text
//! {state_dir}/index/d{YYYY-MM-DD}-b{first_batch:012}-{last_batch:012}.run
//!
//! header (40 bytes): "WVIDX001" | n: u64 | day: i32 | max_expires: i32 | first_batch: u64 | last_batch: u64
//! entries (n × 32 bytes, sorted by fingerprint, unique):
//!     fingerprint [16] = SHA-256(event_id)[0..16]
//!     digest      [12] = content digest[0..12]
//!     expires     i32  = days since 1970-01-01 after which the entry may go
//! (integers little-endian)
//! ```
//!
//! **Crash safety.** A run is written and fsynced *before* its batch's seal commits, and
//! becomes visible only after. At open, a run whose `last_batch` is not below the committed
//! `next_batch_idx` belongs to an uncommitted seal and is deleted. A merge writes its output,
//! fsyncs and renames it into place before deleting its inputs; a crash in between leaves
//! entries twice, which is harmless.
//!
//! **Memory.** The filter (configured, 16 MiB by default: about 1 % false positives up to
//! 13 million events in the window) plus, per run, a sample of at most 2048 fingerprints.
//! With more events in the window than the filter is sized for, lookups read disk more often
//! but stay correct.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::merkle::Hash;
use crate::timestamp::Day;

const MAGIC: &[u8; 8] = b"WVIDX001";
const HEADER: usize = 40;
const ENTRY: usize = 32;
/// Sample every this many entries, at least (a run's sample has at most `MAX_SAMPLE` entries).
const SAMPLE_EVERY: u64 = 128;
const MAX_SAMPLE: u64 = 2048;
/// Runs of a day at one size tier that trigger a merge.
const FAN_IN: usize = 4;

/// The first 16 bytes of SHA-256(event_id).
pub type Fingerprint = [u8; 16];

pub fn fingerprint(event_id: &str) -> Fingerprint {
    let h = crate::merkle::sha256(event_id.as_bytes());
    h[..16].try_into().expect("16 bytes")
}

/// What the index remembers of an archived event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The first 12 bytes of the content digest.
    pub digest: [u8; 12],
    /// The entry may be dropped after this day.
    pub expires: Day,
}

impl Seen {
    pub fn new(digest: &Hash, expires: Day) -> Seen {
        Seen {
            digest: digest[..12].try_into().expect("12"),
            expires,
        }
    }

    /// Whether `digest` is the same content.
    pub fn matches(&self, digest: &Hash) -> bool {
        self.digest == digest[..12]
    }
}

/// One entry of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub fingerprint: Fingerprint,
    pub seen: Seen,
}

impl Entry {
    fn encode(&self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.fingerprint);
        out[16..28].copy_from_slice(&self.seen.digest);
        out[28..32].copy_from_slice(&self.seen.expires.days_since_epoch().to_le_bytes());
    }

    fn decode(b: &[u8]) -> Entry {
        Entry {
            fingerprint: b[..16].try_into().expect("16"),
            seen: Seen {
                digest: b[16..28].try_into().expect("12"),
                expires: Day::from_days_since_epoch(i32::from_le_bytes(
                    b[28..32].try_into().expect("4"),
                )),
            },
        }
    }
}

/// A blocked Bloom filter: 512-bit blocks, seven bits per key, all in one cache line.
struct Filter {
    words: Vec<AtomicU64>,
    blocks: u64,
}

impl Filter {
    fn new(bytes: usize) -> Filter {
        let blocks = (bytes / 64).max(1) as u64;
        Filter {
            words: (0..blocks * 8).map(|_| AtomicU64::new(0)).collect(),
            blocks,
        }
    }

    fn positions(&self, fp: &Fingerprint) -> (usize, [u32; 7]) {
        let a = u64::from_le_bytes(fp[..8].try_into().expect("8"));
        let b = u64::from_le_bytes(fp[8..].try_into().expect("8"));
        let block = (a % self.blocks) as usize * 8;
        let mut bits = [0u32; 7];
        for (i, bit) in bits.iter_mut().enumerate() {
            *bit = ((b >> (i * 9)) & 511) as u32;
        }
        (block, bits)
    }

    fn insert(&self, fp: &Fingerprint) {
        let (block, bits) = self.positions(fp);
        for bit in bits {
            self.words[block + (bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    fn may_contain(&self, fp: &Fingerprint) -> bool {
        let (block, bits) = self.positions(fp);
        bits.iter().all(|&bit| {
            self.words[block + (bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }
}

/// One run file and what is kept of it in memory.
struct Run {
    path: PathBuf,
    file: File,
    day: Day,
    first_batch: u64,
    last_batch: u64,
    n: u64,
    max_expires: Day,
    /// Every `step`-th fingerprint, for narrowing a lookup to one read.
    sample: Vec<Fingerprint>,
    step: u64,
}

impl Run {
    fn tier(&self) -> u32 {
        // Tier t holds runs of about 4^t * 4096 entries.
        let mut t = 0;
        let mut size = self.n / 4096;
        while size >= 4 {
            size /= 4;
            t += 1;
        }
        t
    }

    fn find(&self, fp: &Fingerprint) -> io::Result<Option<Seen>> {
        if self.n == 0 {
            return Ok(None);
        }
        // sample[i] is entry i * step; the key lies in [j * step, (j + 1) * step) where j is
        // the last sample not greater than it.
        let j = match self.sample.binary_search(fp) {
            Ok(i) => i,
            Err(0) => return Ok(None),
            Err(i) => i - 1,
        } as u64;
        let from = j * self.step;
        let to = ((j + 1) * self.step).min(self.n);
        let mut buf = vec![0u8; ((to - from) as usize) * ENTRY];
        self.file
            .read_exact_at(&mut buf, HEADER as u64 + from * ENTRY as u64)?;
        let (mut lo, mut hi) = (0, buf.len() / ENTRY);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let e = &buf[mid * ENTRY..(mid + 1) * ENTRY];
            match e[..16].cmp(&fp[..]) {
                std::cmp::Ordering::Equal => return Ok(Some(Entry::decode(e).seen)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Opens a run, checking its header and building its sample; `visit` sees every entry.
    fn load(path: &Path, mut visit: impl FnMut(&Entry)) -> io::Result<Run> {
        let file = File::open(path)?;
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let mut h = [0u8; HEADER];
        r.read_exact(&mut h)?;
        if &h[..8] != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not an index run", path.display()),
            ));
        }
        let n = u64::from_le_bytes(h[8..16].try_into().expect("8"));
        let day = Day::from_days_since_epoch(i32::from_le_bytes(h[16..20].try_into().expect("4")));
        let max_expires =
            Day::from_days_since_epoch(i32::from_le_bytes(h[20..24].try_into().expect("4")));
        let first_batch = u64::from_le_bytes(h[24..32].try_into().expect("8"));
        let last_batch = u64::from_le_bytes(h[32..40].try_into().expect("8"));
        let len = file.metadata()?.len();
        if len != HEADER as u64 + n * ENTRY as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is truncated", path.display()),
            ));
        }
        let step = SAMPLE_EVERY.max(n.div_ceil(MAX_SAMPLE));
        let mut sample = Vec::with_capacity((n / step + 1) as usize);
        let mut e = [0u8; ENTRY];
        for i in 0..n {
            r.read_exact(&mut e)?;
            let entry = Entry::decode(&e);
            if i % step == 0 {
                sample.push(entry.fingerprint);
            }
            visit(&entry);
        }
        drop(r);
        Ok(Run {
            path: path.to_owned(),
            file,
            day,
            first_batch,
            last_batch,
            n,
            max_expires,
            sample,
            step,
        })
    }
}

/// A run written to disk but not yet visible (its seal has not committed).
pub struct PendingRun {
    path: PathBuf,
}

/// Counts for metrics and `config check`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub runs: usize,
    pub entries: u64,
    pub filter_bytes: usize,
}

/// The idempotency index of one writer.
pub struct Index {
    dir: PathBuf,
    filter: Filter,
    runs: RwLock<Vec<Arc<Run>>>,
}

fn run_name(day: Day, first: u64, last: u64) -> String {
    format!("d{day}-b{first:012}-{last:012}.run")
}

/// Writes a run from entries in fingerprint order (dropping repeated fingerprints), fsyncs it
/// and renames it into place.
fn write_run_file(
    path: &Path,
    day: Day,
    first: u64,
    last: u64,
    entries: impl Iterator<Item = io::Result<Entry>>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[16..20].copy_from_slice(&day.days_since_epoch().to_le_bytes());
    h[24..32].copy_from_slice(&first.to_le_bytes());
    h[32..40].copy_from_slice(&last.to_le_bytes());
    w.write_all(&h)?;
    let mut max_expires = i32::MIN;
    let mut n = 0u64;
    let mut prev: Option<Fingerprint> = None;
    let mut e = [0u8; ENTRY];
    for entry in entries {
        let entry = entry?;
        if prev == Some(entry.fingerprint) {
            continue;
        }
        prev = Some(entry.fingerprint);
        max_expires = max_expires.max(entry.seen.expires.days_since_epoch());
        entry.encode(&mut e);
        w.write_all(&e)?;
        n += 1;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.write_all_at(&n.to_le_bytes(), 8)?;
    file.write_all_at(&max_expires.to_le_bytes(), 20)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Index {
    /// Opens the index in `dir`: deletes runs of uncommitted batches (`last_batch ≥
    /// committed_below`) and expired runs, and rebuilds the filter.
    pub fn open(
        dir: &Path,
        filter_bytes: usize,
        committed_below: u64,
        today: Day,
    ) -> io::Result<Index> {
        fs::create_dir_all(dir)?;
        let index = Index {
            dir: dir.to_owned(),
            filter: Filter::new(filter_bytes),
            runs: RwLock::new(Vec::new()),
        };
        let mut runs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("run") => {}
                Some("tmp") => {
                    fs::remove_file(&path)?;
                    continue;
                }
                _ => continue,
            }
            let run = Run::load(&path, |e| index.filter.insert(&e.fingerprint))?;
            if run.last_batch >= committed_below {
                tracing::info!(run = %path.display(), "Removing an index run of a batch whose seal did not commit.");
                fs::remove_file(&path)?;
            } else {
                runs.push(Arc::new(run));
            }
        }
        runs.sort_by_key(|r| (r.day, r.first_batch));
        *index.runs.write().expect("lock") = runs;
        index.purge(today)?;
        Ok(index)
    }

    pub fn stats(&self) -> IndexStats {
        let runs = self.runs.read().expect("lock");
        IndexStats {
            runs: runs.len(),
            entries: runs.iter().map(|r| r.n).sum(),
            filter_bytes: self.filter.words.len() * 8,
        }
    }

    /// Looks up a fingerprint; `day` (the event's `occurred_at` day) is searched first.
    pub fn lookup(&self, fp: &Fingerprint, day: Day) -> io::Result<Option<Seen>> {
        if !self.filter.may_contain(fp) {
            return Ok(None);
        }
        let runs: Vec<Arc<Run>> = self.runs.read().expect("lock").clone();
        for run in runs
            .iter()
            .filter(|r| r.day == day)
            .chain(runs.iter().filter(|r| r.day != day))
        {
            if let Some(seen) = run.find(fp)? {
                return Ok(Some(seen));
            }
        }
        Ok(None)
    }

    /// Writes the run of one batch (all of `day`), fsynced but not yet visible.
    pub fn write_run(
        &self,
        day: Day,
        batch_idx: u64,
        mut entries: Vec<Entry>,
    ) -> io::Result<PendingRun> {
        entries.sort_unstable_by_key(|e| e.fingerprint);
        let path = self.dir.join(run_name(day, batch_idx, batch_idx));
        write_run_file(
            &path,
            day,
            batch_idx,
            batch_idx,
            entries.into_iter().map(Ok),
        )?;
        Ok(PendingRun { path })
    }

    /// Makes a run visible, after its seal committed; merges runs of its day if a tier is full.
    pub fn publish(&self, pending: PendingRun) -> io::Result<()> {
        let run = Run::load(&pending.path, |e| self.filter.insert(&e.fingerprint))?;
        let day = run.day;
        {
            let mut runs = self.runs.write().expect("lock");
            runs.push(Arc::new(run));
            runs.sort_by_key(|r| (r.day, r.first_batch));
        }
        self.compact(day)
    }

    /// Merges runs of `day` while some tier holds `FAN_IN` of them.
    fn compact(&self, day: Day) -> io::Result<()> {
        loop {
            let group: Vec<Arc<Run>> = {
                let runs = self.runs.read().expect("lock");
                let mut by_tier: std::collections::BTreeMap<u32, Vec<Arc<Run>>> =
                    Default::default();
                for r in runs.iter().filter(|r| r.day == day) {
                    by_tier.entry(r.tier()).or_default().push(r.clone());
                }
                match by_tier.into_values().find(|g| g.len() >= FAN_IN) {
                    Some(g) => g,
                    None => return Ok(()),
                }
            };
            let merged = self.merge(day, &group)?;
            let mut runs = self.runs.write().expect("lock");
            runs.retain(|r| !group.iter().any(|g| Arc::ptr_eq(g, r)));
            runs.push(Arc::new(merged));
            runs.sort_by_key(|r| (r.day, r.first_batch));
            drop(runs);
            for g in &group {
                fs::remove_file(&g.path)?;
            }
        }
    }

    /// A streaming k-way merge of sorted runs into one; memory does not depend on run size.
    fn merge(&self, day: Day, group: &[Arc<Run>]) -> io::Result<Run> {
        struct Cursor {
            reader: BufReader<File>,
            left: u64,
            head: Option<Entry>,
        }
        impl Cursor {
            fn advance(&mut self) -> io::Result<()> {
                self.head = if self.left == 0 {
                    None
                } else {
                    let mut e = [0u8; ENTRY];
                    self.reader.read_exact(&mut e)?;
                    self.left -= 1;
                    Some(Entry::decode(&e))
                };
                Ok(())
            }
        }
        let mut cursors = Vec::with_capacity(group.len());
        for r in group {
            let mut reader = BufReader::with_capacity(256 * 1024, File::open(&r.path)?);
            io::copy(&mut (&mut reader).take(HEADER as u64), &mut io::sink())?;
            let mut c = Cursor {
                reader,
                left: r.n,
                head: None,
            };
            c.advance()?;
            cursors.push(c);
        }
        let merged = std::iter::from_fn(|| {
            let i = cursors
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.head.map(|h| (h.fingerprint, i)))
                .min()
                .map(|(_, i)| i)?;
            let head = cursors[i].head.take().expect("has head");
            Some(cursors[i].advance().map(|()| head))
        });
        let first = group
            .iter()
            .map(|r| r.first_batch)
            .min()
            .expect("non-empty");
        let last = group.iter().map(|r| r.last_batch).max().expect("non-empty");
        let path = self.dir.join(run_name(day, first, last));
        write_run_file(&path, day, first, last, merged)?;
        Run::load(&path, |_| {})
    }

    /// Deletes runs whose every entry expired before `today`. Returns how many.
    pub fn purge(&self, today: Day) -> io::Result<usize> {
        let expired: Vec<Arc<Run>> = {
            let mut runs = self.runs.write().expect("lock");
            let (gone, keep): (Vec<_>, Vec<_>) =
                runs.drain(..).partition(|r| r.max_expires < today);
            *runs = keep;
            gone
        };
        for r in &expired {
            fs::remove_file(&r.path)?;
        }
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64, expires: i32) -> Entry {
        Entry {
            fingerprint: fingerprint(&format!("e-{i}")),
            seen: Seen::new(
                &crate::merkle::sha256(&i.to_le_bytes()),
                Day::from_days_since_epoch(expires),
            ),
        }
    }

    #[test]
    fn finds_what_was_published_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = Day::parse("2026-11-20").unwrap();
        let d2 = d1.next();
        let today = d2;
        let ix = Index::open(dir.path(), 1 << 16, 0, today).unwrap();
        let exp = today.days_since_epoch() + 7;
        for b in 0..9u64 {
            let day = if b % 3 == 0 { d2 } else { d1 };
            let entries: Vec<Entry> = (b * 5000..(b + 1) * 5000).map(|i| entry(i, exp)).collect();
            let run = ix.write_run(day, b, entries).unwrap();
            // Invisible until published.
            assert_eq!(
                ix.lookup(&entry(b * 5000, exp).fingerprint, day).unwrap(),
                None
            );
            ix.publish(run).unwrap();
        }
        // Day d1 had six runs of one tier: four were merged.
        assert!(ix.stats().runs < 9, "{:?}", ix.stats());
        assert_eq!(ix.stats().entries, 45_000);
        for i in (0..45_000).step_by(7) {
            let e = entry(i, exp);
            // Found from either day: conflicts can change occurred_at.
            assert_eq!(ix.lookup(&e.fingerprint, d1).unwrap(), Some(e.seen), "{i}");
            assert_eq!(ix.lookup(&e.fingerprint, d2).unwrap(), Some(e.seen), "{i}");
        }
        let absent = (45_000..55_000)
            .filter(|&i| ix.lookup(&entry(i, exp).fingerprint, d1).unwrap().is_some())
            .count();
        assert_eq!(absent, 0);
        // An uncommitted run (batch 9 never committed) is discarded at open.
        ix.write_run(d1, 9, vec![entry(99_999, exp)]).unwrap();
        drop(ix);
        let ix = Index::open(dir.path(), 1 << 16, 9, today).unwrap();
        assert_eq!(ix.stats().entries, 45_000);
        assert_eq!(
            ix.lookup(&entry(99_999, exp).fingerprint, d1).unwrap(),
            None
        );
        assert!(
            ix.lookup(&entry(12_345, exp).fingerprint, d2)
                .unwrap()
                .is_some()
        );
        // Expired runs go as a whole.
        let runs = ix.stats().runs;
        assert_eq!(ix.purge(today).unwrap(), 0);
        assert_eq!(ix.purge(Day::from_days_since_epoch(exp + 1)).unwrap(), runs);
        assert_eq!(ix.stats().entries, 0);
    }

    #[test]
    fn purge_drops_whole_expired_runs_only() {
        let dir = tempfile::tempdir().unwrap();
        let today = Day::parse("2026-11-22").unwrap();
        let ix = Index::open(dir.path(), 1 << 12, 0, today).unwrap();
        let t = today.days_since_epoch();
        ix.publish(
            ix.write_run(today, 0, vec![entry(1, t + 1), entry(2, t + 3)])
                .unwrap(),
        )
        .unwrap();
        ix.publish(ix.write_run(today, 1, vec![entry(3, t + 1)]).unwrap())
            .unwrap();
        assert_eq!(ix.purge(Day::from_days_since_epoch(t + 2)).unwrap(), 1);
        assert!(
            ix.lookup(&entry(1, 0).fingerprint, today)
                .unwrap()
                .is_some(),
            "kept with its run"
        );
        assert!(
            ix.lookup(&entry(3, 0).fingerprint, today)
                .unwrap()
                .is_none()
        );
    }
}
