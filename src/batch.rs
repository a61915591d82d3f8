//! Admission and batching: the single-threaded heart of the writer.
//!
//! For each accepted [`Record`], in acceptance order, the [`Batcher`]:
//!
//! 1. checks idempotency: an `event_id` already archived (in the [`Index`]) or pending (in
//!    an open or in-flight batch) with the same content digest is a *duplicate* (success,
//!    stored once); with a different digest it is a *conflict* (refused);
//! 2. assigns the next sequence number of the event's lane — (UTC day of `occurred_at`,
//!    retention class) — counting from 1 with no gaps;
//! 3. appends it to the lane's open batch, and closes the batch when it reaches
//!    `max_events` or `max_bytes`, when it is older than `max_age`, or (largest first) when all
//!    open batches together exceed `max_open_bytes`. Closing assigns the writer's next
//!    `batch_idx`.
//!
//! Closed batches must be sealed and committed in `batch_idx` order; [`Batcher::committed`]
//! is told when one is, after which its events are found in the on-disk index instead of in
//! memory. A crash loses only open and in-flight batches, and with them the tail of each
//! lane's numbering, which the next run reassigns: no lane ever has a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::Record;
use crate::index::{Fingerprint, Index};
use crate::state::{Lane, LaneMap, State, StateError};
use crate::timestamp::{Day, Timestamp};

/// Fingerprints are uniformly random already: the hash is their first eight bytes.
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl std::hash::Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b);
    }
}

type FpMap<V> = HashMap<Fingerprint, V, std::hash::BuildHasherDefault<FingerprintHasher>>;

/// When to close a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BatchLimits {
    pub max_events: usize,
    /// Bytes of records held in memory (see [`Record::weight`]).
    pub max_bytes: usize,
    #[serde(with = "crate::config::duration_text")]
    pub max_age: Duration,
    /// Memory budget of all open batches together.
    pub max_open_bytes: usize,
}

/// The outcome of admitting one record.
#[derive(Debug)]
pub enum Admission {
    Accepted {
        lane: Lane,
        seq: u64,
    },
    /// Archived (or being archived) before with identical content; the record is returned.
    Duplicate(Box<Record>),
    /// Archived (or being archived) before with different content; the record is returned.
    Conflict(Box<Record>),
}

/// The outcome of [`Batcher::reserve`].
#[derive(Debug)]
pub enum Reserved {
    /// New: numbered `seq` in `lane`; place or roll back.
    New {
        lane: Lane,
        seq: u64,
        record: Box<Record>,
    },
    Duplicate(Box<Record>),
    Conflict(Box<Record>),
}

/// A batch ready to be sealed.
#[derive(Debug)]
pub struct ClosedBatch {
    pub batch_idx: u64,
    pub lane: Lane,
    pub first_seq: u64,
    #[allow(
        clippy::vec_box,
        reason = "records arrive boxed from the parse threads; moving pointers is the point"
    )]
    pub records: Vec<Box<Record>>,
}

struct OpenBatch {
    first_seq: u64,
    /// Boxed: the sequencer moves a pointer per event, not the record.
    #[allow(
        clippy::vec_box,
        reason = "records arrive boxed from the parse threads; moving pointers is the point"
    )]
    records: Vec<Box<Record>>,
    /// The records' fingerprints, gathered as they are placed: at close they become the
    /// batch's in-flight set without a second pass over records long out of the cache.
    fingerprints: Vec<Fingerprint>,
    bytes: usize,
    opened: Instant,
}

/// Which days still take events. With anchoring on, a day closes when it is anchored, or
/// `close_after` past its UTC midnight, whichever is first; an event whose `occurred_at` falls
/// on a closed day is *late* and joins the lane of the current day (its `occurred_at` is kept),
/// so nothing is ever added under a day whose anchor is made. Without anchoring every day
/// stays open.
#[derive(Clone, Debug, Default)]
pub struct DayGate(Option<Arc<GateInner>>);

#[derive(Debug)]
struct GateInner {
    /// Days since the epoch of the last anchored day known to this writer.
    anchored_through: std::sync::atomic::AtomicI32,
    close_after_micros: i64,
}

impl DayGate {
    /// Every day open (anchoring off).
    pub fn open() -> DayGate {
        DayGate(None)
    }

    pub fn new(close_after: std::time::Duration, anchored_through: Option<Day>) -> DayGate {
        DayGate(Some(Arc::new(GateInner {
            anchored_through: std::sync::atomic::AtomicI32::new(
                anchored_through.map_or(i32::MIN, |d| d.days_since_epoch()),
            ),
            close_after_micros: close_after.as_micros().min(i64::MAX as u128) as i64,
        })))
    }

    /// Records that every day up to `day` is anchored; true if that closed a day not closed
    /// before.
    pub fn close_through(&self, day: Day) -> bool {
        self.0.as_ref().is_some_and(|g| {
            g.anchored_through
                .fetch_max(day.days_since_epoch(), std::sync::atomic::Ordering::Relaxed)
                < day.days_since_epoch()
        })
    }

