//! Retrieval for Responses to Inquiry: per-day record indexes, and queries that read only the
//! parts of the archive that can match.
//!
//! **The record index of day D** (`index/dt=D/records.parquet`, docs/FORMAT.md §13) has one
//! row per event in the segments of `dt=D` — subject, actor, event id, action, source,
//! `occurred_at`, and where the event is (segment key, row) — sorted by subject. It is built
//! from the day's segments when the day is anchored (nothing is added under a day after
//! that), sealed like a record, and rebuilt byte for byte by `wormvault index rebuild`; a full
//! sweep rebuilds it and compares. A build spills sorted runs of entries to temporary
//! files and merges them, so its memory does not grow with the day's events.
//!
//! **A query** walks the days that can hold matches (late events sit in later days, so every
//! day from the `from` day on). On an indexed day it reads the index's footer and page index,
//! skips row groups by statistics and bloom filters and pages by the sorted subject, decodes
//! only the surviving pages, then reads only the pages of the `canonical` column that hold the
//! matching rows of each segment. A day not indexed yet (today's) is scanned segment by
//! segment. Every byte read is counted.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader, SortingColumn};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;

use crate::anchor::DayManifests;
use crate::layout::Layout;
use crate::manifest::Manifest;
use crate::store::{PutRequest, StoreError, WormStore};
use crate::timestamp::{Day, Timestamp};

/// The record index format version (footer key `wormvault.index.format_version`).
pub const INDEX_FORMAT_VERSION: u32 = 1;
/// Rows per row group of a record index.
const INDEX_ROW_GROUP_ROWS: usize = 65_536;
/// Rows per data page of a record index.
const INDEX_PAGE_ROWS: usize = 1_024;
/// The columns of a record index, in order.
const COLUMNS: [&str; 9] = [
    "subject_type",
    "subject_id",
    "actor_id",
    "event_id",
    "action",
    "source",
    "occurred_at",
    "segment",
    "row",
];

/// What to retrieve: every given field must match exactly; `from`/`to` bound `occurred_at`
/// (`from` inclusive, `to` exclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Timestamp>,
}

impl Filter {
    /// The exact-match conditions, by index column.
    fn equalities(&self) -> Vec<(usize, &str)> {
        [
            (0, &self.subject_type),
            (1, &self.subject_id),
            (2, &self.actor_id),
            (3, &self.event_id),
            (4, &self.action),
            (5, &self.source),
        ]
        .into_iter()
        .filter_map(|(c, v)| v.as_deref().map(|v| (c, v)))
        .collect()
    }

    fn time_matches(&self, t: Timestamp) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }

    /// Does an entry match?
    pub fn matches(&self, e: &Entry) -> bool {
        let fields = [
            &e.subject_type,
            &e.subject_id,
            &e.actor_id,
            &e.event_id,
            &e.action,
            &e.source,
        ];
        self.equalities().into_iter().all(|(c, v)| fields[c] == v)
            && self.time_matches(e.occurred_at)
    }

    /// A filter that names nothing would export the whole archive: refused.
    pub fn is_unbounded(&self) -> bool {
        self.equalities().is_empty()
    }
}

/// A filter as people write it: on the command line (`--subject-id T-1 --from 2026-11-01`) or
/// in a query string (`?subject_id=T-1&from=2026-11-01`).
#[derive(Clone, Debug, Default, clap::Args, serde::Deserialize)]
pub struct FilterParams {
    #[arg(long)]
    pub subject_type: Option<String>,
    #[arg(long)]
    pub subject_id: Option<String>,
    #[arg(long)]
    pub actor_id: Option<String>,
    #[arg(long)]
    pub event_id: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    /// Events that occurred at or after this instant (RFC 3339) or day (YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<String>,
    /// Events that occurred before this instant or day.
    #[arg(long)]
    pub to: Option<String>,
}

impl FilterParams {
    /// The filter; refused when it names nothing (that would be the whole archive).
    pub fn to_filter(&self) -> Result<Filter, String> {
        let when = |s: &Option<String>, what: &str| -> Result<Option<Timestamp>, String> {
            match s {
                None => Ok(None),
                Some(s) => Day::parse(s)
                    .map(|d| d.start())
                    .or_else(|| Timestamp::parse_rfc3339(s).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        format!("{what} must be a day or an RFC 3339 instant, not {s:?}")
                    }),
            }
        };
        let f = Filter {
            subject_type: self.subject_type.clone(),
            subject_id: self.subject_id.clone(),
            actor_id: self.actor_id.clone(),
            event_id: self.event_id.clone(),
            action: self.action.clone(),
            source: self.source.clone(),
            from: when(&self.from, "from")?,
            to: when(&self.to, "to")?,
        };
        if f.is_unbounded() {
            return Err(
                "name at least one of subject_type, subject_id, actor_id, event_id, action, source"
                    .into(),
            );
        }
        Ok(f)
    }
}

/// The event that records a retrieval in the archive (who looked at what): actor the
/// requesting principal, action `rti.query` or `rti.export`, subject the case.
pub fn audit_event(
    principal: &str,
    action: &str,
    case: &str,
    filter: &Filter,
    records: Option<usize>,
) -> String {
    let mut id = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id));
    serde_json::json!({
        "event_id": format!("{action}-{}-{}", Timestamp::now().as_micros(), hex::encode(id)),
        "occurred_at": Timestamp::now(),
        "actor": {"type": "SERVICE", "id": principal},
        "action": action,
        "subject": {"type": "rti-case", "id": case},
        "source": "API",
        "payload": {"filter": filter, "records": records},
    })
    .to_string()
}

