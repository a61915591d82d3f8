//! The daemon's core: the sequencer thread, which alone owns the batcher, the spool and the
//! seal pipeline.
//!
//! ```text
//! HTTP handlers ──(parsed events)──▶ sequencer ──▶ spool (append, one fsync per group)
//!   ▲                                    │            then acknowledge
//!   └──────────── per-event results ◀────┤
//!                                        └──▶ batches ──▶ seal pipeline ──▶ outbox ──▶ uploader
//!                                                                                       │
//!                 spool files reclaimed once their events are confirmed in the store ◀──┘
//! ```
//!
//! For each group of requests that arrived while the previous fsync ran, the sequencer:
//! reserves every new event (idempotency check, lane sequence number), appends them all to the
//! spool and fsyncs once, and only then places them in batches and answers. If the append or
//! fsync fails, the reservations are rolled back and the requests get 503: nothing is
//! acknowledged that is not on disk, and no lane gets a gap.
//!
//! On start, the spool is replayed: events whose lane number is below the committed next
//! number are already sealed (in the outbox or the store) and are skipped; the others are
//! placed again with the numbers they were acknowledged with.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::archive::Archive;
use crate::batch::{Batcher, ClosedBatch, Reserved};
use crate::event::{EventError, Record};
use crate::pipeline::SealPipeline;
use crate::spool::Spool;
use crate::state::{Lane, LaneMap};
use crate::telemetry::metrics as m;
use crate::timestamp::Timestamp;

/// One parsed item of a request, in request order.
pub enum Item {
    Event {
        record: Box<Record>,
        note: Option<String>,
    },
    Rejected(EventError),
}

/// What happened to one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    Accepted {
        lane: Lane,
        seq: u64,
        note: Option<String>,
    },
    Duplicate,
    Conflict,
    Rejected(EventError),
}

/// The answer to an ingest request.
#[derive(Debug)]
pub enum IngestReply {
    Done(Vec<EventOutcome>),
    /// The spool is at its limit: retry later.
    SpoolFull,
    /// Shutting down: retry against another instance, or later.
    Draining,
    /// The spool could not be written; nothing of this request was acknowledged.
    Failed(String),
}

/// The answer to a flush.
#[derive(Debug, serde::Serialize)]
pub struct FlushReply {
    /// Batches sealed by this flush.
    pub sealed: u64,
    /// True when everything sealed up to now is confirmed in the store.
    pub uploaded: bool,
    pub message: String,
}

pub enum Command {
    Ingest {
        items: Vec<Item>,
        reply: oneshot::Sender<IngestReply>,
    },
    Flush {
        reply: oneshot::Sender<FlushReply>,
    },
    /// From the uploader: a batch is confirmed in the store.
    Uploaded {
        lane: Lane,
        last_seq: u64,
        batch_idx: u64,
    },
    Shutdown,
}

/// Limits of the sequencer.
#[derive(Clone, Copy, Debug)]
pub struct SequencerLimits {
    pub spool_max_bytes: u64,
    pub spool_file_bytes: u64,
    pub workers: usize,
}

struct Sequencer {
    batcher: Batcher,
    spool: Spool,
    pipeline: SealPipeline,
    /// Highest sequence number confirmed in the store, per lane with spooled events.
    confirmed: LaneMap<u64>,
    /// Acknowledged events not yet confirmed in the store, for the age the metrics report.
    backlog: Backlog,
    /// Batches below this index are confirmed in the store.
    uploaded_below: u64,
    limits: SequencerLimits,
    flushes: Vec<(u64, oneshot::Sender<FlushReply>, u64)>,
    draining: bool,
}

