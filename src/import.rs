//! `wormvault archive FILE`: imports an NDJSON file through the archive pipeline.
//!
//! This is the backfill path, and the same pipeline the daemon uses after its spool:
//! parse → admit (idempotency, lane numbering, batching) → seal → commit → upload. The stages
//! run concurrently so that both cores work:
//!
//! ```text
//! reader ──chunks──▶ parse workers ──▶ sequencer (this thread) ──batches──▶ seal workers
//!                                          ▲                                   │
//!                                          └──── committed ◀── committer ◀─────┘
//!                                                                  │
//!                                                                  └──▶ uploader (async)
//! ```
//!
//! Every channel is bounded, so memory is bounded by the batch limits and a few chunks, not by
//! the size of the file. Each event gets exactly one outcome: accepted, duplicate, or rejected
//! with a precise reason; a bad line never affects another.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::archive::Archive;
use crate::batch::{Admission, Batcher};
use crate::event::{EventError, Record, RejectKind, parse_record};
use crate::pipeline::SealPipeline;
use crate::timestamp::Timestamp;
use crate::upload::Uploaded;

/// Target size of one chunk of input lines.
const CHUNK_BYTES: usize = 1 << 20;

/// A refused event, with its position in the input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// 1-based line number in the file.
    pub line: u64,
    /// 0-based position among the file's events (non-blank lines).
    pub index: u64,
    pub event_id: Option<String>,
    pub kind: RejectKind,
    pub field: Option<String>,
    pub reason: String,
}

impl Rejection {
    fn new(line: u64, index: u64, e: EventError) -> Rejection {
        Rejection {
            line,
            index,
            event_id: e.event_id,
            kind: e.kind,
            field: e.field,
            reason: e.reason,
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(id) = &self.event_id {
            write!(f, " (event_id {id:?})")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{} [{}]", self.reason, self.kind.as_str())
    }
}

/// What happened to one event, reported as it happens.
#[derive(Debug)]
pub enum Outcome {
    Rejected(Rejection),
    Duplicate {
        line: u64,
        event_id: String,
    },
    /// Accepted, with a note (e.g. an explicit retention class was lengthened).
    Noted {
        line: u64,
        event_id: String,
        note: String,
    },
}

/// The result of an import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub events: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Batches confirmed in the store by this run (including ones left by an earlier run).
    pub uploaded: Vec<Uploaded>,
    /// Sealed batches still waiting in the outbox (the store was unreachable).
    pub pending_uploads: usize,
    /// The last upload error, if uploads did not finish.
    pub upload_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the input: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("uploading: {0}")]
    Upload(#[from] crate::upload::UploadError),
}

enum LineRef {
    Text { line: u64, start: usize, end: usize },
    TooLong { line: u64, len: u64 },
}

/// A run of whole lines, split into lines by the parse worker that parses them (which then
/// finds them in its cache), numbered within the chunk; the sequencer, which takes chunks in
/// order, adds the lines of the chunks before.
struct Chunk {
    no: u64,
    data: Text,
    /// The lengths of over-long lines skipped just before this chunk's text: its first lines.
    skipped: Vec<u64>,
    /// The chunk's text is `data[..text]`.
    text: usize,
    /// The bytes of input this chunk accounts for: its text, and the lines it skipped.
    bytes: u64,
}

impl Chunk {
    /// Hands `f` the chunk's lines in order, numbered from 1 within it, each as soon as it is
    /// found (so that it is parsed while the scan has it in the cache); returns how many
    /// lines the chunk has, blank and whitespace-only lines (which are passed over) included.
    fn for_each_line(&self, max_line: usize, mut f: impl FnMut(LineRef)) -> u64 {
        for (line, &len) in (1..).zip(&self.skipped) {
            f(LineRef::TooLong { line, len });
        }
        let first = self.skipped.len() as u64;
        ndjson_lines(&self.data[..self.text], first, |line, r| {
            f(if r.len() > max_line {
                LineRef::TooLong {
                    line,
                    len: r.len() as u64,
                }
            } else {
                LineRef::Text {
                    line,
                    start: r.start,
                    end: r.end,
                }
            })
        })
    }
}

/// A chunk's text, which its lines index: a buffer read from a stream (it goes back to the
/// reader once parsed; empty in a chunk of a mapped file that only skips an over-long line),
/// or the chunk's own mapping of a file.
enum Text {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Text {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Text::Read(v) => v,
            Text::Mapped(m) => m,
        }
    }
}