/// One event as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub subject_type: String,
    pub subject_id: String,
    pub actor_id: String,
    pub event_id: String,
    pub action: String,
    pub source: String,
    pub occurred_at: Timestamp,
    pub segment: String,
    pub row: u64,
}

impl Entry {
    /// The entry of row `row` of segment `segment`.
    pub fn of(r: &crate::segment::StoredRow, segment: &str, row: usize) -> Entry {
        Entry {
            subject_type: r.subject_type.clone(),
            subject_id: r.subject_id.clone(),
            actor_id: r.actor_id.clone(),
            event_id: r.event_id.clone(),
            action: r.action.clone(),
            source: r.source.clone(),
            occurred_at: r.occurred_at,
            segment: segment.to_owned(),
            row: row as u64,
        }
    }
}

/// The days that have manifests, in order.
pub async fn manifest_days(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
) -> Result<Vec<Day>, StoreError> {
    Ok(store
        .list_dirs(&layout.manifests_prefix())
        .await?
        .iter()
        .filter_map(|d| Layout::day_of_dir(d))
        .collect())
}

fn index_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| match *c {
                "occurred_at" => Field::new(*c, ts.clone(), false),
                "row" => Field::new(*c, DataType::Int64, false),
                _ => Field::new(*c, DataType::Utf8, false),
            })
            .collect::<Vec<_>>(),
    ))
}

/// A built record index: its bytes and what it covers.
pub struct BuiltIndex {
    pub day: Day,
    pub bytes: Bytes,
    pub events: u64,
    pub segments: u64,
}

/// Builds the record index of `day` from its manifests' segments. Deterministic: the same
/// segments give the same bytes.
pub async fn build_index(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    day: Day,
) -> Result<BuiltIndex, String> {
    let manifests = DayManifests::read(store, layout, day)
        .await
        .map_err(|e| e.to_string())?;
    build_index_of(store, &manifests).await
}

/// Builds the record index of the day of `manifests` from their segments.
///
/// Memory does not grow with the day: only the indexed columns of a few segments at a time
/// are decoded (into Arrow arrays, with no per-value allocation); every [`RUN_BYTES`] of
/// decoded columns are sorted and spilled to an anonymous temporary file (a *run*, about 100
/// bytes an entry), and the runs are merged into the index file. The runs are as many as the
/// day's entries need, not one per segment: a quiet day sealed every minute has thousands of
/// small segments, and a run each would hold a file and a read buffer each during the merge.
pub async fn build_index_of(
    store: &Arc<dyn WormStore>,
    manifests: &DayManifests,
) -> Result<BuiltIndex, String> {
    let day = manifests.day;
    let mut segments = Vec::with_capacity(manifests.manifests.len());
    for (key, bytes) in &manifests.manifests {
        let m = Manifest::from_bytes(bytes).map_err(|e| format!("{key}: {e}"))?;
        segments.push((m.segment.key, m.segment.version_id));
    }
    let to_read = segments.clone();
    let segments = Arc::new(segments);
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut decoded = futures::stream::iter(to_read.into_iter().enumerate())
        .map(|(i, (key, version))| decode_segment(store.clone(), i, key, version))
        .buffered(parallel);
    let mut runs = Vec::new();
    let (mut pending, mut pending_bytes) = (Vec::new(), 0);
    while let Some(parts) = decoded.try_next().await? {
        pending_bytes += parts.iter().map(IndexPart::memory).sum::<usize>();
        pending.extend(parts);
        if pending_bytes >= RUN_BYTES {
            runs.push(spill(std::mem::take(&mut pending), segments.clone()).await?);
            pending_bytes = 0;
        }
    }
    if !pending.is_empty() {
        runs.push(spill(pending, segments.clone()).await?);
    }
    let n_segments = segments.len() as u64;
    let root = hex::encode(manifests.root());
    let (bytes, events) =
        tokio::task::spawn_blocking(move || merge_and_write(day, &root, runs, &segments))
            .await
            .expect("index write task")?;
    Ok(BuiltIndex {
        day,
        bytes,
        events,
        segments: n_segments,
    })
}

/// Merges the runs (each in index order) and writes the index file; returns it and the
/// entry count.
fn merge_and_write(
    day: Day,
    root: &str,
    mut runs: Vec<Run>,
    segments: &[(String, String)],
) -> Result<(Bytes, u64), String> {
    let io = |e: std::io::Error| format!("reading back a spilled index run: {e}");
    let n: u64 = runs.iter().map(|r| r.rows).sum();
    let mut writer = IndexWriter::new(day, root, n)?;
    // The runs with entries left, ordered by their current entry, the least last.
    let mut live: Vec<usize> = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter_mut().enumerate() {
        if run.advance().map_err(io)? {
            live.push(i);
        }
    }
    live.sort_unstable_by(|&a, &b| runs[b].sort_key(segments).cmp(&runs[a].sort_key(segments)));
    while let Some(i) = live.pop() {
        writer.push(runs[i].entry(segments)?)?;
        if runs[i].advance().map_err(io)? {
            let k = runs[i].sort_key(segments);
            let at = live.partition_point(|&o| runs[o].sort_key(segments) > k);
            live.insert(at, i);
        }
    }
    Ok((writer.finish()?, n))
}

