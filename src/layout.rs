//! Every object key in the archive is built here, and nowhere else.
//!
//! ```text
//! {prefix}segments/dt=YYYY-MM-DD/{writer}-{batch_idx:012}.parquet   one batch's events
//! {prefix}manifests/dt=YYYY-MM-DD/{writer}-{batch_idx:012}.json     the sealed record of it
//! {prefix}sweeps/dt=YYYY-MM-DD/{sweep_id}.json and .txt                a sweep report (run day)
//! {prefix}anchors/dt=YYYY-MM-DD/anchor.note                          the day's signed daily root
//! {prefix}anchors/dt=YYYY-MM-DD/anchor.tsr                           its RFC 3161 token
//! {prefix}index/dt=YYYY-MM-DD/records.parquet                        the day's record index
//! ```
//!
//! `dt=` is the UTC day of the events' `occurred_at` (Hive partitioning, so DuckDB, Athena,
//! Trino and Spark read `segments/` in place with `dt` as a partition column). `writer` is the
//! writer id; `batch_idx` counts that writer's batches from 0 with no gaps, zero-padded so
//! that lexical order is numeric order. A segment and its manifest share their file stem.
//! Keys are deterministic: a retried upload of the same batch goes to the same key, where
//! create-only writes make it idempotent.

use std::fmt;

use crate::timestamp::Day;

/// A validated writer id: 1-64 characters of `a-z`, `0-9` and `-`, starting with a letter or
/// digit. It appears in object keys, which parse unambiguously because the batch index after
/// the *last* `-` is always exactly 12 digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct WriterId(String);