/// Where an import's events come from.
pub enum Input {
    /// Standard input, a pipe, anything readable: read into chunk buffers.
    Stream(Box<dyn Read + Send>),
    /// A regular file: each chunk maps its own range of it, so the file's bytes are parsed
    /// where the kernel keeps them rather than copied into buffers first.
    File(std::fs::File),
}

impl Input {
    /// Opens `path` (`-` is standard input). Regular files are mapped chunk by chunk; other
    /// files (pipes, devices) are read, and so are files that say they are empty (files of
    /// `/proc` do, whatever they hold).
    pub fn open(path: &std::path::Path) -> std::io::Result<Input> {
        if path.as_os_str() == "-" {
            return Ok(Input::Stream(Box::new(std::io::stdin())));
        }
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        Ok(if meta.is_file() && meta.len() > 0 {
            Input::File(file)
        } else {
            Input::Stream(Box::new(file))
        })
    }

    /// Events already in memory.
    pub fn bytes(bytes: Vec<u8>) -> Input {
        Input::Stream(Box::new(std::io::Cursor::new(bytes)))
    }
}

enum Item {
    Ok {
        line: u64,
        record: Box<Record>,
        note: Option<String>,
    },
    Err {
        line: u64,
        error: EventError,
    },
}

struct Parsed {
    no: u64,
    /// Numbered within the chunk.
    items: Vec<Item>,
    /// The chunk's lines, blank ones included.
    lines: u64,
    bytes: u64,
}

/// How long the final upload keeps retrying an unreachable store before giving up (sealed
/// batches stay in the outbox for the next run).
pub struct UploadPatience {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for UploadPatience {
    fn default() -> Self {
        UploadPatience {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
        }
    }
}

/// Collects what the background uploader confirmed.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<Uploaded>>);

impl crate::pipeline::UploadObserver for Collect {
    fn uploaded(&self, batch: &Uploaded) {
        self.0.lock().expect("lock").push(batch.clone());
    }