/// Decoded index columns gathered before they are sorted and spilled as one run.
const RUN_BYTES: usize = 8 << 20;

/// Decodes one segment version's indexed columns (segment `segment` of the day).
async fn decode_segment(
    store: Arc<dyn WormStore>,
    segment: usize,
    key: String,
    version: String,
) -> Result<Vec<IndexPart>, String> {
    let bytes = store
        .get(&key, Some(&version))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let batches = crate::segment::read_columns(bytes, INDEXED_COLUMNS)?;
        let mut first_row = 0u64;
        let mut parts = Vec::with_capacity(batches.len());
        for b in &batches {
            parts.push(IndexPart::of(segment, first_row, b)?);
            first_row += b.num_rows() as u64;
        }
        Ok::<_, String>(parts)
    })
    .await
    .expect("segment read task")
    .map_err(|e| format!("{key}: {e}"))
}

/// Sorts and spills decoded parts as a run, off the async threads.
async fn spill(parts: Vec<IndexPart>, segments: Arc<Vec<(String, String)>>) -> Result<Run, String> {
    tokio::task::spawn_blocking(move || Run::spill(&parts, &segments))
        .await
        .expect("index spill task")
        .map_err(|e| format!("spilling index entries: {e}"))
}

/// Index entries in index order, in an anonymous temporary file, read back one entry at a
/// time. An entry: the six strings of [`INDEXED_COLUMNS`] (subject type and id, actor id,
/// event id, action, source), each as a little-endian `u32` length and its bytes, then
/// `occurred_at` (`i64`), the segment's position among the day's (`u32`) and the row (`u64`),
/// little-endian.
struct Run {
    /// Entries in the run.
    rows: u64,
    /// Entries not read yet.
    left: u64,
    reader: std::io::BufReader<std::fs::File>,
    /// The current entry.
    text: [Vec<u8>; 6],
    occurred_at: i64,
    segment: usize,
    row: u64,
}

impl Run {
    /// Writes the entries of decoded parts in index order ([`Run::sort_key`]).
    fn spill(parts: &[IndexPart], segments: &[(String, String)]) -> std::io::Result<Run> {
        use std::io::{Seek, Write};
        let mut keys: Vec<_> = parts
            .iter()
            .enumerate()
            .flat_map(|(p, part)| {
                let s = &part.strings;
                let key = segments[part.segment].0.as_bytes();
                (0..part.occurred_at.len()).map(move |r| {
                    (
                        s[0].value(r).as_bytes(),
                        s[1].value(r).as_bytes(),
                        part.occurred_at.value(r),
                        s[3].value(r).as_bytes(),
                        key,
                        part.first_row + r as u64,
                        (p, r),
                    )
                })
            })
            .collect();
        keys.sort_unstable();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, tempfile::tempfile()?);
        for &(_, _, occurred_at, _, _, row, (p, r)) in &keys {
            for s in &parts[p].strings {
                let v = s.value(r).as_bytes();
                out.write_all(&(v.len() as u32).to_le_bytes())?;
                out.write_all(v)?;
            }
            out.write_all(&occurred_at.to_le_bytes())?;
            out.write_all(&(parts[p].segment as u32).to_le_bytes())?;
            out.write_all(&row.to_le_bytes())?;
        }
        let rows = keys.len() as u64;
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        Ok(Run {
            rows,
            left: rows,
            reader: std::io::BufReader::with_capacity(1 << 16, file),
            text: Default::default(),
            occurred_at: 0,
            segment: 0,
            row: 0,
        })
    }

    /// Reads the next entry; false when the run is done.
    fn advance(&mut self) -> std::io::Result<bool> {
        use std::io::Read;
        if self.left == 0 {
            return Ok(false);
        }
        let mut word = [0u8; 8];
        for t in &mut self.text {
            self.reader.read_exact(&mut word[..4])?;
            let len = u32::from_le_bytes(word[..4].try_into().expect("four bytes")) as usize;
            t.resize(len, 0);
            self.reader.read_exact(t)?;
        }
        self.reader.read_exact(&mut word)?;
        self.occurred_at = i64::from_le_bytes(word);
        self.reader.read_exact(&mut word[..4])?;
        self.segment = u32::from_le_bytes(word[..4].try_into().expect("four bytes")) as usize;
        self.reader.read_exact(&mut word)?;
        self.row = u64::from_le_bytes(word);
        self.left -= 1;
        Ok(true)
    }

    /// The current entry's place in the index file's order: subject, then time; ties in a
    /// fixed order (event id, segment key, row).
    #[allow(clippy::type_complexity)]
    fn sort_key<'a>(
        &'a self,
        segments: &'a [(String, String)],
    ) -> (&'a [u8], &'a [u8], i64, &'a [u8], &'a [u8], u64) {
        (
            &self.text[0],
            &self.text[1],
            self.occurred_at,
            &self.text[3],
            segments[self.segment].0.as_bytes(),
            self.row,
        )
    }

    fn entry<'a>(&'a self, segments: &'a [(String, String)]) -> Result<EntryRef<'a>, String> {
        let text = |i: usize| {
            std::str::from_utf8(&self.text[i])
                .map_err(|_| "a spilled index entry is not UTF-8".to_owned())
        };
        Ok(EntryRef {
            subject_type: text(0)?,
            subject_id: text(1)?,
            actor_id: text(2)?,
            event_id: text(3)?,
            action: text(4)?,
            source: text(5)?,
            occurred_at: self.occurred_at,
            segment: &segments[self.segment].0,
            row: self.row,
        })
    }
}