/// Starts the sequencer: replays the spool, then serves commands until `Shutdown`. Returns
/// when every open batch is sealed and committed (uploads continue in the uploader).
pub fn start(
    archive: &Archive,
    limits: SequencerLimits,
    commands: Receiver<Command>,
    wake_uploader: Arc<tokio::sync::Notify>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let mut batcher = Batcher::new(
        archive.state.clone(),
        archive.index.clone(),
        archive.settings.batch,
    )
    .map(|b| b.with_gate(archive.gate.clone()))
    .map_err(|e| e.to_string())?;
    let wake = wake_uploader.clone();
    let pipeline = SealPipeline::start(archive, limits.workers, move |_| {
        m::batch_sealed();
        wake.notify_one();
    });
    // What is sealed but not yet in the store, per lane: the earliest first_seq in the outbox.
    let outbox = archive.state.outbox().map_err(|e| e.to_string())?;
    let mut in_outbox: LaneMap<u64> = LaneMap::default();
    for e in &outbox {
        let lane = Lane {
            day: e.info.day,
            class: e.info.retention_class.as_str().into(),
        };
        let first = in_outbox.entry(lane).or_insert(u64::MAX);
        *first = (*first).min(e.info.first_seq);
    }
    let uploaded_below = outbox
        .iter()
        .map(|e| e.info.batch_idx)
        .min()
        .unwrap_or(archive.state.next_batch_idx().map_err(|e| e.to_string())?);
    let mut confirmed: LaneMap<u64> = LaneMap::default();
    let mut backlog = Backlog::default();
    let mut replayed = 0u64;
    let state = archive.state.clone();
    let spool_dir = archive.settings.state_dir.join("spool");
    let spool = Spool::open(&spool_dir, limits.spool_file_bytes, |s| {
        let committed_next = state.lane_next_seq(&s.lane).map_err(std::io::Error::other)?;
        let lane_confirmed = *confirmed.entry(s.lane).or_insert_with(|| match in_outbox.get(&s.lane) {
            Some(first) => first - 1,
            None => committed_next - 1,
        });
        if s.seq <= lane_confirmed {
            return Ok(()); // in the store
        }
        if s.seq < committed_next {
            // Sealed before the restart, waiting in the outbox: only its age is wanted, for
            // the metrics, so a record that does not read back costs the metric, never the
            // start (sealing read it already; the outbox file is what gets uploaded).
            if let Ok(record) = Record::from_canonical(s.canonical, s.digest) {
                backlog.note(s.lane, s.seq, record.ingested_at);
            }
            return Ok(());
        }
        let record = Record::from_canonical(s.canonical, s.digest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("spool record: {e}")))?;
        backlog.note(s.lane, s.seq, record.ingested_at);
        match batcher.reserve(Box::new(record)).map_err(std::io::Error::other)? {
            Reserved::New { lane, seq, record } if seq == s.seq && lane == s.lane => {
                batcher.place(lane, seq, record);
                replayed += 1;
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "spooled event {} of lane {}/{} does not follow the archive's numbering ({})",
                        s.seq,
                        s.lane.day,
                        s.lane.class,
                        match other {
                            Reserved::New { seq, .. } => format!("expected {seq}"),
                            Reserved::Duplicate(_) => "already archived".into(),
                            Reserved::Conflict(_) => "conflicts with an archived event".into(),
                        }
                    ),
                ));
            }
        }
        for batch in batcher.take_closed() {
            pipeline.submit(batch).map_err(|_| std::io::Error::other("the seal pipeline stopped"))?;
        }
        Ok(())
    })
    .map_err(|e| format!("opening the spool in {}: {e}", spool_dir.display()))?;
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "Replayed acknowledged events from the spool that were not yet sealed."
        );
    }
    let mut spool = spool;
    let freed = spool
        .reclaim_all(|l| confirmed.get(l).copied().unwrap_or(0))
        .map_err(|e| format!("reclaiming the spool in {}: {e}", spool_dir.display()))?;
    if freed > 0 {
        tracing::info!(
            bytes = freed,
            "Reclaimed spool files whose events are all in the store."
        );
    }
    let seq = Sequencer {
        batcher,
        spool,
        pipeline,
        confirmed,
        backlog,
        uploaded_below,
        limits,
        flushes: Vec::new(),
        draining: false,
    };
    seq.publish_spool_metrics();
    std::thread::Builder::new()
        .name("wv-sequencer".into())
        .spawn(move || seq.run(commands))
        .map_err(|e| e.to_string())
}