    fn failed(&self, error: &crate::upload::UploadError, failures: u32) {
        tracing::warn!(error = %error, failures, "Upload failed; sealed batches stay in the outbox and will be retried.");
    }
}

/// Imports NDJSON from `input`. `on_outcome` sees every rejection, duplicate and note as it
/// happens. Uploads run on `rt`.
pub fn import(
    archive: &Archive,
    input: Input,
    rt: &tokio::runtime::Handle,
    patience: UploadPatience,
    on_outcome: &mut dyn FnMut(Outcome),
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let max_line = archive.settings.events.max_event_bytes;
    let mut summary = ImportSummary::default();
    let mut batcher = Batcher::new(
        archive.state.clone(),
        archive.index.clone(),
        archive.settings.batch,
    )
    .map(|b| b.with_gate(archive.gate.clone()))?;

    // Upload what an earlier run left in the outbox, and keep uploading as batches commit.
    let uploader = archive.uploader();
    let wake = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collected = Arc::new(Collect::default());
    let background = rt.spawn(crate::pipeline::run_uploader(
        uploader.clone(),
        wake.clone(),
        stop.clone(),
        crate::pipeline::Backoff {
            initial: patience.first_backoff,
            max: Duration::from_secs(5),
        },
        collected.clone(),
    ));
    let pipeline = {
        let wake = wake.clone();
        SealPipeline::start(archive, workers, move |_| wake.notify_one())
    };

    let (chunk_tx, chunk_rx) = bounded::<Chunk>(workers * 2);
    let (parsed_tx, parsed_rx) = bounded::<Parsed>(workers * 2);
    // Chunk buffers go back to the reader once parsed: a fresh megabyte per chunk would be
    // faulted in and zeroed by the kernel every time.
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(workers * 4 + 2);

    let result: Result<(), ImportError> = std::thread::scope(|scope| {
        let spawn = |name: String| std::thread::Builder::new().name(name);
        let reader = spawn("wv-read".into())
            .spawn_scoped(scope, move || match input {
                Input::Stream(input) => {
                    read_chunks(input, max_line, CHUNK_BYTES, chunk_tx, spare_rx)
                }
                Input::File(file) => map_chunks(&file, max_line, CHUNK_BYTES, chunk_tx),
            })
            .expect("thread");
        for n in 0..workers {
            let (rx, tx, spare) = (chunk_rx.clone(), parsed_tx.clone(), spare_tx.clone());
            spawn(format!("wv-parse-{n}"))
                .spawn_scoped(scope, move || parse_worker(archive, rx, tx, spare))
                .expect("thread");
        }
        drop((chunk_rx, parsed_tx, spare_tx));

        let mut waiting: BTreeMap<u64, Parsed> = BTreeMap::new();
        let mut next_chunk = 0u64;
        let mut index = 0u64;
        let mut lines_before = 0u64; // the lines of the chunks taken so far
        let mut stopped = false;
        'chunks: for parsed in parsed_rx.iter() {
            waiting.insert(parsed.no, parsed);
            while let Some(parsed) = waiting.remove(&next_chunk) {
                next_chunk += 1;
                // Batches committed since the last chunk are now in the on-disk index.
                match pipeline.drain_committed() {
                    Ok(done) => done.into_iter().for_each(|idx| batcher.committed(idx)),
                    Err(_) => {
                        stopped = true;
                        break 'chunks;
                    }
                }
                summary.bytes += parsed.bytes;
                let base = lines_before;
                lines_before += parsed.lines;
                for item in parsed.items {
                    summary.events += 1;
                    match item {
                        Item::Err { line, error } => {
                            let line = base + line;
                            summary.rejected += 1;
                            on_outcome(Outcome::Rejected(Rejection::new(line, index, error)));
                        }
                        Item::Ok { line, record, note } => {
                            let line = base + line;
                            let noted = note.map(|note| (record.event_id().to_owned(), note));
                            match batcher.admit(record)? {
                                Admission::Accepted { .. } => {
                                    summary.accepted += 1;
                                    if let Some((event_id, note)) = noted {
                                        on_outcome(Outcome::Noted {
                                            line,
                                            event_id,
                                            note,
                                        });
                                    }
                                }
                                Admission::Duplicate(record) => {
                                    summary.duplicates += 1;
                                    on_outcome(Outcome::Duplicate {
                                        line,
                                        event_id: record.event_id().to_owned(),
                                    });
                                }
                                Admission::Conflict(record) => {
                                    summary.rejected += 1;
                                    on_outcome(Outcome::Rejected(conflict(
                                        line,
                                        index,
                                        record.event_id().to_owned(),
                                    )));
                                }
                            }
                        }
                    }
                    index += 1;
                }
                for batch in batcher.take_closed() {
                    if pipeline.submit(batch).is_err() {
                        stopped = true;
                        break 'chunks;
                    }
                }
            }
        }
        drop(parsed_rx);
        if !stopped {
            batcher.close_all();
            for batch in batcher.take_closed() {
                if pipeline.submit(batch).is_err() {
                    break;
                }
            }
        }
        let read = reader.join().expect("reader thread");
        pipeline.finish()?;
        read.map_err(ImportError::Read)?;
        Ok(())
    });

    stop.store(true, std::sync::atomic::Ordering::Release);
    wake.notify_one();
    let _ = rt.block_on(background);
    let mut uploaded = std::mem::take(&mut *collected.0.lock().expect("lock"));
    result?;