/// The segment columns a record index is built from: the index's own, but `segment`, `row`.
const INDEXED_COLUMNS: &[&str] = COLUMNS.split_at(7).0;

/// One decoded batch of a segment's indexed columns.
struct IndexPart {
    /// The segment's position among the day's.
    segment: usize,
    first_row: u64,
    /// `INDEXED_COLUMNS` but the last, in that order.
    strings: [arrow_array::StringArray; 6],
    occurred_at: arrow_array::TimestampMicrosecondArray,
}

impl IndexPart {
    /// Batch `b` of segment `segment`, whose first row is row `first_row` of the segment.
    fn of(segment: usize, first_row: u64, b: &RecordBatch) -> Result<IndexPart, String> {
        let column = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| format!("the segment has no {name} column"))
        };
        let string = |name: &str| -> Result<arrow_array::StringArray, String> {
            column(name)?
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .cloned()
                .ok_or_else(|| format!("{name} is not a string column"))
        };
        Ok(IndexPart {
            segment,
            first_row,
            strings: [
                string(INDEXED_COLUMNS[0])?,
                string(INDEXED_COLUMNS[1])?,
                string(INDEXED_COLUMNS[2])?,
                string(INDEXED_COLUMNS[3])?,
                string(INDEXED_COLUMNS[4])?,
                string(INDEXED_COLUMNS[5])?,
            ],
            occurred_at: column(INDEXED_COLUMNS[6])?
                .as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                .cloned()
                .ok_or("occurred_at is not a timestamp column")?,
        })
    }

    /// The memory its arrays hold.
    fn memory(&self) -> usize {
        use arrow_array::Array;
        self.strings
            .iter()
            .map(|s| s.get_array_memory_size())
            .sum::<usize>()
            + self.occurred_at.get_array_memory_size()
    }
}

/// One row of a record index, borrowed from where it was read.
#[derive(Clone, Copy)]
struct EntryRef<'a> {
    subject_type: &'a str,
    subject_id: &'a str,
    actor_id: &'a str,
    event_id: &'a str,
    action: &'a str,
    source: &'a str,
    occurred_at: i64,
    segment: &'a str,
    row: u64,
}

/// Rows per record batch given to the index's Parquet writer.
const INDEX_WRITE_ROWS: usize = 16_384;

/// Writes an index file from its entries, given in index order. The file goes to an anonymous
/// temporary file first and is read back at its exact size (a growing `Vec` would hold up to
/// three times the index while it doubles).
struct IndexWriter {
    writer: ArrowWriter<std::io::BufWriter<std::fs::File>>,
    schema: SchemaRef,
    strings: Vec<StringBuilder>,
    occurred: TimestampMicrosecondBuilder,
    segment: StringBuilder,
    row: Int64Builder,
    pending: usize,
}