    /// The day of the lane an event that occurred on `occurred` joins now.
    pub fn lane_day(&self, occurred: Day) -> Day {
        match &self.0 {
            None => occurred,
            Some(_) => self.lane_day_at(occurred, Timestamp::now()),
        }
    }

    /// The day of the lane an event that occurred on `occurred` joins at `now`.
    pub fn lane_day_at(&self, occurred: Day, now: Timestamp) -> Day {
        let Some(g) = &self.0 else {
            return occurred;
        };
        let anchored = g
            .anchored_through
            .load(std::sync::atomic::Ordering::Relaxed);
        // Day D closes at D's end + close_after: the last closed day is the day before
        // (now - close_after).
        let timed = now
            .plus_micros(-g.close_after_micros)
            .day()
            .prev()
            .days_since_epoch();
        let closed = anchored.max(timed);
        if occurred.days_since_epoch() > closed {
            occurred
        } else {
            now.day()
                .max(Day::from_days_since_epoch(closed.saturating_add(1)))
        }
    }
}

/// Admission, numbering and batching for one writer.
pub struct Batcher {
    gate: DayGate,
    limits: BatchLimits,
    state: Arc<State>,
    index: Arc<Index>,
    open: LaneMap<OpenBatch>,
    next_seq: LaneMap<u64>,
    next_batch_idx: u64,
    /// Fingerprint → digest prefix of events in open or in-flight batches.
    pending: FpMap<[u8; 12]>,
    in_flight: BTreeMap<u64, Vec<Fingerprint>>,
    open_bytes: usize,
    closed: Vec<ClosedBatch>,
}

impl Batcher {
    pub fn new(
        state: Arc<State>,
        index: Arc<Index>,
        limits: BatchLimits,
    ) -> Result<Batcher, StateError> {
        let next_batch_idx = state.next_batch_idx()?;
        Ok(Batcher {
            gate: DayGate::open(),
            limits,
            state,
            index,
            open: LaneMap::default(),
            next_seq: LaneMap::default(),
            next_batch_idx,
            pending: FpMap::default(),
            in_flight: BTreeMap::new(),
            open_bytes: 0,
            closed: Vec::new(),
        })
    }

    /// Uses `gate` to decide which days are closed (late events go to the current day).
    pub fn with_gate(mut self, gate: DayGate) -> Batcher {
        self.gate = gate;
        self
    }

    /// Admits one record: [`Batcher::reserve`] and, if it is new, [`Batcher::place`].
    pub fn admit(&mut self, record: Box<Record>) -> Result<Admission, StateError> {
        match self.reserve(record)? {
            Reserved::New { lane, seq, record } => {
                self.place(lane, seq, record);
                Ok(Admission::Accepted { lane, seq })
            }
            Reserved::Duplicate(r) => Ok(Admission::Duplicate(r)),
            Reserved::Conflict(r) => Ok(Admission::Conflict(r)),
        }
    }

    /// Checks idempotency and gives a new event the next number of its lane, without placing
    /// it in a batch yet: the daemon first makes it durable in the spool. Reservations must be
    /// placed, or rolled back, in the order they were made.
    pub fn reserve(&mut self, record: Box<Record>) -> Result<Reserved, StateError> {
        let fp = record.fingerprint;
        let day = record.occurred_at.day();
        let prior = match self.pending.get(&fp) {
            Some(d) => Some(*d),
            None => self
                .index
                .lookup(&fp, day)
                .map_err(|source| StateError::Io {
                    path: self.state.dir().join("index"),
                    source,
                })?
                .map(|s| s.digest),
        };
        if let Some(digest) = prior {
            return Ok(if digest == record.digest[..12] {
                Reserved::Duplicate(record)
            } else {
                Reserved::Conflict(record)
            });
        }
        let lane = Lane {
            day: self.gate.lane_day(day),
            class: record.retention_class,
        };
        let seq = match self.next_seq.get_mut(&lane) {
            Some(s) => s,
            None => {
                let s = self.state.lane_next_seq(&lane)?;
                self.next_seq.entry(lane).or_insert(s)
            }
        };
        let this_seq = *seq;
        *seq += 1;
        self.pending
            .insert(fp, record.digest[..12].try_into().expect("12"));
        Ok(Reserved::New {
            lane,
            seq: this_seq,
            record,
        })
    }

    /// Undoes the most recent reservations (those not placed), e.g. after a failed spool
    /// write: their fingerprints are forgotten and their lanes' numbering goes back, so no
    /// lane gets a gap.
    pub fn rollback(&mut self, reserved: &[(Lane, u64, Fingerprint)]) {
        for (lane, seq, fp) in reserved {
            self.pending.remove(fp);
            if let Some(next) = self.next_seq.get_mut(lane) {
                *next = (*next).min(*seq);
            }
        }
    }