impl Sequencer {
    fn run(mut self, commands: Receiver<Command>) {
        let tick = Duration::from_millis(200);
        loop {
            let first = match commands.recv_timeout(tick) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Shutdown),
            };
            let mut group = Vec::new();
            let mut shutdown = false;
            for c in first.into_iter().chain(commands.try_iter().take(4096)) {
                match c {
                    Command::Ingest { items, reply } => group.push((items, reply)),
                    Command::Flush { reply } => self.flush(reply),
                    Command::Uploaded {
                        lane,
                        last_seq,
                        batch_idx,
                    } => self.uploaded(lane, last_seq, batch_idx),
                    Command::Shutdown => shutdown = true,
                }
            }
            if !group.is_empty() {
                self.ingest(group);
            }
            self.batcher.close_expired(Instant::now());
            if !self.submit_closed() || shutdown {
                break;
            }
            self.absorb_commits();
            self.answer_flushes();
            // Also when nothing arrives: the backlog's age grows while the store is away.
            self.publish_spool_metrics();
        }
        // Shutdown: refuse what is still queued, seal everything open.
        self.draining = true;
        for c in commands.try_iter() {
            match c {
                Command::Ingest { reply, .. } => {
                    let _ = reply.send(IngestReply::Draining);
                }
                Command::Flush { reply } => {
                    let _ = reply.send(FlushReply {
                        sealed: 0,
                        uploaded: false,
                        message: "shutting down".into(),
                    });
                }
                _ => {}
            }
        }
        self.batcher.close_all();
        self.submit_closed();
        match self.pipeline.finish() {
            Ok(done) => tracing::info!(
                batches = done.len(),
                "Sealed every open batch for shutdown."
            ),
            Err(e) => {
                tracing::error!(error = %e, "Sealing at shutdown failed; the events stay in the spool and are replayed at the next start.")
            }
        }
    }

    /// Hands a closed batch to the seal workers, waiting while they are all busy and the
    /// queue is full (the daemon's back-pressure from sealing). The wait is measured: the
    /// sequencer acknowledges nothing meanwhile, so it shows in the requests' latency.
    fn hand_over(&self, batch: ClosedBatch) -> Result<(), ClosedBatch> {
        let started = Instant::now();
        let handed = self.pipeline.submit(batch);
        m::seal_handover(started.elapsed());
        handed
    }

    fn submit_closed(&mut self) -> bool {
        for batch in self.batcher.take_closed() {
            if self.hand_over(batch).is_err() {
                tracing::error!(
                    "The seal pipeline stopped; acknowledged events stay in the spool."
                );
                if let Err(e) = self.pipeline.drain_committed() {
                    tracing::error!(error = %e, "Sealing failed.");
                }
                return false;
            }
        }
        true
    }

    fn absorb_commits(&mut self) {
        match self.pipeline.drain_committed() {
            Ok(done) => done.into_iter().for_each(|idx| self.batcher.committed(idx)),
            Err(e) => {
                tracing::error!(error = %e, "Sealing failed; acknowledged events stay in the spool.")
            }
        }
    }

    fn ingest(&mut self, group: Vec<(Vec<Item>, oneshot::Sender<IngestReply>)>) {
        // Reserve every new event of every request in the group.
        let mut answers: Vec<(Vec<EventOutcome>, oneshot::Sender<IngestReply>)> =
            Vec::with_capacity(group.len());
        let mut news: Vec<(Lane, u64, Box<Record>)> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        for (items, reply) in group {
            if self.draining {
                let _ = reply.send(IngestReply::Draining);
                continue;
            }
            if self.spool.bytes() >= self.limits.spool_max_bytes {
                m::backpressure();
                let _ = reply.send(IngestReply::SpoolFull);
                continue;
            }
            let mut outcomes = Vec::with_capacity(items.len());
            let req = answers.len();
            for item in items {
                let outcome = match item {
                    Item::Rejected(e) => EventOutcome::Rejected(e),
                    Item::Event { record, note } => {
                        let lane_probe = Lane {
                            day: record.occurred_at.day(),
                            class: record.retention_class,
                        };
                        if !self.confirmed.contains_key(&lane_probe) {
                            match self.batcher.next_seq(&lane_probe) {
                                Ok(next) => {
                                    self.confirmed.insert(lane_probe, next - 1);
                                }
                                Err(e) => {
                                    outcomes.push(EventOutcome::Rejected(internal(&e.to_string())));
                                    continue;
                                }
                            }
                        }
                        match self.batcher.reserve(record) {
                            Ok(Reserved::New { lane, seq, record }) => {
                                news.push((lane, seq, record));
                                owners.push(req);
                                EventOutcome::Accepted { lane, seq, note }
                            }
                            Ok(Reserved::Duplicate(_)) => EventOutcome::Duplicate,
                            Ok(Reserved::Conflict(_)) => EventOutcome::Conflict,
                            Err(e) => EventOutcome::Rejected(internal(&e.to_string())),
                        }
                    }
                };
                outcomes.push(outcome);
            }
            answers.push((outcomes, reply));
        }
        // One append and one fsync for the whole group.
        if !news.is_empty() {
            let view: Vec<(Lane, u64, &Record)> =
                news.iter().map(|(l, s, r)| (*l, *s, r.as_ref())).collect();
            let started = Instant::now();
            let written = self.spool.append(&view).and_then(|()| self.spool.sync());
            m::fsync(started.elapsed());
            drop(view);
            if let Err(e) = written {
                tracing::error!(error = %e, events = news.len(), "Writing the spool failed; the requests are refused (503) and nothing of them is acknowledged.");
                let undo: Vec<(Lane, u64, crate::index::Fingerprint)> = news
                    .iter()
                    .map(|(l, s, r)| (*l, *s, r.fingerprint))
                    .collect();
                self.batcher.rollback(&undo);
                let failed: std::collections::HashSet<usize> = owners.iter().copied().collect();
                let message = format!("the spool could not be written: {e}");
                for (i, (outcomes, reply)) in answers.into_iter().enumerate() {
                    let _ = reply.send(if failed.contains(&i) {
                        IngestReply::Failed(message.clone())
                    } else {
                        IngestReply::Done(outcomes)
                    });
                }
                return;
            }
            for (lane, seq, record) in news {
                self.backlog.note(lane, seq, record.ingested_at);
                self.batcher.place(lane, seq, record);
            }
        }
        for (outcomes, reply) in answers {
            m::outcomes(&outcomes);
            let _ = reply.send(IngestReply::Done(outcomes));
        }
    }

    fn flush(&mut self, reply: oneshot::Sender<FlushReply>) {
        let before = self.batcher.in_flight();
        self.batcher.close_all();
        let closed = self.batcher.take_closed();
        let sealed = closed.len() as u64;
        for batch in closed {
            if self.hand_over(batch).is_err() {
                let _ = reply.send(FlushReply {
                    sealed: 0,
                    uploaded: false,
                    message: "the seal pipeline stopped".into(),
                });
                return;
            }
        }
        // Everything below the batcher's next index must be confirmed before answering.
        let target = self.batcher_next_batch_idx();
        tracing::info!(sealed, in_flight = before, "Flush requested.");
        self.flushes.push((target, reply, sealed));
        self.answer_flushes();
    }

    fn batcher_next_batch_idx(&self) -> u64 {
        self.batcher.next_batch_idx()
    }

    fn answer_flushes(&mut self) {
        let below = self.uploaded_below;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(t, _, _)| *t <= below);
        self.flushes = waiting;
        for (_, reply, sealed) in done {
            let _ = reply.send(FlushReply {
                sealed,
                uploaded: true,
                message: "sealed and confirmed in the store".into(),
            });
        }
    }

    fn uploaded(&mut self, lane: Lane, last_seq: u64, batch_idx: u64) {
        let c = self.confirmed.entry(lane).or_insert(0);
        *c = (*c).max(last_seq);
        self.backlog.confirm(&lane, *c);
        self.uploaded_below = self.uploaded_below.max(batch_idx + 1);
        let confirmed = &self.confirmed;
        match self
            .spool
            .reclaim(|l| confirmed.get(l).copied().unwrap_or(0))
        {
            Ok(freed) if freed > 0 => tracing::debug!(
                bytes = freed,
                "Reclaimed spool files whose events are in the store."
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "Reclaiming spool files failed."),
        }
        self.answer_flushes();
    }

    fn publish_spool_metrics(&self) {
        m::spool(self.spool.bytes(), self.backlog.oldest());
    }
}