impl IndexWriter {
    /// A writer for the index of `day` (daily root `daily_root`) of `n` entries.
    fn new(day: Day, daily_root: &str, n: u64) -> Result<IndexWriter, String> {
        let schema = index_schema();
        let col = |name: &str| ColumnPath::from(name);
        let kv = |k: &str, v: String| KeyValue::new(format!("wormvault.index.{k}"), v);
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).expect("valid level"),
            ))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(INDEX_ROW_GROUP_ROWS))
            .set_data_page_row_count_limit(INDEX_PAGE_ROWS)
            .set_sorting_columns(Some(
                [0, 1, 6]
                    .map(|c| SortingColumn {
                        column_idx: c,
                        descending: false,
                        nulls_first: false,
                    })
                    .to_vec(),
            ))
            .set_key_value_metadata(Some(vec![
                kv("format_version", INDEX_FORMAT_VERSION.to_string()),
                kv("day", day.to_string()),
                kv("daily_root", daily_root.to_owned()),
                kv("events", n.to_string()),
            ]));
        // Page statistics (the page index) only where rows are sorted (the subject columns):
        // elsewhere they prune nothing and only make every query read a larger index.
        for name in &COLUMNS[2..] {
            props = props.set_column_statistics_enabled(col(name), EnabledStatistics::Chunk);
        }
        for name in ["subject_id", "actor_id", "event_id"] {
            props = props
                .set_column_bloom_filter_enabled(col(name), true)
                .set_column_bloom_filter_fpp(col(name), 0.01)
                .set_column_bloom_filter_max_ndv(col(name), INDEX_ROW_GROUP_ROWS as u64);
        }
        let file = tempfile::tempfile().map_err(|e| format!("a temporary index file: {e}"))?;
        let writer = ArrowWriter::try_new(
            std::io::BufWriter::with_capacity(1 << 16, file),
            schema.clone(),
            Some(props.build()),
        )
        .map_err(|e| e.to_string())?;
        // `finish` empties a builder and keeps its type: the same builders serve every batch.
        Ok(IndexWriter {
            writer,
            schema,
            strings: (0..6).map(|_| StringBuilder::new()).collect(),
            occurred: TimestampMicrosecondBuilder::with_capacity(INDEX_WRITE_ROWS)
                .with_timezone("UTC"),
            segment: StringBuilder::new(),
            row: Int64Builder::with_capacity(INDEX_WRITE_ROWS),
            pending: 0,
        })
    }

    fn push(&mut self, e: EntryRef<'_>) -> Result<(), String> {
        for (b, v) in self.strings.iter_mut().zip([
            e.subject_type,
            e.subject_id,
            e.actor_id,
            e.event_id,
            e.action,
            e.source,
        ]) {
            b.append_value(v);
        }
        self.occurred.append_value(e.occurred_at);
        self.segment.append_value(e.segment);
        self.row.append_value(e.row as i64);
        self.pending += 1;
        if self.pending == INDEX_WRITE_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the entries pushed since the last flush as one record batch.
    fn flush(&mut self) -> Result<(), String> {
        if self.pending == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.occurred.finish()));
        columns.push(Arc::new(self.segment.finish()));
        columns.push(Arc::new(self.row.finish()));
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())?;
        self.writer.write(&batch).map_err(|e| e.to_string())?;
        self.pending = 0;
        Ok(())
    }

    /// The index file.
    fn finish(mut self) -> Result<Bytes, String> {
        use std::io::{Read, Seek};
        self.flush()?;
        let io = |e: std::io::Error| format!("reading back the index file: {e}");
        let mut file = self
            .writer
            .into_inner()
            .map_err(|e| e.to_string())?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        let len = file.stream_position().map_err(io)?;
        file.rewind().map_err(io)?;
        let mut out = Vec::with_capacity(len as usize);
        file.read_to_end(&mut out).map_err(io)?;
        Ok(Bytes::from(out))
    }
}