    /// Places a reserved record into its lane's open batch, closing batches as the limits say.
    pub fn place(&mut self, lane: Lane, seq: u64, record: Box<Record>) {
        let this_seq = seq;
        let weight = record.weight();
        self.open_bytes += weight;
        let batch = self.open.entry(lane).or_insert_with(|| OpenBatch {
            first_seq: this_seq,
            records: Vec::new(),
            fingerprints: Vec::new(),
            bytes: 0,
            opened: Instant::now(),
        });
        debug_assert_eq!(
            batch.first_seq + batch.records.len() as u64,
            this_seq,
            "placed out of order"
        );
        batch.fingerprints.push(record.fingerprint);
        batch.records.push(record);
        batch.bytes += weight;
        if batch.records.len() >= self.limits.max_events || batch.bytes >= self.limits.max_bytes {
            self.close(&lane);
        }
        while self.open_bytes > self.limits.max_open_bytes {
            let largest = self
                .open
                .iter()
                .max_by_key(|(_, b)| b.bytes)
                .map(|(l, _)| *l);
            match largest {
                Some(l) => self.close(&l),
                None => break,
            }
        }
    }

    fn close(&mut self, lane: &Lane) {
        let Some(batch) = self.open.remove(lane) else {
            return;
        };
        self.open_bytes -= batch.bytes;
        let batch_idx = self.next_batch_idx;
        self.next_batch_idx += 1;
        self.in_flight.insert(batch_idx, batch.fingerprints);
        self.closed.push(ClosedBatch {
            batch_idx,
            lane: *lane,
            first_seq: batch.first_seq,
            records: batch.records,
        });
    }

    /// Closes batches older than `max_age` (as of `now`).
    pub fn close_expired(&mut self, now: Instant) {
        let mut expired: Vec<Lane> = self
            .open
            .iter()
            .filter(|(_, b)| now.duration_since(b.opened) >= self.limits.max_age)
            .map(|(l, _)| *l)
            .collect();
        expired.sort();
        for lane in expired {
            self.close(&lane);
        }
    }

    /// Closes every open batch (end of input, flush, shutdown), in lane order.
    pub fn close_all(&mut self) {
        let mut lanes: Vec<Lane> = self.open.keys().cloned().collect();
        lanes.sort();
        for lane in lanes {
            self.close(&lane);
        }
    }

    /// Batches closed since the last call, in `batch_idx` order.
    pub fn take_closed(&mut self) -> Vec<ClosedBatch> {
        std::mem::take(&mut self.closed)
    }

    /// Tells the batcher that `batch_idx` is committed to the on-disk index.
    pub fn committed(&mut self, batch_idx: u64) {
        if let Some(fps) = self.in_flight.remove(&batch_idx) {
            for fp in fps {
                self.pending.remove(&fp);
            }
        }
    }

    /// Events in open batches.
    pub fn open_events(&self) -> usize {
        self.open.values().map(|b| b.records.len()).sum()
    }

    /// The age of the oldest open batch.
    pub fn oldest_open(&self) -> Option<Instant> {
        self.open.values().map(|b| b.opened).min()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The index the next closed batch will get.
    pub fn next_batch_idx(&self) -> u64 {
        self.next_batch_idx
    }

    /// The next sequence number of a lane (including reserved and open events).
    pub fn next_seq(&mut self, lane: &Lane) -> Result<u64, StateError> {
        match self.next_seq.get(lane) {
            Some(s) => Ok(*s),
            None => {
                let s = self.state.lane_next_seq(lane)?;
                self.next_seq.insert(*lane, s);
                Ok(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_events_join_the_current_day_once_their_day_is_closed() {
        let d = |s| Day::parse(s).unwrap();
        let at = |s| Timestamp::parse_rfc3339(s).unwrap();
        assert_eq!(
            DayGate::open().lane_day_at(d("2020-01-01"), at("2026-11-22T12:00:00Z")),
            d("2020-01-01")
        );
        let gate = DayGate::new(Duration::from_secs(600), None);
        // Ten minutes past midnight closes yesterday; before that it is still open.
        assert_eq!(
            gate.lane_day_at(d("2026-11-21"), at("2026-11-22T00:09:59Z")),
            d("2026-11-21")
        );
        assert_eq!(
            gate.lane_day_at(d("2026-11-21"), at("2026-11-22T00:10:00Z")),
            d("2026-11-22")
        );
        // An anchor closes its day at once, and every day before it.
        let gate = DayGate::new(Duration::from_secs(10_000 * 86_400), Some(d("2020-01-02")));
        let now = at("2026-11-22T12:00:00Z");
        assert_eq!(gate.lane_day_at(d("2020-01-01"), now), d("2026-11-22"));
        assert_eq!(gate.lane_day_at(d("2020-01-03"), now), d("2020-01-03"));
        assert!(gate.close_through(d("2020-01-03")), "news");
        assert_eq!(gate.lane_day_at(d("2020-01-03"), now), d("2026-11-22"));
        // Closing never goes backwards, and the same day again is no news.
        assert!(!gate.close_through(d("2019-01-01")));
        assert!(!gate.close_through(d("2020-01-03")));
        assert_eq!(gate.lane_day_at(d("2020-01-02"), now), d("2026-11-22"));
    }
}