/// Acknowledged events not yet confirmed in the store: for each lane, marks of (sequence
/// number, `ingested_at`), a new mark only when an event is [`Backlog::MARK_SPACING`] younger
/// than the lane's last, so memory grows with the backlog's duration, not its events.
///
/// A mark's time is at most the `ingested_at` of every event from its number up to the next
/// mark's, so [`Backlog::oldest`] can overstate the age of the oldest unconfirmed event by
/// less than the spacing, never understate it. A spool file's events stay on disk until the
/// whole file can go, so the spool itself cannot say this: at low traffic its active file
/// holds events confirmed hours ago.
#[derive(Default)]
struct Backlog {
    lanes: LaneMap<LaneBacklog>,
}

struct LaneBacklog {
    marks: VecDeque<(u64, Timestamp)>,
    /// Highest sequence number acknowledged.
    last: u64,
}

impl Backlog {
    const MARK_SPACING: i64 = 1_000_000;

    /// Event `seq` of `lane` is acknowledged; numbers within a lane come in increasing order.
    fn note(&mut self, lane: Lane, seq: u64, ingested_at: Timestamp) {
        let l = self.lanes.entry(lane).or_insert_with(|| LaneBacklog {
            marks: VecDeque::new(),
            last: 0,
        });
        l.last = l.last.max(seq);
        match l.marks.back_mut() {
            Some((_, at)) if ingested_at.as_micros() < at.as_micros() + Backlog::MARK_SPACING => {
                *at = (*at).min(ingested_at);
            }
            _ => l.marks.push_back((seq, ingested_at)),
        }
    }