/// Stores the record index of `day` if it is not stored yet, built from `manifests` when
/// given (else they are read). Returns whether it wrote it.
pub async fn ensure_index(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    until: Timestamp,
    day: Day,
    manifests: Option<&DayManifests>,
) -> Result<bool, String> {
    match store.head(&layout.record_index(day), None).await {
        Ok(_) => Ok(false),
        Err(StoreError::NotFound { .. }) => {
            let built = match manifests {
                Some(m) => build_index_of(store, m).await?,
                None => build_index(store, layout, day).await?,
            };
            store_index(store, layout, until, built)
                .await
                .map(|(_, w)| w)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Builds the record index of `day` from its segments and stores it; if one is stored
/// already it must have exactly these bytes (create-only: it is never replaced). Returns the
/// index and whether it was written now.
pub async fn rebuild_index(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    until: Timestamp,
    day: Day,
) -> Result<(BuiltIndex, bool), String> {
    let built = build_index(store, layout, day).await?;
    store_index(store, layout, until, built).await
}

/// Stores a built index create-only: an index already stored must have these bytes.
async fn store_index(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    until: Timestamp,
    built: BuiltIndex,
) -> Result<(BuiltIndex, bool), String> {
    let key = layout.record_index(built.day);
    let req = PutRequest::new(
        key.clone(),
        built.bytes.clone(),
        until,
        "application/vnd.apache.parquet",
    );
    let existed = store.head(&key, None).await.is_ok();
    match crate::store::put_or_confirm(store.as_ref(), &req, existed).await {
        Ok(_) => Ok((built, !existed)),
        Err(StoreError::Conflict { .. }) => Err(format!(
            "{key} exists and differs from the index rebuilt from the day's segments (a sweep reports it)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// An `AsyncFileReader` over one stored object that counts the bytes it reads.
struct StoreReader {
    store: Arc<dyn WormStore>,
    key: String,
    size: u64,
    read: Arc<AtomicU64>,
    /// Whether metadata loads include the page index.
    page_index: bool,
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let b = self
                .store
                .get_range(&self.key, None, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            self.read.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(b)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let policy = if self.page_index {
                parquet::file::metadata::PageIndexPolicy::Optional
            } else {
                parquet::file::metadata::PageIndexPolicy::Skip
            };
            let md = ParquetMetaDataReader::new()
                .with_page_index_policy(policy)
                .with_prefetch_hint(Some(16 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(md))
        }
        .boxed()
    }
}

/// One retrieved record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    pub event_id: String,
    pub occurred_at: Timestamp,
    /// The day (`dt=`) of the segment holding it; a proof is `wormvault prove EVENT_ID --day`.
    pub day: Day,
    pub segment: String,
    pub row: u64,
    /// The record's canonical bytes (docs/FORMAT.md §2).
    #[serde(skip)]
    pub canonical: Vec<u8>,
}

/// One retrieved record as an NDJSON line: the archived event itself, where it is, and the
/// command that proves it.
pub fn record_line(r: &Found) -> String {
    let event = std::str::from_utf8(&r.canonical).unwrap_or("null");
    format!(
        "{{\"event\":{event},\"day\":\"{}\",\"segment\":{},\"row\":{},\"proof\":{}}}",
        r.day,
        serde_json::Value::from(r.segment.as_str()),
        r.row,
        serde_json::Value::from(format!(
            "wormvault prove {} --day {}",
            r.event_id,
            r.occurred_at.day()
        ))
    )
}

/// What a query read and found.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    pub records: Vec<Found>,
    /// Bytes read from the store (index objects, segment parts and listings excluded).
    pub bytes_read: u64,
    /// Days answered from their index, and days scanned segment by segment.
    pub indexed_days: u64,
    pub scanned_days: u64,
}

/// Runs a query over the archive. Results are in (occurred_at, event_id) order.
pub async fn query(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    filter: &Filter,
) -> Result<QueryOutcome, String> {
    let read = Arc::new(AtomicU64::new(0));
    let days: Vec<Day> = manifest_days(store, layout)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        // Late events are archived on later days than they occurred: no upper bound.
        .filter(|d| filter.from.is_none_or(|f| *d >= f.day()))
        .collect();
    let mut out = QueryOutcome::default();
    for day in days {
        let before = read.load(Ordering::Relaxed);
        let entries = match index_entries(store, layout, day, filter, &read).await? {
            Some(e) => {
                out.indexed_days += 1;
                e
            }
            None => {
                out.scanned_days += 1;
                scan_day(store, layout, day, filter, &read, &mut out.records).await?;
                continue;
            }
        };
        tracing::debug!(%day, bytes = read.load(Ordering::Relaxed) - before, hits = entries.len(), "Read the day's index.");
        let mut by_segment: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in entries {
            by_segment.entry(e.segment.clone()).or_default().push(e);
        }
        for (segment, mut entries) in by_segment {
            entries.sort_by_key(|e| e.row);
            let rows: Vec<u64> = entries.iter().map(|e| e.row).collect();
            let before = read.load(Ordering::Relaxed);
            let canon = read_rows(store, &segment, &rows, &read).await?;
            tracing::debug!(%segment, rows = rows.len(), bytes = read.load(Ordering::Relaxed) - before, "Read rows of a segment.");
            for (e, c) in entries.into_iter().zip(canon) {
                out.records.push(Found {
                    event_id: e.event_id,
                    occurred_at: e.occurred_at,
                    day,
                    segment: e.segment,
                    row: e.row,
                    canonical: c,
                });
            }
        }
    }
    out.records
        .sort_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
    out.bytes_read = read.load(Ordering::Relaxed);
    Ok(out)
}

/// Opens a stored Parquet object for reading parts of it.
async fn open(
    store: &Arc<dyn WormStore>,
    key: &str,
    read: &Arc<AtomicU64>,
    page_index: bool,
) -> Result<Option<(StoreReader, ArrowReaderMetadata)>, String> {
    let size = match store.head(key, None).await {
        Ok(h) => h.size,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut reader = StoreReader {
        store: store.clone(),
        key: key.to_owned(),
        size,
        read: read.clone(),
        page_index,
    };
    let options = ArrowReaderOptions::new().with_page_index_policy(if page_index {
        parquet::file::metadata::PageIndexPolicy::Optional
    } else {
        parquet::file::metadata::PageIndexPolicy::Skip
    });
    let md = ArrowReaderMetadata::load_async(&mut reader, options)
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    Ok(Some((reader, md)))
}

/// The index entries of `day` that match, or `None` if the day has no index.
async fn index_entries(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    day: Day,
    filter: &Filter,
    read: &Arc<AtomicU64>,
) -> Result<Option<Vec<Entry>>, String> {
    let key = layout.record_index(day);
    // First the footer alone: on most days statistics and bloom filters rule every row group
    // out, and the page index is never read.
    let Some((reader, md)) = open(store, &key, read, false).await? else {
        return Ok(None);
    };
    let meta = md.metadata().clone();
    let eqs = filter.equalities();
    let mut bloom = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, md);
    let mut candidates = Vec::new();
    for rg in 0..meta.num_row_groups() {
        let g = meta.row_group(rg);
        // Row-group statistics.
        let keep = eqs
            .iter()
            .all(|(c, v)| stats_may_contain(g.column(*c).statistics(), v.as_bytes()))
            && time_may_overlap(g.column(6).statistics(), filter);
        let mut keep = keep;
        // Bloom filters on subject_id, actor_id and event_id.
        if keep {
            for (c, v) in &eqs {
                // A subject has a few events a day at most: on most days the bloom filter
                // rules the whole row group out before any page is read.
                if [1, 2, 3].contains(c)
                    && let Some(sbbf) = bloom
                        .get_row_group_column_bloom_filter(rg, *c)
                        .await
                        .map_err(|e| format!("{key}: {e}"))?
                    && !sbbf.check(v)
                {
                    keep = false;
                }
            }
        }
        if keep {
            candidates.push(rg);
        }
    }
    if candidates.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let (reader, md) = open(store, &key, read, true)
        .await?
        .ok_or_else(|| format!("{key} disappeared"))?;
    let meta = md.metadata().clone();
    let mut selected = Vec::new();
    let mut selection: Vec<RowSelector> = Vec::new();
    for rg in candidates {
        let n = meta.row_group(rg).num_rows() as usize;
        selected.push(rg);
        // Pages of the sorted subject columns that can hold the subject.
        let pages = meta.page_index_for_row_group(rg);
        let mut rows = vec![true; n];
        for (c, v) in eqs.iter().filter(|(c, _)| *c <= 1) {
            let (Some(ColumnIndexMetaData::BYTE_ARRAY(ci)), Some(locs)) =
                (pages.column_index(*c), pages.page_locations(*c))
            else {
                continue;
            };
            for (p, loc) in locs.iter().enumerate() {
                let start = loc.first_row_index as usize;
                let end = locs.get(p + 1).map_or(n, |l| l.first_row_index as usize);
                let may = match (ci.min_value(p), ci.max_value(p)) {
                    (Some(lo), Some(hi)) => lo <= v.as_bytes() && v.as_bytes() <= hi,
                    _ => true,
                };
                if !may {
                    rows[start..end].iter_mut().for_each(|r| *r = false);
                }
            }
        }
        selection.extend(selectors(&rows));
    }
    if selected.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, md)
        .with_row_groups(selected)
        .with_row_selection(RowSelection::from(selection))
        .build()
        .map_err(|e| format!("{key}: {e}"))?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| format!("{key}: {e}"))?;
        let s = |i: usize| -> Result<&StringArray, String> {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| format!("{key}: column {} is not text", COLUMNS[i]))
        };
        let (st, si, ai, ei, ac, so, sg) = (s(0)?, s(1)?, s(2)?, s(3)?, s(4)?, s(5)?, s(7)?);
        let occurred = batch
            .column(6)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| format!("{key}: occurred_at is not a timestamp"))?;
        let row = batch
            .column(8)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| format!("{key}: row is not an integer"))?;
        for i in 0..batch.num_rows() {
            let e = Entry {
                subject_type: st.value(i).to_owned(),
                subject_id: si.value(i).to_owned(),
                actor_id: ai.value(i).to_owned(),
                event_id: ei.value(i).to_owned(),
                action: ac.value(i).to_owned(),
                source: so.value(i).to_owned(),
                occurred_at: Timestamp::from_micros(occurred.value(i)),
                segment: sg.value(i).to_owned(),
                row: row.value(i) as u64,
            };
            if filter.matches(&e) {
                out.push(e);
            }
        }
    }
    Ok(Some(out))
}