impl WriterId {
    pub fn parse(s: &str) -> Result<WriterId, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(WriterId(s.to_owned()))
        } else {
            Err(format!(
                "writer id {s:?} must be 1-64 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WriterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for WriterId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        WriterId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a key in the archive is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Segment {
        day: Day,
        writer: WriterId,
        batch_idx: u64,
    },
    Manifest {
        day: Day,
        writer: WriterId,
        batch_idx: u64,
    },
}

/// Builds and parses keys under a prefix (empty, or ending in `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

pub const SEGMENTS: &str = "segments/";
pub const MANIFESTS: &str = "manifests/";
pub const SWEEPS: &str = "sweeps/";
pub const ANCHORS: &str = "anchors/";
pub const INDEX: &str = "index/";
pub const PREFLIGHT: &str = "preflight/";

impl Layout {
    /// `prefix` may be empty; otherwise a trailing `/` is added if missing.
    pub fn new(prefix: &str) -> Layout {
        let mut prefix = prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Layout { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn segment(&self, day: Day, writer: &WriterId, batch_idx: u64) -> String {
        format!(
            "{}{SEGMENTS}dt={day}/{writer}-{batch_idx:012}.parquet",
            self.prefix
        )
    }

    pub fn manifest(&self, day: Day, writer: &WriterId, batch_idx: u64) -> String {
        format!(
            "{}{MANIFESTS}dt={day}/{writer}-{batch_idx:012}.json",
            self.prefix
        )
    }

    /// The prefix of all segments.
    pub fn segments_prefix(&self) -> String {
        format!("{}{SEGMENTS}", self.prefix)
    }

    /// The prefix of all manifests.
    pub fn manifests_prefix(&self) -> String {
        format!("{}{MANIFESTS}", self.prefix)
    }

    /// The prefix of one day's manifests.
    pub fn manifests_of_day(&self, day: Day) -> String {
        format!("{}{MANIFESTS}dt={day}/", self.prefix)
    }

    /// The prefix of one day's segments.
    pub fn segments_of_day(&self, day: Day) -> String {
        format!("{}{SEGMENTS}dt={day}/", self.prefix)
    }

    /// A sweep report: `{prefix}sweeps/dt=YYYY-MM-DD/{sweep_id}.{json|txt}` (the day it ran).
    pub fn sweep_report(&self, day: Day, sweep_id: &str, ext: &str) -> String {
        format!("{}{SWEEPS}dt={day}/{sweep_id}.{ext}", self.prefix)
    }

    /// The prefix of all anchors (one `dt=` directory per anchored day).
    pub fn anchors_prefix(&self) -> String {
        format!("{}{ANCHORS}", self.prefix)
    }

    /// The signed daily root of `day`: `{prefix}anchors/dt=YYYY-MM-DD/anchor.note`.
    pub fn anchor(&self, day: Day) -> String {
        format!("{}{ANCHORS}dt={day}/anchor.note", self.prefix)
    }

    /// The RFC 3161 time-stamp token of `day`'s anchor: `…/anchors/dt=YYYY-MM-DD/anchor.tsr`.
    pub fn anchor_timestamp(&self, day: Day) -> String {
        format!("{}{ANCHORS}dt={day}/anchor.tsr", self.prefix)
    }

    /// The record index of `day`: `{prefix}index/dt=YYYY-MM-DD/records.parquet`.
    pub fn record_index(&self, day: Day) -> String {
        format!("{}{INDEX}dt={day}/records.parquet", self.prefix)
    }

    /// A `bucket check` canary: `{prefix}preflight/{who}/{unix microseconds}.json`. Not a
    /// record; locked for a day; the only kind of key anything ever tries to delete.
    pub fn canary(&self, who: &WriterId, at: crate::timestamp::Timestamp) -> String {
        format!("{}{PREFLIGHT}{who}/{}.json", self.prefix, at.as_micros())
    }

    /// Whether `key` is a canary key of this layout (and so nothing archived).
    pub fn is_canary(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix(PREFLIGHT))
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(who, file)| {
                WriterId::parse(who).is_ok()
                    && file
                        .strip_suffix(".json")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// The day of a `…/dt=YYYY-MM-DD/` directory prefix returned by a listing.
    pub fn day_of_dir(dir: &str) -> Option<Day> {
        let d = dir
            .trim_end_matches('/')
            .rsplit('/')
            .next()?
            .strip_prefix("dt=")?;
        Day::parse(d)
    }

    /// Parses a key this layout built; `None` for anything else.
    pub fn parse(&self, key: &str) -> Option<KeyKind> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (is_segment, rest, ext) = if let Some(r) = rest.strip_prefix(SEGMENTS) {
            (true, r, ".parquet")
        } else if let Some(r) = rest.strip_prefix(MANIFESTS) {
            (false, r, ".json")
        } else {
            return None;
        };
        let rest = rest.strip_prefix("dt=")?;
        let (day, file) = rest.split_once('/')?;
        let day = Day::parse(day)?;
        let stem = file.strip_suffix(ext)?;
        let (writer, idx) = stem.rsplit_once('-')?;
        if idx.len() != 12 || !idx.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let writer = WriterId::parse(writer).ok()?;
        let batch_idx = idx.parse().ok()?;
        Some(if is_segment {
            KeyKind::Segment {
                day,
                writer,
                batch_idx,
            }
        } else {
            KeyKind::Manifest {
                day,
                writer,
                batch_idx,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_hive_partitioned() {
        let l = Layout::new("prod");
        let w = WriterId::parse("ingest-a1-7f3c").unwrap();
        let d = Day::parse("2026-11-20").unwrap();
        let s = l.segment(d, &w, 42);
        assert_eq!(
            s,
            "prod/segments/dt=2026-11-20/ingest-a1-7f3c-000000000042.parquet"
        );
        assert_eq!(
            l.manifest(d, &w, 42),
            "prod/manifests/dt=2026-11-20/ingest-a1-7f3c-000000000042.json"
        );
        assert_eq!(
            l.parse(&s),
            Some(KeyKind::Segment {
                day: d,
                writer: w.clone(),
                batch_idx: 42
            })
        );
        assert_eq!(
            l.parse(&l.manifest(d, &w, 7)),
            Some(KeyKind::Manifest {
                day: d,
                writer: w,
                batch_idx: 7
            })
        );
        assert!(
            l.manifest(d, &WriterId::parse("a").unwrap(), 9)
                < l.manifest(d, &WriterId::parse("a").unwrap(), 10)
        );
    }

    #[test]
    fn canary_keys_are_only_canary_keys() {
        let l = Layout::new("prod");
        let w = WriterId::parse("ingest-a").unwrap();
        let at = crate::timestamp::Timestamp::parse_rfc3339("2026-11-22T10:00:00Z").unwrap();
        let k = l.canary(&w, at);
        assert_eq!(k, "prod/preflight/ingest-a/1795341600000000.json");
        assert!(l.is_canary(&k));
        for other in [
            l.segment(Day::parse("2026-11-22").unwrap(), &w, 1),
            "preflight/ingest-a/1.json".into(),
            "prod/preflight/ingest-a/x.json".into(),
            "prod/preflight/ingest-a/../segments/1.json".into(),
            "prod/preflight/1.json".into(),
        ] {
            assert!(!l.is_canary(&other), "{other}");
        }
    }

    #[test]
    fn foreign_keys_are_not_ours() {
        let l = Layout::new("");
        for k in [
            "segments/dt=2026-11-20/w-1.parquet",
            "segments/dt=2026-13-20/w-000000000001.parquet",
            "segments/2026-11-20/w-000000000001.parquet",
            "segments/dt=2026-11-20/w-000000000001.csv",
            "other/dt=2026-11-20/w-000000000001.parquet",
            "segments/dt=2026-11-20/W-000000000001.parquet",
        ] {
            assert_eq!(l.parse(k), None, "{k}");
        }
        assert_eq!(Layout::new("/a/b").prefix(), "a/b/");
    }

    #[test]
    fn writer_ids() {
        assert!(WriterId::parse("host-1-a9f3").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", &"x".repeat(65)] {
            assert!(WriterId::parse(bad).is_err(), "{bad}");
        }
    }
}