    /// Every event of `lane` up to `confirmed` is in the store.
    fn confirm(&mut self, lane: &Lane, confirmed: u64) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        if l.last <= confirmed {
            self.lanes.remove(lane);
            return;
        }
        // Keep the last mark at or before the first unconfirmed event.
        while l.marks.get(1).is_some_and(|&(seq, _)| seq <= confirmed + 1) {
            l.marks.pop_front();
        }
    }

    /// The `ingested_at` of the oldest acknowledged event not yet in the store (see above).
    fn oldest(&self) -> Option<Timestamp> {
        self.lanes
            .values()
            .filter_map(|l| l.marks.front().map(|&(_, at)| at))
            .min()
    }
}

fn internal(message: &str) -> EventError {
    EventError {
        kind: crate::event::RejectKind::Malformed,
        field: None,
        reason: format!("internal error, not archived: {message}"),
        event_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::ClassName;
    use crate::timestamp::Day;

    fn lane(class: &str) -> Lane {
        Lane {
            day: Day::from_days_since_epoch(20_000),
            class: ClassName::new(class),
        }
    }

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(1_700_000_000_000_000 + micros)
    }

    /// The backlog's age never understates the oldest unconfirmed event and overstates it by
    /// less than a mark's spacing, whatever has been confirmed; it is empty once everything is.
    #[test]
    fn the_backlog_reports_the_oldest_unconfirmed_event() {
        let a = lane("sec-17a-4-a");
        let mut backlog = Backlog::default();
        assert_eq!(backlog.oldest(), None);
        // 5,000 events over 5 s, 1 ms apart, with a little jitter backwards now and then.
        let times: Vec<i64> = (0..5_000i64)
            .map(|i| i * 1_000 - if i % 7 == 3 { 1_500 } else { 0 })
            .collect();
        for (i, &t) in times.iter().enumerate() {
            backlog.note(a, i as u64 + 1, at(t));
        }
        assert!(
            backlog.lanes[&a].marks.len() <= 6,
            "a mark a second, not one an event: {}",
            backlog.lanes[&a].marks.len()
        );
        for confirmed in [0u64, 1, 999, 1_000, 1_001, 2_500, 4_998] {
            backlog.confirm(&a, confirmed);
            let truth = times[confirmed as usize..].iter().min().copied().unwrap();
            let got = backlog.oldest().unwrap().as_micros() - at(0).as_micros();
            assert!(
                got <= truth && truth - got < Backlog::MARK_SPACING,
                "confirmed {confirmed}: reported {got}, oldest unconfirmed {truth}"
            );
        }
        // A second lane's older events come first; confirming all of a lane forgets it.
        let b = lane("cftc-1-31");
        backlog.note(b, 1, at(-10_000_000));
        assert_eq!(backlog.oldest(), Some(at(-10_000_000)));
        backlog.confirm(&b, 1);
        assert!(!backlog.lanes.contains_key(&b));
        backlog.confirm(&a, 5_000);
        assert_eq!(backlog.oldest(), None);
        assert!(backlog.lanes.is_empty());
    }
}