/// Run-length selectors for a per-row keep mask.
fn selectors(rows: &[bool]) -> Vec<RowSelector> {
    let mut out: Vec<RowSelector> = Vec::new();
    for &keep in rows {
        match out.last_mut() {
            Some(s) if s.skip != keep => s.row_count += 1,
            _ => out.push(if keep {
                RowSelector::select(1)
            } else {
                RowSelector::skip(1)
            }),
        }
    }
    out
}

fn stats_may_contain(stats: Option<&Statistics>, v: &[u8]) -> bool {
    match stats {
        Some(Statistics::ByteArray(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(lo), Some(hi)) => lo.data() <= v && v <= hi.data(),
            _ => true,
        },
        _ => true,
    }
}

fn time_may_overlap(stats: Option<&Statistics>, f: &Filter) -> bool {
    match stats {
        Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(lo), Some(hi)) => {
                f.from.is_none_or(|from| *hi >= from.as_micros())
                    && f.to.is_none_or(|to| *lo < to.as_micros())
            }
            _ => true,
        },
        _ => true,
    }
}

/// Reads the canonical bytes of `rows` (sorted) of a segment, reading only their pages.
async fn read_rows(
    store: &Arc<dyn WormStore>,
    segment: &str,
    rows: &[u64],
    read: &Arc<AtomicU64>,
) -> Result<Vec<Vec<u8>>, String> {
    read_column(store, segment, "canonical", Some(rows), read).await
}

/// The leaf hashes of every row of a segment (its `leaf_hash` column only).
pub async fn read_leaves(
    store: &Arc<dyn WormStore>,
    segment: &str,
    read: &Arc<AtomicU64>,
) -> Result<Vec<crate::merkle::Hash>, String> {
    read_column(store, segment, "leaf_hash", None, read)
        .await?
        .into_iter()
        .map(|v| {
            v.try_into()
                .map_err(|_| format!("{segment}: a leaf hash is not 32 bytes"))
        })
        .collect()
}

/// Reads one binary column of a segment: every row, or only `rows` (sorted, reading only
/// their pages).
async fn read_column(
    store: &Arc<dyn WormStore>,
    segment: &str,
    column: &str,
    rows: Option<&[u64]>,
    read: &Arc<AtomicU64>,
) -> Result<Vec<Vec<u8>>, String> {
    let (reader, md) = open(store, segment, read, true)
        .await?
        .ok_or_else(|| format!("{segment} is named by the index but not in the store"))?;
    let total = md.metadata().file_metadata().num_rows() as usize;
    let index = md
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == column)
        .ok_or_else(|| format!("{segment} has no {column} column"))?;
    let mask = ProjectionMask::leaves(md.metadata().file_metadata().schema_descr(), [index]);
    let mut builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, md).with_projection(mask);
    if let Some(rows) = rows {
        let mut keep = vec![false; total];
        for r in rows {
            *keep
                .get_mut(*r as usize)
                .ok_or_else(|| format!("{segment} has no row {r}"))? = true;
        }
        builder = builder.with_row_selection(RowSelection::from(selectors(&keep)));
    }
    let mut stream = builder.build().map_err(|e| format!("{segment}: {e}"))?;
    let mut out = Vec::with_capacity(rows.map_or(total, <[u64]>::len));
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| format!("{segment}: {e}"))?;
        let col = batch.column(0);
        if let Some(b) = col.as_any().downcast_ref::<BinaryArray>() {
            out.extend((0..b.len()).map(|i| b.value(i).to_vec()));
        } else if let Some(b) = col
            .as_any()
            .downcast_ref::<arrow_array::FixedSizeBinaryArray>()
        {
            out.extend((0..b.len()).map(|i| b.value(i).to_vec()));
        } else {
            return Err(format!("{segment}: {column} is not binary"));
        }
    }
    let want = rows.map_or(total, <[u64]>::len);
    if out.len() != want {
        return Err(format!("{segment}: read {} of {want} rows", out.len()));
    }
    Ok(out)
}