    // Final uploads, patiently: the store may be briefly unreachable.
    let mut backoff = patience.first_backoff;
    for attempt in 1..=patience.attempts.max(1) {
        let (batch, res) = rt.block_on(uploader.drain());
        uploaded.extend(batch);
        match res {
            Ok(()) => {
                summary.upload_error = None;
                break;
            }
            Err(e) if e.is_transient() && attempt < patience.attempts => {
                tracing::warn!(error = %e, attempt, "The store is unreachable; retrying the upload.");
                summary.upload_error = Some(e.to_string());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) if e.is_transient() => {
                summary.upload_error = Some(e.to_string());
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    summary.pending_uploads = archive.state.outbox()?.len();
    summary.uploaded = uploaded;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The refusal of an `event_id` archived before with different content.
pub fn conflict(line: u64, index: u64, event_id: String) -> Rejection {
    Rejection {
        line,
        index,
        event_id: Some(event_id),
        kind: RejectKind::Conflict,
        field: None,
        reason: CONFLICT_REASON.into(),
    }
}

/// Why a conflict is refused, in the upstream developer's terms.
pub const CONFLICT_REASON: &str = "this event_id was already archived with different content; archived records are never changed (send a new event_id)";

fn parse_worker(
    archive: &Archive,
    rx: Receiver<Chunk>,
    tx: Sender<Parsed>,
    spare: Sender<Vec<u8>>,
) {
    let retention = archive.settings.retention.clone();
    for chunk in rx {
        let now = Timestamp::now();
        let limits = archive.limits(now);
        let mut items = Vec::new();
        let count = chunk.for_each_line(limits.max_event_bytes, |l| {
            items.push(match l {
                LineRef::TooLong { line, len } => Item::Err {
                    line,
                    error: EventError {
                        kind: RejectKind::TooLarge,
                        field: None,
                        reason: format!(
                            "the line is {len} bytes or more; the limit is {} bytes",
                            limits.max_event_bytes
                        ),
                        event_id: None,
                    },
                },
                LineRef::Text { line, start, end } => {
                    match parse_record(
                        &chunk.data[start..end],
                        &limits,
                        &retention,
                        Timestamp::now(),
                    ) {
                        Err(error) => Item::Err { line, error },
                        Ok(a) => Item::Ok {
                            line,
                            record: Box::new(a.record),
                            note: a.note,
                        },
                    }
                }
            })
        });
        // The reader may be gone or have enough spares; then the buffer is simply freed. A
        // chunk's mapping is simply dropped: its pages stay in the page cache, not in memory
        // this process holds.
        if let Text::Read(buf) = chunk.data {
            let _ = spare.try_send(buf);
        }
        if tx
            .send(Parsed {
                no: chunk.no,
                items,
                lines: count,
                bytes: chunk.bytes,
            })
            .is_err()
        {
            break;
        }
    }
}

/// Splits the input into chunks of whole lines. A line longer than `max_line` is not held in
/// memory: it is skipped up to its newline and reported as too large.
///
/// The input is read straight into the chunk buffers, which go round between this thread and
/// the parse workers at their full length: a chunk's text is its first `text` bytes, and the
/// rest is whatever an earlier chunk left there. Reading through a separate buffer, or
/// zeroing a buffer again before each use, copied or wrote every byte of the input once more.
fn read_chunks(
    mut input: Box<dyn Read + Send>,
    max_line: usize,
    chunk_bytes: usize,
    tx: Sender<Chunk>,
    spare: Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    const READ_BYTES: usize = 256 * 1024;
    let fresh = || vec![0u8; chunk_bytes + READ_BYTES];
    let mut no = 0u64;
    let mut buf = fresh();
    // `buf[..filled]` holds input not yet sent: whole lines, then at most a partial one.
    let mut filled = 0;
    let mut eof = false;
    // The lengths of the over-long lines skipped since the last chunk, and their bytes.
    let mut pending_too_long: Vec<u64> = Vec::new();
    let mut skipped = 0u64;
    let mut skipping: Option<u64> = None; // bytes of an over-long line seen so far
    // Whether `buf[..filled]` holds a complete line (it never does right after a cut).
    let mut has_newline = false;
    while !eof || filled > 0 || !pending_too_long.is_empty() {
        while !eof && (filled < chunk_bytes || !has_newline) {
            if buf.len() < filled + READ_BYTES {
                // A line longer than a chunk (up to `max_line`) needs room.
                buf.resize(filled + READ_BYTES, 0);
            }
            let mut n = input.read(&mut buf[filled..filled + READ_BYTES])?;
            if n == 0 {
                eof = true;
                break;
            }
            if let Some(seen) = skipping {
                // Skipping starts with nothing held, so the new bytes are at the start.
                debug_assert_eq!(filled, 0);
                match memchr::memchr(b'\n', &buf[..n]) {
                    None => {
                        skipping = Some(seen + n as u64);
                        continue;
                    }
                    Some(i) => {
                        pending_too_long.push(seen + i as u64);
                        skipped += seen + i as u64 + 1;
                        skipping = None;
                        buf.copy_within(i + 1..n, 0);
                        n -= i + 1;
                    }
                }
            }
            has_newline |= memchr::memchr(b'\n', &buf[filled..filled + n]).is_some();
            filled += n;
            if !has_newline && filled > max_line + 1 {
                skipping = Some(filled as u64);
                filled = 0;
            }
        }
        if eof && let Some(seen) = skipping.take() {
            pending_too_long.push(seen);
            skipped += seen;
        }
        let cut = if eof {
            filled
        } else {
            memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |i| i + 1)
        };
        if cut == 0 && pending_too_long.is_empty() {
            if eof {
                break;
            }
            continue;
        }
        // The next chunk's buffer starts with the partial line after the cut.
        let mut next = spare.try_recv().unwrap_or_else(|_| fresh());
        let rest = filled - cut;
        if next.len() < rest + READ_BYTES {
            next.resize(rest + READ_BYTES, 0);
        }
        next[..rest].copy_from_slice(&buf[cut..filled]);
        filled = rest;
        let data = std::mem::replace(&mut buf, next);
        has_newline = false;
        let bytes = cut as u64 + std::mem::take(&mut skipped);
        if tx
            .send(Chunk {
                no,
                data: Text::Read(data),
                skipped: std::mem::take(&mut pending_too_long),
                text: cut,
                bytes,
            })
            .is_err()
        {
            break;
        }
        no += 1;
    }
    Ok(())
}

/// Splits a regular file into chunks of whole lines, each with its own read-only mapping of
/// its range of the file: the parse workers read the file's bytes where the kernel keeps them,
/// and dropping a chunk unmaps it, so the memory this process holds stays bounded by the
/// chunks in flight whatever the file's size. A chunk is the whole lines of `chunk_bytes` of
/// the file; its text is the first `Chunk::text` bytes of its mapping (the rest is mapped again
/// by the next chunk). A line longer than a chunk is a chunk of its own, mapped as far as
/// `max_line` and its line ending reach; a line longer than that is not mapped at all, only
/// skipped up to its newline and reported as too large.
///
/// The file must not be truncated or rewritten while it is imported (a file still being
/// written belongs on standard input): a mapped page that no longer exists ends the process
/// with SIGBUS. Nothing is lost then, as with any crash: batches not committed were never
/// reported as archived, and the import can be run again (event_id idempotency).
fn map_chunks(
    file: &std::fs::File,
    max_line: usize,
    chunk_bytes: usize,
    tx: Sender<Chunk>,
) -> std::io::Result<()> {
    // How far a line of the largest size allowed reaches, with its CR and LF.
    let longest = (max_line + 2) as u64;
    let len = file.metadata()?.len();
    let (mut at, mut no) = (0u64, 0u64);
    while at < len {
        let mut end = len.min(at + chunk_bytes as u64);
        let mut map = map_range(file, at, end, true)?;
        let mut newline = memchr::memrchr(b'\n', &map);
        if newline.is_none() && end < len && longest > end - at {
            // A line longer than a chunk: it alone is the chunk, if it ends in time. Its pages
            // are faulted in as the scan reaches them, so no more of the file is read than
            // the line.
            end = len.min(at + longest);
            map = map_range(file, at, end, false)?;
            newline = memchr::memchr(b'\n', &map);
        }
        let chunk = match (newline, end == len) {
            (Some(i), _) => Chunk {
                no,
                data: Text::Mapped(map),
                skipped: Vec::new(),
                text: i + 1,
                bytes: i as u64 + 1,
            },
            (None, true) => Chunk {
                no,
                data: Text::Mapped(map),
                skipped: Vec::new(),
                text: (end - at) as usize,
                bytes: end - at,
            },
            (None, false) => {
                // No newline as far as the longest line allowed reaches.
                let newline = skip_line(file, end)?;
                Chunk {
                    no,
                    data: Text::Read(Vec::new()),
                    skipped: vec![newline - at],
                    text: 0,
                    bytes: (newline - at + 1).min(len - at),
                }
            }
        };
        let bytes = chunk.bytes;
        if tx.send(chunk).is_err() {
            break;
        }
        at += bytes;
        no += 1;
    }
    Ok(())
}

/// A read-only mapping of `file[at..end]`, its pages faulted in at once when `populate`.
fn map_range(
    file: &std::fs::File,
    at: u64,
    end: u64,
    populate: bool,
) -> std::io::Result<memmap2::Mmap> {
    let mut options = memmap2::MmapOptions::new();
    options.offset(at).len((end - at) as usize);
    if populate {
        // In one call here, rather than page by page in the parse workers.
        options.populate();
    }
    // SAFETY: the mapping is read-only and private to its chunk. Its bytes are the file's as
    // long as nobody changes the file during the import, which the command's documentation
    // asks (see `map_chunks`).
    unsafe { options.map(file) }
}

/// The offset of the first newline in `file` at or after `from` (or the file's end).
fn skip_line(file: &std::fs::File, mut from: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut probe = vec![0u8; 64 * 1024];
    loop {
        let n = file.read_at(&mut probe, from)?;
        if n == 0 {
            return Ok(from);
        }
        if let Some(i) = memchr::memchr(b'\n', &probe[..n]) {
            return Ok(from + i as u64);
        }
        from += n as u64;
    }
}

/// Hands `f` each line of NDJSON `data` that holds anything, with its number (counting on
/// from `line`, the number of the line before) and where it is: blank and whitespace-only
/// lines are passed over but counted, a CR before the newline is not part of its line, and
/// the last line needs no newline. Returns the number of the last line. Imports and the
/// daemon's request bodies are read by this one rule.
pub(crate) fn ndjson_lines(
    data: &[u8],
    mut line: u64,
    mut f: impl FnMut(u64, std::ops::Range<usize>),
) -> u64 {
    let mut start = 0;
    while start < data.len() {
        let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
        line += 1;
        let mut e = end;
        if e > start && data[e - 1] == b'\r' {
            e -= 1;
        }
        if data[start..e].iter().any(|b| !b.is_ascii_whitespace()) {
            f(line, start..e);
        }
        start = end + 1;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its text a few bytes or a few hundred kilobytes at a time.
    struct Trickle {
        text: Vec<u8>,
        at: usize,
        state: u64,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let want = match (self.state >> 33) % 4 {
                0 => 1 + (self.state >> 40) as usize % 16,
                1 => 1 + (self.state >> 40) as usize % 4096,
                _ => 1 + (self.state >> 40) as usize % (300 * 1024),
            };
            let n = want.min(buf.len()).min(self.text.len() - self.at);
            buf[..n].copy_from_slice(&self.text[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(Vec<u8>),
        TooLong,
    }

    /// Every line comes out once, in order and whole, whatever sizes the reads come in, and
    /// the same when the file is mapped chunk by chunk: lines cut across reads and chunks,
    /// lines longer than a chunk or than the limit (held or skipped), blank and
    /// whitespace-only lines (passed over), CRLF endings, and a last line without a newline.
    #[test]
    fn chunks_hold_every_line_whole_whatever_the_reads() {
        // Small chunks, so that many lines, short and long, fall across a cut; a limit on
        // lines below the chunk size, and one above it (lines longer than a chunk are held).
        for max_line in [3000, 20_000] {
            chunks_hold_every_line_whole(max_line);
        }
    }

    fn chunks_hold_every_line_whole(max_line: usize) {
        const CHUNK: usize = 8 * 1024;
        let mut text = Vec::new();
        let mut expected = Vec::new();
        let mut line = 0u64;
        let mut push = |text: &mut Vec<u8>, body: Vec<u8>, end: &[u8]| {
            line += 1;
            let seen = if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else if body.len() > max_line {
                Some(Seen::TooLong)
            } else {
                Some(Seen::Text(body.clone()))
            };
            if let Some(seen) = seen {
                expected.push((line, seen));
            }
            text.extend_from_slice(&body);
            text.extend_from_slice(end);
        };
        for i in 0..9000usize {
            let len = match i % 29 {
                0 => 5 * CHUNK + i,
                1 => max_line,
                2 => max_line + 1,
                3..=8 => 2000 + (i * 7919) % 9000,
                _ => 10 + (i * 31) % 700,
            };
            let body: Vec<u8> = (0..len).map(|k| b'a' + ((i + k) % 26) as u8).collect();
            let end: &[u8] = if i % 5 == 0 { b"\r\n" } else { b"\n" };
            push(&mut text, body, end);
            if i % 13 == 0 {
                push(&mut text, b"  \t".to_vec(), b"\n");
            }
        }
        push(&mut text, b"last line".to_vec(), b"");

        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &text).unwrap();
        let input = Box::new(Trickle {
            text: text.clone(),
            at: 0,
            state: 7,
        });
        let (spare_tx, spare_rx) = bounded::<Vec<u8>>(4);
        let read = lines_out(max_line, None, spare_tx, move |tx| {
            read_chunks(input, max_line, CHUNK, tx, spare_rx)
        });
        // A mapped chunk is at most a chunk long, unless it is one line longer than that.
        let mapped = lines_out(max_line, Some(CHUNK), bounded(1).0, move |tx| {
            map_chunks(&file, max_line, CHUNK, tx)
        });
        for (got, bytes) in [read, mapped] {
            assert_eq!(bytes, text.len() as u64, "every byte in one chunk");
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert!(g == e, "line {} came out as line {}", e.0, g.0);
            }
        }
    }

    /// Regular files with content are mapped; files that report no size (as `/proc` files
    /// do, though they hold text) and pipes are read.
    #[test]
    fn only_files_with_a_size_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full.ndjson");
        std::fs::write(&full, b"{}\n").unwrap();
        let empty = dir.path().join("empty.ndjson");
        std::fs::write(&empty, b"").unwrap();
        let open = |p: &std::path::Path| Input::open(p).unwrap();
        assert!(matches!(open(&full), Input::File(_)));
        assert!(matches!(open(&empty), Input::Stream(_)));
        assert!(matches!(
            open(std::path::Path::new("/proc/self/cmdline")),
            Input::Stream(_)
        ));
        assert!(matches!(open(std::path::Path::new("-")), Input::Stream(_)));
    }

    /// The lines of the chunks `split` makes, in order; each chunk's buffer goes back to it
    /// through `spare`, as the parse workers send them back.
    fn lines_out(
        max_line: usize,
        chunk_text: Option<usize>,
        spare: Sender<Vec<u8>>,
        split: impl FnOnce(Sender<Chunk>) -> std::io::Result<()> + Send + 'static,
    ) -> (Vec<(u64, Seen)>, u64) {
        let (tx, rx) = bounded::<Chunk>(4);
        let splitter = std::thread::spawn(move || split(tx));
        let mut got = Vec::new();
        let (mut bytes, mut lines_before) = (0, 0);
        for (no, chunk) in rx.into_iter().enumerate() {
            assert_eq!(chunk.no, no as u64, "chunks numbered in order");
            let mut lines = Vec::new();
            let count = chunk.for_each_line(max_line, |l| lines.push(l));
            for l in lines {
                got.push(match l {
                    LineRef::Text { line, start, end } => {
                        assert!(end <= chunk.text, "a line inside its chunk's text");
                        (
                            lines_before + line,
                            Seen::Text(chunk.data[start..end].to_vec()),
                        )
                    }
                    LineRef::TooLong { line, len } => {
                        assert!(len > max_line as u64, "line {line}: {len}");
                        (lines_before + line, Seen::TooLong)
                    }
                });
            }
            if let Some(most) = chunk_text {
                assert!(
                    chunk.text <= most || count == 1,
                    "chunk {no}: {} bytes of text in {count} lines",
                    chunk.text
                );
            }
            lines_before += count;
            bytes += chunk.bytes;
            if let Text::Read(buf) = chunk.data {
                let _ = spare.try_send(buf);
            }
        }
        splitter.join().unwrap().unwrap();
        (got, bytes)
    }
}