/// Scans every segment of a day that has no index yet (reads them whole).
async fn scan_day(
    store: &Arc<dyn WormStore>,
    layout: &Layout,
    day: Day,
    filter: &Filter,
    read: &Arc<AtomicU64>,
    out: &mut Vec<Found>,
) -> Result<(), String> {
    let manifests = DayManifests::read(store, layout, day)
        .await
        .map_err(|e| e.to_string())?;
    for (key, bytes) in &manifests.manifests {
        let m = Manifest::from_bytes(bytes).map_err(|e| format!("{key}: {e}"))?;
        if filter.to.is_some_and(|t| m.info.first_occurred_at >= t)
            || filter.from.is_some_and(|f| m.info.last_occurred_at < f)
        {
            continue;
        }
        let seg = store
            .get(&m.segment.key, Some(&m.segment.version_id))
            .await
            .map_err(|e| e.to_string())?;
        read.fetch_add(seg.len() as u64, Ordering::Relaxed);
        let rows = tokio::task::spawn_blocking(move || crate::segment::read_segment(seg))
            .await
            .expect("segment read task")
            .map_err(|e| format!("{}: {e}", m.segment.key))?;
        for (i, r) in rows.rows.into_iter().enumerate() {
            let e = Entry::of(&r, &m.segment.key, i);
            if filter.matches(&e) {
                out.push(Found {
                    event_id: e.event_id,
                    occurred_at: e.occurred_at,
                    day,
                    segment: e.segment,
                    row: e.row,
                    canonical: r.canonical,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded batch of `rows` entries of segment `segment`, subjects cycling over a few
    /// values so that entries of different segments interleave in index order.
    fn part(segment: usize, first_row: u64, rows: usize) -> IndexPart {
        let text = |f: &dyn Fn(usize) -> String| {
            arrow_array::StringArray::from((0..rows).map(f).collect::<Vec<_>>())
        };
        IndexPart {
            segment,
            first_row,
            strings: [
                text(&|_| "trade".into()),
                text(&|r| format!("T-{}", (r * 7 + segment) % 5)),
                text(&|r| format!("u{}", r % 3)),
                text(&|r| format!("e-{segment}-{r}")),
                text(&|_| "trade.new".into()),
                text(&|_| "UI".into()),
            ],
            occurred_at: arrow_array::TimestampMicrosecondArray::from(
                (0..rows)
                    .map(|r| (r as i64 % 4) * 1_000_000)
                    .collect::<Vec<_>>(),
            ),
        }
    }

    /// However a day's entries are cut into runs (one per segment, several segments to a run,
    /// all in one), the merged index is byte for byte the same.
    #[test]
    fn the_index_does_not_depend_on_how_entries_are_cut_into_runs() {
        let segments: Vec<(String, String)> = (0..4)
            .map(|i| (format!("segment-{i}"), "v".into()))
            .collect();
        let parts = || (0..4).map(|s| part(s, 0, 30 + s)).collect::<Vec<_>>();
        let build = |cuts: &[usize]| {
            let mut all = parts();
            let mut runs = Vec::new();
            for &n in cuts.iter().rev() {
                let tail = all.split_off(all.len() - n);
                runs.push(Run::spill(&tail, &segments).unwrap());
            }
            let day = Day::parse("2026-11-20").unwrap();
            merge_and_write(day, "00", runs, &segments).unwrap()
        };
        let (one, n) = build(&[4]);
        assert_eq!(n, 30 + 31 + 32 + 33);
        assert_eq!(build(&[1, 1, 1, 1]).0, one);
        assert_eq!(build(&[2, 1, 1]).0, one);
        assert_eq!(build(&[1, 3]).0, one);
        // Every entry names its own segment and row.
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(one).unwrap();
        let mut seen = std::collections::BTreeMap::<String, i64>::new();
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let col = |name: &str| batch.column_by_name(name).unwrap().clone();
            let segment = col("segment");
            let segment = segment
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let event = col("event_id");
            let event = event
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let row = col("row");
            let row = row
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let s = segments
                    .iter()
                    .position(|(k, _)| k == segment.value(i))
                    .unwrap();
                assert_eq!(event.value(i), format!("e-{s}-{}", row.value(i)));
                *seen.entry(segment.value(i).to_owned()).or_default() += 1;
            }
        }
        let counts: Vec<i64> = seen.into_values().collect();
        assert_eq!(counts, [30, 31, 32, 33]);
    }
}
